// What a Client is built from: ClientOptions (with TlsOptions and RetryPolicy), and CallOptions per call.
#pragma once

#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "entitlements/cancellation.h"
#include "entitlements/result.h"

namespace entitlements {

// TLS for the channel, optionally with a client certificate (mTLS). All fields are PEM text.
struct TlsOptions {
  // CA certificates that verify the server; empty for gRPC's default roots (the file named by
  // GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, else the roots gRPC was built with).
  std::string root_certs_pem;
  // The client's certificate chain and private key, for mTLS: both or neither.
  std::string client_cert_chain_pem;
  std::string client_private_key_pem;
  // The name to verify the server's certificate against (and send as SNI/authority) instead of the target's
  // host, e.g. when dialing an IP address. Empty: the target's host.
  std::string server_name_override;

  // Reads the PEM files given (an empty path: that field stays empty). INVALID_ARGUMENT naming the file when
  // one cannot be read.
  static Result<TlsOptions> FromFiles(const std::string& root_certs_file,
                                      const std::string& client_cert_chain_file = {},
                                      const std::string& client_private_key_file = {},
                                      std::string server_name_override = {});
};

// Which failed calls are retried, and how long the client waits between attempts.
//
// The policy becomes the channel's gRPC service config (`retryPolicy` for every method of the service), so gRPC
// retries inside the channel, within the call's deadline: before attempt n it waits
// min(initial_backoff * backoff_multiplier^(n-2), max_backoff), with gRPC C++'s +-20% jitter. A retry resends
// the request bytes serialized for the first attempt, so a Grant or Revoke keeps its idempotency key and the
// service applies it at most once.
// gRPC only retries a call whose response has not started: a stream that delivered updates is not replayed
// (FollowOrder reopens it, waiting with the same backoff).
struct RetryPolicy {
  // Attempts in all, the first included: 1 (no retries) to 5 (gRPC's maximum).
  int max_attempts = 5;
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{2000};
  double backoff_multiplier = 2.0;
  // Codes that trigger a retry. The service returns UNAVAILABLE when its store could not be reached in time and
  // nothing was written; add RESOURCE_EXHAUSTED if you would rather wait for a free order stream.
  std::vector<grpc::StatusCode> retryable_codes{grpc::StatusCode::UNAVAILABLE};

  static RetryPolicy NoRetries() {
    RetryPolicy policy;
    policy.max_attempts = 1;
    return policy;
  }

  // The gRPC service config (JSON) that applies this policy to every method of the service.
  std::string ServiceConfigJson() const;
};

// How a Client connects. Only `target` is required.
struct ClientOptions {
  // "host:port", or any gRPC target ("dns:///host:port", "unix:/path").
  std::string target;
  // Sent as `authorization: Bearer <api_key>` with every call; empty sends none. Printable ASCII.
  std::string api_key;
  // TLS (or mTLS); unset for plaintext, in which case the API key travels in clear: use plaintext only on a
  // trusted network or to a local sidecar.
  std::optional<TlsOptions> tls;
  // Deadline of each unary call (and of each page of ForEachEntitlement) unless CallOptions::timeout says
  // otherwise. GetOrderStatus and FollowOrder have none by default: the service ends them after `max_wait`.
  std::chrono::milliseconds default_timeout{5000};
  RetryPolicy retry;
  // The Xsolla project of every request whose own `project_id` is 0. Both 0: the service decides (the project
  // the API key is bound to when it is bound to one, else its default project, else INVALID_ARGUMENT).
  std::int64_t project_id = 0;
  // Called last on the channel arguments the client built, to add or override gRPC channel arguments.
  std::function<void(grpc::ChannelArguments&)> configure_channel;
};

// Per-call settings; the defaults suit most calls.
struct CallOptions {
  // Deadline of the call, from when it starts. Unset: ClientOptions::default_timeout for unary calls, none for
  // GetOrderStatus, and for FollowOrder a deadline across all its reopenings.
  std::optional<std::chrono::milliseconds> timeout;
  // Cancels the call from another thread.
  std::optional<CancellationToken> cancellation;
  // Extra metadata sent with the call (e.g. a request id for your logs). Keys are lowercase letters, digits, '-',
  // '_' and '.'; values printable ASCII unless the key ends in "-bin". The call is INVALID_ARGUMENT otherwise.
  std::vector<std::pair<std::string, std::string>> metadata;
};

}  // namespace entitlements

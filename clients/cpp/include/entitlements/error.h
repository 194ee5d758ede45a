// entitlements::Error: what a failed call returns instead of a response.
#pragma once

#include <grpcpp/support/status.h>

#include <iosfwd>
#include <string>
#include <string_view>

namespace entitlements {

// A failed call: the gRPC status code and the message, exactly as the service (or gRPC itself, for a transport
// failure, a deadline or a cancellation) gave them. The client never parses messages: decide on `code`, and show
// or log `message`, which names the offending field for INVALID_ARGUMENT.
//
// Options the client refuses before any call (Client::Create, TlsOptions::FromFiles) are INVALID_ARGUMENT too.
struct Error {
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  std::string message;

  static Error FromStatus(const grpc::Status& status);

  // The call may succeed if made again later with the *same* idempotency key: UNAVAILABLE (nothing was written),
  // DEADLINE_EXCEEDED (the write may or may not have happened: the same key makes the retry safe) and
  // RESOURCE_EXHAUSTED (too many order streams). The client has already retried UNAVAILABLE by its RetryPolicy.
  bool retryable() const noexcept;
  // INVALID_ARGUMENT: fix the request; do not retry.
  bool invalid_argument() const noexcept { return code == grpc::StatusCode::INVALID_ARGUMENT; }
  // UNAUTHENTICATED: no or unknown API key (or, on GetOrderStatus, a token Xsolla rejected).
  bool unauthenticated() const noexcept { return code == grpc::StatusCode::UNAUTHENTICATED; }
  // PERMISSION_DENIED: the key lacks the read/write scope, or is not bound to the request's project.
  bool permission_denied() const noexcept { return code == grpc::StatusCode::PERMISSION_DENIED; }
  // ALREADY_EXISTS (an idempotency key reused with a different request) or FAILED_PRECONDITION (e.g. the sku is
  // held as another kind): the request contradicts what is stored.
  bool conflict() const noexcept;
  // NOT_FOUND: e.g. GetOrderStatus on an order Xsolla does not know.
  bool not_found() const noexcept { return code == grpc::StatusCode::NOT_FOUND; }
  // CANCELLED: a CancellationToken (or the server) cancelled the call.
  bool cancelled() const noexcept { return code == grpc::StatusCode::CANCELLED; }

  // The canonical name of `code`: "INVALID_ARGUMENT", "UNAVAILABLE", ...
  std::string_view code_name() const noexcept;
  // "INVALID_ARGUMENT: user_id: must be 1..256 bytes".
  std::string ToString() const;
};

// The canonical upper-snake-case name of a gRPC status code ("OK", "NOT_FOUND", ...); "UNKNOWN" for a value
// outside the enum.
std::string_view StatusCodeName(grpc::StatusCode code) noexcept;

std::ostream& operator<<(std::ostream& out, const Error& error);

}  // namespace entitlements

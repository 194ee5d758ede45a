#include "channel.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace entitlements {
namespace {

constexpr int kMaxAttempts = 5;  // gRPC clamps retryPolicy.maxAttempts to 5; refusing more is clearer.

Error InvalidOption(std::string message) { return Error{grpc::StatusCode::INVALID_ARGUMENT, std::move(message)}; }

// A service-config duration: "0.100s".
std::string DurationJson(std::chrono::milliseconds duration) {
  char text[32];
  std::snprintf(text, sizeof text, "%lld.%03llds", static_cast<long long>(duration.count() / 1000),
                static_cast<long long>(duration.count() % 1000));
  return text;
}

Result<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  if (in) contents << in.rdbuf();
  if (!in || in.bad()) return InvalidOption(std::string("TlsOptions: cannot read ") + what + " file " + path);
  if (contents.str().empty()) return InvalidOption(std::string("TlsOptions: ") + what + " file " + path + " is empty");
  return contents.str();
}

}  // namespace

std::string RetryPolicy::ServiceConfigJson() const {
  std::string codes;
  for (grpc::StatusCode code : retryable_codes) {
    if (!codes.empty()) codes += ",";
    codes.append("\"").append(StatusCodeName(code)).append("\"");
  }
  char multiplier[32];
  std::snprintf(multiplier, sizeof multiplier, "%g", backoff_multiplier);
  return std::string(R"({"methodConfig":[{"name":[{"service":"entitlements.v1.EntitlementService"}],)") +
         R"("retryPolicy":{"maxAttempts":)" + std::to_string(max_attempts) + R"(,"initialBackoff":")" +
         DurationJson(initial_backoff) + R"(","maxBackoff":")" + DurationJson(max_backoff) +
         R"(","backoffMultiplier":)" + multiplier + R"(,"retryableStatusCodes":[)" + codes + "]}}]}";
}

Result<TlsOptions> TlsOptions::FromFiles(const std::string& root_certs_file,
                                         const std::string& client_cert_chain_file,
                                         const std::string& client_private_key_file,
                                         std::string server_name_override) {
  TlsOptions tls;
  const std::pair<const std::string*, std::pair<std::string*, const char*>> files[] = {
      {&root_certs_file, {&tls.root_certs_pem, "root certificates"}},
      {&client_cert_chain_file, {&tls.client_cert_chain_pem, "client certificate chain"}},
      {&client_private_key_file, {&tls.client_private_key_pem, "client private key"}},
  };
  for (const auto& [path, target] : files) {
    if (path->empty()) continue;
    Result<std::string> contents = ReadFile(*path, target.second);
    if (!contents) return std::move(contents).error();
    *target.first = std::move(contents).value();
  }
  tls.server_name_override = std::move(server_name_override);
  return tls;
}

namespace internal {

std::optional<Error> ValidateOptions(const ClientOptions& options) {
  if (options.target.empty()) return InvalidOption("ClientOptions.target: required (host:port)");
  for (unsigned char c : options.api_key) {
    // gRPC refuses a metadata value with other bytes, failing every call: say so once, here.
    if (c < 0x20 || c > 0x7E) return InvalidOption("ClientOptions.api_key: must be printable ASCII");
  }
  if (options.default_timeout.count() <= 0) return InvalidOption("ClientOptions.default_timeout: must be > 0");
  if (options.project_id < 0) return InvalidOption("ClientOptions.project_id: must be >= 0");
  const RetryPolicy& retry = options.retry;
  if (retry.max_attempts < 1 || retry.max_attempts > kMaxAttempts) {
    return InvalidOption("RetryPolicy.max_attempts: must be 1..5 (1: no retries; 5 is gRPC's maximum)");
  }
  if (retry.initial_backoff.count() <= 0 || retry.max_backoff.count() <= 0) {
    return InvalidOption("RetryPolicy.initial_backoff, max_backoff: must be > 0");
  }
  if (!(retry.backoff_multiplier > 0)) return InvalidOption("RetryPolicy.backoff_multiplier: must be > 0");
  if (retry.max_attempts > 1) {
    if (retry.retryable_codes.empty()) return InvalidOption("RetryPolicy.retryable_codes: must not be empty");
    for (grpc::StatusCode code : retry.retryable_codes) {
      if (code == grpc::StatusCode::OK || (StatusCodeName(code) == "UNKNOWN" && code != grpc::StatusCode::UNKNOWN)) {
        return InvalidOption("RetryPolicy.retryable_codes: OK or an unknown code");
      }
    }
  }
  if (options.tls) {
    const TlsOptions& tls = *options.tls;
    if (tls.client_cert_chain_pem.empty() != tls.client_private_key_pem.empty()) {
      return InvalidOption("TlsOptions: client_cert_chain_pem and client_private_key_pem go together (mTLS)");
    }
    // gRPC would take anything here and fail every call with UNAVAILABLE; a file mixed up with another (or a
    // path given where the PEM text belongs) is better said at once.
    const std::pair<const std::string*, const char*> pems[] = {
        {&tls.root_certs_pem, "root_certs_pem"},
        {&tls.client_cert_chain_pem, "client_cert_chain_pem"},
    };
    for (const auto& [pem, name] : pems) {
      if (!pem->empty() && pem->find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
        return InvalidOption(std::string("TlsOptions.") + name + ": no PEM certificate in it");
      }
    }
    const std::string& key = tls.client_private_key_pem;
    const bool has_key =
        key.find("-----BEGIN ") != std::string::npos && key.find("PRIVATE KEY-----") != std::string::npos;
    if (!key.empty() && !has_key) {
      return InvalidOption("TlsOptions.client_private_key_pem: no PEM private key in it");
    }
  }
  return std::nullopt;
}

std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetUserAgentPrefix("entitlements-cpp/0.1");
  // Keepalive pings find a dead connection (a replica that vanished, a NAT or load balancer that dropped the
  // flow) during GetOrderStatus streams, which may sit silent for up to an hour. Five minutes is the shortest
  // interval a gRPC server accepts by default; pinging more often makes it close the connection with
  // "too_many_pings". No pings while idle, for the same reason. Unary calls do not need them: their deadline
  // catches a dead connection.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 300000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  if (options.retry.max_attempts > 1) {
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
    args.SetServiceConfigJSON(options.retry.ServiceConfigJson());
  } else {
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  }

  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls->root_certs_pem;
    ssl.pem_cert_chain = options.tls->client_cert_chain_pem;
    ssl.pem_private_key = options.tls->client_private_key_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls->server_name_override.empty()) {
      args.SetSslTargetNameOverride(options.tls->server_name_override);
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  if (options.configure_channel) options.configure_channel(args);
  return grpc::CreateCustomChannel(options.target, credentials, args);
}

}  // namespace internal
}  // namespace entitlements

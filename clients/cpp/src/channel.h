// Options checked and turned into a gRPC channel.
#pragma once

#include <grpcpp/channel.h>

#include <memory>
#include <optional>

#include "entitlements/error.h"
#include "entitlements/options.h"

namespace entitlements::internal {

// The first option out of range, as INVALID_ARGUMENT naming it; nullopt when all are fine.
std::optional<Error> ValidateOptions(const ClientOptions& options);

// The channel for validated options: credentials, retry service config, keepalive, user agent, then the
// caller's configure_channel.
std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options);

}  // namespace entitlements::internal

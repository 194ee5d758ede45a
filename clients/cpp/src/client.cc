#include "entitlements/client.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "backoff.h"
#include "cancellation_state.h"
#include "channel.h"
#include "entitlements/v1/entitlements.grpc.pb.h"
#include "order_filter.h"

namespace entitlements {
namespace {

using Clock = std::chrono::system_clock;
using Stub = v1::EntitlementService::Stub;

// GetOrderStatus's `max_wait` when the request has none: the service's default. FollowOrder needs a number to
// reduce across reopenings.
constexpr std::chrono::milliseconds kDefaultMaxWait = std::chrono::minutes(10);

Error MovedFrom() {
  return Error{grpc::StatusCode::FAILED_PRECONDITION, "entitlements::Client: used after it was moved from"};
}

Error CancelledBeforeStart() { return Error{grpc::StatusCode::CANCELLED, "cancelled before the call started"}; }

std::chrono::milliseconds ToMillis(const google::protobuf::Duration& duration) {
  // Clamped so that nonsense (which the service refuses with INVALID_ARGUMENT) cannot overflow the arithmetic.
  constexpr std::int64_t kLimit = std::int64_t{1} << 40;
  const std::int64_t seconds = std::max(-kLimit, std::min(kLimit, duration.seconds()));
  return std::chrono::seconds(seconds) + std::chrono::milliseconds(duration.nanos() / 1000000);
}

// `timeout` from now; at most a century, so that no timeout overflows the clock (it is "no deadline" then).
Clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  constexpr std::chrono::hours kCentury(24 * 365 * 100);
  return Clock::now() + std::min<std::chrono::milliseconds>(timeout, kCentury);
}

// gRPC refuses (and in C++ aborts on) metadata that is not lowercase ASCII token characters, and values with
// bytes outside printable ASCII unless the key ends in "-bin"; "grpc-" keys are gRPC's own.
std::optional<Error> InvalidMetadata(const std::string& key, const std::string& value) {
  auto error = [&](const char* why) {
    return Error{grpc::StatusCode::INVALID_ARGUMENT, "CallOptions.metadata: \"" + key + "\" " + why};
  };
  if (key.empty() || key.rfind("grpc-", 0) == 0) return error("is empty or reserved (grpc-)");
  for (char c : key) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')) {
      return error("must be lowercase letters, digits, '-', '_' or '.'");
    }
  }
  const bool binary = key.size() > 4 && key.compare(key.size() - 4, 4, "-bin") == 0;
  if (!binary) {
    for (unsigned char c : value) {
      if (c < 0x20 || c > 0x7E) return error("has a value with bytes outside printable ASCII (use a -bin key)");
    }
  }
  return std::nullopt;
}

// What is left of `max_wait` since `started`.
std::chrono::milliseconds Remaining(std::chrono::steady_clock::time_point started, std::chrono::milliseconds max_wait) {
  return max_wait - std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
}

void SetMillis(google::protobuf::Duration* duration, std::chrono::milliseconds value) {
  duration->set_seconds(value.count() / 1000);
  duration->set_nanos(static_cast<std::int32_t>((value.count() % 1000) * 1000000));
}

// Whether FollowOrder opens the stream again after it failed with `error`: UNAVAILABLE (the replica shut down,
// the connection dropped), and CANCELLED that the caller did not ask for. A replica that is stopping ends its
// streams UNAVAILABLE, but gRPC's server cancels a stream opened while it stops (before the client has seen its
// GOAWAY): that CANCELLED comes from the server, and the next replica can serve the stream.
bool Reopenable(const Error& error, const CallOptions& options) {
  if (error.code == grpc::StatusCode::UNAVAILABLE) return true;
  const bool caller_cancelled = options.cancellation && options.cancellation->cancelled();
  return error.code == grpc::StatusCode::CANCELLED && !caller_cancelled;
}

}  // namespace

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<Stub> stub;

  // The API key, the caller's metadata, and a deadline: `timeout` when given, else `fallback` (none when unset).
  // INVALID_ARGUMENT when the caller's metadata is not valid gRPC metadata.
  std::optional<Error> Prepare(grpc::ClientContext& context, const CallOptions& call,
                               std::optional<std::chrono::milliseconds> fallback) const {
    if (!options.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options.api_key);
    for (const auto& [key, value] : call.metadata) {
      if (std::optional<Error> invalid = InvalidMetadata(key, value)) return invalid;
      context.AddMetadata(key, value);
    }
    std::optional<std::chrono::milliseconds> timeout = call.timeout ? call.timeout : fallback;
    if (timeout) context.set_deadline(DeadlineAfter(*timeout));
    return std::nullopt;
  }

  template <typename Request>
  void FillProject(Request& request) const {
    if (request.project_id() == 0) request.set_project_id(options.project_id);
  }

  template <typename Response, typename Request, typename Method>
  Result<Response> Unary(Method method, const Request& request, const CallOptions& call) const {
    grpc::ClientContext context;
    if (std::optional<Error> invalid = Prepare(context, call, options.default_timeout)) return std::move(*invalid);
    internal::CancellationScope scope(call.cancellation, &context);
    if (scope.cancelled_before_start()) return CancelledBeforeStart();
    Response response;
    grpc::Status status = ((*stub).*method)(&context, request, &response);
    if (!status.ok()) return Error::FromStatus(status);
    return response;
  }

  // One GetOrderStatus stream, to its end or until `on_message` returns false (then cancelled, and OK).
  // `received` tells whether any message arrived.
  Result<void> Stream(const v1::GetOrderStatusRequest& request, const CallOptions& call,
                      std::optional<Clock::time_point> deadline, const OrderUpdateCallback& on_message,
                      bool* received) const {
    grpc::ClientContext context;
    if (std::optional<Error> invalid = Prepare(context, call, std::nullopt)) return std::move(*invalid);
    if (deadline) context.set_deadline(*deadline);
    internal::CancellationScope scope(call.cancellation, &context);
    if (scope.cancelled_before_start()) return CancelledBeforeStart();
    std::unique_ptr<grpc::ClientReader<v1::OrderStatusUpdate>> reader = stub->GetOrderStatus(&context, request);
    v1::OrderStatusUpdate update;
    bool stopped = false;
    while (reader->Read(&update)) {
      if (received != nullptr) *received = true;
      if (!on_message(update)) {
        // The caller has what it waited for: end the call here (Finish then reports the cancellation).
        stopped = true;
        context.TryCancel();
        break;
      }
    }
    grpc::Status status = reader->Finish();
    if (!status.ok() && !stopped) return Error::FromStatus(status);
    return {};
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&& other) noexcept = default;
Client& Client::operator=(Client&& other) noexcept = default;
Client::~Client() = default;

Result<Client> Client::Create(ClientOptions options) {
  if (std::optional<Error> invalid = internal::ValidateOptions(options)) return std::move(*invalid);
  auto impl = std::make_unique<Impl>();
  impl->channel = internal::MakeChannel(options);
  impl->stub = v1::EntitlementService::NewStub(impl->channel);
  impl->options = std::move(options);
  return Client(std::move(impl));
}

const ClientOptions& Client::options() const {
  static const ClientOptions kNone;
  return impl_ ? impl_->options : kNone;
}

std::shared_ptr<grpc::Channel> Client::channel() const { return impl_ ? impl_->channel : nullptr; }

Result<v1::GrantResponse> Client::Grant(v1::GrantRequest request, const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  // Made once, before the first attempt: gRPC's retries resend these bytes, so every attempt carries this key.
  if (request.idempotency_key().empty()) request.set_idempotency_key(NewIdempotencyKey());
  return impl_->Unary<v1::GrantResponse>(&Stub::Grant, request, options);
}

Result<v1::RevokeResponse> Client::Revoke(v1::RevokeRequest request, const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  if (request.idempotency_key().empty()) request.set_idempotency_key(NewIdempotencyKey());
  return impl_->Unary<v1::RevokeResponse>(&Stub::Revoke, request, options);
}

Result<v1::CheckEntitlementResponse> Client::CheckEntitlement(v1::CheckEntitlementRequest request,
                                                              const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  return impl_->Unary<v1::CheckEntitlementResponse>(&Stub::CheckEntitlement, request, options);
}

Result<v1::CheckEntitlementsResponse> Client::CheckEntitlements(v1::CheckEntitlementsRequest request,
                                                                const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  return impl_->Unary<v1::CheckEntitlementsResponse>(&Stub::CheckEntitlements, request, options);
}

Result<v1::ListEntitlementsResponse> Client::ListEntitlements(v1::ListEntitlementsRequest request,
                                                              const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  return impl_->Unary<v1::ListEntitlementsResponse>(&Stub::ListEntitlements, request, options);
}

Result<std::int64_t> Client::ForEachEntitlement(v1::ListEntitlementsRequest request,
                                                const std::function<bool(const v1::Entitlement&)>& on_entitlement,
                                                const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  std::int64_t delivered = 0;
  while (true) {
    Result<v1::ListEntitlementsResponse> page =
        impl_->Unary<v1::ListEntitlementsResponse>(&Stub::ListEntitlements, request, options);
    if (!page) return std::move(page).error();
    for (const v1::Entitlement& entitlement : page->entitlements()) {
      ++delivered;
      if (!on_entitlement(entitlement)) return delivered;
    }
    // Only an empty token ends the listing: a page may be short, even empty, with more to come (AIP-158).
    if (page->next_page_token().empty()) return delivered;
    request.set_page_token(page->next_page_token());
  }
}

Result<v1::ListSubscriptionsResponse> Client::ListSubscriptions(v1::ListSubscriptionsRequest request,
                                                                const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  return impl_->Unary<v1::ListSubscriptionsResponse>(&Stub::ListSubscriptions, request, options);
}

Result<v1::ListLedgerResponse> Client::ListLedger(v1::ListLedgerRequest request, const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  return impl_->Unary<v1::ListLedgerResponse>(&Stub::ListLedger, request, options);
}

Result<void> Client::GetOrderStatus(v1::GetOrderStatusRequest request, const OrderUpdateCallback& on_update,
                                    const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  return impl_->Stream(request, options, std::nullopt, on_update, nullptr);
}

Result<FollowOrderSummary> Client::FollowOrder(v1::GetOrderStatusRequest request, const OrderUpdateCallback& on_update,
                                               const CallOptions& options) const {
  if (!impl_) return MovedFrom();
  impl_->FillProject(request);
  const auto started = std::chrono::steady_clock::now();
  const std::chrono::milliseconds max_wait = request.has_max_wait() ? ToMillis(request.max_wait()) : kDefaultMaxWait;
  // One deadline across every reopening, so the caller's timeout bounds the whole follow.
  std::optional<Clock::time_point> deadline;
  if (options.timeout) deadline = DeadlineAfter(*options.timeout);

  internal::OrderUpdateFilter filter;
  internal::Backoff backoff(impl_->options.retry);
  FollowOrderSummary summary;
  bool stopped = false;
  auto deliver = [&](const v1::OrderStatusUpdate& update) {
    if (!filter.Admit(update)) return true;
    summary.last = update;
    ++summary.delivered;
    stopped = !on_update(update);
    return !stopped;
  };
  CallOptions stream_options = options;
  stream_options.timeout.reset();  // replaced by `deadline`

  while (true) {
    ++summary.opens;
    bool received = false;
    Result<void> ended = impl_->Stream(request, stream_options, deadline, deliver, &received);
    if (ended || stopped) return summary;
    if (!Reopenable(ended.error(), options)) return std::move(ended).error();
    // The stream broke. A stream that delivered something was a working connection: this is a new outage,
    // and the backoff starts again from its first step.
    if (received) backoff.Reset();
    const std::chrono::milliseconds wait = backoff.Next();
    // Reopening would start after `max_wait`: the follow is over, and the last failure says why it ended
    // without a final message.
    if (Remaining(started, max_wait) - wait <= std::chrono::milliseconds::zero()) return std::move(ended).error();
    if (deadline && Clock::now() + wait >= *deadline) {
      return Error{grpc::StatusCode::DEADLINE_EXCEEDED,
                   "deadline passed while reopening the order stream after " + ended.error().ToString()};
    }
    if (options.cancellation) {
      if (!internal::CancellationAccess::State(*options.cancellation).SleepFor(wait)) {
        return Error{grpc::StatusCode::CANCELLED, "cancelled while waiting to reopen the order stream"};
      }
    } else {
      std::this_thread::sleep_for(wait);
    }
    const std::chrono::milliseconds remaining = Remaining(started, max_wait);
    if (remaining <= std::chrono::milliseconds::zero()) return std::move(ended).error();
    SetMillis(request.mutable_max_wait(), remaining);
  }
}

}  // namespace entitlements

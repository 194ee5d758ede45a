// entitlements::CancellationToken: stops calls from another thread.
#pragma once

#include <memory>

namespace entitlements {

namespace internal {
class CancellationState;
struct CancellationAccess;
}  // namespace internal

// Cancels the calls it is passed to (CallOptions::cancellation), from any thread: a GetOrderStatus stream when the
// player leaves, a FollowOrder waiting to reopen, the remaining pages of ForEachEntitlement. The calls then end
// with CANCELLED. Once cancelled, a token stays cancelled: calls started with it later end at once.
//
// Copies share one state, so a token can be handed to the thread that may cancel and to the call at the same
// time. Cancelling a unary call whose request already reached the service does not undo it: a Grant may have
// been applied (retry it with the same idempotency key to find out).
class CancellationToken {
 public:
  CancellationToken();

  // Cancels every call using this token now, and every later one. Thread-safe; calling it again does nothing.
  void Cancel() const;
  bool cancelled() const;


 private:
  friend struct internal::CancellationAccess;
  std::shared_ptr<internal::CancellationState> state_;
};

}  // namespace entitlements

#include <algorithm>

#include "cancellation_state.h"

namespace entitlements {

CancellationToken::CancellationToken() : state_(std::make_shared<internal::CancellationState>()) {}

void CancellationToken::Cancel() const { state_->Cancel(); }

bool CancellationToken::cancelled() const { return state_->cancelled(); }

namespace internal {

void CancellationState::Cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (cancelled_) return;
  cancelled_ = true;
  // TryCancel under the lock: a call detaches (and then destroys its context) only after taking the lock, so
  // no context here is destroyed while it is being cancelled. TryCancel does not block on the call.
  for (grpc::ClientContext* context : contexts_) context->TryCancel();
  contexts_.clear();
  cancelled_cv_.notify_all();
}

bool CancellationState::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

bool CancellationState::Attach(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (cancelled_) return false;
  contexts_.push_back(context);
  return true;
}

void CancellationState::Detach(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mutex_);
  contexts_.erase(std::remove(contexts_.begin(), contexts_.end(), context), contexts_.end());
}

bool CancellationState::SleepFor(std::chrono::milliseconds duration) {
  std::unique_lock<std::mutex> lock(mutex_);
  return !cancelled_cv_.wait_for(lock, duration, [this] { return cancelled_; });
}

CancellationScope::CancellationScope(const std::optional<CancellationToken>& token, grpc::ClientContext* context)
    : context_(context) {
  if (!token) return;
  CancellationState& state = CancellationAccess::State(*token);
  if (state.Attach(context)) {
    state_ = &state;
  } else {
    cancelled_before_start_ = true;
  }
}

CancellationScope::~CancellationScope() {
  if (state_ != nullptr) state_->Detach(context_);
}

}  // namespace internal
}  // namespace entitlements

// The shared state behind CancellationToken, and the scope that ties one call's ClientContext to it.
#pragma once

#include <grpcpp/client_context.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <vector>

#include "entitlements/cancellation.h"

namespace entitlements::internal {

class CancellationState {
 public:
  void Cancel();
  bool cancelled() const;

  // Registers a context to cancel; false (and nothing registered) when already cancelled.
  bool Attach(grpc::ClientContext* context);
  void Detach(grpc::ClientContext* context);

  // Waits `duration`, or less when cancelled meanwhile; true when the whole wait passed uncancelled.
  bool SleepFor(std::chrono::milliseconds duration);

 private:
  mutable std::mutex mutex_;
  std::condition_variable cancelled_cv_;
  bool cancelled_ = false;
  std::vector<grpc::ClientContext*> contexts_;
};

struct CancellationAccess {
  static CancellationState& State(const CancellationToken& token) { return *token.state_; }
};

// Attaches a call's context to the token of its CallOptions (if any) for the duration of the call.
class CancellationScope {
 public:
  CancellationScope(const std::optional<CancellationToken>& token, grpc::ClientContext* context);
  ~CancellationScope();
  CancellationScope(const CancellationScope&) = delete;
  CancellationScope& operator=(const CancellationScope&) = delete;

  // The token was cancelled before the call could start: do not start it.
  bool cancelled_before_start() const { return cancelled_before_start_; }

 private:
  CancellationState* state_ = nullptr;
  grpc::ClientContext* context_;
  bool cancelled_before_start_ = false;
};

}  // namespace entitlements::internal

// The waits between FollowOrder's reopenings, from the client's RetryPolicy.
#pragma once

#include <chrono>

#include "entitlements/options.h"

namespace entitlements::internal {

// initial_backoff, doubling (backoff_multiplier) up to max_backoff; each wait is drawn uniformly from the upper
// half of that bound, so clients that lost the same replica do not come back in step, and none comes back at
// once.
class Backoff {
 public:
  explicit Backoff(const RetryPolicy& policy);

  std::chrono::milliseconds Next();
  // After a stream that delivered something: the next failure is a new outage, not the same one.
  void Reset() { attempt_ = 0; }

  // The bound of the n-th wait (0-based), before jitter.
  std::chrono::milliseconds Bound(int attempt) const;

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  double multiplier_;
  int attempt_ = 0;
};

}  // namespace entitlements::internal

// Randomness for idempotency keys and backoff jitter.
#pragma once

#include <random>

namespace entitlements::internal {

// A per-thread generator seeded from std::random_device (the OS's entropy source), so threads never contend
// for it and two processes never share a sequence. Not for secrets: keys only need to be unique.
std::mt19937_64& ThreadRandom();

}  // namespace entitlements::internal

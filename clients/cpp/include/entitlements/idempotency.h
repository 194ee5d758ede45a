// Idempotency keys for Grant and Revoke.
#pragma once

#include <string>

namespace entitlements {

// A random UUID v4 ("3f1c0d9e-7b2a-4c1e-9a53-2d6f8e4b7c10"): what Grant and Revoke send when the request has no
// idempotency key. Thread-safe.
//
// A key made per call protects that call's own retries only: calling Grant again after an error makes a new key
// and may grant twice. For anything your side may retry (a purchase, a reward), derive the key from your own
// data ("order-123:gold_pack"), or make one here, store it with the work item, and reuse it.
std::string NewIdempotencyKey();

}  // namespace entitlements

// Small pieces the client is built from: randomness, idempotency keys, backoff, the order update filter and
// Result's abort path.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "backoff.h"
#include "entitlements/idempotency.h"
#include "entitlements/result.h"
#include "order_filter.h"
#include "random.h"

namespace entitlements {
namespace internal {

std::mt19937_64& ThreadRandom() {
  thread_local std::mt19937_64 generator = [] {
    std::random_device device;
    std::array<std::uint32_t, 8> seed{};
    for (auto& word : seed) word = device();
    std::seed_seq sequence(seed.begin(), seed.end());
    return std::mt19937_64(sequence);
  }();
  return generator;
}

void DieOnBadResultAccess(const Error* error) {
  if (error != nullptr) {
    std::fprintf(stderr, "entitlements::Result: value of a failed result accessed: %s\n", error->ToString().c_str());
  } else {
    std::fprintf(stderr, "entitlements::Result: error of a successful result accessed\n");
  }
  std::abort();
}

Backoff::Backoff(const RetryPolicy& policy)
    : initial_(std::max(policy.initial_backoff, std::chrono::milliseconds(1))),
      max_(std::max(policy.max_backoff, initial_)),
      multiplier_(policy.backoff_multiplier > 1.0 ? policy.backoff_multiplier : 1.0) {}

std::chrono::milliseconds Backoff::Bound(int attempt) const {
  double bound = static_cast<double>(initial_.count()) * std::pow(multiplier_, attempt);
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::min(bound, static_cast<double>(max_.count()))));
}

std::chrono::milliseconds Backoff::Next() {
  const std::int64_t bound = Bound(attempt_).count();
  ++attempt_;
  std::uniform_int_distribution<std::int64_t> half(bound - bound / 2, bound);
  return std::chrono::milliseconds(half(ThreadRandom()));
}

bool OrderUpdateFilter::Admit(const v1::OrderStatusUpdate& update) {
  const int status = static_cast<int>(update.status());
  const bool granted_now = status == status_ && update.entitlements_granted() && !granted_;
  if (!(update.timed_out() || status > status_ || granted_now)) return false;
  status_ = std::max(status_, status);
  granted_ = granted_ || update.entitlements_granted();
  return true;
}

}  // namespace internal

std::string NewIdempotencyKey() {
  std::uniform_int_distribution<unsigned> byte(0, 255);
  std::array<unsigned char, 16> bytes{};
  for (auto& b : bytes) b = static_cast<unsigned char>(byte(internal::ThreadRandom()));
  bytes[6] = static_cast<unsigned char>((bytes[6] & 0x0F) | 0x40);  // version 4
  bytes[8] = static_cast<unsigned char>((bytes[8] & 0x3F) | 0x80);  // RFC 4122 variant
  static constexpr char kHex[] = "0123456789abcdef";
  std::string key;
  key.reserve(36);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) key.push_back('-');
    key.push_back(kHex[bytes[i] >> 4]);
    key.push_back(kHex[bytes[i] & 0x0F]);
  }
  return key;
}

}  // namespace entitlements

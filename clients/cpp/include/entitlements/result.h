// entitlements::Result<T>: a response or an Error, returned by every call.
#pragma once

#include <cstdlib>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include "entitlements/error.h"

namespace entitlements {

namespace internal {
// Prints what went wrong and aborts: reading the value of a failed Result (or the error of a successful one) is
// a bug in the caller, and it must not go on with a value that does not exist (nor throw: callers may build
// without exceptions).
[[noreturn]] void DieOnBadResultAccess(const Error* error);
}  // namespace internal

// Either the value of a successful call or the Error of a failed one, like absl::StatusOr<T> or
// std::expected<T, Error> (C++23).
//
// Failures are values, not exceptions, because the calls that fail most (UNAVAILABLE while the store
// restarts, DEADLINE_EXCEEDED) are expected in normal operation, because Unreal and many game codebases build
// with exceptions off, and because [[nodiscard]] makes the compiler point at every call whose failure is ignored.
//
//   auto checked = client.CheckEntitlement(request);
//   if (!checked) { log(checked.error().ToString()); return; }
//   bool active = checked->active();
//
// value(), operator* and operator-> on a failed Result, and error() on a successful one, abort the process
// (exceptions are never thrown).
template <typename T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::decay_t<T>, Error>, "Result<Error> is ambiguous");

 public:
  using value_type = T;

  Result(const T& value) : state_(std::in_place_index<0>, value) {}             // NOLINT: implicit on purpose
  Result(T&& value) : state_(std::in_place_index<0>, std::move(value)) {}       // NOLINT
  Result(Error error) : state_(std::in_place_index<1>, std::move(error)) {}     // NOLINT

  bool ok() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  const T& value() const& { return *CheckedValue(); }
  T& value() & { return *const_cast<T*>(CheckedValue()); }
  T&& value() && { return std::move(*const_cast<T*>(CheckedValue())); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return CheckedValue(); }
  T* operator->() { return const_cast<T*>(CheckedValue()); }

  template <typename U>
  T value_or(U&& fallback) const& {
    return ok() ? std::get<0>(state_) : static_cast<T>(std::forward<U>(fallback));
  }

  const Error& error() const& {
    if (ok()) internal::DieOnBadResultAccess(nullptr);
    return std::get<1>(state_);
  }
  Error&& error() && {
    if (ok()) internal::DieOnBadResultAccess(nullptr);
    return std::get<1>(std::move(state_));
  }

 private:
  const T* CheckedValue() const {
    if (!ok()) internal::DieOnBadResultAccess(std::get_if<1>(&state_));
    return std::get_if<0>(&state_);
  }

  std::variant<T, Error> state_;
};

// The result of a call that returns nothing but may fail (GetOrderStatus delivers its updates to a callback).
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT: implicit on purpose

  bool ok() const noexcept { return !error_.has_value(); }
  explicit operator bool() const noexcept { return ok(); }

  const Error& error() const& {
    if (ok()) internal::DieOnBadResultAccess(nullptr);
    return *error_;
  }
  Error&& error() && {
    if (ok()) internal::DieOnBadResultAccess(nullptr);
    return std::move(*error_);
  }

 private:
  std::optional<Error> error_;
};

}  // namespace entitlements

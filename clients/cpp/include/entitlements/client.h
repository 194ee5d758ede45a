// entitlements::Client: the C++ client of the entitlement service (proto/entitlements/v1/entitlements.proto).
#pragma once

#include <grpcpp/channel.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "entitlements/cancellation.h"
#include "entitlements/error.h"
#include "entitlements/idempotency.h"
#include "entitlements/options.h"
#include "entitlements/result.h"
#include "entitlements/v1/entitlements.pb.h"

namespace entitlements {

// What FollowOrder did, once the order is done, canceled, expired or `max_wait` passed.
struct FollowOrderSummary {
  // The last update delivered (the final state); unset when the stream delivered none.
  std::optional<v1::OrderStatusUpdate> last;
  // Updates delivered to the callback.
  int delivered = 0;
  // How many times GetOrderStatus was opened: 1, plus one per reopening after the stream broke.
  int opens = 0;
};

// Called with each OrderStatusUpdate a stream delivers, on the thread that called GetOrderStatus or FollowOrder.
// Return true to go on, false to stop following: the call ends there, OK.
using OrderUpdateCallback = std::function<bool(const v1::OrderStatusUpdate&)>;

// A connection to the entitlement service and every RPC it serves.
//
//   entitlements::ClientOptions options;
//   options.target = "entitlements.internal:50051";
//   options.api_key = api_key;
//   auto client = entitlements::Client::Create(options);  // check client.ok(), then client->Grant(...)
//
// The channel connects lazily (Create does not fail for a target that is down: the first call does) and lives as
// long as the Client. Share one Client per process: it is thread-safe, and all calls multiplex on one HTTP/2
// connection. It is movable, not copyable; a moved-from Client answers every call with FAILED_PRECONDITION.
// Destroy it only after the calls running on other threads have returned (cancel streams first).
//
// Every call takes the request message by value: the client fills `project_id` (ClientOptions::project_id) when
// it is 0, and Grant and Revoke fill `idempotency_key` (a UUID v4) when it is empty. Every call returns a
// Result; see ClientOptions for deadlines and retries.
class Client {
 public:
  // Validates the options and builds the channel. INVALID_ARGUMENT naming the option when one is out of range
  // (empty target, a client certificate without its key, PEM fields without PEM, max_attempts outside 1..5, ...).
  static Result<Client> Create(ClientOptions options);

  Client(Client&& other) noexcept;
  Client& operator=(Client&& other) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  // Grants an item to a player (see the RPC's documentation for consumables, permanent and time-limited items).
  // Replaying an idempotency key with the same request returns the first response with `replayed` true;
  // the same key with another request is ALREADY_EXISTS.
  Result<v1::GrantResponse> Grant(v1::GrantRequest request, const CallOptions& options = {}) const;
  // Removes an item completely; `revoked` is false when the player did not hold it. Idempotent like Grant.
  Result<v1::RevokeResponse> Revoke(v1::RevokeRequest request, const CallOptions& options = {}) const;
  // Whether a player holds an item now.
  Result<v1::CheckEntitlementResponse> CheckEntitlement(v1::CheckEntitlementRequest request,
                                                        const CallOptions& options = {}) const;
  // Checks up to 1,000 (player, sku) pairs in one call: `results(i)` answers `checks(i)` as CheckEntitlement
  // would. One bad pair fails the whole call with INVALID_ARGUMENT naming it ("checks[1].sku: ..."); no pair, or
  // more than 1,000, names "checks". A read: retried on UNAVAILABLE like every call.
  Result<v1::CheckEntitlementsResponse> CheckEntitlements(v1::CheckEntitlementsRequest request,
                                                          const CallOptions& options = {}) const;
  // One page of a player's entitlements, in sku order. A page may be short, even empty, while
  // `next_page_token` is set: only an empty token ends the listing (ForEachEntitlement pages for you).
  Result<v1::ListEntitlementsResponse> ListEntitlements(v1::ListEntitlementsRequest request,
                                                        const CallOptions& options = {}) const;
  // Calls `on_entitlement` for every entitlement of every page, from `request.page_token` on, until the last
  // page or until it returns false. Returns how many it was given. Each page is one call with its own deadline;
  // an error on any page ends the listing with that error (the entitlements delivered before it stand).
  Result<std::int64_t> ForEachEntitlement(v1::ListEntitlementsRequest request,
                                          const std::function<bool(const v1::Entitlement&)>& on_entitlement,
                                          const CallOptions& options = {}) const;
  // A player's subscriptions, recurring first, then non-renewing; page with `offset`/`limit` and `has_more`.
  Result<v1::ListSubscriptionsResponse> ListSubscriptions(v1::ListSubscriptionsRequest request,
                                                          const CallOptions& options = {}) const;
  // One page of a player's audit ledger, newest first.
  Result<v1::ListLedgerResponse> ListLedger(v1::ListLedgerRequest request, const CallOptions& options = {}) const;

  // Opens GetOrderStatus once and calls `on_update` for each message, on the calling thread, until the service
  // ends the stream (OK after a terminal status or the `timed_out` message, or an error) or `on_update` returns
  // false (OK). The stream is not reopened when it breaks (UNAVAILABLE): FollowOrder does that. No deadline
  // unless CallOptions::timeout; CallOptions::cancellation cancels it from another thread.
  Result<void> GetOrderStatus(v1::GetOrderStatusRequest request, const OrderUpdateCallback& on_update,
                              const CallOptions& options = {}) const;

  // Follows an order to its end, across broken streams: opens GetOrderStatus, and when it fails with
  // UNAVAILABLE (the replica shut down, the connection dropped), or with CANCELLED that did not come from
  // CallOptions::cancellation (a replica that is stopping cancels a stream opened just then), opens it again after
  // a backoff (the RetryPolicy's initial_backoff doubling up to max_backoff, with jitter) with `max_wait` reduced
  // by the time already spent. `on_update` sees each status once: an update is delivered only when its status is
  // after the last one delivered, or the same status with `entitlements_granted` newly true, or the final
  // `timed_out` message (a reopened stream starts with the stored state, usually a repeat, which is skipped).
  //
  // Ends OK when a stream ends OK (terminal status or `timed_out`), or when `on_update` returns false (e.g. once
  // `entitlements_granted` is true, which is what a game server waits for). Ends with the error of the stream
  // for any other error; with the last UNAVAILABLE (or CANCELLED) when `max_wait` (the request's, or 10 minutes,
  // the service's default, when it has none) passes while reopening; with DEADLINE_EXCEEDED or CANCELLED when
  // CallOptions::timeout (a deadline across all the reopenings) or CallOptions::cancellation ends it.
  Result<FollowOrderSummary> FollowOrder(v1::GetOrderStatusRequest request, const OrderUpdateCallback& on_update,
                                         const CallOptions& options = {}) const;

  const ClientOptions& options() const;
  // The channel, e.g. to watch its connectivity state or share it with other stubs (health checks).
  std::shared_ptr<grpc::Channel> channel() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace entitlements

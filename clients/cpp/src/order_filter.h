// Which GetOrderStatus updates FollowOrder delivers: each status once, across reopened streams.
#pragma once

#include "entitlements/v1/entitlements.pb.h"

namespace entitlements::internal {

class OrderUpdateFilter {
 public:
  // True when `update` is news: its status is after the last one delivered (statuses only move forward, so
  // the enum numbers order them: NEW 1 < PAID 2 < DONE 3 < CANCELED 4, EXPIRED 5), or the same status with
  // `entitlements_granted` newly true, or the final `timed_out` message. Records it when true.
  bool Admit(const v1::OrderStatusUpdate& update);

 private:
  int status_ = 0;  // ORDER_STATUS_UNSPECIFIED: nothing delivered yet
  bool granted_ = false;
};

}  // namespace entitlements::internal

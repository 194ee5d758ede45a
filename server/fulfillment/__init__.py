"""Fulfillment: what each provider-neutral webhook event does to a player, applied once.

- `order_paid`: grants every line except `bundle` lines (a bundle's contents arrive as lines of their own), with
  the kind and period the project's catalog gives the sku (`server.catalog`); the order hash remembers what each
  line changed. A sku the catalog does not know, even after a refresh, fails the event (`SkuNotInCatalog`: retried,
  then dead-lettered), unless the project has no catalog (then it is a plain item) or the line is a virtual
  currency (a consumable by nature).
- `order_canceled`: undoes exactly what that order granted; a cancel that comes first makes the late
  `order_paid` grant nothing.
- Subscription events: create or update the player's recurring subscription (shown by ListSubscriptions), in the
  order the provider's dates place them (`server.store.subscriptions`): a late older event changes nothing.
- `payment`, `refund`, `partial_refund`: one entry on the player's ledger; no grants.

Test payments (`event.sandbox`: a sandbox order, a dry-run transaction) follow the project's sandbox policy
(`core.projects`): "ignore", the default, records a sandbox `order_paid` as paid with nothing granted (the order
hash says `withheld` = "sandbox", the ledger lists its lines), so its `order_canceled` has nothing to undo;
"grant" treats it as a live order. A live order never depends on the policy. Either way test payments are
counted by type and policy (`entitlements_sandbox_events_total`).
- Anything else: ignored (acknowledged and counted by the consumer).

Every event is applied in its project's namespace (`event.project_id`, which the gateway set from what verified
the notification's signature). Each write carries the event id as its idempotency key, so a redelivered event
changes nothing. Applied order events publish the order's state (`server.status_channel`) on the project's
channel, replays included, so a publication lost to a crash before the acknowledgement is made good on
redelivery.

A batch of events (`Fulfillment.apply_many`) is written in one round trip per Redis node, with one durability wait
per node, one player's events in their order; the order index and the publications follow in one round trip per
project (`server.order_effects`).

Modules: `events` (type labels, origins, `Applied`, what an event's payload says to the store) and `applier`
(`Fulfillment`).
"""

from server.fulfillment.applier import Fulfillment
from server.fulfillment.events import (
    ORIGIN_NAMES,
    PROVIDER,
    RECONCILER,
    Applied,
    label_of_entry,
    subscription_change,
    type_label,
)

__all__ = [
    "ORIGIN_NAMES",
    "PROVIDER",
    "RECONCILER",
    "Applied",
    "Fulfillment",
    "label_of_entry",
    "subscription_change",
    "type_label",
]

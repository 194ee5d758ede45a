"""A player's recurring subscriptions: the stored record, the change one provider event makes to it, and the rule
that keeps the record from going backwards.

Each recurring subscription is one field of the player's subscriptions hash (`UserKeys.subscriptions`), keyed by
its id and holding JSON that only `server/lua/subscription.lua` writes: it merges the keys an event carries
(`SubscriptionChange.fields`) into the stored ones, once per event id. ListSubscriptions reads the records back
(`RecurringSubscription`).

**Order.** Events arrive out of order: a retry after a 503, a dead-letter replay, two consumers. They carry no
time of their own (Xsolla's subscription webhooks have `date_create`, `date_next_charge`, which a renewal moves
on and a non-renewal keeps, and a cancel's `date_end`), so the script places each one by its dates against the
state in force, and applies it only when it comes later. The record keeps, besides the dates, `period_start_ms`
(when the period in force began: the create's `date_create`, or the charge of the renewal that set the next
charge date, which is the next charge date it replaced) and `period_estimate_ms` (the last renewal's step, or a
create's first period when it has no trial):

- create: applies only to a subscription with no record; later it is older than anything recorded (it only fills
  in details the record never had, such as `date_create`).
- update, non-renewal, by `date_next_charge` N against the stored one S:
  N < S: older. N = S: the same period; applies over `active` (a plan change; a non-renewal), and a non-renewal
  over `non_renewing`; otherwise (an update over `non_renewing`, anything over `canceled`) it is older, because a
  late delivery cannot be told from a later change: the next renewal, which moves the date, decides. N > S: a
  renewal to N, charged
  at S. It applies over `active` and `non_renewing`; over `canceled` only when that charge comes after the cancel:
  S after its `date_end` E (and S already passed: a date still to come was moved, not charged), or, when S is not
  after E, N minus the period estimate more than four days after E (calendar months differ by up to three). A
  renewal that cannot be shown to come after the cancel is older: a canceled subscription is never re-activated
  by a guess.
- cancel, by `date_end` E (the Redis clock when it has none): older when E is before `period_start_ms` (a renewal
  charged after it was applied first); over another cancel, only a later E applies.
- An update or non-renewal without `date_next_charge` applies only to a subscription with no record.

An event found older changes nothing and is on the ledger with `applied` = 0 and `why`; the consumer counts it
as `stale`. The known limit: a subscription re-activated without a new charge (same next charge date) reads
canceled until its next renewal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecurringSubscription:
    """A player's recurring subscription as recorded from the payment provider's webhooks.

    Kept as JSON in the player's subscriptions hash (`UserKeys.subscriptions`, one field per subscription id) and
    written only by `server/lua/subscription.lua`, which merges each event's `SubscriptionChange` into it and sets
    `status`, `updated_at_ms` and `event_id` (and `date_end_ms`, when a cancel carries none). A key no event
    carried is absent from the JSON and reads here as 0, "", False, () or, for times, None. Times are milliseconds
    since the Unix epoch.

    Attributes:
        id: the provider's subscription id.
        status: "active", "non_renewing" or "canceled".
        plan_id: the plan id when the provider sent a number, else 0; `plan_external_id` is the id as sent.
        product_id: the product id when the provider sent a number, else 0; `product_external_id` as sent.
        plan_name: not carried by the webhooks (nor are `plan_description`, `product_name`,
            `product_description`, `date_last_charge_ms` and the period): read when a record holds it.
        period_value: the billing period, `period_value` times `period_unit` ("day", "month", ...).
        charge_amount: the charge of a period (a decimal string) in `charge_currency`; both or neither.
        tags: the provider's tags; `is_gift`, `trial_value` units of `trial_unit` as the provider sent them.
        period_start_ms: when the period in force began (create's date, or its renewal's charge); see the module.
        period_estimate_ms: the billing period as the events showed it (the last renewal's step), if known.
        updated_at_ms: when the last event that changed the record was applied (Redis server clock).
        event_id: that event's id.
    """

    id: str
    status: str = ""
    plan_id: int = 0
    plan_external_id: str = ""
    plan_name: str = ""
    plan_description: str = ""
    product_id: int = 0
    product_external_id: str = ""
    product_name: str = ""
    product_description: str = ""
    date_create_ms: int | None = None
    date_next_charge_ms: int | None = None
    date_last_charge_ms: int | None = None
    date_end_ms: int | None = None
    charge_amount: str = ""
    charge_currency: str = ""
    period_value: int = 0
    period_unit: str = ""
    tags: tuple[str, ...] = ()
    is_gift: bool = False
    trial_value: int = 0
    trial_unit: str = ""
    period_start_ms: int | None = None
    period_estimate_ms: int | None = None
    updated_at_ms: int | None = None
    event_id: str = ""

    @property
    def active(self) -> bool:
        """True for the statuses in force, "active" and "non_renewing" (what ListSubscriptions lists by default)."""
        return self.status in ("active", "non_renewing")

    @classmethod
    def from_json(cls, raw: bytes | str) -> RecurringSubscription:
        """Reads a record as stored in the subscriptions hash.

        Raises:
            ValueError: not JSON, or not an object.
            TypeError: a number field holds something else (ValueError for a string that is not a number).
        """
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"a recurring subscription record is a JSON object, not {type(data).__name__}")
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RecurringSubscription:
        """Reads a decoded record; absent keys, and null or empty values, read as the defaults.

        Raises:
            TypeError: a number field holds something else (ValueError for a string that is not a number).
        """
        tags = data.get("tags")
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status") or ""),
            plan_id=int(data.get("plan_id") or 0),
            plan_external_id=str(data.get("plan_external_id") or ""),
            plan_name=str(data.get("plan_name") or ""),
            plan_description=str(data.get("plan_description") or ""),
            product_id=int(data.get("product_id") or 0),
            product_external_id=str(data.get("product_external_id") or ""),
            product_name=str(data.get("product_name") or ""),
            product_description=str(data.get("product_description") or ""),
            date_create_ms=_optional_int(data.get("date_create_ms")),
            date_next_charge_ms=_optional_int(data.get("date_next_charge_ms")),
            date_last_charge_ms=_optional_int(data.get("date_last_charge_ms")),
            date_end_ms=_optional_int(data.get("date_end_ms")),
            charge_amount=str(data.get("charge_amount", "")),
            charge_currency=str(data.get("charge_currency") or ""),
            period_value=int(data.get("period_value") or 0),
            period_unit=str(data.get("period_unit") or ""),
            # Lua's cjson writes an empty array as {}: only a list holds tags.
            tags=tuple(str(tag) for tag in tags) if isinstance(tags, list) else (),
            is_gift=bool(data.get("is_gift")),
            trial_value=int(data.get("trial_value") or 0),
            trial_unit=str(data.get("trial_unit") or ""),
            period_start_ms=_optional_int(data.get("period_start_ms")),
            period_estimate_ms=_optional_int(data.get("period_estimate_ms")),
            updated_at_ms=_optional_int(data.get("updated_at_ms")),
            event_id=str(data.get("event_id") or ""),
        )


@dataclass(frozen=True)
class SubscriptionChange:
    """What one provider event says about a recurring subscription, to be merged into its `RecurringSubscription`.

    Only what the event carries is sent: a field left at its default ("", None, False, ()) keeps the stored value.

    Attributes:
        id: the provider's subscription id.
        plan_external_id: the plan id as sent; `plan_id` too when it is a number (else None). Same for products.
        charge_amount: the charge of a period (a decimal string); sent only with its `charge_currency`.
        trial_value: the trial's length in `trial_unit`s; 0 for no trial (then `trial_unit` is not sent).
    """

    id: str
    plan_external_id: str = ""
    plan_id: int | None = None
    product_external_id: str = ""
    product_id: int | None = None
    date_create_ms: int | None = None
    date_next_charge_ms: int | None = None
    date_end_ms: int | None = None
    charge_amount: str = ""
    charge_currency: str = ""
    tags: tuple[str, ...] = ()
    is_gift: bool = False
    trial_value: int = 0
    trial_unit: str = ""

    def fields(self) -> dict[str, Any]:
        """The record keys this change carries, as `server/lua/subscription.lua` merges them (absent = unknown).

        The keys keep one order (the order of the attributes), so one event always makes the same JSON.
        """
        fields: dict[str, Any] = {"id": self.id}
        if self.plan_external_id:
            fields["plan_external_id"] = self.plan_external_id
        if self.plan_id is not None:
            fields["plan_id"] = self.plan_id
        if self.product_external_id:
            fields["product_external_id"] = self.product_external_id
        if self.product_id is not None:
            fields["product_id"] = self.product_id
        if self.date_create_ms is not None:
            fields["date_create_ms"] = self.date_create_ms
        if self.date_next_charge_ms is not None:
            fields["date_next_charge_ms"] = self.date_next_charge_ms
        if self.date_end_ms is not None:
            fields["date_end_ms"] = self.date_end_ms
        if self.charge_currency:
            fields["charge_amount"] = self.charge_amount
            fields["charge_currency"] = self.charge_currency
        if self.tags:
            fields["tags"] = list(self.tags)
        if self.is_gift:
            fields["is_gift"] = True
        if self.trial_value:
            fields["trial_value"] = self.trial_value
            fields["trial_unit"] = self.trial_unit
        return fields


@dataclass(frozen=True)
class SubscriptionOutcome:
    """What recording a subscription event did.

    Attributes:
        result: "applied", "stale" (older than the stored state: nothing changed but details the record lacked)
            or "replayed".
        record: the stored record (None only for a replay of an event whose record was since removed).
        why: for "stale", why the event was found older (also on the ledger).
    """

    result: str
    record: RecurringSubscription | None
    why: str = ""

    @classmethod
    def from_reply(cls, reply: bytes | str) -> SubscriptionOutcome:
        """Reads `server/lua/subscription.lua`'s reply: JSON {r, record, why}."""
        data = json.loads(reply)
        record = data.get("record")
        return cls(
            str(data["r"]),
            RecurringSubscription.from_mapping(record) if isinstance(record, dict) else None,
            str(data.get("why") or ""),
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)

"""A player's recurring subscriptions: the stored record, and the change one provider event makes to it.

Each recurring subscription is one field of the player's subscriptions hash (`UserKeys.subscriptions`), keyed by
its id and holding JSON that only `server/lua/subscription.lua` writes: it merges the keys an event carries
(`SubscriptionChange.fields`) into the stored ones, once per event id, ignoring events older than the stored
state. ListSubscriptions reads the records back (`RecurringSubscription`).
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
    """What recording a subscription event did: "applied", "stale" (older than the stored state, ignored) or
    "replayed"; and the stored record (None only for a replay of an event whose record was since removed)."""

    result: str
    record: RecurringSubscription | None

    @classmethod
    def from_reply(cls, reply: bytes | str) -> SubscriptionOutcome:
        """Reads `server/lua/subscription.lua`'s reply: JSON {r, record}."""
        data = json.loads(reply)
        record = data.get("record")
        return cls(str(data["r"]), RecurringSubscription.from_mapping(record) if isinstance(record, dict) else None)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)

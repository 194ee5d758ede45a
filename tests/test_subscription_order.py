"""Subscription state never goes backwards: subscription events put on the real event streams, applied by the
real consumer on a real Valkey in any order, read back through ListSubscriptions and the ledger.

Dates are relative to now: whether a charge date has passed is part of the rule (server/store/subscriptions.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from core.keys import EventKeys
from entitlements import AsyncEntitlementsClient
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import events_pb2 as ev
from server.app import Service
from server.store import LedgerEntry
from tests.helpers.events import (
    PARTITIONS,
    consumer_settings,
    drained,
    event_log,
    store_of,
    subscription_event,
    xadd,
)
from tests.helpers.services import PROJECT, ServiceFactory
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually

PLAYER = "player-1"
SUB = "10"
CREATED, UPDATED = ev.EVENT_TYPE_SUBSCRIPTION_CREATED, ev.EVENT_TYPE_SUBSCRIPTION_UPDATED
NON_RENEWING, CANCELED = ev.EVENT_TYPE_SUBSCRIPTION_NON_RENEWING, ev.EVENT_TYPE_SUBSCRIPTION_CANCELED
NOW = datetime.now(UTC).replace(microsecond=0)


def days(n: int) -> datetime:
    """Now plus `n` days (minus when negative)."""
    return NOW + timedelta(days=n)


@pytest.fixture
async def service(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> Service:
    """The service on the test's Valkey, consuming the event streams (conftest's `client` calls it)."""
    return await service_factory(redis_url=redis_server.url, **consumer_settings())


def event(
    kind: ev.EventType.ValueType,
    *,
    next_charge: datetime | None = None,
    date_end: datetime | None = None,
    created: datetime | None = None,
) -> ev.WebhookEvent:
    """A subscription event of SUB for PLAYER shaped as Xsolla's: date_create (`created`, 40 days ago by default)
    on all but updates."""
    date_create = None if kind == UPDATED else created or days(-40)
    return subscription_event(kind, PLAYER, SUB, next_charge=next_charge, date_end=date_end, date_create=date_create)


class Subscription:
    """Applies events through the consumer and reads the subscription back."""

    def __init__(self, service: Service, client: AsyncEntitlementsClient, redis: aioredis.Redis) -> None:
        self.service, self.client, self.redis = service, client, redis

    async def apply(self, *events: ev.WebhookEvent) -> pb.Subscription:
        for each in events:
            await event_log(self.redis).append(each, b"{}")
            await drained(self.redis)
        # The consumer counts a delivery just after its XACK, which `drained` may see first.
        await eventually(self.counted_all, what="the consumer to count every delivery")
        (subscription,) = (await self.client.list_subscriptions(PLAYER, include_inactive=True)).subscriptions
        return subscription

    async def counted_all(self) -> bool:
        """Whether the consumer counted as many deliveries as the streams hold entries (each is delivered once)."""
        entries = sum([int(await self.redis.xlen(EventKeys(PROJECT, n).stream)) for n in range(PARTITIONS)])
        counted = sum(
            sample.value
            for metric in self.service.registry.collect()
            for sample in metric.samples
            if sample.name == "entitlements_events_total"
        )
        return counted == entries

    async def last_entry(self) -> LedgerEntry:
        return (await store_of(self.service).ledger(PROJECT, PLAYER, count=1))[0]

    def events(self, kind: str, result: str) -> float:
        return (
            self.service.registry.get_sample_value("entitlements_events_total", {"type": kind, "result": result}) or 0.0
        )


@pytest.fixture
def subscription(service: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis) -> Subscription:
    return Subscription(service, client, redis_client)


async def test_the_usual_order_create_renew_non_renew_cancel(
    subscription: Subscription, redis_client: aioredis.Redis
) -> None:
    """Created, renewed, set non-renewing, canceled, each in its order, is applied; a redelivery replays."""
    create = event(CREATED, next_charge=days(-10))
    assert (await subscription.apply(create)).status == "active"
    renewed = await subscription.apply(event(UPDATED, next_charge=days(20)))
    assert (renewed.status, renewed.date_next_charge.ToDatetime(UTC)) == ("active", days(20))
    assert (await subscription.apply(event(NON_RENEWING, next_charge=days(20)))).status == "non_renewing"
    canceled = await subscription.apply(event(CANCELED, date_end=days(0)))
    assert canceled.status == "canceled"
    assert (await subscription.last_entry()).fields["applied"] == "1"
    await xadd(redis_client, create)  # the create delivered again, after everything else
    assert (await subscription.apply()).status == "canceled"
    assert subscription.events("subscription_created", "replayed") == 1
    assert subscription.events("subscription_updated", "stale") == 0


async def test_an_older_renewal_after_the_cancel_leaves_it_canceled(subscription: Subscription) -> None:
    """Renewed 10 days ago, canceled 5 days ago; the renewal's webhook (a retry) arrives after the cancel: it and a
    late non-renewal of that period are ignored and recorded as such."""
    await subscription.apply(event(CREATED, next_charge=days(-10)))  # a 30-day period, renewed 10 days ago
    assert (await subscription.apply(event(CANCELED, date_end=days(-5)))).status == "canceled"
    late = await subscription.apply(event(UPDATED, next_charge=days(20)))
    assert (late.status, late.date_next_charge.ToDatetime(UTC)) == ("canceled", days(-10))
    entry = await subscription.last_entry()
    assert (entry.fields["applied"], entry.fields["before"]) == ("0", entry.fields["after"])
    assert "not clearly after the cancel" in entry.fields["why"]
    assert (await subscription.apply(event(NON_RENEWING, next_charge=days(20)))).status == "canceled"
    assert (await subscription.apply(event(UPDATED, next_charge=days(-10)))).status == "canceled"  # same period
    assert subscription.events("subscription_updated", "stale") == 2
    assert subscription.events("subscription_non_renewing", "stale") == 1


async def test_an_older_cancel_after_a_renewal_leaves_it_active(subscription: Subscription) -> None:
    """Canceled 15 days ago, then renewed 10 days ago; the cancel arrives after the renewal: it is ignored. A cancel
    dated after the renewal then applies."""
    await subscription.apply(event(CREATED, next_charge=days(-10)), event(UPDATED, next_charge=days(20)))
    stays = await subscription.apply(event(CANCELED, date_end=days(-15)))
    assert (stays.status, stays.date_next_charge.ToDatetime(UTC)) == ("active", days(20))
    entry = await subscription.last_entry()
    assert entry.fields["applied"] == "0"
    assert f"before the period in force began ({days(-10):%Y-%m-%dT%H:%M:%SZ})" in entry.fields["why"]
    assert subscription.events("subscription_canceled", "stale") == 1
    assert (await subscription.apply(event(CANCELED, date_end=days(-1)))).status == "canceled"


async def test_a_late_create_changes_no_state(subscription: Subscription) -> None:
    """A create delivered after a renewal leaves status and dates alone, and only fills in its date_create."""
    renewed = await subscription.apply(event(UPDATED, next_charge=days(20)))
    assert not renewed.HasField("date_create")
    after = await subscription.apply(event(CREATED, next_charge=days(-10), created=days(-40)))
    assert (after.status, after.date_next_charge.ToDatetime(UTC)) == ("active", days(20))
    assert after.date_create.ToDatetime(UTC) == days(-40)
    assert (await subscription.last_entry()).fields["applied"] == "0"


async def test_a_renewal_charged_well_after_the_cancel_takes_it_up_again(subscription: Subscription) -> None:
    """Canceled at the end of its period 50 days ago, charged again 20 days ago: active again, date_end cleared."""
    await subscription.apply(event(CREATED, next_charge=days(-50), created=days(-80)))
    assert (await subscription.apply(event(CANCELED, date_end=days(-50)))).status == "canceled"
    again = await subscription.apply(event(UPDATED, next_charge=days(10)))
    assert (again.status, again.date_next_charge.ToDatetime(UTC)) == ("active", days(10))
    entry = await subscription.last_entry()
    assert entry.fields["applied"] == "1"
    assert "date_end_ms" not in json.loads(entry.fields["after"])


async def test_a_charge_still_to_come_does_not_revive_a_canceled_subscription(subscription: Subscription) -> None:
    """Canceled mid-period: an update whose previous next charge is still to come charged nothing (it postponed the
    date, before the cancel) and is ignored."""
    await subscription.apply(event(CREATED, next_charge=days(20), created=days(-10)))
    assert (await subscription.apply(event(CANCELED, date_end=days(-5)))).status == "canceled"
    postponed = await subscription.apply(event(UPDATED, next_charge=days(50)))
    assert (postponed.status, postponed.date_next_charge.ToDatetime(UTC)) == ("canceled", days(20))
    assert "still to come" in (await subscription.last_entry()).fields["why"]


async def test_a_renewal_charged_after_a_mid_period_cancel_revives_it(subscription: Subscription) -> None:
    """Canceled 15 days ago mid-period, charged again on its next charge date 5 days ago: active again."""
    await subscription.apply(event(CREATED, next_charge=days(-5), created=days(-35)))
    assert (await subscription.apply(event(CANCELED, date_end=days(-15)))).status == "canceled"
    assert (await subscription.apply(event(UPDATED, next_charge=days(25)))).status == "active"

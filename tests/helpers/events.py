"""Webhook events for the consumer tests: WebhookEvents built as the gateway builds them, put on the event streams
(through the gateway's EventLog, or with a bare XADD that skips its dedup), and the consumer group's state read
back (waiting until it has applied everything, its dead letters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from core.eventlog import EventLog, partition_for
from core.keys import CONSUMER_GROUP, PROJECTS_KEY, EventKeys
from core.projects import CATALOG_FILE, Project, Projects
from entitlements.v1 import events_pb2 as ev
from server.app import Service
from server.catalog import Catalog, CatalogItem
from server.config import ConsumerSettings
from server.consumer import Consumer
from server.store import CONSUMABLE, PERMANENT, TIME_LIMITED, EntitlementStore
from tests.helpers.services import PROJECT
from tests.helpers.waiting import eventually

PARTITIONS = 2
DAY_MS = 86_400_000
CATALOG = Catalog.from_mapping(
    {
        "items": {
            "gold": {"kind": "consumable"},
            "castle": {"kind": "permanent"},
            "sword": {"kind": "permanent"},
            "vip_pass": {"kind": "time_limited", "period": "30d"},
            # The item of the real order_paid captured in tests/fixtures/xsolla.
            "artifact_centaurs_axe": {"kind": "consumable"},
        }
    }
)
assert CATALOG.lookup("vip_pass") == CatalogItem(TIME_LIMITED, 30 * DAY_MS)
assert CATALOG.lookup("gold") == CatalogItem(CONSUMABLE)
assert CATALOG.lookup("castle") == CatalogItem(PERMANENT)

# Short timings: a stuck entry is claimed after 0.2 s; reads block 50 ms.
FAST = ConsumerSettings(block_ms=50, claim_idle_s=0.2, max_deliveries=3)


#: The tests' project (the default one) with the test catalog as its local catalog file (a sku it does not know is
#: not granted).
CATALOG_PROJECTS = Projects.single(PROJECT, Project(0, catalog_source=CATALOG_FILE))


def consumer_settings(projects: Projects = CATALOG_PROJECTS, **overrides: Any) -> dict[str, Any]:
    """Service overrides for a consuming service with the test catalog and fast consumer timings.

    Args:
        projects: the projects served (by default the tests' project, with the test catalog as its catalog file).
        overrides: ConsumerSettings fields.
    """
    consumer = replace(FAST, **overrides)
    return {
        "event_partitions": PARTITIONS,
        "projects": projects,
        "local_catalogs": {0: CATALOG},
        "consumer": consumer,
    }


Line = tuple[str, int] | tuple[str, int, str]


def order_event(
    status: str,
    order_id: str,
    user_id: str,
    lines: Sequence[Line] = (),
    *,
    event_id: str | None = None,
    project_id: int = PROJECT,
) -> ev.WebhookEvent:
    """An order_paid ("paid") or order_canceled ("canceled") event of a project (the tests' by default); lines are
    (sku, quantity[, type])."""
    event_type = ev.EVENT_TYPE_ORDER_PAID if status == "paid" else ev.EVENT_TYPE_ORDER_CANCELED
    event = ev.WebhookEvent(
        event_id=event_id or f"xsolla:{project_id}:order:{order_id}:{status}",
        type=event_type,
        provider="xsolla",
        project_id=project_id,
        user_id=user_id,
        notification_type=f"order_{status}",
        order=ev.OrderEvent(order_id=order_id, status=status, currency="USD", amount="9.99", invoice_id="77"),
    )
    for line in lines:
        sku, quantity = line[0], line[1]
        item_type = str(line[2]) if len(line) > 2 else "virtual_good"
        event.order.lines.add(sku=sku, quantity=quantity, type=item_type, amount="1.00")
    event.received_at.GetCurrentTime()
    return event


def subscription_event(
    event_type: ev.EventType.ValueType,
    user_id: str,
    subscription_id: str,
    *,
    next_charge: datetime | None = None,
    date_end: datetime | None = None,
    plan_id: str = "b5dac9c8",
    event_id: str | None = None,
    date_create: datetime | None = datetime(2026, 1, 1, tzinfo=UTC),
    project_id: int = PROJECT,
) -> ev.WebhookEvent:
    """A subscription event as the gateway builds it from Xsolla's subscription webhooks."""
    sub = ev.SubscriptionEvent(subscription_id=subscription_id, plan_id=plan_id, product_id="42")
    if date_create is not None:
        sub.date_create.FromDatetime(date_create)
    if next_charge is not None:
        sub.date_next_charge.FromDatetime(next_charge)
    if date_end is not None:
        sub.date_end.FromDatetime(date_end)
    name = ev.EventType.Name(event_type).removeprefix("EVENT_TYPE_").lower()
    dates = f"{next_charge.isoformat() if next_charge else ''}/{date_end.isoformat() if date_end else ''}"
    return ev.WebhookEvent(
        event_id=event_id or f"xsolla:{project_id}:sub:{subscription_id}:{name}:{dates}",
        type=event_type,
        provider="xsolla",
        project_id=project_id,
        user_id=user_id,
        notification_type=name,
        subscription=sub,
    )


def transaction_event(
    event_type: ev.EventType.ValueType,
    user_id: str,
    transaction_id: str,
    amount: str = "1.99",
    *,
    project_id: int = PROJECT,
) -> ev.WebhookEvent:
    """A payment, refund or partial_refund event."""
    name = ev.EventType.Name(event_type).removeprefix("EVENT_TYPE_").lower()
    return ev.WebhookEvent(
        event_id=f"xsolla:{project_id}:txn:{transaction_id}:{name}",
        type=event_type,
        provider="xsolla",
        project_id=project_id,
        user_id=user_id,
        notification_type=name,
        transaction=ev.TransactionEvent(
            transaction_id=transaction_id,
            amount=amount,
            currency="USD",
            refund_code=1 if name != "payment" else 0,
            refund_reason="Cancellation by the user request" if name != "payment" else "",
        ),
    )


def store_of(service: Service) -> EntitlementStore:
    """The started service's store."""
    assert service.store is not None
    return service.store


def consumer_of(service: Service) -> Consumer:
    """The started service's consumer."""
    assert service.consumer is not None
    return service.consumer


def event_log(redis: aioredis.Redis) -> EventLog:
    """The gateway's event log on the test Redis, with the tests' partition count. A test's own appends set the
    scene: they get 10 s, not the gateway's 2 s, so that a loaded machine does not fail the test before it starts."""
    return EventLog(redis, partitions=PARTITIONS, timeout_s=10.0)


async def xadd(redis: aioredis.Redis, event: ev.WebhookEvent, *, raw: bytes = b"{}") -> str:
    """Appends an entry the way the gateway does but without its dedup check: a redelivery of the same event."""
    keys = EventKeys(event.project_id, partition_for(event.user_id, PARTITIONS))
    await redis.sadd(PROJECTS_KEY, event.project_id)
    fields: dict[FieldT, EncodableT] = {
        "event": event.SerializeToString(),
        "raw": raw,
        "type": ev.EventType.Name(event.type),
    }
    entry_id = await redis.xadd(keys.stream, fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def xadd_raw(
    redis: aioredis.Redis, user_id: str, fields: dict[FieldT, EncodableT], *, project_id: int = PROJECT
) -> str:
    """Appends an arbitrary entry to the partition of `user_id` in a project (for malformed entries)."""
    keys = EventKeys(project_id, partition_for(user_id, PARTITIONS))
    entry_id = await redis.xadd(keys.stream, fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def group_state(redis: aioredis.Redis, projects: Sequence[int] = (PROJECT,)) -> tuple[int, int]:
    """(pending, undelivered) summed over the consumer groups of the projects' partitions; streams not created yet
    count as 0."""
    pending = undelivered = 0
    for project_id, partition in [(p, n) for p in projects for n in range(PARTITIONS)]:
        stream = EventKeys(project_id, partition).stream
        if not await redis.exists(stream):
            continue
        groups = [g for g in await redis.xinfo_groups(stream) if g["name"] == CONSUMER_GROUP.encode()]
        if not groups:
            undelivered += int(await redis.xlen(stream))
            continue
        pending += int(groups[0]["pending"])
        undelivered += int(groups[0]["lag"] or 0)
    return pending, undelivered


async def drained(redis: aioredis.Redis, timeout_s: float = 10.0, projects: Sequence[int] = (PROJECT,)) -> None:
    """Waits until every entry of every partition of the projects was delivered and acknowledged."""

    async def done() -> bool:
        return await group_state(redis, projects) == (0, 0)

    await eventually(done, timeout_s=timeout_s, what="the consumer group to apply and acknowledge every entry")


async def dead_letters(redis: aioredis.Redis, project_id: int = PROJECT) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every dead letter of every partition of a project."""
    found: list[tuple[bytes, dict[bytes, bytes]]] = []
    for partition in range(PARTITIONS):
        rows: Any = await redis.xrange(EventKeys(project_id, partition).dead_letters)
        found.extend(rows)
    return found

"""The Python client's entitlement cache against the real service, on the single server and the cluster: a grant
and a revoke reach it, a time-limited item expires in it on time, and a service restart is resumed from the cursor
with no change missed or applied twice."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta

import pytest

from entitlements import (
    AsyncEntitlementsClient,
    CacheState,
    FollowPolicy,
    NotCachedError,
    StaleError,
)
from tests.helpers.services import WRITER_KEY, ClientFactory, ServiceFactory
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually

FAST = FollowPolicy(initial_backoff_s=0.05, max_backoff_s=0.2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_grants_and_revokes_reach_the_cache(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, client_factory: ClientFactory
) -> None:
    """A grant made after the snapshot is seen by the cache, then its revoke; the snapshot holds what came before."""
    service = await service_factory(**redis_server.settings)
    client = await client_factory(service)
    await client.grant("alice", "sword", idempotency_key="before")
    async with client.entitlement_cache(["alice", "bob"], policy=FAST) as cache:
        assert cache.check("alice", "sword").active
        assert not cache.check("bob", "sword").active
        with pytest.raises(NotCachedError):
            cache.check("carol", "sword")
        await client.grant("bob", "gold", quantity=5, idempotency_key="g1")
        await eventually(lambda: cache.check("bob", "gold").active, what="the grant in the cache")
        assert cache.check("bob", "gold").entitlement.quantity == 5  # type: ignore[union-attr]
        await client.revoke("alice", "sword", idempotency_key="r1")
        await eventually(lambda: not cache.check("alice", "sword").active, what="the revoke in the cache")
        assert cache.check("alice", "sword").entitlement is None
        assert (cache.counters.changes_applied, cache.counters.gaps, cache.counters.duplicates) == (2, 0, 0)


async def test_a_time_limited_item_expires_in_the_cache_on_time(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, client_factory: ClientFactory
) -> None:
    """A time-limited grant is active in the cache until its expires_at, then not, with no change from the service."""
    service = await service_factory(**redis_server.settings)
    client = await client_factory(service)
    async with client.entitlement_cache(["alice"], policy=FAST) as cache:
        granted = await client.grant("alice", "pass", duration=timedelta(seconds=3), idempotency_key="p1")
        await eventually(lambda: cache.check("alice", "pass").active, what="the grant in the cache")
        expires_at = granted.entitlement.expires_at.ToDatetime().timestamp()
        assert time.time() < expires_at
        await asyncio.sleep(expires_at - time.time() + 0.05)
        assert not cache.check("alice", "pass").active
        assert cache.counters.changes_applied == 1


async def test_a_restarted_service_is_resumed_with_nothing_missed_or_repeated(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, client_factory: ClientFactory
) -> None:
    """The cache's service stops (the cache refuses meanwhile); grants go through another replica while it is away;
    the service starts again on the same port: the cache resumes from its cursor and holds every grant, each
    applied once, without reading the player again."""
    port = free_port()
    first = await service_factory(**redis_server.settings, grpc_port=port)
    replica = await service_factory(**redis_server.settings)
    writer = await client_factory(replica)
    states: list[CacheState] = []
    async with (
        AsyncEntitlementsClient(f"127.0.0.1:{port}", api_key=WRITER_KEY, retry_policy=None) as watcher,
        watcher.entitlement_cache(["alice"], policy=FAST, on_state=states.append) as cache,
    ):
        await writer.grant("alice", "gem", quantity=1, idempotency_key="g0")
        await eventually(lambda: cache.check("alice", "gem").active, what="the first grant")
        await first.stop(grace_s=0)
        await eventually(lambda: cache.state is CacheState.RESUMING, what="the cache to see its service go")
        with pytest.raises(StaleError):
            cache.check("alice", "gem")
        for index in range(1, 6):
            await writer.grant("alice", "gem", quantity=1, idempotency_key=f"g{index}")
        await service_factory(**redis_server.settings, grpc_port=port)

        def resumed() -> bool:
            if cache.state is not CacheState.CONNECTED:
                return False
            entitlement = cache.check("alice", "gem").entitlement
            return entitlement is not None and entitlement.quantity == 6

        await eventually(resumed, what="every grant made while the cache was away")
        assert (cache.counters.changes_applied, cache.counters.duplicates, cache.counters.gaps) == (6, 0, 0)
        assert cache.counters.reopenings >= 1
        assert cache.counters.snapshots == 1  # resumed from the cursor, not read again
        assert CacheState.RESUMING in states

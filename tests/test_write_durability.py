"""The service's own writes wait until durable (ENTITLEMENTS_WRITE_DURABILITY): the consumer before its XACK, Grant
and Revoke before they answer.

A replica that acknowledges nothing is a real one stopped with SIGSTOP: on the single half, a Valkey replica of a
TCP primary (`tests.helpers.valkeys`); on the cluster half, the replica of the player's primary in the shared
cluster, resumed and in sync again before the test ends.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from core import logs
from core.keys import UserKeys
from entitlements import AsyncEntitlementsClient, UnavailableError
from server.app import Service
from server.config import Settings
from server.errors import ConfigError
from tests.helpers.events import consumer_settings, event_log, group_state, order_event, store_of
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest, client_for
from tests.helpers.valkeys import Valkey
from tests.helpers.waiting import eventually
from tools.cluster import Node

PLAYER = "durable-player"
WAIT_MS = 300


@dataclass
class Replicated:
    """A store with a replica that can be paused: its URL, and how to pause and resume the player's replica."""

    url: str
    pause: Callable[[], None]
    resume: Callable[[], None]


@pytest.fixture
async def replicated(redis_server: StoreUnderTest, valkeys: Any) -> AsyncIterator[Replicated]:
    """On the single half, a TCP primary with one replica; on the cluster half, the shared cluster and the replica
    of PLAYER's primary. Whatever the test did, the replica runs and is in sync again at the end."""
    if redis_server.local_cluster is None:
        primary: Valkey = await valkeys(aof=True)
        replica: Valkey = await valkeys(aof=False, replica_of=primary.port)
        yield Replicated(primary.url, replica.pause, replica.resume)
        replica.resume()  # `valkeys` stops both at the end of the test
        return
    cluster = redis_server.local_cluster
    (node,) = cluster.replicas_of(cluster.primary_for(UserKeys(PROJECT, PLAYER).items))

    def send(signum: int, target: Node = node) -> None:
        assert target.process is not None
        target.process.send_signal(signum)

    yield Replicated(redis_server.url, lambda: send(signal.SIGSTOP), lambda: send(signal.SIGCONT))
    send(signal.SIGCONT)
    # The shared cluster as the next test expects it: every node serving, every replica in sync.
    await asyncio.to_thread(cluster.wait_healthy)


def waits(service: Service, mode: str) -> float:
    """How many write durability waits the service counted in `mode`."""
    return sample(service, "entitlements_write_durability_wait_seconds_count", mode=mode)


def short(service: Service, mode: str) -> float:
    """How many writes the service counted as not durable in `mode`."""
    return sample(service, "entitlements_writes_not_durable_total", mode=mode)


async def replicas_service(service_factory: ServiceFactory, url: str, **overrides: Any) -> Service:
    """A service on `url` whose writes wait for one replica, at most WAIT_MS."""
    return await service_factory(
        redis_url=url, write_durability="replicas", write_durability_timeout_ms=WAIT_MS, **overrides
    )


async def no_retries(client_factory: ClientFactory, service: Service) -> AsyncEntitlementsClient:
    """A client that reports an UNAVAILABLE at once instead of retrying it."""
    return await client_factory(service, retry_policy=None)


async def test_auto_decides_local_on_the_server_and_replicas_on_the_cluster_and_logs_it(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, client_factory: ClientFactory
) -> None:
    """The embedded server keeps an append-only file fsynced always: auto decides local; the test cluster's every
    primary has a replica, which a failover would promote: auto decides replicas. Logged once; a Grant waits."""
    previous = structlog.get_config()
    logs.configure("info", cache_loggers=False)  # the suite logs warnings only; the decision is an info line
    try:
        with structlog.testing.capture_logs() as captured:
            service = await service_factory(**redis_server.settings)
    finally:
        structlog.configure(**previous)
    assert service.write_durability is not None
    assert service.write_durability.decided is not None
    mode = "replicas" if redis_server.cluster else "local"
    assert service.write_durability.decided.mode == mode
    decided = [line for line in captured if line["event"] == "durability_decided"]
    assert [(line["setting"], line["mode"], line["log_level"]) for line in decided] == [
        ("ENTITLEMENTS_WRITE_DURABILITY", mode, "info")
    ]
    client = await client_factory(service)
    await client.grant(PLAYER, "gold", quantity=5)
    assert waits(service, mode) == 1


async def test_auto_without_an_append_only_file_decides_replicas_or_none(
    service_factory: ServiceFactory, valkeys: Any
) -> None:
    """Without an append-only file, auto waits for a replica when the store has one, and for nothing (with a
    warning at start that a grant can be lost) when it has none."""
    lonely = await valkeys(aof=False)
    with structlog.testing.capture_logs() as captured:
        service = await service_factory(redis_url=lonely.url)
    assert service.write_durability is not None
    assert service.write_durability.decided is not None
    assert service.write_durability.decided.mode == "none"
    (line,) = [line for line in captured if line["event"] == "durability_decided"]
    assert line["log_level"] == "warning"
    assert "a grant can be lost" in line["message"]

    primary = await valkeys(aof=False)
    await valkeys(aof=False, replica_of=primary.port)
    service = await service_factory(redis_url=primary.url)
    assert service.write_durability is not None
    assert service.write_durability.decided is not None
    assert (service.write_durability.decided.mode, service.write_durability.decided.replicas) == ("replicas", 1)


async def test_local_on_a_store_without_an_append_only_file_refuses_to_start(
    service_factory: ServiceFactory, valkeys: Any
) -> None:
    """ENTITLEMENTS_WRITE_DURABILITY=local against a store without an append-only file: the service does not start,
    and says which setting."""
    store = await valkeys(aof=False)
    with pytest.raises(ConfigError, match="ENTITLEMENTS_WRITE_DURABILITY=local cannot be reached"):
        await service_factory(redis_url=store.url, write_durability="local")


async def test_a_grant_not_replicated_in_time_is_unavailable_and_an_event_stays_pending(
    service_factory: ServiceFactory, client_factory: ClientFactory, replicated: Replicated
) -> None:
    """Waiting for a replica that acknowledges nothing: Grant and Revoke answer UNAVAILABLE after the wait, saying
    to retry with the same key; a consumed order_paid stays pending, not acknowledged; once the replica runs again
    the event is acknowledged and granted once, and the Grant's retry answers its stored result."""
    service = await replicas_service(service_factory, replicated.url, **consumer_settings())
    client = await no_retries(client_factory, service)
    await client.grant(PLAYER, "castle", quantity=1)  # durable: the replica runs
    redis: Any = client_for(replicated.url, cluster=service.settings.redis_cluster)
    try:
        replicated.pause()
        try:
            started = time.perf_counter()
            with pytest.raises(UnavailableError, match="retry with the same idempotency key") as refused:
                await client.grant(PLAYER, "gold", quantity=10, idempotency_key="grant-1")
            elapsed = time.perf_counter() - started
            assert elapsed >= WAIT_MS / 1000, elapsed  # answered after the whole wait
            assert elapsed < 5.0, elapsed  # and not much later (generous: a shared machine)
            assert "not durable" in str(refused.value)
            with pytest.raises(UnavailableError):
                await client.revoke(PLAYER, "castle", idempotency_key="revoke-1")
            assert short(service, "replicas") == 2

            await event_log(redis).append(order_event("paid", "9001", PLAYER, [("gold", 100)]), b"{}")

            async def refused_apply() -> bool:
                return short(service, "replicas") >= 4  # applied, not durable, applied again: still not durable

            await eventually(refused_apply, what="the consumer's apply to fall short twice")
            assert await group_state(redis) == (1, 0)  # delivered, not acknowledged
        finally:
            replicated.resume()

        async def acknowledged() -> bool:
            return await group_state(redis) == (0, 0)

        await eventually(acknowledged, what="the event to be acknowledged once the replica runs")
        replay = await client.grant(PLAYER, "gold", quantity=10, idempotency_key="grant-1")
        assert replay.replayed
        order = await store_of(service).order(PROJECT, PLAYER, "9001")
        assert order is not None
        assert order["status"] == "paid"
        assert (await client.check_entitlement(PLAYER, "gold")).entitlement.quantity == 110  # each once
        assert not (await client.check_entitlement(PLAYER, "castle")).HasField("entitlement")  # the revoke stayed
        ledger = await store_of(service).ledger(PROJECT, PLAYER)
        assert sorted(entry.fields["op"] for entry in ledger) == ["grant", "grant", "grant", "revoke"]
    finally:
        await redis.aclose()
    print(f"waits counted: {waits(service, 'replicas'):.0f}, not durable: {short(service, 'replicas'):.0f}")


async def test_a_replayed_grant_waits_for_the_first_write_to_be_durable(
    service_factory: ServiceFactory, client_factory: ClientFactory, replicated: Replicated
) -> None:
    """A Grant replayed through another replica, whose connections' last writes were all acknowledged, is not OK
    while the first call's write is on the primary alone: the replay writes, so its wait covers the first write."""
    first = await replicas_service(service_factory, replicated.url)
    second = await replicas_service(service_factory, replicated.url)
    first_client = await no_retries(client_factory, first)
    second_client = await no_retries(client_factory, second)
    await second_client.grant(PLAYER, "castle", quantity=1)  # its connection's writes so far: acknowledged
    replicated.pause()
    try:
        with pytest.raises(UnavailableError):
            await first_client.grant(PLAYER, "gold", quantity=10, idempotency_key="grant-2")
        with pytest.raises(UnavailableError):
            await second_client.grant(PLAYER, "gold", quantity=10, idempotency_key="grant-2")
        assert short(second, "replicas") == 1
    finally:
        replicated.resume()
    replay = await second_client.grant(PLAYER, "gold", quantity=10, idempotency_key="grant-2")
    assert replay.replayed
    assert replay.entitlement.quantity == 10


def test_write_durability_settings_default_to_auto_and_fit_in_the_redis_timeout() -> None:
    """Unset: auto, one replica, a wait of 1,000 ms, or half the Redis timeout when that is shorter; an unknown
    mode or a wait that does not fit in the Redis timeout is refused, naming the setting."""
    settings = Settings.from_env({})
    assert (settings.write_durability, settings.write_durability_replicas, settings.write_wait_ms) == (
        "auto",
        1,
        1000,
    )
    assert Settings.from_env({"ENTITLEMENTS_REDIS_TIMEOUT_S": "0.5"}).write_wait_ms == 250
    chosen = Settings.from_env(
        {"ENTITLEMENTS_WRITE_DURABILITY": "Replicas", "ENTITLEMENTS_WRITE_DURABILITY_REPLICAS": "2"}
    )
    assert (chosen.write_durability, chosen.write_durability_replicas) == ("replicas", 2)
    for env, message in (
        ({"ENTITLEMENTS_WRITE_DURABILITY": "fsync"}, "ENTITLEMENTS_WRITE_DURABILITY must be one of"),
        ({"ENTITLEMENTS_WRITE_DURABILITY_REPLICAS": "0"}, "ENTITLEMENTS_WRITE_DURABILITY_REPLICAS"),
        ({"ENTITLEMENTS_WRITE_DURABILITY_TIMEOUT_MS": "0"}, "ENTITLEMENTS_WRITE_DURABILITY_TIMEOUT_MS"),
        ({"ENTITLEMENTS_WRITE_DURABILITY_TIMEOUT_MS": "2000"}, r"must be below ENTITLEMENTS_REDIS_TIMEOUT_S \(2 s\)"),
    ):
        with pytest.raises(ConfigError, match=message):
            Settings.from_env({"ENTITLEMENTS_INSECURE_DEV_MODE": "1", **env}).check_servable()

"""Durable acknowledgment: the gateway's 204 waits until the event is on disk or on replicas, as configured.

Every store here is a real Valkey (the binary the project ships) with the configuration the case needs: with or
without an append-only file, with a real replica attached over TCP (`replicaof`), or a replica stopped with
SIGSTOP so that it can acknowledge nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import structlog

from core.durability import Durability
from core.keys import EventKeys
from server.embedded import EmbeddedRedis
from tests.helpers.gateway import (
    DEFAULT_PROJECT,
    ROOT,
    SECRET,
    command_env,
    fixture,
    gateway_settings,
    running_gateway,
    send,
    stored_events,
)
from tests.helpers.stores import StoreUnderTest
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings
from webhook_gateway.errors import ConfigError


def order_paid(order_id: int) -> bytes:
    """The fact sheet's separate-mode order_paid, for order `order_id`."""
    document = json.loads(fixture("order_paid_separate"))
    document["order"]["id"] = order_id
    return json.dumps(document).encode()


async def entries(redis: aioredis.Redis) -> int:
    """How many events the default project's stream holds."""
    return int(await redis.xlen(EventKeys(DEFAULT_PROJECT, 0).stream))


def waited(gateway: Gateway, mode: str) -> tuple[float, float]:
    """The durability wait histogram's count and sum for `mode`."""
    count = gateway.registry.get_sample_value("gateway_durability_wait_seconds_count", {"mode": mode})
    total = gateway.registry.get_sample_value("gateway_durability_wait_seconds_sum", {"mode": mode})
    return (count or 0.0, total or 0.0)


def results(gateway: Gateway, result: str) -> float:
    """How many webhooks the gateway counted with `result`."""
    value = gateway.registry.get_sample_value("gateway_webhooks_total", {"type": "order_paid", "result": result})
    return value or 0.0


def decided(gateway: Gateway) -> Durability:
    """The gateway's decided durability."""
    assert gateway.durability is not None
    assert gateway.durability.decided is not None
    return gateway.durability.decided


# --- what auto decides --------------------------------------------------------------------------------------------


async def test_auto_picks_local_on_an_aof_store_and_replicas_on_a_cluster_with_replicas(
    redis_server: StoreUnderTest, redis_client: aioredis.Redis, http: aiohttp.ClientSession
) -> None:
    """On a server with an append-only file, auto waits for its fsync; on a cluster whose primaries have replicas,
    for a replica (what a failover promotes): 204, the event stored, the wait counted."""
    mode = "replicas" if redis_server.cluster else "local"
    async with running_gateway(gateway_settings(redis_url=redis_server.url)) as gateway:
        assert decided(gateway).mode == mode
        answer = await send(http, gateway.url, order_paid(1))
        assert answer.status == 204
        assert waited(gateway, mode)[0] == 1
    assert [event.event.event_id for event in await stored_events(redis_client)] == [
        f"xsolla:{DEFAULT_PROJECT}:order:1:paid"
    ]


async def test_local_on_an_everysec_store_warns_that_a_host_crash_can_lose_it(valkeys: Any) -> None:
    """Valkey answers WAITAOF before its once-a-second fsync: local on an everysec store says so at start; on an
    always store it does not."""
    for appendfsync, warned in (("everysec", True), ("always", False)):
        store = await valkeys(aof=True, appendfsync=appendfsync)
        with structlog.testing.capture_logs() as logs:
            async with running_gateway(gateway_settings(redis_url=store.url)) as gateway:
                assert decided(gateway).mode == "local"
        warnings = [line for line in logs if line["event"] == "durability_weaker_than_asked"]
        assert bool(warnings) is warned, appendfsync
        if warned:
            assert warnings[0]["log_level"] == "warning"
            assert "appendfsync always" in warnings[0]["message"]


async def test_auto_picks_none_without_aof_or_replicas_and_warns(valkeys: Any, http: aiohttp.ClientSession) -> None:
    """On a store with neither an append-only file nor a replica, auto waits for nothing and says at start that a
    204 can be lost."""
    store = await valkeys(aof=False)
    with structlog.testing.capture_logs() as logs:
        async with running_gateway(gateway_settings(redis_url=store.url)) as gateway:
            assert decided(gateway).mode == "none"
            assert (await send(http, gateway.url, order_paid(1))).status == 204
            assert waited(gateway, "none") == (0.0, 0.0)
    warnings = [line for line in logs if line["event"] == "durability_decided"]
    assert [line["log_level"] for line in warnings] == ["warning"]
    assert "a 204 can be lost" in warnings[0]["message"]
    assert await entries(store.client) == 1


async def test_auto_picks_replicas_and_the_replica_holds_the_event_at_the_204(
    valkeys: Any, http: aiohttp.ClientSession
) -> None:
    """On a primary without an append-only file but with a replica, auto waits for the replica: the replica holds
    the event when the 204 arrives."""
    primary = await valkeys(aof=False)
    replica = await valkeys(aof=False, replica_of=primary.port)
    async with running_gateway(gateway_settings(redis_url=primary.url)) as gateway:
        durability = decided(gateway)
        assert (durability.mode, durability.replicas) == ("replicas", 1)
        for order_id in range(1, 6):
            assert (await send(http, gateway.url, order_paid(order_id))).status == 204
            assert await entries(replica.client) == order_id  # read on the replica right after the 204
        assert waited(gateway, "replicas")[0] == 5


# --- not durable in time: 503, nothing lost -----------------------------------------------------------------------


async def test_replicas_without_a_replica_answers_503_until_one_is_attached(
    valkeys: Any, http: aiohttp.ClientSession
) -> None:
    """Waiting for a replica the primary does not have: 503 in Xsolla's shape after the whole wait, the event
    stored once; the retry waits again (503); once a replica is attached, the retry is 204 and still one entry."""
    primary = await valkeys(aof=False)
    settings = gateway_settings(redis_url=primary.url, durability="replicas", durability_timeout_ms=300)
    body = order_paid(7)
    async with running_gateway(settings) as gateway:
        assert decided(gateway).mode == "replicas"
        for attempt in (1, 2):
            answer = await send(http, gateway.url, body)
            assert answer.status == 503
            assert answer.json()["error"]["code"] == "SERVER_ERROR"
            assert await entries(primary.client) == 1
            count, total = waited(gateway, "replicas")
            assert count == attempt
            assert total >= 0.3 * attempt  # each answer came after the whole wait
        assert results(gateway, "not_durable") == 2
        await valkeys(aof=False, replica_of=primary.port)
        assert (await send(http, gateway.url, body)).status == 204
        assert results(gateway, "duplicate") == 1
    assert await entries(primary.client) == 1


async def test_a_duplicate_waits_for_the_first_copy_to_reach_the_replica(
    valkeys: Any, http: aiohttp.ClientSession
) -> None:
    """A retry that finds the event already stored (by another gateway, not durably) is not 204 until the first
    copy is on the replica: the duplicate writes, so its wait covers the first copy."""
    primary = await valkeys(aof=False)
    replica = await valkeys(aof=False, replica_of=primary.port)
    # One connection, so that the durable gateway's last write before the duplicate was an acknowledged one.
    durable = gateway_settings(
        redis_url=primary.url, durability="replicas", durability_timeout_ms=300, redis_max_connections=1
    )
    async with (
        running_gateway(durable) as gateway,
        running_gateway(gateway_settings(redis_url=primary.url, durability="none")) as careless,
    ):
        assert (await send(http, gateway.url, order_paid(1))).status == 204
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        try:
            assert (await send(http, careless.url, order_paid(2))).status == 204  # on the primary alone
            answer = await send(http, gateway.url, order_paid(2))
            assert answer.status == 503
            assert results(gateway, "not_durable") == 1
        finally:
            replica.process.send_signal(signal.SIGCONT)
        assert (await send(http, gateway.url, order_paid(2))).status == 204
    assert await entries(primary.client) == 2
    assert await entries(replica.client) == 2


async def test_fifty_identical_webhooks_at_once_in_local_are_stored_once(
    tmp_path: Path, redis_client: aioredis.Redis, http: aiohttp.ClientSession
) -> None:
    """Fifty deliveries of one order at once in local mode on an `appendfsync everysec` store: all 204, each after
    its own wait, one entry."""
    store = EmbeddedRedis(tmp_path / "everysec", appendfsync="everysec")
    await store.start()
    try:
        settings = gateway_settings(
            redis_url=store.url, durability="local", redis_timeout_s=3.0, durability_timeout_ms=2500
        )
        async with running_gateway(settings) as gateway:
            body = order_paid(50)
            answers = await asyncio.gather(*(send(http, gateway.url, body) for _ in range(50)))
            assert [answer.status for answer in answers] == [204] * 50
            assert waited(gateway, "local")[0] == 50
            assert (results(gateway, "stored"), results(gateway, "duplicate")) == (1, 49)
        client = aioredis.Redis.from_url(store.url)
        try:
            assert await entries(client) == 1
        finally:
            await client.aclose()
    finally:
        await store.stop()


@pytest.mark.parametrize("mode", ["auto", "replicas"])
async def test_on_a_cluster_the_wait_runs_on_the_events_shard(
    valkeys: Any, http: aiohttp.ClientSession, mode: str
) -> None:
    """On Redis Cluster the wait goes to the node that took the write: local on its AOF answers 204; replicas on
    a node without one answers 503 with the event stored once."""
    node = await valkeys(aof=True, cluster=True)
    settings = gateway_settings(redis_url=node.url, redis_cluster=True, durability=mode, durability_timeout_ms=300)
    async with running_gateway(settings) as gateway:
        assert decided(gateway).mode == {"auto": "local", "replicas": "replicas"}[mode]
        answer = await send(http, gateway.url, order_paid(11))
        assert answer.status == {"auto": 204, "replicas": 503}[mode]
        assert waited(gateway, decided(gateway).mode)[0] == 1
    assert await entries(node.client) == 1


# --- refused at start ---------------------------------------------------------------------------------------------


async def test_explicit_local_on_a_store_without_aof_refuses_to_start(valkeys: Any) -> None:
    """GATEWAY_DURABILITY=local against a store without an append-only file: the gateway does not start, and
    says which setting."""
    store = await valkeys(aof=False)
    with pytest.raises(ConfigError, match="GATEWAY_DURABILITY=local") as refused:
        async with running_gateway(gateway_settings(redis_url=store.url, durability="local")):
            pass
    assert "append-only file" in str(refused.value)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhook_gateway",
        env=command_env(
            REDIS_URL=store.url,
            GATEWAY_DURABILITY="local",
            GATEWAY_PORT="0",
            GATEWAY_METRICS_PORT="0",
            GATEWAY_XSOLLA_SECRET=SECRET,
        ),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "configuration error: GATEWAY_DURABILITY=local" in stderr.decode()
    assert await entries(store.client) == 0


async def test_redis_down_at_start_decides_before_the_first_append(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """With Redis down at start the gateway starts undecided, answers 503, and decides once Redis answers."""
    store = EmbeddedRedis(tmp_path / "later", appendfsync="always")
    async with running_gateway(gateway_settings(redis_url=store.url)) as gateway:
        assert gateway.durability is not None
        assert gateway.durability.decided is None
        assert (await send(http, gateway.url, order_paid(3))).status == 503
        await store.start()
        try:
            assert (await send(http, gateway.url, order_paid(3))).status == 204
            assert decided(gateway).mode == "local"
        finally:
            await store.stop()


# --- settings -----------------------------------------------------------------------------------------------------


def env(**values: str) -> dict[str, str]:
    """`GATEWAY_<name>` variables."""
    return {f"GATEWAY_{name}": value for name, value in values.items()}


def test_durability_settings_default_to_auto_one_replica_one_second() -> None:
    """Unset, the durability is auto, one replica, a 1,000 ms wait."""
    settings = GatewaySettings.from_env({})
    assert (settings.durability, settings.durability_replicas, settings.durability_timeout_ms) == ("auto", 1, 1000)
    assert GatewaySettings.from_env(env(DURABILITY="Replicas", DURABILITY_REPLICAS="2")).durability == "replicas"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"DURABILITY": "fsync"}, "GATEWAY_DURABILITY must be one of auto, local, replicas, none"),
        ({"DURABILITY_REPLICAS": "0"}, "GATEWAY_DURABILITY_REPLICAS"),
        ({"DURABILITY_TIMEOUT_MS": "0"}, "GATEWAY_DURABILITY_TIMEOUT_MS"),
        ({"DURABILITY_TIMEOUT_MS": "abc"}, "GATEWAY_DURABILITY_TIMEOUT_MS"),
        (
            {"DURABILITY_TIMEOUT_MS": "5000", "REQUEST_TIMEOUT_S": "5", "REDIS_TIMEOUT_S": "9"},
            "GATEWAY_DURABILITY_TIMEOUT_MS (5000) must be below GATEWAY_REQUEST_TIMEOUT_S (5 s)",
        ),
        (
            {"DURABILITY_TIMEOUT_MS": "2000"},
            "GATEWAY_DURABILITY_TIMEOUT_MS (2000) must be below GATEWAY_REDIS_TIMEOUT_S (2 s)",
        ),
    ],
)
def test_bad_durability_settings_are_refused(values: dict[str, str], message: str) -> None:
    """An unknown mode, fewer than one replica, a zero or malformed timeout, or a wait that does not fit in the
    request or in Redis's read timeout: refused at start, naming the setting."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GatewaySettings.from_env(env(**values))


def test_hand_built_settings_are_checked_too() -> None:
    """Settings built in code are checked at start like those read from the environment."""
    with pytest.raises(ConfigError, match="GATEWAY_DURABILITY_TIMEOUT_MS"):
        replace(gateway_settings(redis_timeout_s=0.5), durability_timeout_ms=600).check()

"""The embedded Valkey server is supervised: killed, it is restarted on the same data, the service goes NOT_SERVING
and back to SERVING by itself, and everything holding Redis connections recovers; stopping stays clean."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import logs
from core.backoff import Backoff
from entitlements.v1 import entitlements_pb2 as pb
from server.app import SERVICE_NAME, Service
from server.consumer import Consumer
from server.embedded import EmbeddedRedis
from server.supervisor import RESTART_BACKOFF, EmbeddedSupervisor
from tests.helpers.events import consumer_settings, drained, order_event, xadd
from tests.helpers.services import ClientFactory, ServiceFactory
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.slow

PLAYER = "player-1"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: Reads the JSON log lines written so far with the given `event`.
LogLines = Callable[[str], list[dict[str, Any]]]


@contextlib.contextmanager
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[LogLines]:
    """Within the test body (where capsys's stream is open): the JSON log lines written, by event name."""
    previous = structlog.get_config()
    logs.configure("warning", json=True, cache_loggers=False)
    seen: list[dict[str, Any]] = []

    def read(event: str) -> list[dict[str, Any]]:
        seen.extend(json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{"))
        return [line for line in seen if line.get("event") == event]

    try:
        yield read
    finally:
        # Back to the suite's configuration, writing to the real stderr: capsys's stream closes with this test.
        structlog.configure(**previous)


def sample(service: Service, name: str) -> float:
    return service.registry.get_sample_value(name) or 0.0


def restarts(service: Service) -> float:
    return sample(service, "entitlements_embedded_store_restarts_total")


def restarted(service: Service, times: int) -> bool:
    return restarts(service) == times


def valkey_pid(service: Service) -> int:
    assert service.embedded is not None
    assert service.embedded.pid is not None
    return service.embedded.pid


def valkeys_on(data_dir: Path) -> list[int]:
    """The valkey-server processes running on `data_dir` (Valkey works in its data directory)."""
    found = []
    data_dir = data_dir.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"valkey-server" in (entry / "cmdline").read_bytes() and os.readlink(entry / "cwd") == str(data_dir):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return found


def lock_is_free(data_dir: Path) -> bool:
    with (data_dir / "service.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True


class Health:
    """The service's gRPC health status, as a load balancer reads it."""

    def __init__(self, service: Service) -> None:
        assert service.endpoints is not None
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    async def status(self) -> int:
        reply = await self.stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        return int(reply.status)

    async def becomes(self, status: int, *, timeout_s: float = 30.0) -> None:
        async def check() -> bool:
            return await self.status() == status

        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        await eventually(check, timeout_s=timeout_s, what=f"health to report {name}")


@pytest.fixture
async def health() -> AsyncIterator[Callable[[Service], Health]]:
    """Makes health readers for services; closes their channels at the end."""
    made: list[Health] = []

    def make(service: Service) -> Health:
        made.append(Health(service))
        return made[-1]

    yield make
    for health in made:
        await health.channel.close(None)


async def test_a_killed_store_is_restarted_and_every_connection_recovers(
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
    health: Callable[[Service], Health],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """SIGKILL of the embedded Valkey: NOT_SERVING, restarted on the same AOF, SERVING again, grants kept, and the
    store's client, the consumer, the order-status subscription and an open GetOrderStatus stream all recover."""
    with json_logs(capsys) as log_lines:
        # An hour between periodic health checks: only the supervisor's report can move the health status here.
        service = await service_factory(
            redis_url=None, data_dir=tmp_path / "var", health_check_interval_s=3600.0, **consumer_settings()
        )
        assert service.tracking is not None
        client = await client_factory(service)
        watch = health(service)
        await client.grant(PLAYER, "gold", quantity=5, idempotency_key="before-the-kill")
        await eventually(service.tracking.feed.subscribed.is_set, what="the order-status subscription")
        stream = client.get_order_status("order-1", PLAYER)
        updates: list[pb.OrderStatusUpdate] = []

        async def read_stream() -> None:
            updates.extend([update async for update in stream])

        reader = asyncio.get_running_loop().create_task(read_stream())
        await eventually(lambda: len(service.tracking or ()) == 1, what="the order's tracker")
        assert await watch.status() == SERVING
        assert sample(service, "entitlements_embedded_store_up") == 1

        killed = valkey_pid(service)
        os.kill(killed, signal.SIGKILL)
        await watch.becomes(NOT_SERVING)
        await watch.becomes(SERVING)

        assert valkey_pid(service) != killed
        assert valkeys_on(tmp_path / "var") == [valkey_pid(service)]
        assert (tmp_path / "var" / "valkey.pid").read_text().strip() == str(valkey_pid(service))
        assert restarts(service) == 1
        assert sample(service, "entitlements_embedded_store_restart_failures_total") == 0
        assert sample(service, "entitlements_embedded_store_up") == 1
        [exited] = log_lines("embedded_store_exited")
        assert (exited["signal"], exited["exit_code"], exited["attempt"]) == ("SIGKILL", None, 1)
        assert exited["uptime_s"] > 0
        assert exited["level"] == "error"
        assert len(log_lines("embedded_store_restarted")) == 1

        # The store's client: the write acknowledged before the kill is there, its idempotency record too.
        assert (await client.check_entitlement(PLAYER, "gold")).entitlement.quantity == 5
        assert (await client.grant(PLAYER, "gold", quantity=5, idempotency_key="before-the-kill")).replayed
        assert (
            await client.grant(PLAYER, "gold", quantity=1, idempotency_key="after-the-restart")
        ).entitlement.quantity == 6

        # The subscription is set up again; the consumer applies an event written after the restart, and its
        # publication reaches the stream opened before the kill.
        await eventually(
            lambda: sample(service, "entitlements_order_feed_subscribes_total") >= 2,
            timeout_s=20.0,
            what="the order-status subscription to be confirmed again",
        )
        assert service.embedded is not None
        redis = aioredis.Redis.from_url(service.embedded.url)
        try:
            await xadd(redis, order_event("paid", "order-1", PLAYER, [("gold", 100)]))
            await drained(redis, timeout_s=20.0)
        finally:
            await redis.aclose()
        async with asyncio.timeout(20):
            await reader
        assert [(u.status, u.source, u.entitlements_granted) for u in updates] == [
            (pb.ORDER_STATUS_DONE, pb.ORDER_STATUS_SOURCE_WEBHOOK, True)
        ]
        assert (await client.check_entitlement(PLAYER, "gold")).entitlement.quantity == 106


async def test_a_store_that_keeps_dying_is_restarted_with_a_growing_backoff(
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
    health: Callable[[Service], Health],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Killed again right after its restart, the store is restarted again after a longer wait; counted twice."""
    with json_logs(capsys) as log_lines:
        service = await service_factory(redis_url=None, data_dir=tmp_path / "var")
        client = await client_factory(service)
        await client.grant(PLAYER, "gold", quantity=3)

        for expected in (1, 2):
            killed = valkey_pid(service)
            os.kill(killed, signal.SIGKILL)
            await eventually(partial(restarted, service, expected), timeout_s=30.0, what=f"restart {expected}")
            assert valkey_pid(service) != killed

        await health(service).becomes(SERVING)
        first, second = log_lines("embedded_store_exited")
        assert (first["attempt"], second["attempt"]) == (1, 2)
        # Equal jitter: attempt n waits between half and all of its ceiling, and the ceiling doubles.
        assert RESTART_BACKOFF.ceiling_s(0) / 2 <= first["retry_in_s"] <= RESTART_BACKOFF.ceiling_s(0)
        assert RESTART_BACKOFF.ceiling_s(1) / 2 <= second["retry_in_s"] <= RESTART_BACKOFF.ceiling_s(1)
        assert [line["attempt"] for line in log_lines("embedded_store_restarted")] == [1, 2]
        assert (await client.check_entitlement(PLAYER, "gold")).entitlement.quantity == 3
        assert valkeys_on(tmp_path / "var") == [valkey_pid(service)]


def break_aof(data_dir: Path) -> Callable[[], None]:
    """Makes the AOF's manifest unreadable (Valkey then exits at start); returns what puts it back."""
    manifest = data_dir / "appendonlydir" / "appendonly.aof.manifest"
    good = manifest.read_bytes()
    manifest.write_bytes(b"not a manifest\n")

    def repair() -> None:
        manifest.write_bytes(good)

    return repair


async def test_a_restart_that_fails_is_retried_until_the_store_comes_back(
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
    health: Callable[[Service], Health],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A restarted server that exits while loading is logged, counted and retried with backoff; once it can load,
    the service is SERVING again with its data."""
    with json_logs(capsys) as log_lines:
        data_dir = tmp_path / "var"
        service = await service_factory(redis_url=None, data_dir=data_dir)
        client = await client_factory(service)
        watch = health(service)
        await client.grant(PLAYER, "gold", quantity=2)
        os.kill(valkey_pid(service), signal.SIGKILL)
        repair = break_aof(data_dir)  # before the first restart, which waits at least RESTART_BACKOFF.base_s / 2

        await eventually(
            lambda: sample(service, "entitlements_embedded_store_restart_failures_total") >= 2,
            timeout_s=30.0,
            what="two failed restarts",
        )
        assert valkeys_on(data_dir) == []  # each failed server is gone before the wait for the next attempt
        await watch.becomes(NOT_SERVING)
        assert sample(service, "entitlements_embedded_store_up") == 0
        failed = log_lines("embedded_store_restart_failed")
        assert [line["attempt"] for line in failed[:2]] == [2, 3]
        assert "exited with code 1" in failed[0]["error"]
        assert failed[1]["retry_in_s"] >= RESTART_BACKOFF.ceiling_s(2) / 2

        repair()
        await watch.becomes(SERVING)
        assert restarts(service) == 1
        assert (await client.check_entitlement(PLAYER, "gold")).entitlement.quantity == 2


@pytest.mark.parametrize("state", ["just after the exit", "while restarts fail"])
async def test_stopping_while_the_store_is_down_leaves_no_server_and_frees_the_data_dir(
    service_factory: ServiceFactory, client_factory: ClientFactory, tmp_path: Path, state: str
) -> None:
    """Stopping the service while its store is dead (before the restart, or while restarts fail) ends promptly,
    leaves no Valkey on the data directory and releases its lock; the next service finds the data."""
    data_dir = tmp_path / "var"
    service = await service_factory(redis_url=None, data_dir=data_dir)
    client = await client_factory(service)
    await client.grant(PLAYER, "gold", quantity=4)
    os.kill(valkey_pid(service), signal.SIGKILL)
    if state == "just after the exit":
        # The stop may meet the supervisor waiting, or restarting the server: either way nothing is left.
        await eventually(lambda: sample(service, "entitlements_embedded_store_up") == 0, what="the exit to be noticed")
        await service.stop(grace_s=0)
    else:
        repair = break_aof(data_dir)
        await eventually(
            lambda: sample(service, "entitlements_embedded_store_restart_failures_total") >= 1,
            timeout_s=30.0,
            what="a failed restart",
        )
        await service.stop(grace_s=0)
        repair()

    assert valkeys_on(data_dir) == []
    assert lock_is_free(data_dir)
    again = await service_factory(redis_url=None, data_dir=data_dir)
    assert (await (await client_factory(again)).check_entitlement(PLAYER, "gold")).entitlement.quantity == 4


async def test_a_restarted_store_still_dies_with_its_service(tmp_path: Path) -> None:
    """`python -m server`: the Valkey it restarted keeps the parent-death signal, so when the service is killed
    (SIGKILL) the store stops too, and the data directory is free."""
    data_dir = tmp_path / "var"
    env = {
        **os.environ,
        "ENTITLEMENTS_DATA_DIR": str(data_dir),
        "ENTITLEMENTS_GRPC_PORT": "0",
        "ENTITLEMENTS_METRICS_PORT": "0",
        "ENTITLEMENTS_CONSOLE_PORT": "0",
        "ENTITLEMENTS_HTTP_PORT": "0",
        "ENTITLEMENTS_INSECURE_DEV_MODE": "true",
        "ENTITLEMENTS_LOG_LEVEL": "info",
        "ENTITLEMENTS_LOG_JSON": "true",
    }
    env.pop("REDIS_URL", None)
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", env=env, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent
    )
    assert service.stderr is not None
    stderr = service.stderr

    async def line_of(event: str) -> dict[str, Any]:
        async with asyncio.timeout(30):  # a bound on a hang, not a speed goal
            while raw := await stderr.readline():
                if raw.startswith(b"{") and (line := json.loads(raw))["event"] == event:
                    return dict(line)
        raise AssertionError(f"the service ended without logging {event}")

    try:
        started = await line_of("embedded_redis_started")
        os.kill(started["pid"], signal.SIGKILL)
        restarted = await line_of("embedded_store_restarted")
        assert valkeys_on(data_dir) == [restarted["pid"]]
    finally:
        service.kill()
        await service.wait()
    await eventually(lambda: not valkeys_on(data_dir), what="the restarted valkey-server to stop with its service")
    assert lock_is_free(data_dir)


async def test_a_stale_pid_file_never_stops_another_directorys_server(tmp_path: Path) -> None:
    """A pid file left by a killed server whose pid now belongs to another data directory's Valkey is not taken
    for an orphan: starting on the first directory leaves the other server running."""
    other = EmbeddedRedis(tmp_path / "other")
    await other.start()
    try:
        assert other.pid is not None
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "valkey.pid").write_text(f"{other.pid}\n")
        mine = EmbeddedRedis(tmp_path / "mine")
        await mine.start()
        await mine.stop()
        client = aioredis.Redis.from_url(other.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        await other.stop()


async def test_once_the_store_is_back_the_waiting_loops_retry_at_once(
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
    health: Callable[[Service], Health],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The consumer and the order-status subscription back off for an hour after a Redis failure here, and the
    store stays down for a second or two: only the supervisor's word that it is back can bring them back in time."""
    hour = Backoff(base_s=3600.0, cap_s=3600.0)
    monkeypatch.setattr("server.app.Consumer", partial(Consumer, backoff=hour))
    monkeypatch.setattr("server.status_channel.feed._BACKOFF", hour)
    monkeypatch.setattr("server.app.EmbeddedSupervisor", partial(EmbeddedSupervisor, backoff=Backoff(2.0, 2.0)))
    service = await service_factory(redis_url=None, data_dir=tmp_path / "var", **consumer_settings())
    assert service.tracking is not None
    watch = health(service)
    # An order followed, so that the replica subscribes to its project's order-status channel.
    client = await client_factory(service)
    stream = client.get_order_status("order-1", PLAYER)
    reader = asyncio.get_running_loop().create_task(anext(aiter(stream)))
    await eventually(lambda: len(service.tracking or ()) == 1, what="the order's tracker")
    await eventually(lambda: sample(service, "entitlements_order_feed_subscribes_total") >= 1, what="the channel")

    os.kill(valkey_pid(service), signal.SIGKILL)
    await watch.becomes(NOT_SERVING)
    await watch.becomes(SERVING)

    await eventually(
        lambda: sample(service, "entitlements_order_feed_subscribes_total") >= 2,
        timeout_s=20.0,
        what="the order-status subscription to be confirmed again",
    )
    assert sample(service, "entitlements_order_feed_reconnects_total") >= 1
    assert service.embedded is not None
    redis = aioredis.Redis.from_url(service.embedded.url)
    try:
        await xadd(redis, order_event("paid", "order-2", PLAYER, [("gold", 1)]))
        await drained(redis, timeout_s=20.0)
    finally:
        await redis.aclose()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

"""What operators see: metrics, reflection, log lines, configuration, cluster-safe keys, and the operator commands
(`python -m server ...`): against a running service's embedded store, and failing in one line, never a traceback."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import structlog
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from redis.crc import key_slot

from core import logs
from core.keys import LAYOUT_KEY, UserKeys, items_key
from entitlements import AsyncEntitlementsClient, InvalidArgumentError
from server.app import Service
from server.config import Settings
from server.errors import ConfigError
from tests.helpers.services import PROJECT
from tests.helpers.stores import StoreUnderTest, all_keys, client_for
from tests.test_supervision import lock_is_free, valkeys_on
from tools.cluster import LocalCluster

ROOT = Path(__file__).parent.parent


def _scrape(service: Service) -> str:
    assert service.endpoints is not None
    url = f"http://127.0.0.1:{service.endpoints.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_metrics_count_rpcs_by_method_and_code(service: Service, client: AsyncEntitlementsClient) -> None:
    """The Prometheus endpoint counts RPCs and their latency by method and status code."""
    await client.grant("player-1", "gold")
    await client.check_entitlement("player-1", "gold")
    with pytest.raises(InvalidArgumentError):
        await client.check_entitlement("", "gold")
    text = await asyncio.to_thread(_scrape, service)
    assert 'entitlements_rpc_requests_total{code="OK",method="Grant"} 1.0' in text
    assert 'entitlements_rpc_requests_total{code="OK",method="CheckEntitlement"} 1.0' in text
    assert 'entitlements_rpc_requests_total{code="INVALID_ARGUMENT",method="CheckEntitlement"} 1.0' in text
    assert 'entitlements_rpc_duration_seconds_count{code="OK",method="Grant"} 1.0' in text
    assert 'entitlements_writes_total{operation="grant",outcome="applied"} 1.0' in text
    assert "player-1" not in text


async def test_reflection_lists_the_services(service: Service) -> None:
    """Server reflection names the entitlement, health and reflection services."""
    assert service.endpoints is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests() -> Any:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names: set[str] = set()
        async for reply in stub.ServerReflectionInfo(requests()):
            names |= {s.name for s in reply.list_services_response.service}
    assert names == {
        "entitlements.v1.EntitlementService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_one_log_line_per_rpc_without_player_ids(
    service: Service, client: AsyncEntitlementsClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each RPC logs one JSON line with method, code and duration; the player id appears only hashed."""
    previous = structlog.get_config()
    logs.configure("info", json=True, cache_loggers=False)
    try:
        await client.grant("player-secret-id", "gold")
        await client.check_entitlement("player-secret-id", "gold")
    finally:
        # Back to the suite's configuration, writing to the real stderr: capsys's stream closes with this test.
        structlog.configure(**previous)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    rpc_lines = [line for line in lines if line.get("event") == "rpc"]
    assert [(line["method"], line["code"]) for line in rpc_lines] == [
        ("Grant", "OK"),
        ("CheckEntitlement", "OK"),
    ]
    assert all(line["user"] == logs.user_ref("player-secret-id") for line in rpc_lines)
    assert all(isinstance(line["duration_ms"], float) for line in rpc_lines)
    assert all(line["principal"] == "writer" for line in rpc_lines)
    assert "player-secret-id" not in json.dumps(lines)


def test_settings_from_env_defaults_and_overrides() -> None:
    """Settings come from environment variables with documented defaults; bad values name the variable."""
    defaults = Settings.from_env({"ENTITLEMENTS_INSECURE_DEV_MODE": "true"})
    assert (defaults.grpc_port, defaults.metrics_port, defaults.redis_url) == (50051, 9464, None)
    assert defaults.idempotency_ttl_days == 7.0
    custom = Settings.from_env(
        {
            "ENTITLEMENTS_INSECURE_DEV_MODE": "1",
            "ENTITLEMENTS_GRPC_PORT": "6000",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "ENTITLEMENTS_IDEMPOTENCY_TTL_DAYS": "14",
        }
    )
    assert (custom.grpc_port, custom.redis_url, custom.idempotency_ttl_days) == (
        6000,
        "redis://127.0.0.1:6379/0",
        14,
    )
    for name, value in [
        ("ENTITLEMENTS_GRPC_PORT", "http"),
        ("ENTITLEMENTS_GRPC_PORT", "70000"),
        ("ENTITLEMENTS_REDIS_TIMEOUT_S", "0"),
        ("ENTITLEMENTS_INSECURE_DEV_MODE", "maybe"),
        ("ENTITLEMENTS_REDIS_APPENDFSYNC", "sometimes"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({"ENTITLEMENTS_INSECURE_DEV_MODE": "1", name: value})


@pytest.mark.parametrize("user_id", ["player-1", "a}b", "{x}", "%7B", "a b/c", "日本"])
def test_all_keys_of_a_player_share_one_cluster_slot(user_id: str) -> None:
    """Every key of one player hashes to the same Redis Cluster slot, whatever the id holds."""
    keys = UserKeys(PROJECT, user_id)
    every = [keys.ledger, keys.idempotency("k"), keys.order("o"), keys.applied_event("e"), *keys.indexes]
    assert {keys.items, keys.skus, keys.subscriptions, keys.live, keys.expiry, keys.timed} <= set(every)
    assert len({key_slot(k.encode()) for k in every}) == 1
    assert items_key(PROJECT, user_id) == keys.items
    assert keys.items.count("{") == 1
    assert keys.items.count("}") == 1


def test_distinct_players_get_distinct_keys() -> None:
    """Percent-encoding keeps ids that differ only in escaped characters apart."""
    ids = ["a}b", "a%7Db", "a", "{a}", "%7Ba%7D"]
    assert len({UserKeys(PROJECT, i).items for i in ids}) == len(ids)


# --- the operator commands ----------------------------------------------------------------------------------------


def command_env(**variables: str) -> dict[str, str]:
    """The environment of a command: this one without the service's settings, the test project as the default, and
    `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "REDIS_", "GATEWAY_"))}
    return {**env, "ENTITLEMENTS_XSOLLA_PROJECT_ID": str(PROJECT), **variables}


async def run_command(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`python -m server ARGS` in `env`: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, env=env, cwd=ROOT, stdout=-1, stderr=-1
    )
    async with asyncio.timeout(90):  # a bound on a hang, not a speed goal
        out, err = await process.communicate()
    return int(process.returncode or 0), out.decode(), err.decode()


def one_line(err: str) -> str:
    """The one line a failed command printed on stderr (and nothing else: no traceback, no log lines)."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


#: Every operator command that reaches the store.
STORE_COMMANDS = [
    ["ledger", "player-1"],
    ["events", "status"],
    ["dead-letters", "list"],
    ["dead-letters", "replay", "--all"],
    ["dead-letters", "discard", "1-0"],
    ["catalog", "show"],
    ["catalog", "refresh"],
    ["migrate-layout", "--project", str(PROJECT)],
    ["reconcile", "status"],
    ["reconcile"],
]


@pytest.fixture
async def running_service(tmp_path: Path) -> AsyncIterator[tuple[Path, int]]:
    """`python -m server` with its embedded store in a data directory, as `make run` starts it: (the directory, the
    gRPC port)."""
    data_dir = tmp_path / "var"
    env = command_env(
        ENTITLEMENTS_DATA_DIR=str(data_dir),
        ENTITLEMENTS_GRPC_PORT="0",
        ENTITLEMENTS_METRICS_PORT="0",
        ENTITLEMENTS_CONSOLE_PORT="0",
        ENTITLEMENTS_HTTP_PORT="0",
        ENTITLEMENTS_INSECURE_DEV_MODE="true",
        ENTITLEMENTS_LOG_LEVEL="info",
        ENTITLEMENTS_LOG_JSON="true",
    )
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    assert service.stderr is not None
    try:
        async with asyncio.timeout(60):  # a bound on a hang, not a speed goal
            while raw := await service.stderr.readline():
                if raw.startswith(b"{") and (line := json.loads(raw))["event"] == "service_started":
                    break
            else:
                raise AssertionError("the service ended before it started")
        assert (line["redis"], line["redis_owner"]) == ("embedded", "self")  # it runs the store itself
        yield data_dir, int(line["grpc"].rsplit(":", 1)[1])
    finally:
        service.terminate()
        await service.wait()


async def test_commands_answer_from_the_running_services_store(running_service: tuple[Path, int]) -> None:
    """While `python -m server` runs on its embedded store, `ledger`, `events status` and `dead-letters list` answer
    from that store (what the service wrote), and no second store is started on the directory."""
    data_dir, port = running_service
    async with AsyncEntitlementsClient(f"127.0.0.1:{port}") as client:
        await client.grant("player-1", "gold", quantity=100, reason="ticket 7")
        await client.revoke("player-1", "gold", reason="chargeback")
    env = command_env(ENTITLEMENTS_DATA_DIR=str(data_dir))
    (pid,) = valkeys_on(data_dir)

    status, out, err = await run_command(env, "ledger", "player-1")
    assert (status, err) == (0, "")
    header, revoke, grant = (" ".join(line.split()) for line in out.splitlines())
    assert header == "time (UTC) operation sku before -> after actor reason summary"
    assert revoke.endswith(" revoke gold 100 -> 0 insecure-dev chargeback revoked 100 gold (100 -> 0)")
    assert grant.endswith(" grant gold 0 -> 100 insecure-dev ticket 7 granted 100 gold (0 -> 100)")
    status, out, err = await run_command(env, "ledger", "player-1", "--json", "--limit", "1")
    assert (status, err) == (0, "")
    (line,) = [json.loads(text) for text in out.splitlines()]
    assert (line["operation"], line["quantity_before"], line["quantity_after"]) == ("revoke", 100, 0)

    status, out, err = await run_command(env, "events", "status")
    assert (status, err) == (0, "")
    assert json.loads(out.splitlines()[0])["project_id"] == PROJECT
    status, out, err = await run_command(env, "dead-letters", "list")
    assert (status, out, err) == (0, "", "")
    assert valkeys_on(data_dir) == [pid]


async def test_without_a_service_a_command_starts_a_private_store_and_says_so(tmp_path: Path) -> None:
    """With no service on the data directory, a command starts its own store for its duration, says so on stderr,
    and leaves the directory free and no store running."""
    data_dir = tmp_path / "var"
    status, out, err = await run_command(command_env(ENTITLEMENTS_DATA_DIR=str(data_dir)), "ledger", "player-1")
    assert status == 0
    assert out == ""
    assert err.splitlines() == [
        f"no service is running on {data_dir}: started a private store for this command (stopped when it ends)",
        f"player player-1 has no ledger entries in project {PROJECT}",
    ]
    assert valkeys_on(data_dir) == []
    assert lock_is_free(data_dir)


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
async def test_every_command_fails_in_one_line_when_redis_is_down(command: list[str]) -> None:
    """With Redis unreachable, every command that needs the store exits 1 with one line naming the store (without
    its password) and the command; never a traceback."""
    env = command_env(REDIS_URL="redis://:hunter2@127.0.0.1:1/0", ENTITLEMENTS_REDIS_TIMEOUT_S="0.5")
    status, _, err = await run_command(env, *command)
    line = one_line(err)
    if command == ["reconcile"]:  # refused before any store is reached: the project has no credentials
        assert status == 2
        assert line.startswith(f"reconcile: project {PROJECT} has no admin API credentials")
        return
    assert status == 1, err
    assert line.startswith(f"python -m server {command[0]}")
    assert "cannot reach the store at redis://127.0.0.1:1/0" in line, line
    assert "hunter2" not in err


async def test_a_folder_held_without_a_store_fails_in_one_line(tmp_path: Path) -> None:
    """A data directory locked by a process whose store is not there yet is one line and exit 1, and the command
    starts no store of its own on it."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    with (data_dir / "service.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status, _, err = await run_command(command_env(ENTITLEMENTS_DATA_DIR=str(data_dir)), "events", "status")
    assert status == 1
    assert one_line(err) == (
        f"python -m server events status: {data_dir} is in use by another process, and its store's socket is not "
        "configured there yet: wait until it has started, or set REDIS_URL"
    )
    assert valkeys_on(data_dir) == []


async def test_a_store_of_another_layout_is_refused_in_one_line(
    redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """A store of another key layout is refused by the commands: one line, exit 1."""
    await redis_client.set(LAYOUT_KEY, "3")
    for command in (["ledger", "player-1"], ["events", "status"], ["dead-letters", "list"], ["reconcile", "status"]):
        env = command_env(REDIS_URL=redis_server.url, REDIS_CLUSTER=str(redis_server.cluster).lower())
        status, _, err = await run_command(env, *command)
        assert status == 1, err
        assert "store refused: the store was written with key layout '3'" in one_line(err)


async def test_a_cluster_reached_without_redis_cluster_is_named_in_one_line(shared_cluster: LocalCluster) -> None:
    """A command pointed at a node of a Redis Cluster without REDIS_CLUSTER=true, migrate-layout too (it would move
    only the keys of that node), says to set it in one line, exit 1, and writes nothing."""
    shared_cluster.flush()
    redis = client_for(shared_cluster.url, cluster=True)
    await redis.hset("ent:{u:player-1}:items", "gold", "{}")  # a layout-1 key, for migrate-layout to leave alone
    url = shared_cluster.url
    for command, name in (
        (["events", "status"], "events status"),
        (["ledger", "player-1"], "ledger"),
        (["migrate-layout", "--project", str(PROJECT)], "migrate-layout"),
    ):
        status, _, err = await run_command(command_env(REDIS_URL=url), *command)
        assert status == 1, err
        assert one_line(err) == (
            f"python -m server {name}: store refused: REDIS_URL names a node of a Redis Cluster: set "
            "REDIS_CLUSTER=true (and give it one or more seeds)"
        )
    try:
        assert await all_keys(redis) == [b"ent:{u:player-1}:items"]
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["ledger"], "the following arguments are required: user_id"),
        (["ledger", ""], "a player id is required"),
        (["ledger", "a\nb"], "a player id must"),
        (["ledger", "player-1", "--limit", "0"], "give a number of entries from 1 to 100,000"),
        (["ledger", "player-1", "--project", "310000"], "--project 310000 is not one of the projects"),
        (["ledger", "player-1", "--project", "-3"], "a project id must be between 1 and"),
        (["dead-letters", "replay", "not-an-id"], "is not a stream entry id"),
        (["dead-letters", "list", "--count", "-5"], "give a number of entries"),
        (["events"], "the following arguments are required: action"),
        (["catalog", "show", "--project", "310000"], "--project 310000 is not one of the projects"),
        (["migrate-layout"], "the following arguments are required: --project"),
        (["reconcile", "--from", "yesterday"], "is not an ISO 8601 date-time"),
        (["reconcile", "--from", "2026-05-02", "--until", "2026-05-01"], "--until must be after --from"),
        (["hash-key", "--scopes", "root"], "python -m server hash-key: "),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
async def test_a_bad_argument_is_one_line_and_exit_2(command: list[str], message: str) -> None:
    """A bad argument of any command is one line on stderr naming what is wrong, exit 2, before any store is
    reached."""
    status, out, err = await run_command(command_env(REDIS_URL="redis://127.0.0.1:1/0"), *command)
    assert status == 2, err
    assert message in one_line(err)
    assert out == ""

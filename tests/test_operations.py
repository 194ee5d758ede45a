"""What operators see: metrics, reflection, log lines, configuration, and cluster-safe keys."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import grpc
import pytest
import structlog
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from redis.crc import key_slot

from core import logs
from core.keys import UserKeys, items_key
from entitlements import AsyncEntitlementsClient, InvalidArgumentError
from server.app import Service
from server.config import Settings
from server.errors import ConfigError
from tests.helpers.services import PROJECT


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

"""Pointing the processes at a Redis Cluster: several seeds, so that one seed down does not stop a start; and a
cluster node reached without REDIS_CLUSTER, or seeds without it, refused at start in one line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from core.connections import connect
from core.errors import ConfigError
from entitlements import AsyncEntitlementsClient
from tests.helpers.gateway import SECRET, command_env
from tests.helpers.services import ClientFactory, ServiceFactory
from tests.helpers.sweeps import quantity
from tools.cluster import LocalCluster, free_cluster_ports

ROOT = Path(__file__).resolve().parent.parent


async def test_a_service_starts_and_serves_with_its_first_seed_down(
    shared_cluster: LocalCluster, service_factory: ServiceFactory, client_factory: ClientFactory
) -> None:
    """REDIS_URL naming a dead node first and a live one second: the service discovers the cluster from the second,
    and grants and reads."""
    (dead,) = free_cluster_ports(1)
    live = shared_cluster.nodes[1].address
    service = await service_factory(redis_url=f"redis://127.0.0.1:{dead}/0,{live}", redis_cluster=True)
    client: AsyncEntitlementsClient = await client_factory(service)
    await client.grant("seeded", "gold", quantity=3)
    assert await quantity(client, "seeded") == 3


@pytest.mark.parametrize(
    ("url", "cluster", "message"),
    [
        ("redis://127.0.0.1:7000,127.0.0.1:7001", False, "set REDIS_CLUSTER=true, or give one URL"),
        ("redis://127.0.0.1:7000,127.0.0.1:port", True, "a Redis Cluster seed has a bad port: '127.0.0.1:port'"),
        ("redis://127.0.0.1:7000,http://127.0.0.1:7001", True, "must be host:port or a redis:// URL"),
        ("tcp://127.0.0.1:7000", False, "REDIS_URL is not usable"),
    ],
)
def test_unusable_redis_urls_are_a_configuration_error(url: str, cluster: bool, message: str) -> None:
    """Seeds without REDIS_CLUSTER, a seed that is not host:port, a scheme redis-py cannot use: a ConfigError that
    says what to change."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        connect(url, cluster=cluster, timeout_s=1.0, max_connections=2)


@pytest.mark.parametrize("module", ["server", "webhook_gateway"])
async def test_a_cluster_node_without_redis_cluster_is_refused_at_start(
    shared_cluster: LocalCluster, module: str
) -> None:
    """Each process started on a cluster node with REDIS_CLUSTER unset stops at start with one line that says to set
    it, without a traceback (it would otherwise fail on every key another node holds)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env=command_env(
            REDIS_URL=shared_cluster.url,
            ENTITLEMENTS_INSECURE_DEV_MODE="1",
            ENTITLEMENTS_GRPC_PORT="0",
            ENTITLEMENTS_METRICS_PORT="0",
            ENTITLEMENTS_CONSOLE_ENABLED="false",
            ENTITLEMENTS_HTTP_ENABLED="false",
            GATEWAY_PORT="0",
            GATEWAY_METRICS_PORT="0",
            GATEWAY_XSOLLA_SECRET=SECRET,
        ),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    text = stderr.decode()
    assert process.returncode in (1, 2), text
    assert "REDIS_URL names a node of a Redis Cluster: set REDIS_CLUSTER=true" in text.splitlines()[-1]
    assert "Traceback" not in text

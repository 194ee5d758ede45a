"""Shared fixtures: a real Valkey server (the binary the project ships with), the real service on free ports,
and the project's own Python client pointed at it. Every factory closes what it made. What they build on (API keys,
settings, the factories' types) is in `tests.helpers.services`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core import logs
from core.connections import RedisClient
from entitlements import AsyncEntitlementsClient
from server.app import Service
from server.embedded import EmbeddedRedis
from tests.helpers.receiver import ReceiverFactory, receiver_factory_context
from tests.helpers.services import WRITER_KEY, ClientFactory, ServiceFactory, base_settings
from tests.helpers.stores import SELECTED_KINDS, STORE_KINDS, StoreUnderTest, forget_cluster, register_cluster
from tests.helpers.valkeys import Valkey
from tools.cluster import LocalCluster
from xsolla_simulator.testing import SimulatorFactory, simulator_factory_context


def pytest_configure(config: pytest.Config) -> None:
    """Services started in tests log warnings and errors only, as JSON."""
    logs.configure("warning", json=True, cache_loggers=False)


@pytest.fixture
async def single_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A private Valkey server persisting to the test's temporary directory: for tests that stop, kill or restart
    the server itself."""
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One Redis Cluster (3 primaries, 1 replica each) for the whole run, started when a test first needs it."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    register_cluster(cluster)
    yield cluster
    cluster.stop()


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A Redis Cluster of the test's own, for a test that kills or restarts its nodes."""
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.start()
    register_cluster(cluster)
    try:
        yield cluster
    finally:
        forget_cluster(cluster)
        cluster.stop()


@pytest.fixture(params=[pytest.param(kind, id=kind) for kind in STORE_KINDS if kind in SELECTED_KINDS])
async def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    """The test's Redis, once the single embedded server and once the shared cluster (emptied first)."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("shared_cluster")
        cluster.flush()
        yield StoreUnderTest(cluster.url, cluster=True, local_cluster=cluster)
        return
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always")
    await server.start()
    yield StoreUnderTest(server.url, cluster=False, embedded=server)
    await server.stop()


@pytest.fixture
def embedded_server(redis_server: StoreUnderTest) -> EmbeddedRedis:
    """The single server behind `redis_server`, for a test that stops, kills or restarts it: such a test runs on the
    single server only (`pytest_collection_modifyitems`); what a cluster does when a node dies is tested on a
    cluster of the test's own (`private_cluster`)."""
    assert redis_server.embedded is not None, "embedded_server runs on the single server only"
    return redis_server.embedded


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leaves out the cluster half of the tests that manage the single server's process (`embedded_server`)."""
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_cluster = callspec is not None and callspec.params.get("redis_server") == "cluster"
        needs_process = "embedded_server" in getattr(item, "fixturenames", ())
        (left_out if on_cluster and needs_process else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture
async def redis_client(redis_server: StoreUnderTest) -> AsyncIterator[RedisClient]:
    """A plain redis-py client (a cluster client on the cluster) on the test's Redis, for looking behind the
    service's back."""
    client = redis_server.client()
    yield client
    await client.aclose()


@pytest.fixture
async def service_factory() -> AsyncIterator[ServiceFactory]:
    """Starts services with `base_settings(**overrides)` (and `xsolla=`, `order_sources=`, `xsolla_catalog=`,
    `catalog_source=`, `order_search=` for the provider); stops them all at the end of the test."""
    started: list[Service] = []

    async def start(**overrides: Any) -> Service:
        provider_keys = ("xsolla", "order_sources", "xsolla_catalog", "catalog_source", "order_search")
        provider = {key: overrides.pop(key) for key in provider_keys if key in overrides}
        service = Service(base_settings(**overrides), **provider)  # base_settings sets redis_cluster from the URL
        await service.start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        await service.stop(grace_s=0)


@pytest.fixture
async def service(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> Service:
    """The service on the test's Redis."""
    return await service_factory(**redis_server.settings)


@pytest.fixture
async def client_factory() -> AsyncIterator[ClientFactory]:
    """Makes clients for a service (the writer key unless told otherwise); closes them at the end."""
    made: list[AsyncEntitlementsClient] = []

    async def make(service: Service, **kwargs: Any) -> AsyncEntitlementsClient:
        assert service.endpoints is not None
        kwargs.setdefault("api_key", WRITER_KEY)
        client = AsyncEntitlementsClient(f"127.0.0.1:{service.endpoints.grpc_port}", **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            await client.close()


@pytest.fixture
async def client(service: Service, client_factory: ClientFactory) -> AsyncEntitlementsClient:
    """A client with the read+write key on the test's service."""
    return await client_factory(service)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed afterwards."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def receiver_factory() -> AsyncIterator[ReceiverFactory]:
    """Starts webhook receivers (what a game backend's webhook URL would be) on free ports; stops them at the end."""
    async with receiver_factory_context() as start:
        yield start


@pytest.fixture
async def simulators() -> AsyncIterator[SimulatorFactory]:
    """Starts Xsolla simulators (`xsolla_simulator.testing`); stops them all at the end of the test."""
    async with simulator_factory_context() as make:
        yield make


@pytest.fixture
async def valkeys(tmp_path: Path) -> AsyncIterator[Any]:
    """Starts `Valkey` servers for the test; stops them all at its end."""
    started: list[Valkey] = []

    async def start(**options: Any) -> Valkey:
        server = Valkey(tmp_path / f"valkey-{len(started)}", **options)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in reversed(started):
        await server.stop()

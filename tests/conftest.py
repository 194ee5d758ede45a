"""Shared fixtures: a real Valkey server (the binary the project ships with), the real service on free ports,
and the project's own Python client pointed at it. Every factory closes what it made. What they build on (API keys,
settings, the factories' types) is in `tests.helpers.services`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from core import logs
from entitlements import AsyncEntitlementsClient
from server.app import Service
from server.embedded import EmbeddedRedis
from tests.helpers.receiver import ReceiverFactory, receiver_factory_context
from tests.helpers.services import WRITER_KEY, ClientFactory, ServiceFactory, base_settings
from xsolla_simulator.testing import SimulatorFactory, simulator_factory_context


def pytest_configure(config: pytest.Config) -> None:
    """Services started in tests log warnings and errors only, as JSON."""
    logs.configure("warning", json=True, cache_loggers=False)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A private Valkey server persisting to the test's temporary directory."""
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the test's Valkey, for looking behind the service's back."""
    client = aioredis.Redis.from_url(redis_server.url)
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
        service = Service(base_settings(**overrides), **provider)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        await service.stop(grace_s=0)


@pytest.fixture
async def service(service_factory: ServiceFactory, redis_server: EmbeddedRedis) -> Service:
    """The service on the test's Valkey."""
    return await service_factory(redis_url=redis_server.url)


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

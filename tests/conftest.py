"""Shared fixtures: a real Valkey server (the binary the project ships with), the real service on free ports,
and the project's own Python client pointed at it. Every factory closes what it made.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core import logs
from entitlements import AsyncEntitlementsClient
from server.app import Service
from server.auth import hash_key, parse_api_keys
from server.config import Settings
from server.embedded import EmbeddedRedis

WRITER_KEY = "writer-key-0123456789"
READER_KEY = "reader-key-0123456789"
API_KEYS = parse_api_keys(f"writer:{hash_key(WRITER_KEY)}:read,write\nreader:{hash_key(READER_KEY)}:read")

logs.configure("warning", json=True, cache_loggers=False)

ServiceFactory = Callable[..., Awaitable[Service]]
ClientFactory = Callable[..., Awaitable[AsyncEntitlementsClient]]


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


def base_settings(**overrides: Any) -> Settings:
    """Settings for a test service: free ports, the test API keys, short timeouts."""
    settings = Settings(
        grpc_port=0,
        metrics_port=0,
        api_keys=API_KEYS,
        redis_timeout_s=1.0,
        shutdown_grace_s=2.0,
    )
    return replace(settings, **overrides)


@pytest.fixture
async def service_factory() -> AsyncIterator[ServiceFactory]:
    """Starts services with `base_settings(**overrides)` (and `xsolla=`/`order_sources=` for the provider); stops
    them all at the end of the test."""
    started: list[Service] = []

    async def start(**overrides: Any) -> Service:
        provider = {key: overrides.pop(key) for key in ("xsolla", "order_sources") if key in overrides}
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

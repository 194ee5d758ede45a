"""What a test needs to start the service and call it: the test API keys, `base_settings`, and the types of the
`service_factory` and `client_factory` fixtures (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from core.connections import RedisClient
from core.keys import LAYOUT_KEY
from core.projects import Project, Projects
from entitlements import AsyncEntitlementsClient
from server.app import Service
from server.auth import hash_key, parse_api_keys
from server.config import ConsoleSettings, HttpSettings, Settings
from tests.helpers.stores import is_cluster_url, key_count, node_infos

WRITER_KEY = "writer-key-0123456789"
READER_KEY = "reader-key-0123456789"
API_KEYS = parse_api_keys(f"writer:{hash_key(WRITER_KEY)}:read,write\nreader:{hash_key(READER_KEY)}:read")

#: The simulator's test project: the default project of the tests' services.
PROJECT = 308077

ServiceFactory = Callable[..., Awaitable[Service]]
ClientFactory = Callable[..., Awaitable[AsyncEntitlementsClient]]


def base_settings(**overrides: Any) -> Settings:
    """Settings for a test service: free ports, the test API keys, short timeouts, the simulator's test project as
    the one project served (and the default)."""
    settings = Settings(
        projects=Projects.single(PROJECT),
        grpc_port=0,
        metrics_port=0,
        console=ConsoleSettings(port=0),
        http=HttpSettings(port=0),
        api_keys=API_KEYS,
        redis_timeout_s=1.0,
        shutdown_grace_s=2.0,
    )
    if "redis_cluster" not in overrides:
        overrides["redis_cluster"] = is_cluster_url(overrides.get("redis_url"))
    return replace(settings, **overrides)


async def data_keys(redis: RedisClient) -> int:
    """How many keys Redis holds (on a cluster: all its primaries) besides the key layout's mark (`ent:layout`,
    which each process writes into an empty store when it starts)."""
    return await key_count(redis) - int(await redis.exists(LAYOUT_KEY))


def served(*project_ids: int, default: int | None = None) -> Projects:
    """A closed list of projects (each with the default settings), `default` the project of requests that name
    none."""
    return Projects(MappingProxyType({p: Project(p) for p in project_ids}), default_project=default, listed=True)


async def store_changes(redis: RedisClient) -> int:
    """Valkey's count of changes since its last snapshot (it never takes one: the AOF is the persistence), summed
    over a cluster's primaries, to prove that a refused call wrote nothing."""
    return sum(int(info["rdb_changes_since_last_save"]) for info in await node_infos(redis, "persistence"))


def sample(service: Service, name: str, **labels: str) -> float:
    """One metric sample of the service (0 when never set)."""
    return service.registry.get_sample_value(name, labels) or 0.0

"""What every operator command of `python -m server` stands on: the store it reaches and the project it acts on.

The operator commands reach Redis as the service does (REDIS_URL, or the embedded server's data directory, which a
running service holds locked: use REDIS_URL to inspect a live system), and refuse a store of another key layout as
the service does (`core.layout`), except `migrate-layout`, which moves one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from core import connections
from core.connections import RedisClient
from core.errors import ConfigError
from core.layout import check_layout
from server.config import Settings
from server.embedded import EmbeddedRedis


@contextlib.asynccontextmanager
async def operator_redis(settings: Settings, *, check: bool = True) -> AsyncIterator[RedisClient]:
    """A Redis client for a one-off operator command: REDIS_URL, or the embedded server started for the command.

    Args:
        check: refuse a store of another key layout (`core.layout.check_layout`), as the service does.

    Raises:
        LayoutMismatch: `check` and the store has another key layout.
    """
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir, appendfsync=settings.appendfsync)
        await embedded.start()
        url = embedded.url
    redis = connections.connect(
        url, cluster=settings.redis_cluster, timeout_s=settings.redis_timeout_s, max_connections=2
    )
    try:
        if check:
            await check_layout(redis)
        yield redis
    finally:
        await redis.aclose()
        if embedded is not None:
            await embedded.stop()


def command_project(settings: Settings, project_id: int | None) -> int:
    """The project an operator command acts on: `--project`, else the default project.

    Raises:
        ConfigError: no `--project` and no default project, or a project the service does not serve.
    """
    if project_id is None:
        if settings.projects.default_project is None:
            raise ConfigError("--project is required: no default project is configured")
        return settings.projects.default_project
    if not settings.projects.serves(project_id):
        raise ConfigError(f"--project {project_id} is not one of the projects of {settings.projects.source}")
    return project_id

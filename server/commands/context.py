"""What every operator command of `python -m server` stands on: the store it reaches, the project it acts on, and
how a failure is reported.

The operator commands reach Redis as the service does: REDIS_URL, or else the embedded store of the data directory.
While a service runs on that directory (`make run`, `python -m server`), a command talks to the service's own store
through its socket; only when none runs does it start a private one for its duration, and says so (the directory's
lock keeps two stores from ever sharing it). Commands refuse a store of another key layout as the service does
(`core.layout`), except `migrate-layout`, which moves one.

A command that fails prints one line on stderr and exits 1 (`run_command`); a bad argument or setting exits 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import traceback
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from redis import exceptions as redis_errors

from core import connections
from core.connections import RedisClient
from core.errors import ConfigError, StoreUnavailable
from core.layout import LayoutMismatch, check_layout
from server.config import Settings
from server.embedded import DataDirInUse, EmbeddedRedis, running_store

#: The exit status of a command that failed (Redis down, a store refused, ...), and of a bad argument or setting.
FAILED, BAD_ARGUMENT = 1, 2


class CommandError(Exception):
    """A command cannot do what it was asked: its message is the line the operator reads."""


@contextlib.asynccontextmanager
async def operator_redis(settings: Settings, *, check: bool = True, writes: bool = True) -> AsyncIterator[RedisClient]:
    """A Redis client for a one-off operator command: REDIS_URL; else the store of the service running on the data
    directory; else a private embedded store started for the command (said on stderr), stopped when it ends.

    Args:
        check: refuse a store of another key layout (`core.layout.check_layout`), as the service does.
        writes: False for a command that only reads: an empty store is checked but not marked with the layout, so
            the command leaves the store exactly as it found it.

    Raises:
        LayoutMismatch: `check` and the store has another key layout.
        CommandError: the data directory is held by a process whose store cannot be found, or cannot be used.
    """
    embedded = None
    url = settings.redis_url
    if url is None:
        url, embedded = await _embedded_store(settings)
    redis = connections.connect(
        url, cluster=settings.redis_cluster, timeout_s=settings.redis_timeout_s, max_connections=2
    )
    try:
        if check:
            await check_layout(redis, mark=writes)
        yield redis
    finally:
        await redis.aclose()
        if embedded is not None:
            await embedded.stop()


async def _embedded_store(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """The URL of the data directory's store: the running service's, or a private one (returned to be stopped)."""
    data_dir = settings.data_dir
    try:
        url = running_store(data_dir)
        if url is not None:
            return url, None
        embedded = EmbeddedRedis(data_dir, appendfsync=settings.appendfsync)
        try:
            await embedded.start()
        except DataDirInUse:
            # A service started meanwhile: use its store.
            url = running_store(data_dir)
            if url is None:
                raise
            return url, None
    except DataDirInUse as exc:
        raise CommandError(f"{exc}: wait until it has started, or set REDIS_URL") from None
    except (OSError, RuntimeError) as exc:
        raise CommandError(f"cannot start a store on {data_dir}: {exc}") from None
    print(
        f"no service is running on {data_dir}: started a private store for this command (stopped when it ends)",
        file=sys.stderr,
    )
    return embedded.url, embedded


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


def run_command(name: str, command: Coroutine[Any, Any, int], *, where: str, debug: bool = False) -> int:
    """Runs an operator command to its exit status; any failure is one line on stderr (`<name>: ...`), never a
    traceback (unless `debug`, which adds it after the line).

    Args:
        name: the command as typed (`python -m server ledger`), the line's prefix.
        where: the store the command reaches, for the line that says it could not.
    """
    try:
        return asyncio.run(command)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except LayoutMismatch as exc:
        line = f"store refused: {exc}"
    except CommandError as exc:
        line = str(exc)
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        return BAD_ARGUMENT
    except (StoreUnavailable, redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        line = f"cannot reach the store at {where}: {_reason(exc)}"
    except redis_errors.RedisError as exc:
        line = f"the store at {where} refused the command: {_reason(exc)}"
    except (
        Exception
    ) as exc:  # an operator reads one line, whatever failed (ENTITLEMENTS_LOG_LEVEL=debug: the traceback)
        line = f"failed: {_reason(exc)}"
    if debug:
        traceback.print_exc()
    print(f"{name}: {line}", file=sys.stderr)
    return FAILED


def _reason(exc: BaseException) -> str:
    """An exception as one line: its message without the newlines some drivers put in it, else its cause's, else
    its type."""
    for error in (exc, exc.__cause__):
        text = " ".join(str(error).split()) if error is not None else ""
        if text:
            return text
    return type(exc).__name__

"""What both clients share: channel settings, call metadata, default deadline, error translation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from entitlements import _config, _requests
from entitlements._config import RetryPolicy, TLSConfig
from entitlements.errors import CallCancelledError, translate_rpc_error

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRY_POLICY = RetryPolicy()


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """Re-raises errors from the block as `EntitlementsError`s.

    Translates any `grpc.RpcError`, and the `asyncio.CancelledError` that grpc.aio raises in calls cut short
    by closing the channel: that one is not a cancellation of the caller's task, and letting it out would
    look like one (and confuse `asyncio.TaskGroup` or `asyncio.timeout`).
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise translate_rpc_error(exc) from exc
    except asyncio.CancelledError:
        if _task_is_cancelling():
            raise
        raise _closed_under_call() from None


def _task_is_cancelling() -> bool:
    """Whether the current task has been asked to cancel (only meaningful inside a coroutine)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _closed_under_call() -> CallCancelledError:
    return CallCancelledError("the client was closed while the call was running", code=grpc.StatusCode.CANCELLED)


class _BaseClient:
    """What both clients share: the channel settings, the call metadata and the default deadline."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: TLSConfig | bool | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_policy: RetryPolicy | None = DEFAULT_RETRY_POLICY,
        channel_options: Sequence[tuple[str, Any]] = (),
        project_id: int = 0,
    ) -> None:
        """Checks and stores the settings; see `AsyncEntitlementsClient` for the arguments."""
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        self._project_id = _requests.project(project_id, 0)
        tls_config = _config.resolve_tls(tls)
        self._target = target
        self._credentials = None if tls_config is None else _config.channel_credentials(tls_config)
        self._options = _config.channel_options(retry_policy, tls_config, channel_options)
        self._metadata = _config.call_metadata(api_key)
        self._timeout_s = timeout_s
        self._closed = False

    def _settings(self) -> dict[str, Any]:
        """What a client of the other kind needs to connect as this one does (the blocking cache runs an asyncio
        client of its own on its thread): the connection settings, not the channel."""
        names = ("_project_id", "_target", "_credentials", "_options", "_metadata", "_timeout_s")
        return {name: getattr(self, name) for name in names}

    def _deadline(self, timeout_s: float | None) -> float:
        return self._timeout_s if timeout_s is None else timeout_s

    def _project(self, project_id: int) -> int:
        return _requests.project(project_id, self._project_id)

    def __repr__(self) -> str:
        # Never the API key.
        return (
            f"{type(self).__name__}(target={self._target!r}, tls={self._credentials is not None}, "
            f"project_id={self._project_id})"
        )

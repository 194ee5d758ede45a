"""structlog configuration, done once per process by its composition root.

Context variables first (so per-RPC bindings reach every line), ISO UTC timestamps, JSON when stderr is not a
terminal. The standard library's logging, which the libraries use (aiohttp's server errors, grpc, asyncio,
warnings), goes through the same renderer (`structlog.stdlib.ProcessorFormatter`): in JSON, every line of a
library is one JSON object too, with its logger's name and any traceback inside it, never a plain-text
traceback between the JSON lines. A malformed HTTP request (an over-long URL, too many headers, a bad chunk) is the
sender's doing, not a fault of the server: aiohttp logs it as an error with a traceback, and it becomes one
warning line naming the error instead (`_CallerHttpErrors`), so that garbage from the network neither floods the
logs with tracebacks nor pages anyone. Player ids are never logged in clear: `user_ref` gives a short stable hash
for correlating lines.

Every RPC and webhook writes a line, so its cost counts. The processors are structlog's own but two, which skip
work the service does not need (`_IsoUtcTimestamp` formats the date once per second, `_format_exc_info` runs only
for a line with an exception), with the same keys, values and bytes; `get_logger` looks a cached logger's methods
up once. The renderer is structlog's JSONRenderer (json.dumps' bytes: ", " and ": ", non-ASCII escaped), which
operators' filters and this project's tests match as text; orjson, faster, writes other bytes.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

# The handler `configure` put on the root logger, replaced when it is called again (tests reconfigure).
_library_handler: logging.Handler | None = None


def configure(
    level: str = "info",
    json: bool | None = None,
    *,
    cache_loggers: bool = True,
    fields: Mapping[str, object] | None = None,
) -> None:
    """Configures structlog, and the standard library's root logger for libraries, for this process.

    Libraries log at warning level and above; the process's own lines at `level` and above.

    Args:
        level: the lowest level logged.
        json: JSON lines, or a console format; None picks JSON unless stderr is a terminal.
        cache_loggers: freeze each logger's configuration on first use (fast); tests that reconfigure turn it off.
        fields: added to every line of the process, its libraries' too (a worker's index in a group).
    """
    global _library_handler
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    render_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor
    # In JSON a traceback becomes the "exception" string; the console renderer draws it itself.
    tracebacks: list[structlog.typing.Processor]
    if render_json:
        renderer, tracebacks = structlog.processors.JSONRenderer(), [_format_exc_info]
    else:
        renderer, tracebacks = structlog.dev.ConsoleRenderer(), []
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _IsoUtcTimestamp(),
    ]
    if fields:
        shared.append(_Fields(dict(fields)))
    structlog.configure(
        processors=[*shared, *tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache_loggers,
    )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tracebacks, renderer],
        )
    )
    root = logging.getLogger()
    if _library_handler is not None:
        root.removeHandler(_library_handler)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    _library_handler = handler
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(existing, _CallerHttpErrors) for existing in server_logger.filters):
        server_logger.addFilter(_CallerHttpErrors())
    # Python's warnings (e.g. a library's DeprecationWarning at run time) become log lines of "py.warnings".
    logging.captureWarnings(True)


def get_logger(name: str) -> Any:
    """`structlog.get_logger(name)`, for a module that logs on every call (an RPC, a webhook).

    While structlog caches loggers (`configure`'s default, the services'), the cached logger's methods are looked up
    once, where structlog's lazy proxy fetches that logger again on every call (a tenth of a line's cost). Without
    caching (tests that reconfigure) it is the proxy, following every `structlog.configure`.
    """
    return _PinnedLogger(structlog.get_logger(name))


class _PinnedLogger:
    """A lazy proxy whose attributes, once structlog has cached its logger, are kept in this object's dict."""

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._proxy, attribute)
        if structlog.get_config()["cache_logger_on_first_use"]:
            # The proxy has now cached its logger for good (structlog's contract), so its methods are final too.
            setattr(self, attribute, value)
        return value


class _IsoUtcTimestamp:
    """`structlog.processors.TimeStamper(fmt="iso", utc=True)`: the same `timestamp` text from the same clock, with
    the date and the time of day formatted once per second instead of on every line."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        # One tuple, replaced whole: a thread never pairs one second with another second's text.
        self._second: tuple[int, str] = (-1, "")

    def __call__(
        self, logger: structlog.typing.WrappedLogger, name: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event_dict["timestamp"] = self.text(time.time_ns())
        return event_dict

    def text(self, ns: int) -> str:
        """The timestamp of `ns` nanoseconds since the epoch, as `datetime.now(UTC).isoformat()` with "Z" for
        "+00:00" writes it: microseconds rounded down (datetime's rounding), no fraction at a whole second."""
        second, micros = divmod(ns // 1000, 1_000_000)
        cached, prefix = self._second
        if cached != second:
            prefix = datetime.datetime.fromtimestamp(second, datetime.UTC).isoformat().removesuffix("+00:00")
            self._second = (second, prefix)
        return f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"


def _format_exc_info(
    logger: structlog.typing.WrappedLogger, name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """structlog's `format_exc_info`, which leaves a line without `exc_info` as it is, called only for the others."""
    if "exc_info" in event_dict:
        return structlog.processors.format_exc_info(logger, name, event_dict)
    return event_dict


class _Fields:
    """A processor that adds the same fields to every line (without replacing one the line sets)."""

    def __init__(self, fields: dict[str, object]) -> None:
        self._fields = fields

    def __call__(self, logger: object, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in self._fields.items():
            event.setdefault(key, value)
        return event


_MAX_HTTP_ERROR_CHARS = 200


class _CallerHttpErrors(logging.Filter):
    """Turns aiohttp's error-with-traceback for a request it could not parse into one warning naming the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            detail = " ".join(str(error.message).split())[:_MAX_HTTP_ERROR_CHARS]
            record.msg = f"{record.getMessage()}: {type(error).__name__} ({error.code}): {detail}"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


@functools.lru_cache(maxsize=65_536)
def user_ref(user_id: str) -> str:
    """A short, stable, non-reversible reference to a player id for log lines (remembered for the players seen
    most recently: every RPC's log line names its player, and a game's players call again and again)."""
    return hashlib.sha256(b"user:" + user_id.encode()).hexdigest()[:16]

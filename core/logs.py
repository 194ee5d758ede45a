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
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
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
        renderer, tracebacks = structlog.processors.JSONRenderer(), [structlog.processors.format_exc_info]
    else:
        renderer, tracebacks = structlog.dev.ConsoleRenderer(), []
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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

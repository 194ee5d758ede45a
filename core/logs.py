"""structlog configuration, done once per process by its composition root.

Context variables first (so per-RPC bindings reach every line), ISO UTC timestamps, JSON when stderr is not a
terminal. Player ids are never logged in clear: `user_ref` gives a short stable hash for correlating lines.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog


def configure(level: str = "info", json: bool | None = None, *, cache_loggers: bool = True) -> None:
    """Configures structlog (and the standard library's root logger, for libraries) for this process.

    Args:
        level: the lowest level logged.
        json: JSON lines, or a console format; None picks JSON unless stderr is a terminal.
        cache_loggers: freeze each logger's configuration on first use (fast); tests that reconfigure turn it off.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    render_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if render_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache_loggers,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s")


def user_ref(user_id: str) -> str:
    """A short, stable, non-reversible reference to a player id for log lines."""
    return hashlib.sha256(b"user:" + user_id.encode()).hexdigest()[:16]

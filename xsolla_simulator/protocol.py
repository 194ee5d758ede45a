"""The Centrifuge client protocol v2 in JSON, as far as the order-status socket uses it: framing, reply error
codes and disconnect (close) codes, from `centrifugal/protocol` and `centrifugal/centrifuge`.

A WebSocket text message carries one or more JSON objects separated by "\\n". The client sends commands
(`{"id": N, "connect": {...}}`), the server answers with replies carrying the same id and sends pushes without
one (`{"push": {"channel": C, "pub": {...}}}`). An empty object is a ping from the server and a pong from the
client.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

# Reply error codes (centrifuge errors.go).
ERROR_UNAUTHORIZED: Final = 101
ERROR_UNKNOWN_CHANNEL: Final = 102
ERROR_PERMISSION_DENIED: Final = 103
ERROR_METHOD_NOT_FOUND: Final = 104
ERROR_BAD_REQUEST: Final = 107
ERROR_NOT_AVAILABLE: Final = 108
ERROR_UNRECOVERABLE_POSITION: Final = 112

# Disconnect codes, sent as the WebSocket close code (centrifuge disconnect.go).
CLOSE_SHUTDOWN: Final = 3001
CLOSE_NO_PONG: Final = 3012
CLOSE_INVALID_TOKEN: Final = 3500
CLOSE_BAD_REQUEST: Final = 3501


def encode(frames: Iterable[Mapping[str, Any]]) -> str:
    """One WebSocket text message holding `frames`, newline-separated.

    `json.dumps` escapes newlines inside strings, so the only raw newlines are the separators.
    """
    return "\n".join(json.dumps(frame, separators=(",", ":")) for frame in frames)


def decode(message: str) -> list[Any]:
    """The commands in one text message (at most one trailing newline, as the protocol allows).

    Raises:
        ValueError: a line is not JSON.
    """
    return [json.loads(line) for line in message.strip().split("\n") if line]


def error_reply(command_id: int, code: int, message: str, *, temporary: bool = False) -> dict[str, Any]:
    """A reply error; `temporary` tells the client to retry (for a connect: to reconnect)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if temporary:
        error["temporary"] = True
    return {"id": command_id, "error": error}


def publication_push(channel: str, publication: Mapping[str, Any]) -> dict[str, Any]:
    """The push that delivers a publication of a (server-side) subscribed channel."""
    return {"push": {"channel": channel, "pub": dict(publication)}}

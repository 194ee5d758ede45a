"""A server-streaming RPC answered as Server-Sent Events (`text/event-stream`), as docs/HTTP_API.md describes.

Until the service accepts the request (its initial metadata carries `server.rpc.STREAM_ACCEPTED`, sent, because the
call asks for it with `ANNOUNCE_ACCEPTANCE`, once the caller is authorized, the request valid and the stream
admitted), nothing is written: a refusal (UNAUTHENTICATED,
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) is the plain JSON error with its HTTP status. Once accepted, the answer
is 200 and each message is one event:

    event: update           data: <the message in proto3 JSON>
    event: error            data: <google.rpc.Status JSON>       the stream failed after it was accepted; last event
    event: end              data: {}                             the stream ended normally; last event

so that a client tells a clean end (`end`) from a dropped connection (neither), and opens the stream again only
on the latter or on an `error` with code 14 (UNAVAILABLE). A comment line (`: keepalive`) is written after every
`heartbeat_s` without an event, so that proxies do not close an idle stream. A client that goes away cancels the
gRPC call (aiohttp cancels the handler; a failed write ends it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import grpc
from aiohttp import web

from server.http_api.errors import rpc_error_response, status_body, status_response
from server.http_api.transcoding import response_json
from server.rpc import STREAM_ACCEPTED

CONTENT_TYPE = "text/event-stream"
KEEPALIVE = b": keepalive\n\n"
_EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs predates it
_HEADERS = {
    "Content-Type": CONTENT_TYPE,
    "Cache-Control": "no-cache, no-store",
    # nginx buffers proxied responses unless told not to; events must pass as they are written.
    "X-Accel-Buffering": "no",
}


def event(name: str, data: bytes) -> bytes:
    """One SSE event. `data` is compact JSON: a single line (JSON escapes line breaks inside strings)."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


async def serve_stream(
    request: web.Request, call: grpc.aio.UnaryStreamCall[Any, Any], heartbeat_s: float
) -> web.StreamResponse:
    """Answers `request` with the events of `call`; cancels the call however this ends."""
    try:
        metadata = await call.initial_metadata()
        if not _accepted(metadata):
            # Refused before it started: the call has ended (or ends now) with its error.
            code = await call.code()
            if code != grpc.StatusCode.OK:
                return status_response(code, await call.details() or "")
        # No length: chunked over HTTP/1.1, delimited by the connection's end over HTTP/1.0.
        response = web.StreamResponse(status=200, headers=_HEADERS)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await _relay(call, response, heartbeat_s)
            await response.write_eof()
        return response
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc)
    finally:
        call.cancel()


async def _relay(call: grpc.aio.UnaryStreamCall[Any, Any], response: web.StreamResponse, heartbeat_s: float) -> None:
    """Writes the call's messages as events, a keepalive comment whenever `heartbeat_s` passes without one, and the
    final `end` or `error` event."""
    reading: asyncio.Task[Any] | None = None
    try:
        while True:
            if reading is None:
                reading = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({reading}, timeout=heartbeat_s)
            if not done:
                await response.write(KEEPALIVE)
                continue
            finished, reading = reading, None
            try:
                message = finished.result()
            except grpc.aio.AioRpcError as exc:
                await response.write(event("error", status_body(exc.code(), exc.details() or "")))
                return
            if message is _EOF:
                await response.write(event("end", json.dumps({}).encode()))
                return
            await response.write(event("update", response_json(message)))
    finally:
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reading


def _accepted(metadata: Any) -> bool:
    key, value = STREAM_ACCEPTED
    return any(k == key and v == value for k, v in (metadata or ()))

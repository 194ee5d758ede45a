"""Errors of the HTTP/JSON API: a JSON `google.rpc.Status` body with the HTTP status of its gRPC code.

The body is `{"code": <gRPC code number>, "message": "...", "details": []}`. The HTTP status is the code's, as
grpc-gateway maps it (`HTTP_STATUS`), except for the refusals of the HTTP layer itself, which keep the HTTP status
that says what went wrong at that level (`HttpError`): an unknown path is 404 with NOT_FOUND, a method the path
does not take 405 with UNIMPLEMENTED (and `Allow`), a body too large 413 and a body that is not JSON 415, both
with INVALID_ARGUMENT. A 401 carries `WWW-Authenticate: Bearer`.

HttpError                  an answer the HTTP layer gives without calling the service (bad path, method, body)
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import grpc
from aiohttp import web

#: The HTTP status of each gRPC code (grpc-gateway's `HTTPStatusFromCode`); any other code is 500.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

JSON_CONTENT_TYPE = "application/json"


class HttpError(Exception):
    """A request the HTTP layer refuses by itself, before any RPC (its path, method, query or body).

    Args:
        status: the HTTP status.
        code: the gRPC code of the Status body.
        message: what is wrong, naming the parameter or field when there is one.
        headers: extra response headers (`Allow` on a 405).
    """

    def __init__(
        self, status: int, code: grpc.StatusCode, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def invalid(message: str) -> HttpError:
    """400 INVALID_ARGUMENT: a query parameter or the body is not what the RPC's request message allows."""
    return HttpError(400, grpc.StatusCode.INVALID_ARGUMENT, message)


def status_body(code: grpc.StatusCode, message: str) -> bytes:
    """The JSON `google.rpc.Status` of a gRPC status (`details` always empty: the service sends none)."""
    return json.dumps(
        {"code": code.value[0], "message": message, "details": []}, ensure_ascii=False, separators=(",", ":")
    ).encode()


def status_response(
    code: grpc.StatusCode, message: str, *, http_status: int | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The error response of a gRPC status: its HTTP status (or `http_status`), the Status JSON body, and
    `WWW-Authenticate: Bearer` on a 401."""
    status = http_status if http_status is not None else HTTP_STATUS.get(code, 500)
    response = web.Response(status=status, body=status_body(code, message), content_type=JSON_CONTENT_TYPE)
    if headers:
        response.headers.update(headers)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def rpc_error_response(error: grpc.aio.AioRpcError) -> web.Response:
    """The error response of a failed call to the service, with the service's code and message."""
    return status_response(error.code(), error.details() or "")


def http_error_response(error: HttpError) -> web.Response:
    return status_response(error.code, error.message, http_status=error.status, headers=error.headers)

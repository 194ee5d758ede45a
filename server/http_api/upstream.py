"""The HTTP/JSON API's calls to the service's own gRPC server, through its private unix socket
(`server.grpc_api.PrivateSocket`).

Each HTTP request becomes one gRPC call with the caller's `Authorization` header as the `authorization`
metadata (so the API key is checked, scoped and logged by `server.rpc` exactly as over gRPC) and, when the caller
sent one, its `Grpc-Timeout` header as the call's deadline (grpc-gateway's convention: `<digits><unit>`, the unit
one of H, M, S, m, u, n). No deadline otherwise, as for a gRPC caller that sets none: the store's own timeouts
bound a unary call, `max_wait` a stream, and a caller that goes away cancels the call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.http_api.errors import invalid

_TIMEOUT = re.compile(r"^([0-9]{1,8})([HMSmun])$")
_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: Longer deadlines are this one: far past anything a call can take (a stream's `max_wait` is at most an hour), and
#: short enough for gRPC core's clock arithmetic (eight digits of hours overflow it into an expired deadline).
_MAX_DEADLINE_S = 86_400.0
#: Largest metadata value forwarded: gRPC refuses headers past its limit (8 KiB by default) with an error that would
#: not say which.
_MAX_AUTHORIZATION = 4096


def deadline_s(headers: Mapping[str, str]) -> float | None:
    """The caller's deadline from its `Grpc-Timeout` header, in seconds; None when it sent none.

    Raises:
        HttpError: 400 INVALID_ARGUMENT when the header is malformed.
    """
    raw = headers.get("Grpc-Timeout")
    if raw is None:
        return None
    found = _TIMEOUT.match(raw.strip())
    if found is None:
        raise invalid("Grpc-Timeout header: must be up to 8 digits and a unit (H, M, S, m, u, n), e.g. 5S or 500m")
    return min(int(found.group(1)) * _UNIT_S[found.group(2)], _MAX_DEADLINE_S)


def call_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata of a call: the caller's `Authorization` header, when it sent one it could send."""
    authorization = headers.get("Authorization")
    if authorization is None:
        return ()
    if len(authorization) > _MAX_AUTHORIZATION or not (authorization.isascii() and authorization.isprintable()):
        # Not a key the service could know; sent as it is, it would fail the call with a transport error. What
        # the service answers an unknown key is what the caller learns.
        authorization = "Bearer -"
    return (("authorization", authorization),)


class Upstream:
    """One channel to the service's gRPC server and a callable per RPC. Open it inside the running event loop.

    Args:
        target: the private socket's gRPC target (`unix:<path>`).
    """

    def __init__(self, target: str) -> None:
        # No retries: the caller's own client decides them; and no proxy (a unix socket in this process).
        self._channel = grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)])
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}
        self._streaming: dict[str, grpc.aio.UnaryStreamMultiCallable[Any, Any]] = {}
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def unary(self, method: MethodDescriptor) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        callable_ = self._unary.get(method.full_name)
        if callable_ is None:
            callable_ = self._unary[method.full_name] = self._channel.unary_unary(
                _path(method),
                request_serializer=_serialize,
                response_deserializer=GetMessageClass(method.output_type).FromString,
            )
        return callable_

    def streaming(self, method: MethodDescriptor) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        callable_ = self._streaming.get(method.full_name)
        if callable_ is None:
            callable_ = self._streaming[method.full_name] = self._channel.unary_stream(
                _path(method),
                request_serializer=_serialize,
                response_deserializer=GetMessageClass(method.output_type).FromString,
            )
        return callable_

    async def refused_key(
        self, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...]
    ) -> grpc.aio.AioRpcError | None:
        """The service's refusal of the caller's key for `method` (UNAUTHENTICATED, PERMISSION_DENIED), or None.

        For a request the HTTP layer cannot read: the service checks the key and its scope before anything else
        and says nothing more without them, and the HTTP API keeps that order. It sends bytes that are no request
        message, so a call that passes the key check ends INVALID_ARGUMENT and writes nothing.
        """
        probe = self._channel.unary_unary(_path(method), request_serializer=None, response_deserializer=None)
        try:
            await probe(_NOT_A_MESSAGE, metadata=metadata, timeout=_KEY_CHECK_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return exc
        return None

    async def health(self, service: str, timeout_s: float) -> int:
        """The gRPC health service's status of `service` (`HealthCheckResponse.ServingStatus`).

        Raises:
            grpc.aio.AioRpcError: NOT_FOUND for a service it does not know, UNAVAILABLE while the server stops.
        """
        response = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        return int(response.status)

    async def close(self) -> None:
        await self._channel.close(grace=None)


#: A field with number 0, which no protobuf message can hold: the service refuses it as "not a valid request".
_NOT_A_MESSAGE = b"\x00"
_KEY_CHECK_TIMEOUT_S = 5.0


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()

"""The gateway's exceptions, and the one place they become HTTP answers in Xsolla's error shape.

GatewayError
├── ConfigError                   bad settings; the process refuses to start
├── Rejected                      permanent: 4xx, Xsolla does not retry (and may refund an order_paid)
│   ├── InvalidSignature          400 INVALID_SIGNATURE: Authorization missing, malformed or wrong
│   ├── InvalidParameter          400 INVALID_PARAMETER: unparsable body or a required field missing/wrong
│   ├── InvalidUser               400 INVALID_USER: the user directory does not know the player
│   ├── ForbiddenSource           403 INVALID_CLIENT_IP: the sender is outside the allowed networks
│   ├── BodyTimeout               408 INVALID_PARAMETER: the body did not arrive within the request timeout
│   └── BodyTooLarge              413 INVALID_PARAMETER: the body is over the configured limit
└── Temporary                     transient: 503, Xsolla retries (for 12 h, 48 h for refunds)
    ├── EventStoreUnavailable     Redis did not store the event in time
    ├── UserDirectoryUnavailable  the studio's user directory is down, slow or answered oddly
    └── ProcessingTimeout         the request as a whole ran past its timeout after the body arrived

Anything else raised while handling a webhook is a bug: it is answered 500 with a generic body and logged with
its traceback on the server side only (`internal_error_answer`). No answer ever carries a traceback, a secret
or the signature that was sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from core import errors as core_errors

#: Xsolla's generic code for a server-side failure (official PHP SDK: SERVER_ERROR -> 5xx).
SERVER_ERROR = "SERVER_ERROR"


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError, core_errors.ConfigError):
    """The configuration is invalid or unsafe. The message never contains a secret."""


class Rejected(GatewayError):
    """A permanent problem with the request: answered 4xx, so Xsolla stops retrying.

    Attributes:
        status: the HTTP status of the answer.
        code: Xsolla's error code in the answer body.
        result: the `result` label of `gateway_webhooks_total`.
    """

    status = 400
    code = "INVALID_PARAMETER"
    result = "invalid_parameter"


class InvalidSignature(Rejected):
    """The Authorization header is missing, not `Signature <40 hex>`, or does not match the body.

    Args:
        message: what the sender is told.
        detail: what the log line says instead, for operators (e.g. that no secret is configured for the
            project); never sent to the sender.
    """

    code = "INVALID_SIGNATURE"
    result = "invalid_signature"

    def __init__(self, message: str = "", *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class InvalidParameter(Rejected):
    """A correctly signed body that cannot be used: not JSON, or a required field is missing or wrong.

    Args:
        field: the offending field's path in the body (e.g. "order.id", "items[1].quantity"), or "" for the
            body as a whole.
        problem: what is wrong with it, for the answer's message.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}" if field else problem)
        self.field = field


class InvalidUser(Rejected):
    """The user directory says the player does not exist."""

    code = "INVALID_USER"
    result = "invalid_user"


class ForbiddenSource(Rejected):
    """The request came from outside the allowed networks (only when an allow-list is configured)."""

    status = 403
    code = "INVALID_CLIENT_IP"
    result = "forbidden"


class BodyTimeout(Rejected):
    """The body did not arrive within the request timeout."""

    status = 408
    result = "timeout"


class BodyTooLarge(Rejected):
    """The body is larger than the configured limit (announced by Content-Length, or found while reading)."""

    status = 413
    result = "too_large"


class Temporary(GatewayError):
    """A transient failure: answered 503 so Xsolla retries the same notification later."""

    status = 503
    code = SERVER_ERROR
    result = "unavailable"


class EventStoreUnavailable(Temporary):
    """Redis could not store the event in time; nothing was acknowledged."""


class UserDirectoryUnavailable(Temporary):
    """The studio's user directory could not answer (down, slow, or an unexpected status)."""


class ProcessingTimeout(Temporary):
    """Handling the request ran past the request timeout after its body had arrived."""


@dataclass(frozen=True)
class ErrorAnswer:
    """An HTTP error answer: status, Xsolla-shaped JSON body, and the metrics `result` label."""

    status: int
    body: bytes
    result: str


def error_body(code: str, message: str) -> bytes:
    """Xsolla's error body: `{"error": {"code": ..., "message": ...}}` as compact JSON bytes."""
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


# The message each class answers with when raised without one of its own.
_DEFAULT_MESSAGES: dict[type[GatewayError], str] = {
    InvalidSignature: "Invalid signature",
    InvalidUser: "Invalid user",
    ForbiddenSource: "The request does not come from an allowed network",
    BodyTimeout: "The request body was not received in time",
    BodyTooLarge: "The request body is too large",
    EventStoreUnavailable: "The notification could not be stored; retry later",
    UserDirectoryUnavailable: "The user directory is unavailable; retry later",
    ProcessingTimeout: "The notification could not be processed in time; retry later",
}


def answer_for(error: Rejected | Temporary) -> ErrorAnswer:
    """The HTTP answer for a deliberate rejection or a transient failure.

    Temporary failures always answer with their class's generic message: their details (a Redis error, the
    directory's URL) go to the log, not to the caller.
    """
    message = _DEFAULT_MESSAGES.get(type(error), "")
    if isinstance(error, Rejected) and str(error):
        message = str(error)
    return ErrorAnswer(error.status, error_body(error.code, message or "Invalid request"), error.result)


def internal_error_answer() -> ErrorAnswer:
    """The answer to an unexpected exception: 500 with a generic body (Xsolla retries 5xx)."""
    return ErrorAnswer(500, error_body(SERVER_ERROR, "Internal error"), "error")


def http_error_answer(status: int, reason: str) -> bytes:
    """The body of an HTTP-level error (404, 405, ...) raised by the router, in the same shape."""
    code = "INVALID_PARAMETER" if 400 <= status < 500 else SERVER_ERROR
    return error_body(code, reason)

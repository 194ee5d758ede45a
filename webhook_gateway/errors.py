"""The gateway's exceptions, and the one place they become HTTP answers (in the provider's answer shape).

WebhookError (core.webhooks)
├── ConfigError                   bad settings; the process refuses to start (also a core.errors.ConfigError)
├── Rejected (core.webhooks)      permanent: 4xx, the sender does not retry (Xsolla may refund an order_paid)
│   ├── InvalidSignature          400: Authorization missing, malformed or wrong (core.webhooks)
│   ├── InvalidParameter          400: unparsable body or a required field missing/wrong (core.webhooks)
│   ├── InvalidUser               400: the user directory does not know the player
│   ├── ForbiddenSource           403: the sender is outside the allowed networks
│   ├── BodyTimeout               408: the body did not arrive within the request timeout
│   └── BodyTooLarge              413: the body is over the configured limit
└── Temporary (core.webhooks)     transient: 503, the sender retries (Xsolla: for 12 h, 48 h for refunds)
    ├── EventStoreUnavailable     Redis did not store the event in time
    │   └── EventNotDurable       stored, but not durable (fsynced, replicated) within GATEWAY_DURABILITY_TIMEOUT_MS
    ├── UserDirectoryUnavailable  the studio's user directory is down, slow or answered oddly
    └── ProcessingTimeout         the request as a whole ran past its timeout after the body arrived

Each class carries its HTTP status and its `result` label; the provider turns (status, result, message) into
its error body (`WebhookProvider.error_body`). Anything else raised while handling a webhook is a bug: it is
answered 500 with a generic body and logged with its traceback on the server side only (`internal_error_answer`).
No answer ever carries a traceback, a secret or the signature that was sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core import errors as core_errors
from core.webhooks import InvalidParameter, InvalidSignature, Rejected, Temporary, WebhookError

__all__ = [
    "BodyTimeout",
    "BodyTooLarge",
    "ConfigError",
    "ErrorAnswer",
    "EventNotDurable",
    "EventStoreUnavailable",
    "ForbiddenSource",
    "InvalidParameter",
    "InvalidSignature",
    "InvalidUser",
    "ProcessingTimeout",
    "Rejected",
    "Temporary",
    "UserDirectoryUnavailable",
    "WebhookError",
    "answer_for",
    "http_error_answer",
    "internal_error_answer",
]

#: The provider's error body for (status, result, message): `WebhookProvider.error_body`.
ErrorBody = Callable[[int, str, str], bytes]


class ConfigError(WebhookError, core_errors.ConfigError):
    """The configuration is invalid or unsafe. The message never contains a secret."""


class InvalidUser(Rejected):
    """The user directory says the player does not exist."""

    result = "invalid_user"


class ForbiddenSource(Rejected):
    """The request came from outside the allowed networks (only when an allow-list is configured)."""

    status = 403
    result = "forbidden"


class BodyTimeout(Rejected):
    """The body did not arrive within the request timeout."""

    status = 408
    result = "timeout"


class BodyTooLarge(Rejected):
    """The body is larger than the configured limit (announced by Content-Length, or found while reading)."""

    status = 413
    result = "too_large"


class EventStoreUnavailable(Temporary):
    """Redis could not store the event in time; nothing was acknowledged."""


class EventNotDurable(EventStoreUnavailable):
    """The event is in Redis but not durable as configured in time; nothing was acknowledged (the retry finds it
    stored and waits again)."""

    result = "not_durable"


class UserDirectoryUnavailable(Temporary):
    """The studio's user directory could not answer (down, slow, or an unexpected status)."""


class ProcessingTimeout(Temporary):
    """Handling the request ran past the request timeout after its body had arrived."""


@dataclass(frozen=True)
class ErrorAnswer:
    """An HTTP error answer: status, the provider's JSON body, and the metrics `result` label."""

    status: int
    body: bytes
    result: str


# The message each class answers with when raised without one of its own.
_DEFAULT_MESSAGES: dict[type[WebhookError], str] = {
    InvalidSignature: "Invalid signature",
    InvalidUser: "Invalid user",
    ForbiddenSource: "The request does not come from an allowed network",
    BodyTimeout: "The request body was not received in time",
    BodyTooLarge: "The request body is too large",
    EventStoreUnavailable: "The notification could not be stored; retry later",
    EventNotDurable: "The notification could not be stored; retry later",
    UserDirectoryUnavailable: "The user directory is unavailable; retry later",
    ProcessingTimeout: "The notification could not be processed in time; retry later",
}


def answer_for(error: Rejected | Temporary, body: ErrorBody) -> ErrorAnswer:
    """The HTTP answer for a deliberate rejection or a transient failure, with the provider's `body`.

    Temporary failures always answer with their class's generic message: their details (a Redis error, the
    directory's URL) go to the log, not to the caller.
    """
    message = _DEFAULT_MESSAGES.get(type(error), "")
    if isinstance(error, Rejected) and str(error):
        message = str(error)
    return ErrorAnswer(error.status, body(error.status, error.result, message or "Invalid request"), error.result)


def internal_error_answer(body: ErrorBody) -> ErrorAnswer:
    """The answer to an unexpected exception: 500 with a generic body (the sender retries 5xx)."""
    return ErrorAnswer(500, body(500, "error", "Internal error"), "error")


def http_error_answer(status: int, reason: str, body: ErrorBody) -> bytes:
    """The body of an HTTP-level error (404, 405, ...) raised by the router, in the same shape."""
    return body(status, "invalid_parameter" if 400 <= status < 500 else "error", reason)

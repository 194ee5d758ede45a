"""The seam between the webhook gateway and a payment provider: what the gateway asks of a provider.

A provider package (today `providers.xsolla`) implements `WebhookProvider`: it authenticates a request (from its
headers before the body is read, then over the raw body bytes as they arrive, and only then parses them),
turns it into a `Notification` (store a provider-neutral `entitlements.v1.WebhookEvent`, or ask the studio's
user directory about a player), and shapes the answers its sender expects (error bodies, a found player). The
gateway (`webhook_gateway`) knows nothing else about the provider, so a second provider is a new package
implementing this protocol, chosen by the gateway's composition root.

The errors a provider raises while authenticating and interpreting are the roots of the gateway's error tree
(`webhook_gateway.errors` draws all of it):

WebhookError
├── Rejected              permanent: answered 4xx, the sender does not retry
│   ├── InvalidSignature  the signature is missing, malformed or wrong
│   └── InvalidParameter  a correctly signed body that cannot be used; `field` names what is wrong
└── Temporary             transient: answered 503, the sender retries later
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from entitlements.v1 import events_pb2


class WebhookError(Exception):
    """Base class of every error the gateway (or its provider) raises on purpose about a request."""


class Rejected(WebhookError):
    """A permanent problem with the request: answered 4xx, so the sender stops retrying.

    Attributes:
        status: the HTTP status of the answer.
        result: the `result` label of `gateway_webhooks_total`, also what the provider's answer shape is
            chosen by (`WebhookProvider.error_body`).
    """

    status = 400
    result = "invalid_parameter"


class InvalidSignature(Rejected):
    """The signature is missing, malformed, or does not match the body.

    Args:
        message: what the sender is told.
        detail: what the log line says instead, for operators (e.g. that no secret is configured for the
            project); never sent to the sender.
    """

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


class Temporary(WebhookError):
    """A transient failure: answered 503 so the sender retries the same notification later."""

    status = 503
    result = "unavailable"


class Action(enum.Enum):
    """What a notification asks of the gateway."""

    #: Store the event (with the raw body) in the event log, then acknowledge.
    STORE = "store"
    #: Answer whether the player exists (e.g. Xsolla's `user_validation`); nothing is stored.
    VALIDATE_USER = "validate_user"
    #: Find a player by a public id and answer with its ids (e.g. Xsolla's `user_search`); nothing is stored.
    SEARCH_USER = "search_user"


@dataclass(frozen=True)
class UserQuery:
    """A question for the user directory.

    Attributes:
        provider: the provider's name (`WebhookProvider.name`).
        project_id: the provider's project.
        user_id: the player id to validate (empty for a search).
        public_id: the public id to search by (empty for a validation).
        user: the user object exactly as the provider sent it (email, country, ...), for the directory to use.
    """

    provider: str
    project_id: int
    user_id: str = ""
    public_id: str = ""
    user: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FoundUser:
    """A player found by a search. Empty strings are left out of the answer."""

    id: str
    public_id: str = ""
    name: str = ""
    email: str = ""
    phone: str = ""


@dataclass(frozen=True)
class Verified:
    """A request body whose signature checked out.

    Attributes:
        raw: the body bytes as received.
        document: the parsed body, or None when it is not a JSON object (reported after verification).
        project_id: the project the signature decided (the URL's, or one that the secret which signed the body
            signs for); None when it decided none: an event to store is then refused, a question for the user
            directory is still answered.
    """

    raw: bytes
    document: dict[str, Any] | None
    project_id: int | None


@dataclass(frozen=True)
class Notification:
    """An interpreted notification.

    Attributes:
        action: what to do with it.
        notification_type: the provider's type as sent (e.g. "order_paid").
        type_label: a bounded version of it for metric labels (unknown names become "other").
        project_id: the provider's project, as the signature decided it (`Verified.project_id`); 0 only for a
            question for the user directory whose project the signature did not decide.
        event: the event to store (STORE only).
        query: the question for the user directory (VALIDATE_USER and SEARCH_USER only).
        known: False for a type this version stores without interpreting it.
    """

    action: Action
    notification_type: str
    type_label: str
    project_id: int
    event: events_pb2.WebhookEvent | None = None
    query: UserQuery | None = None
    known: bool = True


class Authentication(Protocol):
    """One request's authentication in progress: begun from its headers, fed its body as it arrives, decided
    once the whole body is in. Nothing in the body is parsed before `verify` has checked the signature."""

    def update(self, chunk: bytes) -> None:
        """Takes the next part of the body, as received (e.g. to hash it while the rest arrives)."""
        ...

    def verify(self, raw: bytes) -> Verified:
        """Checks the signature over the whole body, and only then parses it.

        Args:
            raw: the whole body: every chunk given to `update`, in order.

        Raises:
            InvalidSignature: the signature does not match the body under a secret that may sign it.
        """
        ...


class WebhookProvider(Protocol):
    """One provider's webhook protocol: how it signs, what its notifications mean, how it wants answers.

    Attributes:
        name: the provider's name in events, user queries and the default webhook path (`/webhooks/<name>`).
    """

    name: str

    def authentication(self, headers: Mapping[str, str], route_project: str | None) -> Authentication:
        """Begins authenticating a request from its headers alone, before its body is read.

        A cheap check: a request refused here is answered without its body being read.

        Args:
            headers: the request headers (case-insensitive mapping).
            route_project: the project id taken from the URL path, when the URL carried one.

        Raises:
            InvalidSignature: the signature is missing or malformed, or no secret could verify the request.
        """
        ...

    def interpret(self, verified: Verified, received_at_ns: int) -> Notification:
        """Turns a verified body into a `Notification`.

        Raises:
            InvalidParameter: the body is not usable (not JSON, a required field missing), naming the field.
        """
        ...

    def type_label(self, verified: Verified) -> str:
        """A bounded metric label for the verified body's type, even when it cannot be interpreted."""
        ...

    def error_body(self, status: int, result: str, message: str) -> bytes:
        """The body of an error answer in the provider's shape (JSON).

        Args:
            status: the HTTP status answered.
            result: why, as the gateway's `result` label ("invalid_signature", "invalid_parameter",
                "invalid_user", "forbidden", "timeout", "too_large", "unavailable", "error").
            message: a message for the sender (never a secret, a signature or a traceback).
        """
        ...

    def user_answer(self, found: FoundUser) -> bytes:
        """The body (JSON) of the answer to a user search that found `found`."""
        ...

    def describe(self) -> Mapping[str, object]:
        """What the gateway's start-up log line says about the provider's configuration (never a secret)."""
        ...

    def warnings(self) -> Mapping[str, str]:
        """What an operator should fix in the provider's configuration, by a short upper-case code: the gateway
        logs each once at start-up (never a secret)."""
        ...

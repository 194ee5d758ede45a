"""What the gateway does with a notification, independent of which provider sent it.

A provider module (today `webhook_gateway.xsolla`) implements `Provider`: it authenticates a raw request body
and turns it into a `Notification`, which says what to do: store a provider-neutral `WebhookEvent`, or ask the
studio's user directory about a player. The HTTP side (`webhook_gateway.receiver`) knows nothing else about
the provider, so a second provider is a new module implementing this protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from entitlements.v1 import events_pb2


class Action(enum.Enum):
    """What a notification asks of the gateway."""

    #: Store the event (with the raw body) in the event log, then acknowledge.
    STORE = "store"
    #: Answer whether the player exists (Xsolla `user_validation`); nothing is stored.
    VALIDATE_USER = "validate_user"
    #: Find a player by a public id and answer with its ids (Xsolla `user_search`); nothing is stored.
    SEARCH_USER = "search_user"


@dataclass(frozen=True)
class UserQuery:
    """A question for the user directory.

    Attributes:
        provider: "xsolla".
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
        project_id: the project whose secret verified it (None: the default secret, project not known yet).
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
        project_id: the provider's project (0 when the notification carried none).
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


class Provider(Protocol):
    """One webhook provider's protocol: how it signs, and what its notifications mean."""

    name: str

    def authenticate(self, raw: bytes, headers: Mapping[str, str], route_project: str | None) -> Verified:
        """Verifies the request's signature over `raw`.

        Args:
            raw: the body bytes.
            headers: the request headers (case-insensitive mapping).
            route_project: the project id taken from the URL path, when the URL carried one.

        Raises:
            InvalidSignature: missing, malformed or wrong signature.
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

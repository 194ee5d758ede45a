"""Request validation: protobuf requests in, validated commands out, or InvalidArgument naming the field.

Nothing reaches the store before its request has passed through here, so an invalid request never writes. The
request's project is resolved first, for every RPC (`resolve_project`, called by `server.rpc`).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field, replace

from google.protobuf.duration_pb2 import Duration

from core.limits import (
    CONTROL_CHARACTERS,
    MAX_GRANT_QUANTITY,
    all_identifiers,
    identifier_problem,
    quantity_problem,
)
from core.logs import user_ref
from core.projects import Projects, project_id_problem
from entitlements.v1 import entitlements_pb2 as pb
from server.auth import DEV_PRINCIPAL, Principal
from server.catalog import CatalogItem
from server.errors import InvalidArgument, PermissionDenied
from server.store import CONSUMABLE, PERMANENT, TIME_LIMITED, GrantCommand, RevokeCommand

MAX_REASON_BYTES = 1024
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_BYTES = 64
MAX_METADATA_VALUE_BYTES = 1024
MAX_PERIOD_MS = 36_500 * 86_400_000
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
# The longest token ListEntitlements makes is about 2,100 characters (a 256-byte sku of characters JSON escapes
# as \uXXXX); anything longer was not made here.
MAX_PAGE_TOKEN_CHARS = 4096
_PAGE_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
DEFAULT_SUBSCRIPTION_LIMIT, MAX_SUBSCRIPTION_LIMIT = 15, 100
_LOCALE = re.compile(r"^[A-Za-z]{2}$")
_KINDS = frozenset({0, CONSUMABLE, PERMANENT, TIME_LIMITED})


#: A request's "not served" message lists the served projects when there are at most this many.
_LISTED_PROJECTS_IN_MESSAGES = 8


def resolve_project(requested: int, principal: Principal, projects: Projects) -> int:
    """The project a request acts on: `requested`, or for 0 the caller's single project, else the default one.

    Args:
        requested: the request's `project_id`.
        principal: the authenticated caller, with the projects its key is bound to.
        projects: the projects this service serves, and its default project.

    Raises:
        InvalidArgument: `project_id` is negative, is 0 and neither the key nor the default gives a project, or
            names a project the service does not serve.
        PermissionDenied: the key is not bound to the project.
    """
    if requested == 0:
        project_id = principal.single_project
        if project_id is None:
            project_id = projects.default_project
            if project_id is None:
                if principal is DEV_PRINCIPAL:
                    caller = "the caller (development mode, no API key) may use every project"
                else:
                    bound = "several projects" if principal.projects is not None else "every project"
                    caller = f"the API key is bound to {bound}"
                raise InvalidArgument(
                    "project_id", f"is 0, {caller} and the service has no default project; set project_id"
                )
            if not principal.may_use(project_id):
                raise InvalidArgument(
                    "project_id",
                    f"is 0, and the API key is not bound to the service's default project {project_id}; set project_id",
                )
    else:
        problem = project_id_problem(requested)
        if problem is not None:
            raise InvalidArgument("project_id", f"{problem}, not {requested} (0: the key's or default project)")
        project_id = requested
    # The key's binding is checked before the project list: a key learns nothing about projects it may not use.
    if not principal.may_use(project_id):
        raise PermissionDenied(f"API key '{principal.name}' is not bound to project {project_id}")
    if not projects.serves(project_id):
        served = ""
        if projects.listed and len(projects.ids) <= _LISTED_PROJECTS_IN_MESSAGES:
            served = f" (it serves {', '.join(map(str, projects.ids))})"
        raise InvalidArgument("project_id", f"{project_id} is not a project this service serves{served}")
    return project_id


def identifier(name: str, value: str) -> str:
    """Checks a required id-like field against `core.limits` (1..256 bytes of UTF-8, no control characters)."""
    problem = identifier_problem(value)
    if problem is not None:
        raise InvalidArgument(name, problem)
    return value


def _bounded_text(name: str, value: str, limit: int) -> str:
    if len(value.encode()) > limit:
        raise InvalidArgument(name, f"must be at most {limit} bytes")
    return value


def _duration_parts(name: str, duration: Duration) -> tuple[int, int]:
    """The seconds and nanos of a well-formed Duration (nanos within ±999,999,999, of the seconds' sign)."""
    seconds, nanos = duration.seconds, duration.nanos
    if not -999_999_999 <= nanos <= 999_999_999 or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument(name, "is not a valid google.protobuf.Duration")
    return seconds, nanos


#: For the other modules that read a Duration field.
duration_parts = _duration_parts


def _duration_ms(name: str, duration: Duration) -> int:
    seconds, nanos = _duration_parts(name, duration)
    ms = seconds * 1000 + int(nanos / 1_000_000)
    if ms <= 0:
        raise InvalidArgument(name, "must be positive (at least 1 ms)")
    if ms > MAX_PERIOD_MS:
        raise InvalidArgument(name, "must be at most 36,500 days")
    return ms


def grant_command(request: pb.GrantRequest, project_id: int) -> GrantCommand:
    """Validates a GrantRequest, to be applied in `project_id` (resolved by `resolve_project`). A time-limited grant
    without a duration is left for `with_catalog_period`."""
    user_id = identifier("user_id", request.user_id)
    sku = identifier("sku", request.sku)
    key = identifier("idempotency_key", request.idempotency_key)
    kind = request.kind
    if kind not in _KINDS:
        raise InvalidArgument("kind", f"unknown EntitlementKind value {kind}")
    quantity = request.quantity if request.HasField("quantity") else 1
    problem = quantity_problem(quantity, MAX_GRANT_QUANTITY)
    if problem is not None:
        raise InvalidArgument("quantity", problem)
    period_ms = 0
    if request.HasField("duration"):
        period_ms = _duration_ms("duration", request.duration)
        if kind in (CONSUMABLE, PERMANENT):
            raise InvalidArgument("duration", "only time-limited items take a duration")
        if quantity * period_ms > MAX_PERIOD_MS:
            raise InvalidArgument("quantity", "quantity x duration must be at most 36,500 days")
    if kind == PERMANENT and quantity != 1:
        raise InvalidArgument("quantity", "must be 1 for permanent items")
    reason = _bounded_text("reason", request.reason, MAX_REASON_BYTES)
    if len(request.metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument("metadata", f"must have at most {MAX_METADATA_ENTRIES} entries")
    for meta_key, meta_value in request.metadata.items():
        if not meta_key or len(meta_key.encode()) > MAX_METADATA_KEY_BYTES:
            raise InvalidArgument("metadata", f"keys must be 1..{MAX_METADATA_KEY_BYTES} bytes")
        _bounded_text(f"metadata[{meta_key}]", meta_value, MAX_METADATA_VALUE_BYTES)
    return GrantCommand(
        project_id=project_id,
        user_id=user_id,
        sku=sku,
        kind=kind,
        quantity=quantity,
        period_ms=period_ms,
        idempotency_key=key,
        reason=reason,
        metadata=dict(request.metadata),
    )


def takes_catalog_period(command: GrantCommand) -> bool:
    """Whether a validated grant may take its period from the catalog: no duration, kind unspecified or
    time-limited."""
    return command.period_ms == 0 and command.kind in (0, TIME_LIMITED)


def with_catalog_period(command: GrantCommand, item: CatalogItem | None) -> GrantCommand:
    """The grant with the catalog's period when the catalog knows the sku as time-limited (a request's duration
    always wins; the other kinds keep the Grant rules).

    Raises:
        InvalidArgument: a time-limited grant without a duration whose sku the catalog does not know as
            time-limited.
    """
    if item is not None and item.kind == TIME_LIMITED:
        if command.quantity * item.period_ms > MAX_PERIOD_MS or command.quantity * item.period_months > 1200:
            raise InvalidArgument("quantity", "quantity x the catalog's period must be at most 36,500 days")
        return replace(command, period_ms=item.period_ms, period_months=item.period_months, period_from_catalog=True)
    if command.kind == TIME_LIMITED:
        raise InvalidArgument("duration", "is required for time-limited items the catalog does not know")
    return command


def revoke_command(request: pb.RevokeRequest, project_id: int) -> RevokeCommand:
    """Validates a RevokeRequest, to be applied in `project_id` (resolved by `resolve_project`)."""
    return RevokeCommand(
        project_id=project_id,
        user_id=identifier("user_id", request.user_id),
        sku=identifier("sku", request.sku),
        idempotency_key=identifier("idempotency_key", request.idempotency_key),
        reason=_bounded_text("reason", request.reason, MAX_REASON_BYTES),
    )


#: The most (player, sku) pairs one CheckEntitlements call may check.
MAX_CHECKS = 1000


def check_pairs(request: pb.CheckEntitlementsRequest) -> list[tuple[str, str]]:
    """The (user_id, sku) pairs of a CheckEntitlementsRequest, in its order, every one validated before any is
    read.

    Raises:
        InvalidArgument: no pair or more than `MAX_CHECKS` (naming `checks`), or a bad identifier (naming it,
            `checks[3].sku`).
    """
    checks = request.checks
    if not checks:
        raise InvalidArgument("checks", "must hold at least one (user_id, sku) pair")
    if len(checks) > MAX_CHECKS:
        raise InvalidArgument("checks", f"must hold at most {MAX_CHECKS:,} pairs, not {len(checks):,}")
    pairs = [(check.user_id, check.sku) for check in checks]
    # A batch names the same players and skus many times (a lobby, a shop page): each value is checked once, all of
    # them together; only a batch with a bad one is walked in order to name the first.
    if not all_identifiers({value for pair in pairs for value in pair}):
        for index, (user_id, sku) in enumerate(pairs):
            identifier(f"checks[{index}].user_id", user_id)
            identifier(f"checks[{index}].sku", sku)
    return pairs


@dataclass(frozen=True)
class PageQuery:
    """A validated ListEntitlements request."""

    project_id: int
    user_id: str
    page_size: int
    after_sku: str | None
    include_expired: bool


def page_query(request: pb.ListEntitlementsRequest, project_id: int) -> PageQuery:
    """Validates a ListEntitlementsRequest in `project_id`, decoding its page token."""
    user_id = identifier("user_id", request.user_id)
    size = request.page_size or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, not {request.page_size}")
    after = None
    if request.page_token:
        after = _decode_page_token(request.page_token, project_id, user_id, request.include_expired)
    return PageQuery(project_id, user_id, size, after, request.include_expired)


def encode_page_token(project_id: int, user_id: str, last_sku: str, include_expired: bool) -> str:
    """An opaque token continuing a listing after `last_sku`, bound to the project, the player and the filter."""
    fields = {"p": project_id, "u": user_ref(user_id), "a": last_sku, "x": include_expired}
    data = json.dumps(fields, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def _decode_page_token(token: str, project_id: int, user_id: str, include_expired: bool) -> str:
    # The bound comes first: what follows is base64 and JSON, whose work (and nesting) grows with the input.
    if len(token) > MAX_PAGE_TOKEN_CHARS or not _PAGE_TOKEN.fullmatch(token):
        raise InvalidArgument("page_token", "is not a token returned by ListEntitlements")
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    except (ValueError, RecursionError):  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidArgument("page_token", "is not a token returned by ListEntitlements") from None
    if not isinstance(data, dict) or not isinstance(data.get("a"), str) or not isinstance(data.get("x"), bool):
        raise InvalidArgument("page_token", "is not a token returned by ListEntitlements")
    if data.get("p") != project_id or data.get("u") != user_ref(user_id) or data["x"] != include_expired:
        raise InvalidArgument("page_token", "belongs to a different project, player or include_expired setting")
    after: str = data["a"]
    return after


#: A ledger entry id as Redis streams write it, `<ms>-<sequence>`.
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_NOT_FROM_LIST_LEDGER = "is not a token returned by ListLedger"


@dataclass(frozen=True)
class LedgerQuery:
    """A validated ListLedger request: the player, the page size, and the page token as it came (decoded by
    `server.ledger_view.ledger_page`, which binds it to the project and the player)."""

    project_id: int
    user_id: str
    page_size: int
    page_token: str


def ledger_query(request: pb.ListLedgerRequest, project_id: int) -> LedgerQuery:
    """Validates a ListLedgerRequest in `project_id` (its page token is checked when the page is read)."""
    user_id = identifier("user_id", request.user_id)
    return LedgerQuery(project_id, user_id, ledger_page_size(request.page_size), request.page_token)


def ledger_page_size(requested: int) -> int:
    """A ledger page's size: `requested`, or the default for 0.

    Raises:
        InvalidArgument: naming `page_size`, outside 0..500.
    """
    size = requested or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, not {requested}")
    return size


def encode_ledger_token(project_id: int, user_id: str, last_entry_id: str) -> str:
    """An opaque token continuing a player's ledger after (older than) `last_entry_id`, bound to the project and
    the player."""
    data = json.dumps({"p": project_id, "u": user_ref(user_id), "l": last_entry_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_ledger_token(token: str, project_id: int, user_id: str) -> str:
    """The entry id a ledger page token continues after.

    Raises:
        InvalidArgument: naming `page_token`, when ListLedger did not make it, or made it for another project or
            player.
    """
    # The bound comes first: what follows is base64 and JSON, whose work (and nesting) grows with the input.
    if len(token) > MAX_PAGE_TOKEN_CHARS or not _PAGE_TOKEN.fullmatch(token):
        raise InvalidArgument("page_token", _NOT_FROM_LIST_LEDGER)
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    except (ValueError, RecursionError):  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidArgument("page_token", _NOT_FROM_LIST_LEDGER) from None
    if not isinstance(data, dict) or not isinstance(data.get("l"), str) or not _ENTRY_ID.fullmatch(data["l"]):
        raise InvalidArgument("page_token", _NOT_FROM_LIST_LEDGER)
    if data.get("p") != project_id or data.get("u") != user_ref(user_id):
        raise InvalidArgument("page_token", "belongs to a different project or player")
    entry_id: str = data["l"]
    return entry_id


@dataclass(frozen=True)
class SubscriptionQuery:
    """A validated ListSubscriptions request."""

    project_id: int
    user_id: str
    limit: int
    offset: int
    locale: str
    include_inactive: bool


def subscription_query(request: pb.ListSubscriptionsRequest, project_id: int) -> SubscriptionQuery:
    """Validates a ListSubscriptionsRequest in `project_id`."""
    user_id = identifier("user_id", request.user_id)
    limit = request.limit or DEFAULT_SUBSCRIPTION_LIMIT
    if not 1 <= limit <= MAX_SUBSCRIPTION_LIMIT:
        raise InvalidArgument("limit", f"must be between 0 and {MAX_SUBSCRIPTION_LIMIT}, not {request.limit}")
    if request.offset < 0:
        raise InvalidArgument("offset", f"must not be negative, not {request.offset}")
    if request.locale and not _LOCALE.match(request.locale):
        raise InvalidArgument("locale", "must be an ISO 639-1 code such as 'en'")
    return SubscriptionQuery(
        project_id, user_id, limit, request.offset, request.locale.lower(), request.include_inactive
    )


MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True)
class OrderWatch:
    """A validated GetOrderStatus request.

    Attributes:
        project_id: the provider's project the order belongs to (resolved by `resolve_project`).
        token: the player's token, or "" (then only webhooks feed the stream). Kept out of `repr()`.
        max_wait_s: how long this stream follows the order.
    """

    order_id: str
    user_id: str
    project_id: int
    token: str = field(repr=False)
    max_wait_s: float


def order_watch(
    request: pb.GetOrderStatusRequest,
    project_id: int,
    *,
    default_max_wait_s: float,
    max_wait_limit_s: float,
) -> OrderWatch:
    """Validates a GetOrderStatusRequest in `project_id`.

    Args:
        project_id: the request's project, resolved by `resolve_project`.
        default_max_wait_s: `max_wait` when the request does not set it.
        max_wait_limit_s: the longest `max_wait` a request may ask for.
    """
    order_id = identifier("order_id", request.order_id)
    user_id = identifier("user_id", request.user_id)
    token = request.token
    if token:
        if len(token.encode()) > MAX_TOKEN_BYTES:
            raise InvalidArgument("token", f"must be at most {MAX_TOKEN_BYTES} bytes")
        if CONTROL_CHARACTERS.search(token) or token != token.strip():
            raise InvalidArgument("token", "must not contain control characters or surrounding spaces")
    max_wait_s = default_max_wait_s
    if request.HasField("max_wait"):
        seconds, nanos = _duration_parts("max_wait", request.max_wait)
        max_wait_s = seconds + nanos / 1e9
        if max_wait_s <= 0:
            raise InvalidArgument("max_wait", "must be positive")
        if max_wait_s > max_wait_limit_s:
            raise InvalidArgument("max_wait", f"must be at most {max_wait_limit_s:g} s, not {max_wait_s:g} s")
    return OrderWatch(order_id, user_id, project_id, token, max_wait_s)

"""The admin order search (Shop Builder), as Xsolla's published spec states it, for tests of reconciliation:

    POST /api/v3/project/{project_id}/admin/order/search
         {"limit": 1..10 (default 10), "offset": >= 0 (default 0), "created_date_from"?, "created_date_until"?}
    ->   {"orders": [...], "total_items_count": n, "has_more": bool}

The orders of that project created in the range (both ends included, compared with the exact creation time, so a
client that rounds its bounds inwards loses orders at the edges; a bound left out is open), "arranged from the
earliest to the latest creation date" as the spec says, then paged by `offset` and `limit`.
Each order: `order_id`, `project_id`, `status`, `date_created` (ISO 8601), `mode` (`default`|`sandbox`), `is_free`,
`invoice_id`, `price`, `user` (`country`, `email`, `region_id`, and `id` only with `include_user_id`: one version
of the spec lists it, another does not), `items` (`order_item_id`, `item_id`, `sku`, `type`, `quantity`,
`is_free`, `is_bonus`, `region_id`, `tax_category`, `price` (per unit, left out for a free item), `description`),
`promotions`, `coupons`.

Basic auth as the admin catalog (`xsolla_simulator.admin_api`): else 401 with `errorCode` 1020. A malformed body
(a `limit` out of 1..10, a negative `offset`, a date that is not ISO 8601) is 422 with `errorCode` 1102. For
tests: a rate limit per project (a token bucket: `rate_limit(per_s=, burst=)`), answered 429 with `Retry-After`
in whole seconds; the next N requests answered with a chosen status; every request recorded (`calls`).

Control (Python: `XsollaSimulator.order_search`; HTTP, without authentication):

    POST /_sim/order-search/rate-limit  {"per_s": number | null, "burst"?}              -> {}
    POST /_sim/order-search/faults      {"times"?, "status"?, "retry_after"?}           -> {}
    PUT  /_sim/order-search/settings    {"include_user_id"}                             -> {}
    GET  /_sim/order-search/calls                                                       -> [call]
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from aiohttp import web

from xsolla_simulator.admin_api import AUTH_ERROR, AdminAuth, store_error
from xsolla_simulator.control import guard, integer, read_body
from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.orders import OrderBook, SimOrder, plain

SEARCH_ROUTE: Final = "/api/v3/project/{project_id}/admin/order/search"
#: The API's largest page.
MAX_LIMIT: Final = 10
_INVALID: Final = 1102
_RATE_LIMITED: Final = 1429  # not captured from Xsolla: a stand-in


@dataclass(frozen=True)
class SearchCall:
    """One order search request as the simulator saw it.

    Attributes:
        limit, offset: as asked (None when missing or malformed).
        at: `loop.time()` when it arrived.
        status: the HTTP status answered.
        created_from, created_until: the range's bounds as sent (None when absent or not strings).
    """

    project_id: int
    limit: int | None
    offset: int | None
    at: float
    status: int
    created_from: str | None = None
    created_until: str | None = None


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: str | None


@dataclass
class _Bucket:
    tokens: float
    updated: float


class OrderSearchApi:
    """The admin order search over the simulator's orders, for every project it serves.

    Attributes:
        include_user_id: answer `user.id` (the order's player); False by default, as one version of the published
            spec shows `user` without it.
    """

    def __init__(self, orders: OrderBook, auth: AdminAuth, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.include_user_id = False
        self.calls: list[SearchCall] = []
        self._orders = orders
        self._auth = auth
        self._clock = clock
        self._faults: list[_Fault] = []
        self._rate: tuple[float, int] | None = None
        self._buckets: dict[int, _Bucket] = {}

    def add_routes(self, app: web.Application, *, control: bool) -> None:
        """Adds the search (and, with `control`, its `/_sim/order-search` control routes) to `app`."""
        app.router.add_post(SEARCH_ROUTE, self._search)
        if control:
            app.router.add_post("/_sim/order-search/rate-limit", guard(self._control_rate_limit))
            app.router.add_post("/_sim/order-search/faults", guard(self._control_fail))
            app.router.add_put("/_sim/order-search/settings", guard(self._control_settings))
            app.router.add_get("/_sim/order-search/calls", guard(self._control_calls))

    # --- control --------------------------------------------------------------------------------------------

    def rate_limit(self, per_s: float | None, *, burst: int = 1) -> None:
        """Limits each project to `per_s` requests per second on average, `burst` at once (None: no limit).
        Requests over it are answered 429 with `Retry-After`: the whole seconds until the next one is allowed.

        Raises:
            InvalidRequest: `per_s` not > 0 or `burst` < 1.
        """
        if per_s is not None and (not per_s > 0 or not math.isfinite(per_s) or burst < 1):
            raise InvalidRequest("per_s must be > 0 (or None for no limit) and burst >= 1")
        self._rate = None if per_s is None else (float(per_s), burst)
        self._buckets.clear()

    def fail(self, times: int = 1, status: int = 503, *, retry_after: int | str | None = None) -> None:
        """Answers the next `times` authorized requests with `status` (and `Retry-After: retry_after` when set:
        seconds, or any text such as an HTTP date).

        Raises:
            InvalidRequest: `times` < 1 or `status` not an HTTP error status.
        """
        if times < 1 or not 400 <= status <= 599:
            raise InvalidRequest("times must be >= 1 and status an HTTP error status")
        self._faults.append(_Fault(times, status, None if retry_after is None else str(retry_after)))

    def calls_for(self, project_id: int) -> list[SearchCall]:
        """The requests seen for a project, oldest first."""
        return [call for call in self.calls if call.project_id == project_id]

    def requests(self, project_id: int) -> int:
        """How many search requests reached a project (whatever they were answered)."""
        return len(self.calls_for(project_id))

    # --- the endpoint ---------------------------------------------------------------------------------------

    async def _search(self, request: web.Request) -> web.Response:
        arrived = asyncio.get_running_loop().time()
        text = request.match_info["project_id"]
        project_id = int(text) if text.isascii() and text.isdigit() and len(text) < 19 else 0
        raw = await request.read()
        body = _json(raw)
        response = self._answer(request, project_id, body)
        body = body or {}
        limit, offset = _int_or_none(body.get("limit")), _int_or_none(body.get("offset"))
        since, until = (body.get(key) for key in ("created_date_from", "created_date_until"))
        since, until = (value if isinstance(value, str) else None for value in (since, until))
        self.calls.append(SearchCall(project_id, limit, offset, arrived, response.status, since, until))
        return response

    def _answer(self, request: web.Request, project_id: int, body: dict[str, Any] | None) -> web.Response:
        if not self._auth.authorized(request.headers.get("Authorization", ""), project_id):
            return store_error(401, *AUTH_ERROR)
        wait_s = self._take_token(project_id)
        if wait_s is not None:
            return store_error(429, _RATE_LIMITED, "Too Many Requests", headers={"Retry-After": str(wait_s)})
        if self._faults:
            fault = self._faults[0]
            fault.remaining -= 1
            if fault.remaining == 0:
                self._faults.pop(0)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return store_error(fault.status, 0, "Simulated failure", headers=headers)
        try:
            limit, offset, since, until = _query(body)
        except InvalidRequest as exc:
            return store_error(422, _INVALID, f"Unprocessable Entity. {exc}")
        found = [
            order
            for order in self._orders
            if order.project_id == project_id
            and (since is None or order.created_at >= since)
            and (until is None or order.created_at <= until)
        ]
        found.sort(key=lambda order: (order.created_at, order.order_id))
        page = found[offset : offset + limit]
        return web.json_response(
            {
                "orders": [search_order_body(order, include_user_id=self.include_user_id) for order in page],
                "total_items_count": len(found),
                "has_more": offset + len(page) < len(found),
            }
        )

    def _take_token(self, project_id: int) -> int | None:
        """Spends one request of the project's rate; returns the whole seconds to wait when there is none."""
        if self._rate is None:
            return None
        per_s, burst = self._rate
        now = self._clock()
        bucket = self._buckets.setdefault(project_id, _Bucket(float(burst), now))
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * per_s)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - bucket.tokens) / per_s))

    # --- HTTP control ---------------------------------------------------------------------------------------

    async def _control_rate_limit(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        per_s = body.get("per_s")
        if per_s is not None and (not isinstance(per_s, int | float) or isinstance(per_s, bool)):
            raise InvalidRequest("per_s must be a number or null")
        self.rate_limit(per_s, burst=integer(body, "burst", 1))
        return web.json_response({})

    async def _control_fail(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        retry_after = body.get("retry_after")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int | str | None):
            raise InvalidRequest("retry_after must be an integer or a string")
        self.fail(integer(body, "times", 1), integer(body, "status", 503), retry_after=retry_after)
        return web.json_response({})

    async def _control_settings(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        include = body.get("include_user_id")
        if not isinstance(include, bool):
            raise InvalidRequest("include_user_id must be a boolean")
        self.include_user_id = include
        return web.json_response({})

    async def _control_calls(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(call) for call in self.calls])


def search_order_body(order: SimOrder, *, include_user_id: bool = False) -> dict[str, Any]:
    """An order as the admin order search answers it."""
    user: dict[str, Any] = {"country": "US", "email": _email(order.user_id), "region_id": None}
    if include_user_id:
        user = {"id": order.user_id, **user}
    return {
        "order_id": order.order_id,
        "project_id": order.project_id,
        "status": order.status,
        "date_created": order.created_at.astimezone(UTC).replace(microsecond=0).isoformat(),
        "mode": "sandbox" if order.sandbox else "default",
        "is_free": order.is_free,
        "invoice_id": str(order.invoice_id),
        "price": _price(order.amount, order.currency),
        "user": user,
        "items": [
            {
                "order_item_id": index + 1,
                "item_id": zlib.crc32(item.sku.encode()),
                "sku": item.sku,
                "type": item.type,
                "quantity": item.quantity,
                "is_free": item.is_free,
                "is_bonus": False,
                "region_id": None,
                "tax_category": "DG00001",
                "description": None,
                **({} if item.is_free else {"price": _price(item.price, order.currency)}),
            }
            for index, item in enumerate(order.items)
        ],
        "promotions": [],
        "coupons": [],
    }


def _query(body: dict[str, Any] | None) -> tuple[int, int, datetime | None, datetime | None]:
    """(limit, offset, from, until) of a search body.

    Raises:
        InvalidRequest: the body is not a JSON object, or a property is malformed (named).
    """
    if body is None:
        raise InvalidRequest("The body must be a JSON object")
    limit, offset = body.get("limit", MAX_LIMIT), body.get("offset", 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"The property `limit` must be an integer from 1 to {MAX_LIMIT}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidRequest("The property `offset` must be an integer >= 0")
    return limit, offset, _date(body, "created_date_from"), _date(body, "created_date_until")


def _date(body: dict[str, Any], key: str) -> datetime | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise TypeError
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"The property `{key}` must be an ISO 8601 date-time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _email(user_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", user_id)[:64] + "@players.example"


def _price(amount: Decimal, currency: str) -> dict[str, Any]:
    text = plain(amount)
    return {"amount": text, "amount_without_discount": text, "currency": currency, "is_virtual_currency": False}

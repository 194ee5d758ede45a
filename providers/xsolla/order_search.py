"""Xsolla's admin order search, as a `core.reconciliation.OrderSearch`: a project's orders by creation date.

`POST {admin_api}/v3/project/{project_id}/admin/order/search` with the project's Basic credentials
(`providers.xsolla.admin.credentials`, as the catalog uses) and the JSON body `{"limit": 1..10, "offset",
"created_date_from", "created_date_until"}` (ISO 8601 date-times) answers

    {"orders": [{"order_id": 1, "project_id": 44056, "status": "paid", "date_created": "2020-08-11T10:00:00+03:00",
                 "mode": "default", "is_free": false, "invoice_id": "100510",
                 "price": {"amount": "30", "currency": "USD", ...},
                 "user": {"id"?, "country", "email", "region_id"},
                 "items": [{"sku", "type", "quantity", "is_free", "is_bonus", "price": {...}, ...}], ...}],
     "total_items_count": 1, "has_more": false}

The range is sent to the second: `from` rounded down, `until` rounded up, so no order at an edge is lost (an order
just outside the asked range may come back: the caller applies orders idempotently). `user.id` is absent from
some versions of Xsolla's published spec: the order's `user_id` is then "".

An order that cannot be read (no id, no status, an item without sku or whole quantity, an unknown `mode`, a
malformed date) makes the whole page unreadable (`SearchUnavailable` naming the field): skipping it could lose a
paid order. So does an order of another project, or a page longer than asked.

Failures: 401 and 403 are `SearchRefused`, and so is any other 4xx but 429 (the request or the project is wrong:
retrying cannot help); 429 is `SearchRateLimited` with `Retry-After` (seconds or an HTTP date; 1 s when absent or
unreadable, at most `MAX_RETRY_AFTER_S`); 5xx, timeouts, network errors and unreadable answers are
`SearchUnavailable`. The client neither retries nor paces: the caller does both.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp

from core.projects import Project
from core.reconciliation import (
    ProviderOrder,
    ProviderOrderItem,
    SearchPage,
    SearchRateLimited,
    SearchRefused,
    SearchUnavailable,
)
from providers.xsolla.admin import AdminClient, credentials, retry_after_s
from providers.xsolla.catalog import CatalogSettings
from providers.xsolla.metrics import XsollaMetrics
from providers.xsolla.status import reported

#: The most orders one page may hold (the API's `limit` maximum).
MAX_PAGE_SIZE: Final = 10
#: The wait asked by a 429 is capped at this (a longer one would stall the caller's sweep for nothing).
MAX_RETRY_AFTER_S: Final = 60.0
#: The wait of a 429 without a readable `Retry-After`.
DEFAULT_RETRY_AFTER_S: Final = 1.0
#: Xsolla's `mode` values: a sandbox order is a test payment.
_MODES: Final = {"default": False, "sandbox": True}
_OPERATION: Final = "order_search"
# How much of Xsolla's error message an exception carries.
_MESSAGE_CHARS: Final = 200


class XsollaOrderSearch(AdminClient):
    """Searches projects' orders through Xsolla's admin API over one HTTP session (a
    `core.reconciliation.OrderSearch`).

    Args:
        settings: the admin API's base URL and the timeout of one request (the catalog's settings).
        metrics: where requests are counted (by result) and timed, never by order or player.
    """

    max_page_size: int = MAX_PAGE_SIZE

    def __init__(self, settings: CatalogSettings, metrics: XsollaMetrics) -> None:
        super().__init__(settings.admin_api, settings.http_timeout_s, metrics)

    async def search(
        self, project: Project, created_from_ms: int, created_until_ms: int, *, offset: int, limit: int
    ) -> SearchPage:
        """One page of the project's orders created in [`created_from_ms`, `created_until_ms`], from `offset`.

        Raises:
            ValueError: `limit` not in 1..`max_page_size`, a negative `offset`, or `from` after `until`.
            SearchRefused, SearchUnavailable, SearchRateLimited: see the module's docstring.
            core.errors.ConfigError: the project's credentials are missing, malformed or cannot be read.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE or offset < 0 or created_from_ms > created_until_ms:
            raise ValueError(
                f"limit must be 1..{MAX_PAGE_SIZE}, offset >= 0 and from <= until "
                f"(got limit {limit}, offset {offset}, {created_from_ms}..{created_until_ms})"
            )
        auth = credentials(project)
        request = {
            "limit": limit,
            "offset": offset,
            "created_date_from": iso_second(created_from_ms, up=False),
            "created_date_until": iso_second(created_until_ms, up=True),
        }
        url = f"{self._base}/v3/project/{project.id}/admin/order/search"
        started = time.perf_counter()
        result = "error"
        try:
            async with self._get_session().post(url, json=request, headers={"Authorization": auth}) as response:
                code = response.status
                result = str(code) if code in (401, 403, 404, 429) else f"{code // 100}xx"
                if code == 200:
                    result = "unreadable"
                    page = read_page(await response.json(content_type=None), project.id, offset=offset, limit=limit)
                    result = "ok"
                    return page
                said = _error_message(await response.read())
                problem = f"Xsolla's order search answered {code} for project {project.id}{said}"
                if code == 429:
                    asked = retry_after_s(response.headers.get("Retry-After"))
                    wait_s = DEFAULT_RETRY_AFTER_S if asked is None else min(asked, MAX_RETRY_AFTER_S)
                    raise SearchRateLimited(problem, wait_s)
                if 400 <= code < 500:
                    hint = " (check api_key and api_user)" if code in (401, 403) else ""
                    raise SearchRefused(problem + hint)
                raise SearchUnavailable(problem)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            result = "network" if not isinstance(exc, ValueError) else "unreadable"
            raise SearchUnavailable(f"Xsolla's order search failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._metrics.requests.labels(_OPERATION, result).inc()
            self._metrics.request_duration.labels(_OPERATION).observe(time.perf_counter() - started)


def iso_second(ms: int, *, up: bool) -> str:
    """`ms` (since the epoch) as an ISO 8601 UTC date-time to the second, rounded down, or up with `up`."""
    seconds = math.ceil(ms / 1000) if up else math.floor(ms / 1000)
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def read_page(body: Any, project_id: int, *, offset: int, limit: int) -> SearchPage:
    """The answer of one search as a `SearchPage`.

    Raises:
        SearchUnavailable: the answer, or one of its orders, cannot be read (the field is named).
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("orders"), list):
        raise SearchUnavailable("Xsolla's order search answered without an orders list")
    raw_orders: list[Any] = body["orders"]
    if len(raw_orders) > limit:
        raise SearchUnavailable(f"Xsolla's order search answered {len(raw_orders)} orders for a limit of {limit}")
    orders = tuple(read_order(raw, project_id, f"orders[{n}]") for n, raw in enumerate(raw_orders))
    total = body.get("total_items_count")
    total = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
    has_more = body.get("has_more")
    if has_more is None:  # not in the answer: inferred, at worst one more (empty) page is asked for
        has_more = offset + len(orders) < total if total is not None else len(orders) == limit
    elif not isinstance(has_more, bool):
        raise SearchUnavailable("Xsolla's order search answered a has_more that is not a boolean")
    return SearchPage(orders, has_more, total)


def read_order(raw: Any, project_id: int, where: str) -> ProviderOrder:
    """One order of a search answer (`where` names it in errors: "orders[3]").

    Raises:
        SearchUnavailable: a field the service needs is missing or malformed, or the order is another project's.
    """
    if not isinstance(raw, Mapping):
        raise SearchUnavailable(f"Xsolla's order search: {where} is not an object")
    order_id = raw.get("order_id")
    if isinstance(order_id, int) and not isinstance(order_id, bool) and order_id >= 0:
        order_id = str(order_id)
    if not isinstance(order_id, str) or not order_id:
        raise SearchUnavailable(f"Xsolla's order search: {where}.order_id is missing or malformed")
    where = f"{where} (order {order_id})"
    owner = raw.get("project_id")
    if owner is not None and owner != project_id:
        raise SearchUnavailable(f"Xsolla's order search: {where}.project_id is {owner!r}, not {project_id}")
    status = raw.get("status")
    if not isinstance(status, str):
        raise SearchUnavailable(f"Xsolla's order search: {where}.status is missing or not a string")
    mode = raw.get("mode", "default")
    if mode not in _MODES:
        raise SearchUnavailable(f"Xsolla's order search: {where}.mode is {mode!r}, not one of {', '.join(_MODES)}")
    raw_items = raw.get("items")
    if not isinstance(raw_items, list):
        raise SearchUnavailable(f"Xsolla's order search: {where}.items is missing or not a list")
    user = _object(raw, "user", where)
    user_id = user.get("id")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if user_id is not None and not isinstance(user_id, str):
        raise SearchUnavailable(f"Xsolla's order search: {where}.user.id is not a string")
    price = _object(raw, "price", where)
    return ProviderOrder(
        project_id=project_id,
        order_id=order_id,
        status=reported(status),
        user_id=user_id or "",
        created_at_ms=_created_ms(raw.get("date_created"), where),
        sandbox=_MODES[mode],
        items=tuple(_item(item, f"{where}.items[{n}]") for n, item in enumerate(raw_items)),
        currency=_text(price.get("currency")),
        amount=_text(price.get("amount")),
        invoice_id=_text(raw.get("invoice_id")),
    )


def _item(raw: Any, where: str) -> ProviderOrderItem:
    if not isinstance(raw, Mapping):
        raise SearchUnavailable(f"Xsolla's order search: {where} is not an object")
    sku, quantity = raw.get("sku"), raw.get("quantity")
    if not isinstance(sku, str) or not sku:
        raise SearchUnavailable(f"Xsolla's order search: {where}.sku is missing or not a string")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise SearchUnavailable(f"Xsolla's order search: {where}.quantity is missing or not an integer")
    price = _object(raw, "price", where)
    return ProviderOrderItem(
        sku=sku,
        quantity=quantity,
        type=_text(raw.get("type")),
        amount=_text(price.get("amount")),
        is_free=raw.get("is_free") is True,
        is_bonus=raw.get("is_bonus") is True,
    )


def _created_ms(value: Any, where: str) -> int:
    """`date_created` in ms since the epoch (0 when absent); a date without an offset is UTC."""
    if value is None:
        return 0
    try:
        if not isinstance(value, str):
            raise TypeError
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise SearchUnavailable(f"Xsolla's order search: {where}.date_created is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _object(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """A nested object that may be absent or null (then empty)."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SearchUnavailable(f"Xsolla's order search: {where}.{key} is not an object")
    return value


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _error_message(raw: bytes) -> str:
    """Xsolla's `errorMessage` of an error answer, as a suffix (": ..."), or "" when there is none."""
    try:
        message = json.loads(raw).get("errorMessage")
    except (ValueError, AttributeError):
        return ""
    return f": {message[:_MESSAGE_CHARS]}" if isinstance(message, str) and message else ""

"""Xsolla's Get order API, the polling half of order tracking.

`GET {store_api}/v2/project/{project_id}/order/{order_id}` with `Authorization: Bearer <player token>` answers
`{"order_id": 1, "status": "paid", "content": {"price": {...}, "items": [{"sku", "quantity", "is_free", "price"}]}}`:
`status` for order tracking, `order` (with the items) for reconciliation. 401 means the token was rejected (403 is
treated the same), 404 that Xsolla does not know the order in that project; 429, 5xx, timeouts and network errors
are temporary.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import aiohttp

from core.order_sources import LookupFailed, OrderUnknown, Player, ReportedStatus, TokenRefused
from core.reconciliation import ProviderOrder, ProviderOrderItem
from providers.xsolla.metrics import XsollaMetrics
from providers.xsolla.status import reported

# Enough for thousands of orders polled every 3 s over keep-alive connections; beyond it requests queue.
_MAX_CONNECTIONS = 256


class XsollaOrders:
    """Reads order statuses from Xsolla's Store API over one HTTP session per process (a `core.order_sources`
    `OrderLookup`).

    Args:
        store_api: the API's base URL, e.g. "https://store.xsolla.com/api".
        timeout_s: the timeout of one request, connection included.
        metrics: where requests are counted (by result, never by order or player).
    """

    def __init__(self, store_api: str, *, timeout_s: float, metrics: XsollaMetrics) -> None:
        self._base = store_api.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS),
                timeout=self._timeout,
                headers={"Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def status(self, player: Player, order_id: str) -> ReportedStatus:
        """Returns the order's status at Xsolla.

        Raises:
            TokenRefused: 401 or 403.
            OrderUnknown: 404.
            LookupFailed: anything temporary or unreadable.
        """
        return reported(_status_of(await self._get(player, order_id, "get_order")))

    async def order(self, player: Player, order_id: str) -> ProviderOrder:
        """Returns the order with its items (`content.items`: sku, quantity, is_free, price) as Xsolla records it;
        the player is `player`, whose token Xsolla accepted for it.

        Raises:
            TokenRefused: 401 or 403.
            OrderUnknown: 404.
            LookupFailed: anything temporary, or an answer whose items cannot be read.
        """
        body = await self._get(player, order_id, "get_order_items")
        content = body.get("content")
        content = content if isinstance(content, dict) else {}
        raw_items = content.get("items")
        if not isinstance(raw_items, list):
            raise LookupFailed("Get order answered 200 without content.items")
        items = []
        for index, raw in enumerate(raw_items):
            item = _item(raw)
            if item is None:
                raise LookupFailed(f"Get order answered an unreadable content.items[{index}]")
            items.append(item)
        price = content.get("price")
        price = price if isinstance(price, dict) else {}
        return ProviderOrder(
            project_id=player.project_id,
            order_id=order_id,
            status=reported(_status_of(body)),
            user_id=player.user_id,
            items=tuple(items),
            currency=_text(price.get("currency")),
            amount=_text(price.get("amount")),
        )

    async def _get(self, player: Player, order_id: str, operation: str) -> dict[str, Any]:
        """GETs the order; returns the 200 answer's JSON object."""
        url = f"{self._base}/v2/project/{player.project_id}/order/{quote(order_id, safe='')}"
        started = time.perf_counter()
        result = "error"
        try:
            async with self._get_session().get(url, headers={"Authorization": f"Bearer {player.token}"}) as response:
                code = response.status
                if code == 200:
                    body = await response.json(content_type=None)
                    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
                        result = "unreadable"
                        raise LookupFailed("Get order answered 200 without a status")
                    result = "ok"
                    return body
                result = str(code) if code in (401, 403, 404, 429) else f"{code // 100}xx"
                if code in (401, 403):
                    raise TokenRefused(f"Get order answered {code}")
                if code == 404:
                    raise OrderUnknown(f"Get order answered {code}")
                raise LookupFailed(f"Get order answered {code}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            result = "network" if not isinstance(exc, ValueError) else "unreadable"
            raise LookupFailed(f"Get order failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._metrics.requests.labels(operation, result).inc()
            self._metrics.request_duration.labels(operation).observe(time.perf_counter() - started)


def _status_of(body: dict[str, Any]) -> str:
    status = body.get("status")
    assert isinstance(status, str)  # `_get` returns only answers with a status
    return status


def _text(value: object) -> str:
    return (
        value
        if isinstance(value, str)
        else str(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else ""
    )


def _item(raw: object) -> ProviderOrderItem | None:
    """One `content.items` entry, or None when it has no sku or no whole quantity."""
    if not isinstance(raw, dict):
        return None
    sku, quantity = raw.get("sku"), raw.get("quantity")
    if not isinstance(sku, str) or not sku or isinstance(quantity, bool) or not isinstance(quantity, int):
        return None
    price = raw.get("price")
    return ProviderOrderItem(
        sku=sku,
        quantity=quantity,
        type=_text(raw.get("type")),
        amount=_text(price.get("amount")) if isinstance(price, dict) else "",
        is_free=raw.get("is_free") is True,
        is_bonus=raw.get("is_bonus") is True,
    )

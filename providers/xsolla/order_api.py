"""Xsolla's Get order API, the polling half of order tracking.

`GET {store_api}/v2/project/{project_id}/order/{order_id}` with `Authorization: Bearer <player token>` answers
`{"order_id": 1, "status": "paid", "content": {...}}`. 401 means the token was rejected (403 is treated the same),
404 that Xsolla does not know the order in that project; 429, 5xx, timeouts and network errors are temporary.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import aiohttp

from core.order_sources import LookupFailed, OrderUnknown, Player, ReportedStatus, TokenRefused
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
        url = f"{self._base}/v2/project/{player.project_id}/order/{quote(order_id, safe='')}"
        started = time.perf_counter()
        result = "error"
        try:
            async with self._get_session().get(url, headers={"Authorization": f"Bearer {player.token}"}) as response:
                code = response.status
                if code == 200:
                    body = await response.json(content_type=None)
                    status = body.get("status") if isinstance(body, dict) else None
                    if not isinstance(status, str):
                        result = "unreadable"
                        raise LookupFailed("Get order answered 200 without a status")
                    result = "ok"
                    return reported(status)
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
            self._metrics.requests.labels("get_order", result).inc()
            self._metrics.request_duration.labels("get_order").observe(time.perf_counter() - started)

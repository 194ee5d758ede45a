"""The Store API's Get order, `GET /api/v2/project/{project_id}/order/{order_id}` with a player's Bearer token,
plus request counting and fault injection for tests of the code that polls it.

Answers, as Xsolla documents them:

* 200 `{"order_id", "status", "content": {"price", "virtual_price", "is_free", "items": [...]}}`;
* 401 with the Store API error body (`errorCode` 1020) when the token is missing, malformed or unknown;
* 404 "Order not found. Make sure the project_id and the order_id are correct." when the order does not exist,
  belongs to another player or another project (a player cannot tell someone else's order from none), or the
  id is not a number.

Error bodies have the Store API's shape, `{"statusCode", "errorCode", "errorMessage": "[0<status>-<code>]: ...",
"transactionId"}`. Xsolla's 404 body for Get order was not captured: its `errorCode` (4001) is a stand-in.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from aiohttp import web

from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.orders import OrderBook, get_order_body
from xsolla_simulator.tokens import TokenIssuer

GET_ORDER_ROUTE: Final = "/api/v2/project/{project_id}/order/{order_id}"

_AUTH_ERROR: Final = (1020, "Error in Authentication method occurred")
_NOT_FOUND: Final = (4001, "Order not found. Make sure the project_id and the order_id are correct.")


@dataclass
class _Fault:
    """Answers the next `remaining` matching requests with `status` (None: normally) after `delay_s`."""

    remaining: int | None  # None: until cleared
    status: int | None
    delay_s: float
    order_id: int | None  # None: any order


@dataclass(frozen=True)
class GetOrderRequest:
    """One Get order request as the simulator saw it."""

    order_id: int | None  # None when the path's id is not a number
    at: float  # loop.time() when it arrived
    status: int  # the HTTP status answered


class StoreApi:
    """Get order over the simulator's orders and tokens, for every project it serves.

    An order is found only under its own project's path, with a token of that project and of its player.
    """

    def __init__(self, *, orders: OrderBook, tokens: TokenIssuer) -> None:
        self.log: list[GetOrderRequest] = []
        self._orders = orders
        self._tokens = tokens
        self._faults: list[_Fault] = []
        self._per_order: dict[int, list[GetOrderRequest]] = {}

    def add_routes(self, app: web.Application) -> None:
        """Adds Get order to `app`."""
        app.router.add_get(GET_ORDER_ROUTE, self.get_order)

    # --- counting and faults --------------------------------------------------------------------------------

    def requests(self, order_id: int) -> int:
        """Get order requests seen for `order_id`, whatever they were answered."""
        return len(self._per_order.get(order_id, ()))

    def requests_for(self, order_id: int) -> list[GetOrderRequest]:
        """Every Get order request seen for `order_id`, oldest first."""
        return list(self._per_order.get(order_id, ()))

    def fail(self, times: int | None, status: int, *, delay_s: float = 0.0, order_id: int | None = None) -> None:
        """Answers the next `times` Get order requests (None: all, until `clear_faults`) with `status`.

        Faults queue up: a request consumes the oldest one that matches it.

        Args:
            delay_s: wait that long before answering.
            order_id: only requests for that order.

        Raises:
            InvalidRequest: `times` < 1, `delay_s` < 0, or `status` not an HTTP status.
        """
        if times is not None and times < 1:
            raise InvalidRequest("times must be >= 1 (or None for every request)")
        if not 100 <= status <= 599:
            raise InvalidRequest("status must be an HTTP status code")
        self._add(_Fault(times, status, delay_s, order_id))

    def delay(self, delay_s: float, *, times: int | None = None, order_id: int | None = None) -> None:
        """Delays the next `times` Get order requests (None: all, until `clear_faults`), then answers normally."""
        if times is not None and times < 1:
            raise InvalidRequest("times must be >= 1 (or None for every request)")
        self._add(_Fault(times, None, delay_s, order_id))

    def clear_faults(self) -> None:
        """Forgets every fault not yet consumed."""
        self._faults.clear()

    def _add(self, fault: _Fault) -> None:
        if fault.delay_s < 0:
            raise InvalidRequest("delay_s must be >= 0")
        self._faults.append(fault)

    def _take_fault(self, order_id: int | None) -> _Fault | None:
        for fault in self._faults:
            if fault.order_id is None or fault.order_id == order_id:
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
        return None

    # --- the endpoint ---------------------------------------------------------------------------------------

    async def get_order(self, request: web.Request) -> web.Response:
        """`GET /api/v2/project/{project_id}/order/{order_id}`."""
        arrived = asyncio.get_running_loop().time()
        order_id = _number(request.match_info["order_id"])
        response = await self._answer(request, order_id)
        record = GetOrderRequest(order_id, arrived, response.status)
        self.log.append(record)
        if order_id is not None:
            self._per_order.setdefault(order_id, []).append(record)
        return response

    async def _answer(self, request: web.Request, order_id: int | None) -> web.Response:
        fault = self._take_fault(order_id)
        if fault is not None:
            if fault.delay_s > 0:
                await asyncio.sleep(fault.delay_s)
            if fault.status is not None:
                return _error(fault.status, 0, HTTPStatus(fault.status).phrase)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        claims = self._tokens.claims(token) if scheme.lower() == "bearer" else None
        if claims is None:
            return _error(401, *_AUTH_ERROR)
        project_id = _number(request.match_info["project_id"])
        order = self._orders.find(order_id) if order_id is not None else None
        if (
            order is None
            or project_id != order.project_id
            or claims.project_id != order.project_id
            or order.user_id != claims.user_id
        ):
            return _error(404, *_NOT_FOUND)
        return web.json_response(get_order_body(order))


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _error(status: int, code: int, message: str) -> web.Response:
    body = {
        "statusCode": status,
        "errorCode": code,
        "errorMessage": f"[{status:04d}-{code:04d}]: {message}",
        "transactionId": uuid.uuid4().hex,
    }
    return web.json_response(body, status=status)

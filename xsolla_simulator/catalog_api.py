"""The admin catalog API (Shop Builder), as Xsolla's published spec states it, for tests of the code that reads it:

* `GET /api/v2/project/{project_id}/admin/items/virtual_items?limit=&offset=` -> `{"items": [...]}` and nothing
  else (no `has_more`, no total): a client pages until a page is shorter than `limit`;
* `GET /api/v2/project/{project_id}/admin/items/bundle?limit=&offset=` -> `{"items": [...]}` of bundles, each with
  `content: [{"sku", "name", "type", "quantity", ...}]`.

Both take Basic auth with `<project id>:<project API key>` or `<merchant id>:<merchant API key>`; anything else is
401 with the Store API error body (`errorCode` 1020). A project with no catalog set answers empty lists. Faults for
tests: the next N calls answered with a status (429 with `Retry-After`, 5xx, ...), and every call counted.

Control (Python: `XsollaSimulator.catalog`; HTTP, without authentication):

    PUT  /_sim/catalog/{project_id}   {"api_key"?, "items"?, "bundles"?}                -> {}
    POST /_sim/catalog/faults         {"times"?, "status"?, "retry_after_s"?}           -> {}
    GET  /_sim/catalog/calls                                                            -> [call]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from aiohttp import web

from xsolla_simulator.admin_api import AUTH_ERROR, AdminAuth, store_error
from xsolla_simulator.errors import InvalidRequest

ITEMS_ROUTE: Final = "/api/v2/project/{project_id}/admin/items/virtual_items"
BUNDLES_ROUTE: Final = "/api/v2/project/{project_id}/admin/items/bundle"
#: Xsolla's largest page for admin lists; a bigger `limit` is answered with this many.
MAX_LIMIT: Final = 50


def admin_item(
    sku: str,
    *,
    consumable: bool = False,
    expiration: tuple[str, int] | None = None,
    item_type: str = "virtual_good",
    virtual_item_type: str | None = None,
) -> dict[str, Any]:
    """A virtual item as the admin list returns it (§2.7 of the spec's shape, with the fields a reader uses).

    Args:
        consumable: `inventory_options.consumable` is set (`{"usages_count": 1}`).
        expiration: `inventory_options.expiration_period` as (type, value), e.g. ("day", 30).
        virtual_item_type: the client catalog's field, absent from the admin spec; set to test readers of both.
    """
    item: dict[str, Any] = {
        "sku": sku,
        "name": {"en": sku.replace("_", " ").title()},
        "type": item_type,
        "is_enabled": True,
        "is_free": False,
        "prices": [{"amount": "1.99", "currency": "USD", "is_default": True, "is_enabled": True}],
        "inventory_options": {
            "consumable": {"usages_count": 1} if consumable else None,
            "expiration_period": {"type": expiration[0], "value": expiration[1]} if expiration else None,
        },
    }
    if virtual_item_type is not None:
        item["virtual_item_type"] = virtual_item_type
    return item


def admin_bundle(sku: str, content: list[tuple[str, int]]) -> dict[str, Any]:
    """A bundle as the admin bundle list returns it, with `content` (sku, quantity) pairs."""
    return {
        "sku": sku,
        "name": {"en": sku.replace("_", " ").title()},
        "type": "bundle",
        "bundle_type": "standard",
        "is_enabled": True,
        "content": [
            {"sku": s, "name": {"en": s}, "type": "virtual_good", "description": {"en": ""}, "quantity": q}
            for s, q in content
        ],
    }


@dataclass(frozen=True)
class CatalogCall:
    """One admin catalog request as the simulator saw it."""

    list: str  # "virtual_items" or "bundle"
    project_id: int
    limit: int
    offset: int
    status: int


@dataclass
class _Project:
    items: list[dict[str, Any]] = field(default_factory=list)
    bundles: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after_s: int | None


class CatalogApi:
    """The admin catalog of the simulator's projects.

    Args:
        auth: the API keys that open the admin APIs (shared with the order search).
    """

    def __init__(self, auth: AdminAuth) -> None:
        self.auth = auth
        self.calls: list[CatalogCall] = []
        self._projects: dict[int, _Project] = {}
        self._faults: list[_Fault] = []

    @property
    def merchant_id(self) -> int:
        """The merchant whose API key (`merchant_api_key`) opens every project's admin APIs."""
        return self.auth.merchant_id

    @property
    def merchant_api_key(self) -> str | None:
        """The merchant-wide API key (None: none)."""
        return self.auth.merchant_api_key

    @merchant_api_key.setter
    def merchant_api_key(self, value: str | None) -> None:
        self.auth.merchant_api_key = value

    def add_routes(self, app: web.Application, *, control: bool) -> None:
        """Adds the two admin lists (and, with `control`, their `/_sim/catalog` control routes) to `app`."""
        app.router.add_get(ITEMS_ROUTE, self._items)
        app.router.add_get(BUNDLES_ROUTE, self._bundles)
        if control:
            app.router.add_put("/_sim/catalog/{project_id}", self._control_set)
            app.router.add_post("/_sim/catalog/faults", self._control_fail)
            app.router.add_get("/_sim/catalog/calls", self._control_calls)

    # --- control --------------------------------------------------------------------------------------------

    def set_project(
        self,
        project_id: int,
        *,
        api_key: str | None = None,
        items: list[dict[str, Any]] | None = None,
        bundles: list[dict[str, Any]] | None = None,
    ) -> None:
        """Sets what a project's catalog holds (and its API key, for every admin API); what is not given is kept."""
        project = self._projects.setdefault(project_id, _Project())
        if api_key is not None:
            self.auth.set_api_key(project_id, api_key)
        if items is not None:
            project.items = [dict(item) for item in items]
        if bundles is not None:
            project.bundles = [dict(bundle) for bundle in bundles]

    def fail(self, times: int = 1, status: int = 503, *, retry_after_s: int | None = None) -> None:
        """Answers the next `times` catalog requests with `status` (and `Retry-After: retry_after_s` when set)."""
        if times < 1 or not 400 <= status <= 599:
            raise InvalidRequest("times must be >= 1 and status an HTTP error status")
        self._faults.append(_Fault(times, status, retry_after_s))

    def calls_for(self, project_id: int, list_name: str | None = None) -> list[CatalogCall]:
        """The requests seen for a project (for one list when named), oldest first."""
        return [c for c in self.calls if c.project_id == project_id and list_name in (None, c.list)]

    # --- the endpoints --------------------------------------------------------------------------------------

    async def _items(self, request: web.Request) -> web.Response:
        return self._answer(request, "virtual_items")

    async def _bundles(self, request: web.Request) -> web.Response:
        return self._answer(request, "bundle")

    def _answer(self, request: web.Request, list_name: str) -> web.Response:
        text = request.match_info["project_id"]
        project_id = int(text) if text.isdigit() and len(text) < 19 else 0
        limit, offset = _bounded(request.query.get("limit"), 1, MAX_LIMIT), _bounded(request.query.get("offset"), 0)
        response = self._respond(request, project_id, list_name, limit, offset)
        self.calls.append(CatalogCall(list_name, project_id, limit, offset, response.status))
        return response

    def _respond(self, request: web.Request, project_id: int, list_name: str, limit: int, offset: int) -> web.Response:
        project = self._projects.get(project_id)
        if not self.auth.authorized(request.headers.get("Authorization", ""), project_id):
            return store_error(401, *AUTH_ERROR)
        if self._faults:
            fault = self._faults[0]
            fault.remaining -= 1
            if fault.remaining == 0:
                self._faults.pop(0)
            headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s is not None else None
            return store_error(fault.status, 0, "Simulated failure", headers=headers)
        entries = (project.items if list_name == "virtual_items" else project.bundles) if project else []
        return web.json_response({"items": entries[offset : offset + limit]})

    # --- HTTP control ---------------------------------------------------------------------------------------

    async def _control_set(self, request: web.Request) -> web.Response:
        try:
            text = request.match_info["project_id"]
            body = await _json_object(request)
            for name in ("items", "bundles"):
                if name in body and not isinstance(body[name], list):
                    raise InvalidRequest(f"{name} must be a list")
            key = body.get("api_key")
            if not text.isdigit() or (key is not None and not isinstance(key, str)):
                raise InvalidRequest("project_id must be a number and api_key a string")
            self.set_project(int(text), api_key=key, items=body.get("items"), bundles=body.get("bundles"))
        except InvalidRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({})

    async def _control_fail(self, request: web.Request) -> web.Response:
        try:
            body = await _json_object(request)
            values = [body.get("times", 1), body.get("status", 503), body.get("retry_after_s")]
            if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
                raise InvalidRequest("times, status and retry_after_s must be integers")
            self.fail(values[0] or 1, values[1] or 503, retry_after_s=values[2])
        except InvalidRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({})

    async def _control_calls(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(call) for call in self.calls])


def _bounded(text: str | None, minimum: int, maximum: int | None = None) -> int:
    value = int(text) if text is not None and text.isdigit() and len(text) < 10 else minimum
    value = max(minimum, value)
    return min(value, maximum) if maximum is not None else value


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise InvalidRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body

"""Xsolla's admin catalog API, as a `core.catalogs.CatalogSource`: a project's virtual items and bundles.

* `GET {admin_api}/v2/project/{project_id}/admin/items/virtual_items?limit=&offset=` answers `{"items": [...]}`
  and nothing else (no `has_more`, no total): pages are read until one is shorter than `limit`.
* `GET {admin_api}/v2/project/{project_id}/admin/items/bundle?limit=&offset=`, the same way; each bundle has
  `content: [{"sku", "quantity", ...}]`.
* Basic auth with `<api_user>:<api_key>` (`providers.xsolla.admin.credentials`): the merchant id or the project
  id, and an API key of the Publisher Account. The project's table in the projects file gives them (`api_key`, as
  a secret: text, `{ file = ... }` or `{ env = ... }`; `api_user`, default the project id); without a projects
  file, `ENTITLEMENTS_XSOLLA_API_KEY` (or `_FILE`) and `ENTITLEMENTS_XSOLLA_API_USER` (`with_env_credentials`).

An item's kind: `virtual_item_type` when present (`consumable`, `non_consumable`, `non_renewing_subscription`);
otherwise `inventory_options.expiration_period` (`{"type": minute|hour|day|week|month|year, "value"}`) makes it
time-limited with that period, `inventory_options.consumable` consumable, neither permanent. A virtual currency
is a consumable. An item that cannot be read (a time-limited one without a usable period) is left out and logged,
so orders of it wait for a fix rather than being granted as a guess.

Failures: 401 and 403 (and any other 4xx) are `CatalogRefused`, never retried; 429 waits `Retry-After` (seconds
or an HTTP date; 1 s when absent or unreadable; at most `MAX_RETRY_AFTER_S`), 5xx, timeouts and network errors are
retried with `core.backoff`, `ATTEMPTS` times in all per page, then `CatalogUnavailable`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import aiohttp
import structlog

from core.backoff import Backoff
from core.catalogs import (
    CONSUMABLE,
    PERMANENT,
    TIME_LIMITED,
    CatalogRefused,
    CatalogUnavailable,
    Period,
    SourceCatalog,
    SourceItem,
)
from core.environ import EnvReader
from core.errors import ConfigError
from core.projects import CATALOG_PROVIDER, Project, Projects, secret_value
from providers.xsolla.admin import AdminClient, credentials, retry_after_s
from providers.xsolla.metrics import XsollaMetrics

log = structlog.get_logger("providers.xsolla.catalog")

ADMIN_API = "https://store.xsolla.com/api"
#: Items per page asked for.
PAGE_SIZE = 50
#: Pages read at most per list (a server that ignores `offset` would otherwise be read forever).
MAX_PAGES = 2000
#: Tries per page (the first included) on 429, 5xx, timeouts and network errors.
ATTEMPTS = 3
#: A `Retry-After` longer than this is not waited for: the read fails and the next refresh tries again.
MAX_RETRY_AFTER_S = 60.0
DEFAULT_BACKOFF = Backoff(base_s=0.5, cap_s=5.0)
_TYPES = {"consumable": CONSUMABLE, "non_consumable": PERMANENT, "non_renewing_subscription": TIME_LIMITED}


@dataclass(frozen=True)
class CatalogSettings:
    """How the service reaches Xsolla's admin catalog API.

    Attributes:
        admin_api: the base URL (`ENTITLEMENTS_XSOLLA_ADMIN_API`).
        http_timeout_s: the timeout of one request (`ENTITLEMENTS_XSOLLA_HTTP_TIMEOUT_S`).
    """

    admin_api: str = ADMIN_API
    http_timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CatalogSettings:
        """Reads `ENTITLEMENTS_XSOLLA_ADMIN_API` and `ENTITLEMENTS_XSOLLA_HTTP_TIMEOUT_S`.

        Raises:
            ConfigError: a variable is malformed.
        """
        reader = EnvReader(os.environ if env is None else env)
        return cls(
            admin_api=reader.url("ENTITLEMENTS_XSOLLA_ADMIN_API", ADMIN_API, schemes=("http", "https")),
            http_timeout_s=reader.number("ENTITLEMENTS_XSOLLA_HTTP_TIMEOUT_S", 10.0, minimum=0.1),
        )


def with_env_credentials(projects: Projects, env: Mapping[str, str] | None = None) -> Projects:
    """Without a projects file: the API credentials of `ENTITLEMENTS_XSOLLA_API_KEY` (or `_FILE`) and
    `ENTITLEMENTS_XSOLLA_API_USER` make the catalog of the served project(s) Xsolla's (a local catalog file, if
    any, then completes it). Projects from a projects file are returned as they are.

    Raises:
        ConfigError: the variables are set with a projects file, both the key and its file are set, the file
            cannot be read, or the key is empty.
    """
    reader = EnvReader(os.environ if env is None else env)
    key, key_file = reader.text("ENTITLEMENTS_XSOLLA_API_KEY", ""), reader.text("ENTITLEMENTS_XSOLLA_API_KEY_FILE", "")
    user = reader.text("ENTITLEMENTS_XSOLLA_API_USER", "")
    if projects.source != "environment":
        if key or key_file or user:
            raise ConfigError(
                "ENTITLEMENTS_XSOLLA_API_KEY, _API_KEY_FILE and _API_USER cannot be used with "
                "ENTITLEMENTS_PROJECTS_FILE: put api_key and api_user in the projects file"
            )
        return projects
    if key and key_file:
        raise ConfigError("set ENTITLEMENTS_XSOLLA_API_KEY or ENTITLEMENTS_XSOLLA_API_KEY_FILE, not both")
    if key_file:
        key = secret_value({"file": key_file}, "ENTITLEMENTS_XSOLLA_API_KEY_FILE")
    if not key:
        if user:
            raise ConfigError("ENTITLEMENTS_XSOLLA_API_USER needs ENTITLEMENTS_XSOLLA_API_KEY (or _FILE)")
        return projects
    if user and not (user.isascii() and user.isdigit()):
        raise ConfigError("ENTITLEMENTS_XSOLLA_API_USER must be a merchant or project id (digits)")
    table: dict[str, Any] = {**projects.template.provider, "api_key": key}
    if user:
        table["api_user"] = int(user)

    def credited(project: Project) -> Project:
        provider = MappingProxyType({**project.provider, **table})
        return replace(project, catalog_source=CATALOG_PROVIDER, provider=provider)

    listed = {pid: credited(project) for pid, project in projects.projects.items()}
    return replace(projects, projects=MappingProxyType(listed), template=credited(projects.template))


def source_item(raw: Any) -> SourceItem | None:
    """An admin item as the service's catalog entry; None when it cannot be read (logged)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("sku"), str) or not raw["sku"]:
        log.warning("catalog_item_unreadable", reason="no sku")
        return None
    sku = raw["sku"]
    options = raw.get("inventory_options")
    options = options if isinstance(options, Mapping) else {}
    expiration = options.get("expiration_period")
    period: Period | None = None
    if isinstance(expiration, Mapping):
        try:
            period = Period.of(expiration.get("value"), str(expiration.get("type")))  # type: ignore[arg-type]
        except ValueError as exc:
            log.warning("catalog_item_unreadable", sku=sku, reason=f"expiration_period: {exc}")
            return None
    item_type = raw.get("virtual_item_type")
    if raw.get("type") == "virtual_currency":
        kind = CONSUMABLE
    elif isinstance(item_type, str) and item_type in _TYPES:
        kind = _TYPES[item_type]
    elif period is not None:
        kind = TIME_LIMITED
    elif isinstance(options.get("consumable"), Mapping):
        kind = CONSUMABLE
    else:
        kind = PERMANENT
    if kind == TIME_LIMITED and period is None:
        log.warning("catalog_item_unreadable", sku=sku, reason="a time-limited item without expiration_period")
        return None
    return SourceItem(sku, kind, period if kind == TIME_LIMITED else None)


def bundle_contents(raw: Any) -> tuple[str, tuple[tuple[str, int], ...]] | None:
    """A bundle's sku and contents; None when it cannot be read (logged)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("sku"), str) or not raw["sku"]:
        log.warning("catalog_bundle_unreadable", reason="no sku")
        return None
    contents = []
    for entry in raw.get("content") or []:
        sku, quantity = (entry.get("sku"), entry.get("quantity")) if isinstance(entry, Mapping) else (None, None)
        if not isinstance(sku, str) or isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            log.warning("catalog_bundle_unreadable", sku=raw["sku"], reason="a content entry without sku or quantity")
            return None
        contents.append((sku, quantity))
    return raw["sku"], tuple(contents)


class XsollaCatalog(AdminClient):
    """Reads projects' catalogs from Xsolla's admin API over one HTTP session (a `core.catalogs.CatalogSource`).

    Args:
        settings: the API's base URL and timeout.
        metrics: where requests are counted (by operation and result).
        backoff: the waits between tries.
    """

    def __init__(
        self, settings: CatalogSettings, metrics: XsollaMetrics, *, backoff: Backoff = DEFAULT_BACKOFF
    ) -> None:
        super().__init__(settings.admin_api, settings.http_timeout_s, metrics)
        self._backoff = backoff

    async def fetch(self, project: Project) -> SourceCatalog:
        auth = credentials(project)
        items: dict[str, SourceItem] = {}
        for raw in await self._list(project.id, "virtual_items", auth):
            item = source_item(raw)
            if item is not None:
                items[item.sku] = item
        bundles: dict[str, tuple[tuple[str, int], ...]] = {}
        for raw in await self._list(project.id, "bundle", auth):
            bundle = bundle_contents(raw)
            if bundle is not None:
                bundles[bundle[0]] = bundle[1]
        return SourceCatalog(MappingProxyType(items), MappingProxyType(bundles))

    async def _list(self, project_id: int, kind: str, auth: str) -> list[Any]:
        """Every entry of an admin list, page by page until a short page."""
        url = f"{self._base}/v2/project/{project_id}/admin/items/{kind}"
        entries: list[Any] = []
        for page in range(MAX_PAGES):
            batch = await self._page(url, kind, auth, page * PAGE_SIZE)
            entries.extend(batch)
            if len(batch) < PAGE_SIZE:
                return entries
        raise CatalogUnavailable(f"{kind}: more than {MAX_PAGES} pages of {PAGE_SIZE}")

    async def _page(self, url: str, kind: str, auth: str, offset: int) -> list[Any]:
        operation = f"catalog_{kind}"
        for attempt in range(ATTEMPTS):
            started = time.perf_counter()
            result, wait_s, problem = "error", 0.0, ""
            try:
                params = {"limit": PAGE_SIZE, "offset": offset}
                headers = {"Authorization": auth}
                async with self._get_session().get(url, params=params, headers=headers) as response:
                    code = response.status
                    result = str(code) if code in (401, 403, 404, 429) else f"{code // 100}xx"
                    if code == 200:
                        body = await response.json(content_type=None)
                        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                            result = "unreadable"
                            raise CatalogUnavailable(f"{kind}: the answer has no items list")
                        result = "ok"
                        return list(body["items"])
                    if 400 <= code < 500 and code != 429:
                        raise CatalogRefused(f"{kind}: Xsolla answered {code} (check api_key and api_user)")
                    problem = f"{kind}: Xsolla answered {code}"
                    if code == 429:
                        asked = retry_after_s(response.headers.get("Retry-After"))
                        wait_s = 1.0 if asked is None else asked
                        if wait_s > MAX_RETRY_AFTER_S:
                            raise CatalogUnavailable(f"{problem}; Retry-After {wait_s:g} s")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                result = "network" if not isinstance(exc, ValueError) else "unreadable"
                problem = f"{kind}: {type(exc).__name__}: {exc}"
            finally:
                self._metrics.requests.labels(operation, result).inc()
                self._metrics.request_duration.labels(operation).observe(time.perf_counter() - started)
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(wait_s or self._backoff.delay_s(attempt))
        raise CatalogUnavailable(f"{problem} ({ATTEMPTS} tries)")

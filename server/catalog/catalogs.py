"""Each project's catalog in the service: read from the provider's admin catalog API, kept in Redis, completed by
a local file.

A project's `catalog_source` (`core.projects`) says where its catalog comes from:

- `provider`: the provider's admin catalog (`core.catalogs.CatalogSource`), read at start, every
  `refresh_interval_s`, when an order names a sku it does not know (at most once per sku per
  `MISS_REFRESH_INTERVAL_S`, and not when it was read less than `MISS_MIN_AGE_S` ago, so a burst of unknown skus
  does not hammer the provider), and on demand (`python -m server catalog refresh`). Each good read is kept in
  Redis (`core.keys.catalog_key`) with when it was read, so a restart while the provider cannot be reached still
  knows it; replicas share it (a periodic read is skipped when another replica stored one less than half an
  interval ago, and an unknown sku first looks at what is stored). A failed read keeps the last good catalog.
- `file`: the project's local catalog file only.
- `none`: no catalog: every sku is a plain item (a consumable unless the player holds it as another kind), which
  cannot make time-limited items; the service warns about it at start.

With `provider` or `file`, a sku the catalog does not know is never granted as a guess: the order fails with
`SkuNotInCatalog`, so the consumer retries it and then dead-letters it; once the catalog knows the sku, replaying
the dead letter grants it. The local file (`catalog_file`) overrides or completes the provider's items.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import structlog
from redis.typing import EncodableT, FieldT

from core.catalogs import CatalogError, CatalogRefused, CatalogSource
from core.connections import RedisClient, bounded
from core.errors import ConfigError, StoreUnavailable
from core.keys import catalog_key
from core.lifecycle import cancel_and_wait
from core.projects import CATALOG_NONE, CATALOG_PROVIDER, Project, Projects
from server.catalog.items import Catalog, CatalogItem
from server.errors import SkuNotInCatalog
from server.metrics import CatalogMetrics

log = structlog.get_logger("server.catalog")

#: An unknown sku makes its project's catalog be read again at most once per this interval...
MISS_REFRESH_INTERVAL_S = 60.0
#: ...and not when the catalog was read less than this ago (it would answer the same).
MISS_MIN_AGE_S = 5.0


@dataclass(frozen=True)
class Refresh:
    """What reading a project's catalog from the provider did.

    Attributes:
        project_id: the project.
        result: "ok", "refused", "unavailable", "error" or "no_source" (the project's catalog is not the provider's).
        items, bundles: what the catalog in use knows afterwards.
        fetched_at_ms: when the provider's catalog in use was read (0: never).
        error: why it failed.
    """

    project_id: int
    result: str
    items: int
    bundles: int
    fetched_at_ms: int
    error: str = ""


@dataclass
class _State:
    """One project's catalog in this process."""

    project: Project
    local: Catalog
    provider: Catalog | None = None
    catalog: Catalog = field(default_factory=Catalog)
    loaded: bool = False
    last_read: float = -math.inf
    last_result: str = "ok"
    last_error: str = ""
    miss_refreshes: dict[str, float] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Catalogs:
    """The catalogs of the projects this service serves (`Fulfillment` and `Grant` ask them).

    Args:
        redis: a connected client, owned by the caller.
        projects: the projects served.
        local: project id -> its local catalog (0: the catalog of projects not listed).
        source: the provider's catalog API; None when the provider has none (then no project can use it).
        metrics: the catalog metrics.
        refresh_interval_s: how often a provider catalog is read again.
        timeout_s: the bound of one Redis operation.
    """

    def __init__(
        self,
        redis: RedisClient,
        projects: Projects,
        local: Mapping[int, Catalog],
        source: CatalogSource | None,
        metrics: CatalogMetrics,
        *,
        refresh_interval_s: float,
        timeout_s: float,
    ) -> None:
        self._redis = redis
        self._projects = projects
        self._local = local
        self._source = source
        self._metrics = metrics
        self._interval_s = refresh_interval_s
        self._timeout_s = timeout_s
        self._states: dict[int, _State] = {}
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Warns about projects without a catalog and starts reading the catalogs (Redis, then the provider) in
        the background, then every `refresh_interval_s`. Returns at once: neither need be reachable."""
        for project in self._served():
            if project.catalog_source == CATALOG_NONE:
                log.warning(
                    "catalog_none",
                    project=project.label,
                    message="no catalog: every sku is granted as a plain item (a consumable unless held as another "
                    "kind), so time-limited items cannot be sold; configure the provider's catalog or a file",
                )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="catalog-refresh")

    async def stop(self) -> None:
        """Stops the periodic reads and closes the source."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._source is not None:
            await self._source.close()

    # --- lookups --------------------------------------------------------------------------------------------

    async def known(self, project_id: int, sku: str) -> CatalogItem | None:
        """The project's catalog entry of `sku` as known now (no provider read), or None.

        Raises:
            StoreUnavailable: the stored catalog could not be read from Redis.
        """
        state = await self._loaded(project_id)
        return state.catalog.lookup(sku)

    async def for_order(self, project_id: int, sku: str) -> CatalogItem | None:
        """How an order line of `sku` is granted: its catalog entry, or None for a plain item (a project without
        catalog). A sku the catalog does not know makes it look at what is stored, then read the provider once
        (within the limits in the module's docstring).

        Raises:
            SkuNotInCatalog: the catalog still does not know `sku`.
            StoreUnavailable: Redis could not be read.
        """
        state = await self._loaded(project_id)
        item = state.catalog.lookup(sku)
        if item is not None:
            return item
        if state.project.catalog_source == CATALOG_NONE:
            return None
        if state.project.catalog_source == CATALOG_PROVIDER:
            await self._adopt_stored(state)
            now = time.monotonic()
            if (
                state.catalog.lookup(sku) is None
                and now - state.miss_refreshes.get(sku, -math.inf) >= MISS_REFRESH_INTERVAL_S
                and now - state.last_read >= MISS_MIN_AGE_S
            ):
                state.miss_refreshes[sku] = now
                await self._refresh(state, "unknown_sku")
            item = state.catalog.lookup(sku)
        self._metrics.unknown_skus.labels("learned" if item is not None else "not_in_catalog").inc()
        if item is None:
            raise SkuNotInCatalog(sku)
        return item

    async def catalog(self, project_id: int) -> Catalog:
        """The project's catalog in use (the provider's, completed by the local file).

        Raises:
            StoreUnavailable: the stored catalog could not be read from Redis.
        """
        return (await self._loaded(project_id)).catalog

    async def refresh(self, project_id: int) -> Refresh:
        """Reads the project's catalog from the provider now (the on-demand refresh) and keeps it when good.

        Raises:
            StoreUnavailable: Redis could not be read or written.
        """
        state = await self._loaded(project_id)
        return await self._refresh(state, "command")

    # --- internals ------------------------------------------------------------------------------------------

    def _served(self) -> list[Project]:
        """The listed projects, or the template's settings when none is listed."""
        return [self._projects.projects[pid] for pid in self._projects.ids] or [self._projects.template]

    def _refreshed(self) -> list[int]:
        """The projects whose catalogs the periodic reads cover: the listed ones, and those seen since start."""
        seen = [pid for pid in self._states if pid not in self._projects.projects]
        return [*self._projects.ids, *seen]

    def _state(self, project_id: int) -> _State:
        pid = project_id or self._projects.default_project or 0
        state = self._states.get(pid)
        if state is None:
            project = self._projects.get(pid) or replace(self._projects.template, id=pid)
            if pid == 0 or (project.catalog_source == CATALOG_PROVIDER and self._source is None):
                # No provider project to read from: what is stored or local is all there is.
                project = replace(project, catalog_source=CATALOG_NONE if pid == 0 else project.catalog_source)
            local = self._local.get(pid, self._local.get(0, Catalog()))
            state = _State(project, local, catalog=local)
            self._states[pid] = state
        return state

    async def _loaded(self, project_id: int) -> _State:
        state = self._state(project_id)
        if not state.loaded:
            async with state.lock:
                if not state.loaded:
                    await self._adopt_stored(state)
                    state.loaded = True
        return state

    async def _adopt_stored(self, state: _State) -> None:
        """Takes the catalog stored in Redis when it is newer than the one in use (its time is read first, so an
        unchanged catalog costs one small read)."""
        if state.project.catalog_source != CATALOG_PROVIDER:
            return
        key = catalog_key(state.project.id)
        stamp = await bounded(self._redis.hget(key, "fetched_at_ms"), self._timeout_s)
        in_use = state.provider.fetched_at_ms if state.provider is not None else -1
        if stamp is None or int(stamp) <= in_use:
            return
        raw = await bounded(self._redis.hget(key, "catalog"), self._timeout_s)
        try:
            stored = Catalog.from_json(raw or b"")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("catalog_stored_unreadable", project=state.project.label, error=str(exc))
            return
        self._use(state, stored)

    def _use(self, state: _State, provider: Catalog) -> None:
        state.provider = provider
        state.catalog = provider.completed_by(state.local)
        self._metrics.set_items(state.project.id, len(state.catalog))

    async def _refresh(self, state: _State, trigger: str) -> Refresh:
        """Reads the provider's catalog once (concurrent callers share the read), stores it, and uses it."""
        project = state.project
        if project.catalog_source != CATALOG_PROVIDER or self._source is None:
            return self._outcome(state, "no_source")
        started = time.monotonic()
        async with state.lock:
            if state.last_read >= started:  # read by another caller while this one waited: its result
                return self._outcome(state, state.last_result, state.last_error)
            result, error = "ok", ""
            try:
                fetched = await self._source.fetch(project)
            except CatalogError as exc:
                result, error = ("refused" if isinstance(exc, CatalogRefused) else "unavailable"), str(exc)
            except ConfigError as exc:
                result, error = "error", str(exc)
            state.last_read = time.monotonic()
            state.last_result, state.last_error = result, error
            self._metrics.refreshes.labels(result).inc()
            if result != "ok":
                self._log_failure(state, trigger, result, error)
                return self._outcome(state, result, error)
            catalog = Catalog.from_source(fetched, int(time.time() * 1000))
            mapping: dict[FieldT, EncodableT] = {
                "fetched_at_ms": catalog.fetched_at_ms,
                "catalog": catalog.to_json(),
            }
            await bounded(self._redis.hset(catalog_key(project.id), mapping=mapping), self._timeout_s)
            self._use(state, catalog)
            state.loaded = True
        log.info(
            "catalog_refreshed",
            project=project.label,
            trigger=trigger,
            items=len(catalog.items),
            bundles=len(catalog.bundles),
            local_items=len(state.local),
        )
        return self._outcome(state, "ok")

    def _log_failure(self, state: _State, trigger: str, result: str, error: str) -> None:
        provider = state.provider
        if provider is not None:
            log.warning(
                "catalog_refresh_failed",
                project=state.project.label,
                trigger=trigger,
                result=result,
                error=error,
                using="the stored catalog",
                stored_items=len(provider.items),
                stored_at_ms=provider.fetched_at_ms,
            )
        else:
            log.error(
                "catalog_unavailable",
                project=state.project.label,
                trigger=trigger,
                result=result,
                error=error,
                message="no catalog read from the provider yet: order lines of skus the local catalog does not know "
                "are retried, then dead-lettered, until it can be read",
                local_items=len(state.local),
            )

    @staticmethod
    def _outcome(state: _State, result: str, error: str = "") -> Refresh:
        fetched = state.provider.fetched_at_ms if state.provider else 0
        bundles = len(state.catalog.bundles)
        return Refresh(state.project.id, result, len(state.catalog), bundles, fetched, error)

    async def _run(self) -> None:
        """Reads every served project's catalog at start, then every interval (skipping a provider read when another
        replica stored one less than half an interval ago)."""
        first = True
        while True:
            for project_id in self._refreshed():
                if project_id == 0:
                    continue
                try:
                    state = await self._loaded(project_id)
                    if not first:
                        await self._adopt_stored(state)
                        if state.provider is not None:
                            age_s = time.time() - state.provider.fetched_at_ms / 1000
                            if age_s < self._interval_s / 2:
                                continue
                    await self._refresh(state, "start" if first else "periodic")
                except StoreUnavailable as exc:
                    log.warning("catalog_store_unavailable", project=project_id, error=str(exc))
            first = False
            await asyncio.sleep(self._interval_s)

"""One sweep of one project's orders at the provider: its admin search, page by page over a creation-date window,
each order compared with what this service applied.

Per order (each counted `examined`):

- paid or done at the provider: the player is the provider's `user_id` when it names one (recorded in the order
  index as authoritative), else the order index's (`server.reconcile.index`); none, or records that disagree, make
  the order unresolved: reported, never guessed. With a player, the order's stored state decides: not applied here
  -> its order_paid is appended to the event log (`server.reconcile.orders.order_event`, origin SWEEPER, bundles
  expanded through the catalog; the consumer applies it with the project's sandbox policy); paid here ->
  already; canceled here -> a mismatch, reported;
- canceled at the provider and paid here: an order_canceled is appended (the consumer undoes exactly what was
  granted);
- new or expired: nothing.

After the last page, the creation seconds behind the window of orders seen unfinished, or applied here lately,
are searched again, a second at a time, for late payments and cancels (`server.reconcile.recheck`). Then the
orders this service applied in the window that no sweep ever saw at the provider are reported as mismatches, never
touched. The check trails the window's end by the overlap (an order the provider has not indexed yet is checked by
the next sweep), and the first window skips its first overlap (an order created just before it may have been
applied just after its start).

Requests are spaced by the replica's `Pacer`; a `SearchRateLimited` waits its `retry_after_s`, then asks for the
same page again. Appends are idempotent (the reconciled event id is deduplicated by the event log, and
`order_paid.lua` replays on the order's status), so a page swept twice (a holder killed before saving its offset)
applies nothing twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Final

import structlog

from core.clock import now_ms
from core.connections import RedisClient, bounded
from core.eventlog import EventLog
from core.limits import identifier_problem
from core.projects import Project
from core.reconciliation import OrderSearch, ProviderOrder, SearchPage, SearchRateLimited, SearchUnavailable
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import events_pb2
from server.catalog import Catalogs
from server.errors import SkuNotInCatalog
from server.leases import Lease
from server.metrics import ServiceMetrics
from server.reconcile.findings import Finding, SweepOutcome, Window, iso
from server.reconcile.index import AUTHORITATIVE, OrderIndex, OrderOwner
from server.reconcile.orders import Bundles, order_event, unusable
from server.reconcile.pacer import Pacer
from server.reconcile.progress import FAILED, MISMATCH, UNRESOLVED, Report, SweepRecords
from server.reconcile.recheck import Rechecks, second_of
from server.status_channel import OrderState, read_order_state

log = structlog.get_logger("server.reconcile")

SOURCE: Final = "sweeper"
_PAID = frozenset({pb.ORDER_STATUS_PAID, pb.ORDER_STATUS_DONE})
CANCELED: Final = pb.ORDER_STATUS_CANCELED

#: What a sweep does with an order, as the operator's table prints it.
APPLY: Final = "apply"
UNDO: Final = "undo"
ALREADY: Final = "already"
NOTHING: Final = "none"
#: The metric's result of each action (`entitlements_reconcile_orders_total{result}`); NOTHING counts as examined only.
RESULTS: Final = {
    APPLY: "applied",
    UNDO: "undone",
    ALREADY: "already",
    MISMATCH: "mismatch",
    UNRESOLVED: "unresolved",
    FAILED: "failed",
}
_REPORTED: Final = frozenset({MISMATCH, UNRESOLVED, FAILED})
#: Orders whose stored state one gather reads at once, and applied orders checked per round trip.
_CHUNK: Final = 500


@dataclass(frozen=True)
class SweepParts:
    """What a sweep works with, built once per process.

    Attributes:
        provider: the provider's name in event ids ("xsolla").
        overlap_s: how far a continuing window starts before the watermark (`ReconcileSettings.overlap_s`).
        max_wait_s: the longest `Retry-After` waited out; a longer one fails the sweep (retried next interval).
        retention_ms: how long the order index, the orders seen and the reports are kept.
    """

    redis: RedisClient
    search: OrderSearch
    event_log: EventLog
    index: OrderIndex
    records: SweepRecords
    rechecks: Rechecks
    catalogs: Catalogs
    metrics: ServiceMetrics
    pacer: Pacer
    provider: str
    overlap_s: float
    max_wait_s: float
    retention_ms: int
    timeout_s: float


class OrderSweep:
    """Sweeps one window of one project (see the module's docstring)."""

    def __init__(self, parts: SweepParts) -> None:
        self._p = parts

    async def run(
        self, project: Project, window: Window, lease: Lease, *, dry_run: bool = False, collect: bool = False
    ) -> SweepOutcome:
        """Sweeps `window` to its end.

        Args:
            lease: the lease held for the project (the stored window's progress is saved under it).
            dry_run: read only: nothing appended, recorded or reported; the findings say what would be done.
            collect: keep a `Finding` per order in the outcome.

        Raises:
            SearchRefused, SearchUnavailable: the provider's search failed (the progress is kept).
            core.errors.ConfigError: the project's credentials cannot be used.
            LeaseLost: the lease was lost. StoreUnavailable: Redis did not answer in time.
        """
        p = self._p
        bundles = (await p.catalogs.catalog(project.id)).bundles
        outcome = SweepOutcome(project.id, window, dry_run)
        await self._read(project, window, bundles, outcome, collect, lease if window.stored and not dry_run else None)
        if window.stored:
            await self._recheck(project, window, bundles, outcome, collect)
        await self._unknown_to_provider(project, window, outcome, collect)
        if not dry_run:
            await self._trim(project.id)
        return outcome

    async def _read(
        self,
        project: Project,
        window: Window,
        bundles: Bundles,
        outcome: SweepOutcome,
        collect: bool,
        lease: Lease | None,
    ) -> int:
        """Reads `window` page by page from its offset, deciding each order; saves the offset under `lease` when
        given. Returns how many orders it read."""
        offset = window.offset
        while True:
            page = await self._page(project, window, offset)
            outcome.pages += 1
            await self._orders(project, page.orders, bundles, outcome, collect)
            offset += len(page.orders)
            if lease is not None:
                await self._p.records.advanced(lease, project.id, offset)
            if not page.has_more or not page.orders:
                return offset - window.offset

    async def _recheck(
        self,
        project: Project,
        window: Window,
        bundles: Bundles,
        outcome: SweepOutcome,
        collect: bool,
    ) -> None:
        """Searches again the due creation seconds behind the window, one at a time (`server.reconcile.recheck`)."""
        p, pid, dry = self._p, project.id, outcome.dry_run
        for second in await p.rechecks.due(pid, second_of(window.from_ms), now_ms(), forget=not dry):
            read = await self._read(project, Window(second, second + 999), bundles, outcome, collect, None)
            outcome.rechecks += 1
            outcome.counts["rechecked"] += read
            if not dry:
                p.metrics.reconcile_orders.labels(str(pid), SOURCE, "rechecked").inc(read)
                await p.rechecks.checked(pid, second, now_ms())

    async def _page(self, project: Project, window: Window, offset: int) -> SearchPage:
        p = self._p
        while True:
            await p.pacer.wait()
            try:
                return await p.search.search(
                    project, window.from_ms, window.until_ms, offset=offset, limit=p.search.max_page_size
                )
            except SearchRateLimited as exc:
                if exc.retry_after_s > p.max_wait_s:
                    raise SearchUnavailable(f"{exc}; asked to wait {exc.retry_after_s:g} s") from exc
                log.info("sweep_rate_limited", project=project.label, offset=offset, retry_after_s=exc.retry_after_s)
                await asyncio.sleep(exc.retry_after_s)

    async def _orders(
        self,
        project: Project,
        orders: Sequence[ProviderOrder],
        bundles: Bundles,
        outcome: SweepOutcome,
        collect: bool,
    ) -> None:
        p, pid, dry = self._p, project.id, outcome.dry_run
        now = now_ms()
        outcome.seen.update(order.order_id for order in orders)
        if not dry:
            await p.records.remember(pid, [(order.order_id, order.created_at_ms) for order in orders])
            await p.rechecks.note(pid, orders, now)
        findings: list[Finding] = []
        wanted: list[ProviderOrder] = []
        for order in orders:
            if order.status.status in _PAID or order.status.status == CANCELED:
                wanted.append(order)
            else:
                findings.append(Finding(order.order_id, order.status.word, order.user_id, NOTHING, "not paid"))
        owners = await p.index.owners(pid, [order.order_id for order in wanted])
        with_player: list[tuple[ProviderOrder, str]] = []
        for order in wanted:
            owner = owners[order.order_id]
            if order.user_id:
                problem = identifier_problem(order.user_id)
                if problem is not None:
                    findings.append(Finding(order.order_id, order.status.word, "", FAILED, f"user.id {problem}"))
                    continue
                owner = await self._provider_player(pid, order, owner, now, dry)
            if owner.conflict:
                why = "the records of whose order this is disagree: never guessed"
                findings.append(Finding(order.order_id, order.status.word, "", UNRESOLVED, why))
            elif owner.known:
                with_player.append((order, owner.user_id))
            elif order.status.status == CANCELED:
                findings.append(Finding(order.order_id, order.status.word, "", NOTHING, "never applied here"))
            else:
                why = "the provider names no player and nothing here says whose order it is: never guessed"
                findings.append(Finding(order.order_id, order.status.word, "", UNRESOLVED, why))
        for start in range(0, len(with_player), _CHUNK):
            chunk = with_player[start : start + _CHUNK]
            states = await bounded(
                asyncio.gather(*(read_order_state(p.redis, (pid, user, order.order_id)) for order, user in chunk)),
                p.timeout_s,
            )
            for (order, user), state in zip(chunk, states, strict=True):
                findings.append(await self._decide(order, user, state, bundles, now, dry))
        await self._settle(project, orders, findings, outcome, collect)

    async def _provider_player(
        self, project_id: int, order: ProviderOrder, known: OrderOwner, now: int, dry: bool
    ) -> OrderOwner:
        """The owner once the provider's own record of the player is taken into account (recorded unless `dry`)."""
        if dry:
            if known.conflict or (known.authoritative and known.user_id != order.user_id):
                return OrderOwner(conflict=True)
            return OrderOwner(order.user_id, authoritative=True)
        return await self._p.index.record(
            project_id, order.order_id, order.user_id, authority=AUTHORITATIVE, applied=False, now_ms=now
        )

    async def _decide(
        self,
        order: ProviderOrder,
        user: str,
        state: OrderState | None,
        bundles: Bundles,
        now: int,
        dry: bool,
    ) -> Finding:
        word = order.status.word
        if order.status.status == CANCELED:
            if state is None or state.status != "paid":
                why = "never applied here" if state is None else f"{state.status} here too"
                return Finding(order.order_id, word, user, NOTHING, why)
            return await self._queue(order, user, bundles, now, dry, canceled=True)
        if state is None:
            return await self._queue(order, user, bundles, now, dry, canceled=False)
        if state.status == "paid":
            return Finding(order.order_id, word, user, ALREADY, f"applied by {state.source}")
        return Finding(order.order_id, word, user, MISMATCH, f"{state.status} here, {word} at the provider")

    async def _queue(
        self,
        order: ProviderOrder,
        user: str,
        bundles: Bundles,
        now: int,
        dry: bool,
        *,
        canceled: bool,
    ) -> Finding:
        """Appends the order's order_paid (or order_canceled) to the event log."""
        action = UNDO if canceled else APPLY
        word = order.status.word
        problem = unusable(order)
        if problem is not None:
            return Finding(order.order_id, word, user, FAILED, problem)
        try:
            event = order_event(
                self._p.provider,
                replace(order, items=()) if canceled else order,  # a cancel undoes what the order hash recorded
                user,
                bundles,
                origin=events_pb2.EventOrigin.EVENT_ORIGIN_SWEEPER,
                paid_at_ms=0 if canceled else order.created_at_ms,
                received_at_ms=now,
                canceled=canceled,
            )
        except SkuNotInCatalog as exc:
            why = f"bundle {exc.sku!r} is not in the project's catalog: refresh the catalog, then reconcile again"
            return Finding(order.order_id, word, user, FAILED, why)
        if dry:
            return Finding(order.order_id, word, user, action, "dry run: nothing appended")
        appended = await self._p.event_log.append(event, json.dumps(asdict(order), ensure_ascii=False).encode())
        if appended.duplicate:
            return Finding(order.order_id, word, user, ALREADY, "queued earlier, not applied yet")
        return Finding(order.order_id, word, user, action)

    async def _settle(
        self,
        project: Project,
        orders: Sequence[ProviderOrder],
        findings: Sequence[Finding],
        outcome: SweepOutcome,
        collect: bool,
    ) -> None:
        """Counts, logs and keeps the findings (reports for what is unsettled, the rest settled)."""
        p, pid = self._p, project.id
        created = {order.order_id: order.created_at_ms for order in orders}
        now = now_ms()
        for finding in findings:
            result = RESULTS.get(finding.action)
            if finding.order_id in created:
                outcome.counts["examined"] += 1
                if not outcome.dry_run:
                    p.metrics.reconcile_orders.labels(str(pid), SOURCE, "examined").inc()
            if result is None:
                continue
            outcome.counts[result] += 1
            if outcome.dry_run:
                continue
            p.metrics.reconcile_orders.labels(str(pid), SOURCE, result).inc()
            if finding.action in _REPORTED:
                log.warning(
                    f"sweep_order_{finding.action}",
                    project=project.label,
                    order_id=finding.order_id,
                    status=finding.status or None,
                    why=finding.why,
                )
        if collect:
            outcome.findings.extend(findings)
        if outcome.dry_run:
            return
        reported = [f for f in findings if f.action in _REPORTED]
        await p.records.report(
            pid,
            [
                Report(f.order_id, f.action, f.why, f.status, f.player, created.get(f.order_id, 0), now)
                for f in reported
            ],
        )
        unsettled = {
            f.order_id: created[f.order_id] for f in reported if f.action != MISMATCH and f.order_id in created
        }
        await p.rechecks.keep(pid, unsettled, now)
        await p.records.settle(pid, [f.order_id for f in findings if f.action not in _REPORTED])

    async def _unknown_to_provider(
        self, project: Project, window: Window, outcome: SweepOutcome, collect: bool
    ) -> None:
        """Reports the orders applied here in the window that no sweep saw at the provider."""
        p, pid = self._p, project.id
        overlap_ms = int(p.overlap_s * 1000)
        check_from = window.from_ms + (0 if window.continues else overlap_ms)
        check_until = window.until_ms - overlap_ms
        if check_until < check_from:
            return
        applied = await p.index.applied_between(pid, check_from, check_until)
        unseen = [(order_id, at) for order_id, at in applied if order_id not in outcome.seen]
        findings: list[Finding] = []
        for start in range(0, len(unseen), _CHUNK):
            chunk = unseen[start : start + _CHUNK]
            seen = await p.records.seen(pid, [order_id for order_id, _ in chunk])
            missing = [(order_id, at) for order_id, at in chunk if order_id not in seen]
            owners = await p.index.owners(pid, [order_id for order_id, _ in missing])
            for order_id, at in missing:
                why = f"applied here at {iso(at)}; the provider's search does not return it"
                findings.append(Finding(order_id, "", owners[order_id].user_id, MISMATCH, why))
        await self._settle(project, (), findings, outcome, collect)

    async def _trim(self, project_id: int) -> None:
        """Forgets index entries, orders seen and reports past the order index's retention."""
        p = self._p
        before = now_ms() - p.retention_ms
        while await p.index.trim(project_id, before) >= 1000:
            pass
        await p.records.trim(project_id, before)

"""The sweeper: every project with admin API credentials swept every `sweep_interval_s`, one replica at a time.

Each replica runs one loop per such project (the projects file's list; a deployment serving any project has no
list to sweep). A loop reads the project's stored progress (`server.reconcile.progress`) and sleeps until the
next sweep is due; then it tries to take the project's lease (`server.reconcile.lease`). The replica that takes it
sweeps (`server.reconcile.sweep`); the others find it taken and look again a third of a lease later, so when the
holder dies its lease expires and another replica takes over, resuming the window at the offset saved after the
last page. Every replica reports the last success from the stored progress.

The window: the first sweep of a project reads the last `first_window_h` hours; each later one starts at the stored
watermark (the end of the last window swept to its end) minus `overlap_s`, and ends now. A sweep that fails keeps
its window and offset (retried at the next interval); one refused by the provider says to fix the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from core.clock import now_ms
from core.errors import ConfigError, StoreUnavailable
from core.lifecycle import cancel_and_wait
from core.projects import Project, Projects
from core.reconciliation import SearchError, SearchRefused
from server.leases import Lease
from server.reconcile.findings import SweepOutcome, Window, iso
from server.reconcile.lease import RENEWALS_PER_LEASE, LeaseLost, SweeperLease
from server.reconcile.pacer import Pacer
from server.reconcile.progress import SweepRecords
from server.reconcile.recheck import Rechecks
from server.reconcile.settings import ReconcileSettings
from server.reconcile.sweep import OrderSweep, SweepParts

if TYPE_CHECKING:
    from core.connections import RedisClient
    from core.eventlog import EventLog
    from core.reconciliation import OrderSearch
    from server.catalog import Catalogs
    from server.config import Settings
    from server.metrics import ServiceMetrics
    from server.reconcile.index import OrderIndex

log = structlog.get_logger("server.reconcile")

#: How long a loop waits after Redis did not answer before it looks again.
_STORE_RETRY_S: Final = 5.0


class LeaseBusy(Exception):
    """Another holder sweeps the project now."""

    def __init__(self, project_id: int, holder: str, remaining_ms: int) -> None:
        super().__init__(
            f"project {project_id} is being swept by {holder} (its lease ends in {remaining_ms / 1000:.1f} s "
            "unless renewed): try again later"
        )
        self.holder = holder
        self.remaining_ms = remaining_ms


@dataclass(frozen=True, slots=True)
class Range:
    """An explicit creation-date range for one sweep (the operator's), in ms since the epoch."""

    from_ms: int
    until_ms: int


def describe(exc: BaseException) -> str:
    """A failure as one line for logs, the stored progress and the operator."""
    if isinstance(exc, SearchRefused):
        return f"the provider refused the project's credentials ({exc}): fix its api_key and api_user"
    if isinstance(exc, ConfigError):
        return f"the project's credentials cannot be used: {exc}"
    return str(exc) or type(exc).__name__


class Sweeper:
    """Runs the periodic sweeps of this replica, and one sweep on demand (the operator's command).

    Args:
        parts: what a sweep works with.
        projects: the projects served; those listed whose search is configured are swept.
        settings: the reconciliation settings.
    """

    def __init__(self, parts: SweepParts, projects: Projects, settings: ReconcileSettings) -> None:
        self._parts = parts
        self._sweep = OrderSweep(parts)
        self._projects = projects
        self._settings = settings
        self._tasks: list[asyncio.Task[None]] = []
        # Per swept project: set by `sweep_soon`, cleared by the sweep it asked for.
        self._soon: dict[int, asyncio.Event] = {}

    @property
    def swept(self) -> list[Project]:
        """The projects this replica sweeps: listed, with what the provider's search needs."""
        return [p for p in self._projects.projects.values() if self._parts.search.configured(p)]

    def start(self) -> None:
        """Starts one loop per swept project."""
        swept = self.swept
        unswept = [p.label for p in self._projects.projects.values() if p not in swept]
        log.info(
            "sweeper_started",
            projects=[p.label for p in swept],
            without_credentials=unswept or None,
            interval_s=self._settings.sweep_interval_s,
        )
        loop = asyncio.get_running_loop()
        self._soon = {project.id: asyncio.Event() for project in swept}
        self._tasks = [loop.create_task(self._loop(project), name=f"sweeper-{project.id}") for project in swept]

    def sweep_soon(self, project_id: int) -> bool:
        """Asks this replica's loop of the project for a sweep now rather than when due (the tracker's
        reconciliation hands over an order it cannot tell sandbox from live); False when the project is not swept
        here. The loop sweeps as soon as it holds the lease (while another replica sweeps, a third of a lease
        later)."""
        event = self._soon.get(project_id)
        if event is None:
            return False
        event.set()
        return True

    async def stop(self) -> None:
        """Stops the loops; a sweep under way stops at once and releases its lease (its progress is saved)."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    async def sweep_once(
        self, project: Project, span: Range | None = None, *, dry_run: bool = False, collect: bool = True
    ) -> SweepOutcome:
        """One sweep of `project` now, over `span` or else the stored window (the operator's command).

        Raises:
            LeaseBusy: another holder sweeps the project.
            LeaseLost, SearchError, ConfigError, StoreUnavailable: the sweep failed (see `describe`).
        """
        lease = self._lease(project)
        if not await lease.acquire():
            current = await lease.current()
            holder, remaining = current or ("another holder", 0)
            raise LeaseBusy(project.id, holder, remaining)
        return await lease.run(self._guarded(project, lease, span, dry_run=dry_run, collect=collect))

    def _lease(self, project: Project) -> Lease:
        settings, parts = self._settings, self._parts
        return SweeperLease(parts.redis, project.id, lease_s=settings.lease_s, timeout_s=parts.timeout_s)

    async def _loop(self, project: Project) -> None:
        interval_s = self._settings.sweep_interval_s
        while True:
            try:
                wait_s = await self._attempt(project)
            except StoreUnavailable as exc:
                log.warning("sweeper_store_unavailable", project=project.label, error=str(exc))
                wait_s = _STORE_RETRY_S
            except Exception:
                log.exception("sweeper_failed_unexpectedly", project=project.label)
                wait_s = interval_s
            # A little jitter, so that replicas started together do not all ask for the lease at once.
            soon = self._soon.get(project.id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, min(wait_s, interval_s)) * random.uniform(1.0, 1.1)):
                    if soon is not None:
                        await soon.wait()
                    else:
                        await asyncio.Event().wait()

    async def _attempt(self, project: Project) -> float:
        """Sweeps when due (or asked to, `sweep_soon`) and the lease is free; returns how long to wait before
        looking again."""
        pid = project.id
        soon = self._soon.get(pid)
        asked = soon is not None and soon.is_set()
        progress = await self._parts.records.progress(pid)
        self._parts.metrics.reconcile_last_success.labels(str(pid)).set(progress.last_success_ms / 1000)
        due_in_s = (progress.next_due_ms - now_ms()) / 1000
        if due_in_s > 0 and not asked:
            return due_in_s
        lease = self._lease(project)
        if not await lease.acquire():
            # Someone sweeps; if it died, its lease expires within lease_s.
            return self._settings.lease_s / RENEWALS_PER_LEASE
        sweeps = self._parts.metrics.reconcile_sweeps
        try:
            if soon is not None:
                soon.clear()  # this sweep is the one asked for
            outcome = await lease.run(self._periodic(project, lease, asked=asked))
        except LeaseLost as exc:
            sweeps.labels(str(pid), "lost_lease").inc()
            log.warning("sweep_lost_lease", project=project.label, error=str(exc))
            return self._settings.lease_s / RENEWALS_PER_LEASE
        except (SearchError, ConfigError, StoreUnavailable) as exc:
            refused = isinstance(exc, SearchRefused | ConfigError)
            sweeps.labels(str(pid), "refused" if refused else "failed").inc()
            (log.error if refused else log.warning)(
                "sweep_refused" if refused else "sweep_failed", project=project.label, error=describe(exc)
            )
            return self._settings.sweep_interval_s
        if outcome is None:
            return 0.0  # another replica finished a sweep meanwhile: look at its next due time
        sweeps.labels(str(pid), "ok").inc()
        self._parts.metrics.reconcile_last_success.labels(str(pid)).set(now_ms() / 1000)
        log.info(
            "sweep_finished",
            project=project.label,
            window=f"{iso(outcome.window.from_ms)}..{iso(outcome.window.until_ms)}",
            pages=outcome.pages,
            recheck_searches=outcome.rechecks,
            **dict(outcome.counts),
        )
        return self._settings.sweep_interval_s

    async def _periodic(self, project: Project, lease: Lease, *, asked: bool = False) -> SweepOutcome | None:
        """The due (or `asked`) sweep, under the lease; None when another replica swept meanwhile."""
        if not asked and (await self._parts.records.progress(project.id)).next_due_ms > now_ms():
            return None
        return await self._guarded(project, lease, None, dry_run=False, collect=False)

    async def _guarded(
        self, project: Project, lease: Lease, span: Range | None, *, dry_run: bool, collect: bool
    ) -> SweepOutcome:
        """One sweep under `lease`; a stored window's failure is recorded in the progress."""
        records = self._parts.records
        interval_ms = int(self._settings.sweep_interval_s * 1000)
        stored = span is None and not dry_run
        try:
            window = await self._window(project, lease, span, dry_run)
            outcome = await self._sweep.run(project, window, lease, dry_run=dry_run, collect=collect)
            if stored:
                now = now_ms()
                await records.finished(lease, project.id, window.until_ms, now, now + interval_ms)
        except (SearchError, ConfigError, StoreUnavailable) as exc:
            if stored:
                now = now_ms()
                await records.failed(lease, project.id, describe(exc), now, now + interval_ms)
            raise
        return outcome

    async def _window(self, project: Project, lease: Lease, span: Range | None, dry_run: bool) -> Window:
        """The window to sweep: `span`, the stored one under way, or a new one from the watermark (or the first)."""
        if span is not None:
            return Window(span.from_ms, span.until_ms)
        records = self._parts.records
        progress = await records.progress(project.id)
        now = now_ms()
        continues = progress.watermark_ms is not None
        if progress.window_from_ms is not None and progress.window_until_ms is not None:
            if not dry_run:
                await records.resume(lease, project.id, now)
                log.info("sweep_resumed", project=project.label, offset=progress.offset)
            return Window(progress.window_from_ms, progress.window_until_ms, progress.offset, True, continues)
        if progress.watermark_ms is not None:
            # Not after now: a watermark written by a replica whose clock runs ahead.
            start = min(progress.watermark_ms - int(self._settings.overlap_s * 1000), now)
        else:
            start = now - int(self._settings.first_window_h * 3_600_000)
        if not dry_run:
            await records.begin(lease, project.id, start, now, now)
        return Window(start, now, 0, True, continues)


def sweeper_for(
    settings: Settings,
    redis: RedisClient,
    search: OrderSearch,
    event_log: EventLog,
    order_index: OrderIndex,
    catalogs: Catalogs,
    metrics: ServiceMetrics,
    *,
    provider: str,
) -> Sweeper:
    """The process's sweeper of the projects' orders at the provider, with its parts (not started)."""
    reconcile = settings.reconcile
    parts = SweepParts(
        redis=redis,
        search=search,
        event_log=event_log,
        index=order_index,
        records=SweepRecords(redis, timeout_s=settings.redis_timeout_s),
        rechecks=Rechecks(redis, order_index, reconcile, timeout_s=settings.redis_timeout_s),
        catalogs=catalogs,
        metrics=metrics,
        pacer=Pacer(reconcile.requests_per_s),
        provider=provider,
        overlap_s=reconcile.overlap_s,
        max_wait_s=reconcile.sweep_interval_s,
        retention_ms=int(reconcile.index_retention_days * 86_400_000),
        timeout_s=settings.redis_timeout_s,
    )
    return Sweeper(parts, settings.projects, reconcile)

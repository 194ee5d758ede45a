"""`python -m server reconcile`: one sweep of a project's orders at the provider now, and the sweeper's status.

`reconcile [run] --project P [--from ISO --until ISO] [--dry-run]` takes the project's sweeper lease (refusing when
another holder has it), sweeps the range given or else the stored window (as the periodic sweep would, moving its
progress), and prints a table: each order, its status at the provider, its player or why it has none, and the
action (apply, undo, already, mismatch, unresolved, failed, none). `--dry-run` appends, records and reports
nothing. `reconcile status --project P` prints the stored progress, the lease, and the orders reported
(unresolved, mismatch, failed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from prometheus_client import CollectorRegistry

from core.catalogs import CatalogSource
from core.errors import ConfigError, StoreUnavailable
from core.eventlog import EventLog
from core.reconciliation import OrderSearch, SearchError
from server.catalog import Catalogs
from server.commands.context import operator_redis
from server.config import Settings
from server.metrics import CatalogMetrics, ServiceMetrics
from server.reconcile import (
    LeaseBusy,
    LeaseLost,
    OrderIndex,
    Pacer,
    Range,
    Rechecks,
    Sweeper,
    SweeperLease,
    SweepOutcome,
    SweepParts,
    SweepRecords,
    describe,
)
from server.reconcile.findings import iso

#: Exit status of a sweep that could not run or finish (the lease is held, the provider or Redis failed).
FAILED_EXIT = 1


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Prints `rows` (the first one the header) in aligned columns, the last column unpadded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)


async def reconcile_command(
    settings: Settings,
    search: OrderSearch,
    catalog_source: CatalogSource,
    project_id: int,
    *,
    provider: str,
    provider_name: str,
    span: Range | None = None,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> int:
    """Runs one sweep of `project_id` now and prints what it found and did; returns the exit status (0 done,
    1 the sweep could not run or finish, 2 the project cannot be swept).

    Args:
        search: the provider's order search (closed here).
        catalog_source: the provider's catalog source, for the project's bundles (closed here).
        provider: the provider's name in event ids ("xsolla"); provider_name: as operators know it ("Xsolla").
        span: the creation-date range; None: the stored window.
    """
    out = out or sys.stdout
    project = settings.projects.get(project_id)
    try:
        if project is None or not search.configured(project):
            print(
                f"reconcile: project {project_id} has no admin API credentials "
                f"(api_key and api_user in its {provider} table of the projects file)",
                file=sys.stderr,
            )
            return 2
        async with operator_redis(settings, writes=not dry_run) as redis:
            catalogs = Catalogs(
                redis,
                settings.projects,
                settings.local_catalogs,
                catalog_source,
                CatalogMetrics(CollectorRegistry(), by_project=False),
                refresh_interval_s=settings.catalog_refresh_s,
                timeout_s=settings.redis_timeout_s,
            )
            reconcile = settings.reconcile
            index = OrderIndex(redis, timeout_s=settings.redis_timeout_s)
            parts = SweepParts(
                redis=redis,
                search=search,
                event_log=EventLog(redis, partitions=settings.event_partitions),
                index=index,
                records=SweepRecords(redis, timeout_s=settings.redis_timeout_s),
                rechecks=Rechecks(redis, index, reconcile, timeout_s=settings.redis_timeout_s),
                catalogs=catalogs,
                metrics=ServiceMetrics(CollectorRegistry()),
                pacer=Pacer(reconcile.requests_per_s),
                provider=provider,
                overlap_s=reconcile.overlap_s,
                max_wait_s=reconcile.sweep_interval_s,
                retention_ms=int(reconcile.index_retention_days * 86_400_000),
                timeout_s=settings.redis_timeout_s,
            )
            try:
                outcome = await Sweeper(parts, settings.projects, reconcile).sweep_once(project, span, dry_run=dry_run)
            finally:
                await catalogs.stop()
    except LeaseBusy as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return FAILED_EXIT
    except (SearchError, ConfigError, StoreUnavailable, LeaseLost) as exc:
        print(f"reconcile: project {project_id}: the sweep failed: {describe(exc)}", file=sys.stderr)
        return FAILED_EXIT
    finally:
        await search.close()
    print_outcome(outcome, provider_name, out)
    return 0


def print_outcome(outcome: SweepOutcome, provider_name: str, out: TextIO) -> None:
    """The table of one sweep's findings, then a summary line."""
    rows = [("ORDER", f"STATUS AT {provider_name.upper()}", "PLAYER", "ACTION", "NOTE")]
    for finding in outcome.findings:
        player = finding.player or "-"
        rows.append((finding.order_id, finding.status or "-", player, finding.action, finding.why))
    if len(rows) > 1:
        table(rows, out)
    window = outcome.window
    counts = ", ".join(f"{name} {count}" for name, count in sorted(outcome.counts.items())) or "no orders"
    dry = " (dry run: nothing appended, recorded or reported)" if outcome.dry_run else ""
    print(
        f"project {outcome.project_id}, orders created {iso(window.from_ms)} .. {iso(window.until_ms)}"
        f"{f' from offset {window.offset}' if window.offset else ''}, {outcome.pages} page(s): {counts}{dry}",
        file=out,
    )


async def reconcile_status(settings: Settings, project_id: int, *, out: TextIO | None = None) -> int:
    """Prints a project's sweep progress, its lease, and the orders reported; returns the exit status."""
    out = out or sys.stdout
    try:
        async with operator_redis(settings, writes=False) as redis:
            records = SweepRecords(redis, timeout_s=settings.redis_timeout_s)
            progress = await records.progress(project_id)
            holder = await SweeperLease(
                redis, project_id, lease_s=settings.reconcile.lease_s, timeout_s=settings.redis_timeout_s
            ).current()
            reports = await records.reports(project_id)
    except StoreUnavailable as exc:
        print(f"reconcile status: {exc}", file=sys.stderr)
        return FAILED_EXIT

    def when(ms: int | None) -> str:
        return iso(ms) if ms else "never"

    print(f"project {project_id}", file=out)
    lease = f"held by {holder[0]} for {holder[1] / 1000:.1f} s more" if holder else "free"
    if progress.window_from_ms is not None and progress.window_until_ms is not None:
        window = (
            f"{iso(progress.window_from_ms)} .. {iso(progress.window_until_ms)}, next offset {progress.offset}"
            f" (started {when(progress.started_at_ms)} by {progress.holder or '?'})"
        )
    else:
        window = "none"
    lines = [
        ("lease", lease),
        ("window under way", window),
        ("watermark", when(progress.watermark_ms)),
        ("last success", when(progress.last_success_ms)),
        ("next sweep due", when(progress.next_due_ms) if progress.next_due_ms else "now"),
        ("last error", f"{progress.last_error} ({when(progress.last_error_at_ms)})" if progress.last_error else "none"),
    ]
    for name, value in lines:
        print(f"  {name + ':':<18}{value}", file=out)
    print(f"reported orders: {len(reports)}", file=out)
    if reports:
        rows = [("ORDER", "RESULT", "STATUS", "PLAYER", "CREATED", "REPORTED", "WHY")]
        for report in reports:
            rows.append(
                (
                    report.order_id,
                    report.result,
                    report.status or "-",
                    report.player or "-",
                    when(report.created_at_ms),
                    when(report.reported_at_ms),
                    report.why,
                )
            )
        table(rows, out)
    return 0

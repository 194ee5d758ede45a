"""Command line of the service: `python -m server [serve | hash-key | ledger | dead-letters | events | catalog |
reconcile | migrate-layout]`.

serve                                   run the gRPC service (the default); configured by environment variables;
                                        with ENTITLEMENTS_PROCESSES > 1, a parent running that many workers
worker --index I --link-fd FD [...]     one worker of such a group, started by its parent (`server.group`)
hash-key [--projects IDS]               make a new random API key and print it with its configuration entry
ledger USER_ID [--limit N] [--json]     print a player's audit ledger as a table, newest first (for support)
dead-letters list                       print the webhook events set aside after failing too often
dead-letters replay (ID | --all)        put dead letters back on their event stream, once the cause is fixed
dead-letters discard (ID | --all)       delete dead letters that must never be applied
events status                           per partition: stream length, pending and undelivered entries, consumers
catalog refresh [--project N]           read the projects' catalogs from Xsolla now and keep them for the service
catalog show [--project N]              print the catalog the service uses for a project (items, then bundles)
migrate-layout --project ID             move a store written by key layout 1 into project ID (service stopped)
reconcile [--from ISO --until ISO]      sweep a project's orders at Xsolla now (its stored window unless a range
          [--dry-run]                   is given), printing what it found and did; --dry-run changes nothing
reconcile status                        the sweeper's progress, lease and reported orders for a project

`ledger`, `dead-letters`, `events` and `reconcile` act on one project: `--project`, by default the default project. The
operator commands reach Redis as the service does: REDIS_URL, or else the embedded store of the data directory,
the running service's when one runs there (`make run`), a private one for the command otherwise
(`server.commands.context`). They refuse a store of another key layout as the service does (`core.layout`), except
`migrate-layout`, which moves one. A failure is one line on stderr and exit status 1; a bad argument or setting, one
line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import re
import secrets
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit, urlunsplit

import structlog
from prometheus_client import CollectorRegistry

from core import logs
from core.errors import ConfigError
from core.layout import LayoutMismatch, migrate_layout
from core.lifecycle import stop_signals
from core.limits import identifier_problem
from core.projects import project_id_problem
from providers import xsolla as xsolla_provider
from providers.xsolla import OrderSettings as XsollaOrderSettings
from server.app import Service
from server.auth import ALL_PROJECTS, SCOPES, hash_key, parse_api_keys
from server.catalog import Catalogs
from server.commands import command_project, operator_redis
from server.commands.context import BAD_ARGUMENT, run_command
from server.commands.events import dead_letters_command, events_status
from server.commands.ledger import ledger_command
from server.commands.reconcile import reconcile_command, reconcile_status
from server.config import Settings
from server.group import PortInUse, WorkerFailed, run_group, run_worker
from server.metrics import CatalogMetrics
from server.reconcile import Range
from server.store import KIND_NAMES

__all__ = ["catalog_command", "dead_letters_command", "events_status", "load_settings", "main"]

log = structlog.get_logger("server")

#: Xsolla's single-project variable, refused beside a projects file.
PROJECT_VARIABLE = "ENTITLEMENTS_XSOLLA_PROJECT_ID"


def load_settings(env: Mapping[str, str] | None = None) -> tuple[Settings, XsollaOrderSettings]:
    """The service's settings and Xsolla's, with one default project: the projects file's, or without one the
    project of `ENTITLEMENTS_XSOLLA_PROJECT_ID`, then the one project served (any project when it is unset).

    Raises:
        ConfigError: a setting is malformed, or a single-project variable is set beside a projects file.
    """
    env = os.environ if env is None else env
    xsolla = XsollaOrderSettings.from_env(env)
    if env.get("ENTITLEMENTS_PROJECTS_FILE", "").strip() and env.get(PROJECT_VARIABLE, "").strip():
        raise ConfigError(f"{PROJECT_VARIABLE} is set beside ENTITLEMENTS_PROJECTS_FILE: put it in the projects file")
    settings = Settings.from_env(env, provider=xsolla_provider.PROVIDER)
    if settings.projects.listed:
        xsolla_provider.check_projects(settings.projects)  # the gateway checks the same file the same way
    projects = xsolla_provider.with_env_credentials(settings.projects, env).or_single(xsolla.project_id)
    settings = replace(settings, projects=projects)
    return settings, replace(xsolla, project_id=projects.default_project or 0)


async def serve(
    settings: Settings, xsolla: XsollaOrderSettings, xsolla_catalog: xsolla_provider.CatalogSettings
) -> None:
    """Runs the service (a group of processes with `ENTITLEMENTS_PROCESSES` > 1, `server.group`), following orders
    at Xsolla, until SIGTERM or SIGINT, then shuts down gracefully."""
    if settings.insecure_dev_mode:
        log.warning(
            "INSECURE_DEV_MODE",
            message="ENTITLEMENTS_INSECURE_DEV_MODE is on: "
            + ("every caller has every scope" if not settings.api_keys else "API keys are still checked")
            + ". Never run this in production.",
        )
    async with stop_signals() as stop:
        if settings.processes > 1:
            await run_group(settings, stop)
            return
        service = Service(settings, xsolla, xsolla_catalog=xsolla_catalog)
        await service.start()
        await stop.wait()
        log.info("shutdown_requested", grace_s=settings.shutdown_grace_s)
        await service.stop()


async def catalog_command(
    settings: Settings,
    xsolla_catalog: xsolla_provider.CatalogSettings,
    action: str,
    project_id: int | None,
    *,
    out: TextIO | None = None,
) -> int:
    """Runs `catalog refresh|show` and prints JSON lines; returns the exit status (1: a refresh failed, 2: no
    project to act on).

    Args:
        action: "refresh" (read from Xsolla now and store it, for every listed project unless one is named) or
            "show" (the catalog in use: a line with the project and when it was read, then one per item and
            bundle).
        project_id: the project, or None for the listed ones (refresh) or the default one (show).
    """
    out = out or sys.stdout
    projects = settings.projects
    ids = [project_id] if project_id else list(projects.ids) if action == "refresh" else [projects.default_project]
    if not all(ids) or not ids:
        print("configuration error: name the project with --project", file=sys.stderr)
        return 2
    failed = False
    async with operator_redis(settings, writes=action == "refresh") as redis:
        catalogs = Catalogs(
            redis,
            projects,
            settings.local_catalogs,
            xsolla_provider.catalog_source(xsolla_catalog, CollectorRegistry()),
            CatalogMetrics(CollectorRegistry(), by_project=False),
            refresh_interval_s=settings.catalog_refresh_s,
            timeout_s=settings.redis_timeout_s,
        )
        try:
            for pid in ids:
                assert pid is not None
                if action == "refresh":
                    refresh = await catalogs.refresh(pid)
                    failed = failed or refresh.result != "ok"
                    print(json.dumps(dataclasses.asdict(refresh)), file=out)
                    continue
                catalog = await catalogs.catalog(pid)
                print(json.dumps({"project_id": pid, "fetched_at_ms": catalog.fetched_at_ms}), file=out)
                for sku, item in sorted(catalog.items.items()):
                    row: dict[str, Any] = {
                        "sku": sku,
                        "kind": KIND_NAMES[item.kind],
                        "period": item.period_text or None,
                    }
                    print(json.dumps(row, ensure_ascii=False), file=out)
                for sku, contents in sorted(catalog.bundles.items()):
                    bundle = {"bundle": sku, "content": [{"sku": s, "quantity": q} for s, q in contents]}
                    print(json.dumps(bundle, ensure_ascii=False), file=out)
        finally:
            await catalogs.stop()
    return 1 if failed else 0


async def migrate_layout_command(settings: Settings, project_id: int, *, out: TextIO | None = None) -> int:
    """Runs `migrate-layout`: moves a layout-1 store into `project_id` and prints what it did as JSON lines."""
    out = out or sys.stdout
    async with operator_redis(settings, check=False) as redis:

        def progress(moved: int) -> None:
            print(json.dumps({"moved": moved}), file=out, flush=True)

        result = await migrate_layout(redis, project_id, progress=progress)
    done = {"project_id": result.project_id, "moved": result.moved, "layout": "current"}
    if result.already_current:
        done["note"] = "the store already has the current layout: nothing to move"
    print(json.dumps(done), file=out)
    return 0


async def reconcile(
    settings: Settings,
    xsolla_catalog: xsolla_provider.CatalogSettings,
    project_id: int,
    span: Range | None,
    *,
    dry_run: bool,
) -> int:
    """Runs `reconcile run` with Xsolla's order search and catalog (`server.commands.reconcile`)."""
    registry = CollectorRegistry()
    return await reconcile_command(
        settings,
        xsolla_provider.order_search(xsolla_catalog, registry),
        xsolla_provider.catalog_source(xsolla_catalog, registry),
        project_id,
        provider=xsolla_provider.PROVIDER,
        provider_name=xsolla_provider.NAME,
        span=span,
        dry_run=dry_run,
    )


def _project_id(text: str) -> int:
    """A project id (argparse type)."""
    value = int(text) if text.isascii() and text.isdigit() else -1
    problem = project_id_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: a project id {problem}")
    return value


def _user_id(text: str) -> str:
    """A player id, as the RPCs take it (argparse type)."""
    problem = identifier_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text[:64]!r}: a player id {problem}")
    return text


#: The most entries `ledger --limit` prints.
MAX_LEDGER_LIMIT = 100_000


def _limit(text: str) -> int:
    """How many ledger entries to print, 1..MAX_LEDGER_LIMIT (argparse type)."""
    value = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= value <= MAX_LEDGER_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of entries from 1 to {MAX_LEDGER_LIMIT:,}")
    return value


def _entry_id(text: str) -> str:
    """A stream entry id, `<ms>-<seq>` (argparse type)."""
    if not re.fullmatch(r"\d+-\d+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a stream entry id like 1785478223000-0")
    return text


def _instant(text: str) -> int:
    """An ISO 8601 date-time, UTC unless it names an offset, as ms since the epoch (argparse type)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date-time like 2026-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _reconcile_span(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Range | None:
    """The range of `reconcile --from --until`, or None for the stored window; exits through `parser.error` when
    only one bound is given or the range ends before it starts."""
    if args.start is None and args.until is None:
        return None
    if args.start is None or args.until is None:
        parser.error("--from and --until go together")
    if args.until <= args.start:
        parser.error("--until must be after --from")
    return Range(args.start, args.until)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m server", description="Xsolla entitlement service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (default)")
    worker_parser = commands.add_parser("worker", help="one process of a group (started by its parent, not by hand)")
    worker_parser.add_argument("--index", type=int, required=True, help="the worker's index in its group, from 0")
    worker_parser.add_argument("--link-fd", type=int, required=True, help="the descriptor of the link to the parent")
    worker_parser.add_argument("--parent-store", action="store_true", help="REDIS_URL is the parent's embedded store")
    hash_parser = commands.add_parser("hash-key", help="make a new API key and print its configuration entry")
    hash_parser.add_argument("--name", default="gameserver", help="the key's name (logged, in the ledger)")
    hash_parser.add_argument("--scopes", default="read,write", help=f"comma list of {sorted(SCOPES)}")
    hash_parser.add_argument(
        "--projects",
        default=None,
        help=f"the project ids the key may be used on, comma-separated, or {ALL_PROJECTS} (default: every project)",
    )
    project_help = "the project (default: the default project)"
    ledger_parser = commands.add_parser(
        "ledger",
        help="print a player's audit ledger as a table, newest first",
        description="A player's audit ledger, newest first: time (UTC), operation, sku, before -> after, actor, "
        "reason and what happened in plain words; --json prints one JSON object per entry instead.",
    )
    ledger_parser.add_argument("user_id", type=_user_id, help="the player id used with Xsolla")
    ledger_parser.add_argument("--limit", "--count", type=_limit, default=50, help="at most this many (default 50)")
    ledger_parser.add_argument("--json", action="store_true", help="JSON lines (one per entry) instead of a table")
    ledger_parser.add_argument("--project", type=_project_id, help=project_help)
    dead_parser = commands.add_parser("dead-letters", help="list, replay or discard webhook events that kept failing")
    dead_parser.add_argument("--project", type=_project_id, help=project_help)
    dead_actions = dead_parser.add_subparsers(dest="action", required=True)
    dead_list = dead_actions.add_parser("list", help="print the dead letters as JSON lines, oldest first")
    dead_list.add_argument("--count", type=_limit, default=100, help="at most this many per partition")
    for action, text in (("replay", "put back on the event stream"), ("discard", "delete for good")):
        action_parser = dead_actions.add_parser(action, help=f"{text}: one dead letter by id, or --all")
        which = action_parser.add_mutually_exclusive_group(required=True)
        which.add_argument("id", nargs="?", type=_entry_id, help="the dead letter's id, as `list` prints it")
        which.add_argument("--all", action="store_true", help="every dead letter of every partition of the project")
    events_parser = commands.add_parser("events", help="inspect the webhook event streams")
    events_parser.add_argument("--project", type=_project_id, help=project_help)
    events_actions = events_parser.add_subparsers(dest="action", required=True)
    events_actions.add_parser("status", help="per partition: length, pending, undelivered, consumers, dead letters")
    catalog_parser = commands.add_parser("catalog", help="read or print the projects' catalogs")
    catalog_actions = catalog_parser.add_subparsers(dest="action", required=True)
    for action, text in (
        ("refresh", "read the catalogs from Xsolla now (every listed project, or --project) and store them"),
        ("show", "print the catalog in use for a project (the default one unless --project)"),
    ):
        catalog_actions.add_parser(action, help=text).add_argument("--project", type=_project_id, default=None)
    migrate_parser = commands.add_parser(
        "migrate-layout",
        help="move a store written by key layout 1 (no projects) into one project's namespace",
        description="Moves every player and event-log key of a store written by key layout 1 into the namespace "
        "of --project, then marks the store with the current layout. Stop the service and the gateway first "
        "(every replica): they would write meanwhile. Safe to run again after an interruption: it carries on "
        "where it stopped.",
    )
    migrate_parser.add_argument("--project", type=_project_id, required=True, help="the project the data belongs to")
    reconcile_parser = commands.add_parser(
        "reconcile",
        help="sweep a project's orders at Xsolla now, or print the sweeper's status",
        description="run: one sweep of the project's orders at Xsolla now, over --from..--until (orders created "
        "then) or else the stored window, taking the project's sweeper lease; prints each order, its status at "
        "Xsolla, its player or why it has none, and the action. status: the sweeper's progress, lease and the "
        "orders it reported.",
    )
    reconcile_parser.add_argument("action", nargs="?", choices=("run", "status"), default="run")
    reconcile_parser.add_argument("--project", type=_project_id, help=project_help)
    reconcile_parser.add_argument("--from", dest="start", type=_instant, help="ISO 8601, UTC unless an offset")
    reconcile_parser.add_argument("--until", type=_instant, help="ISO 8601, UTC unless an offset")
    reconcile_parser.add_argument("--dry-run", action="store_true", help="append, record and report nothing")
    args = parser.parse_args(argv)
    span = _reconcile_span(reconcile_parser, args) if args.command == "reconcile" else None

    if args.command == "hash-key":
        key = secrets.token_urlsafe(32)
        entry = f"{args.name}:{hash_key(key)}:{args.scopes}"
        if args.projects is not None:
            entry += f":{args.projects}"
        try:
            # The entry printed is one the service accepts, or nothing is printed.
            parse_api_keys(entry)
        except ValueError as exc:
            print(f"python -m server hash-key: {exc}", file=sys.stderr)
            return BAD_ARGUMENT
        print(f"API key (give it to the caller, store it nowhere else): {key}")
        print(f"ENTITLEMENTS_API_KEYS entry: {entry}")
        return 0

    try:
        settings, xsolla = load_settings()
        xsolla_catalog = xsolla_provider.CatalogSettings.from_env()
        if args.command in (None, "serve", "worker"):
            settings.check_servable()
        project_id = 0
        if args.command in ("ledger", "dead-letters", "events", "reconcile"):
            project_id = command_project(settings, args.project)
        elif args.command == "catalog" and args.project is not None:
            command_project(settings, args.project)  # a project the service serves
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return BAD_ARGUMENT
    if args.command in (None, "serve", "worker"):
        worker = {"worker": args.index} if args.command == "worker" else None
        logs.configure(settings.log_level, settings.log_json, fields=worker)
        try:
            if args.command == "worker":
                build = functools.partial(Service, xsolla=xsolla, xsolla_catalog=xsolla_catalog)
                index, link_fd, parent_store = args.index, args.link_fd, args.parent_store
                return asyncio.run(run_worker(settings, build, index=index, link_fd=link_fd, parent_store=parent_store))
            asyncio.run(serve(settings, xsolla, xsolla_catalog))
        except (PortInUse, WorkerFailed) as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return exc.status if isinstance(exc, WorkerFailed) else 1
        except LayoutMismatch as exc:
            print(f"store refused: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:  # found at start: a REDIS_URL redis-py cannot use, a store that cannot be durable
            print(f"configuration error: {exc}", file=sys.stderr)
            return BAD_ARGUMENT
        return 0
    # A command's output is its answer: at the default level, its log lines are warnings and errors only.
    logs.configure("warning" if settings.log_level == "info" else settings.log_level, settings.log_json)
    return run_command(
        f"python -m server {args.command}" + (f" {args.action}" if getattr(args, "action", None) else ""),
        _operator_command(args, settings, xsolla_catalog, project_id, span),
        where=_store_location(settings),
        debug=settings.log_level == "debug",
    )


def _operator_command(
    args: argparse.Namespace,
    settings: Settings,
    xsolla_catalog: xsolla_provider.CatalogSettings,
    project_id: int,
    span: Range | None,
) -> Coroutine[Any, Any, int]:
    """The coroutine of the operator command the arguments name."""
    if args.command == "ledger":
        return ledger_command(settings, project_id, args.user_id, args.limit, as_json=args.json)
    if args.command == "dead-letters":
        entry_id = None if args.action == "list" or args.all else args.id
        count = getattr(args, "count", 100)
        return dead_letters_command(settings, project_id, args.action, entry_id, count=count)
    if args.command == "events":
        return events_status(settings, project_id)
    if args.command == "migrate-layout":
        return migrate_layout_command(settings, args.project)
    if args.command == "catalog":
        return catalog_command(settings, xsolla_catalog, args.action, args.project)
    if args.action == "status":
        return reconcile_status(settings, project_id)
    return reconcile(settings, xsolla_catalog, project_id, span, dry_run=args.dry_run)


def _store_location(settings: Settings) -> str:
    """Where a command reaches the store, for its error line: REDIS_URL without its credentials, or the data
    directory of the embedded store."""
    if settings.redis_url is None:
        return str(settings.data_dir.resolve())
    url = urlsplit(settings.redis_url)
    host = url.hostname or ""
    netloc = f"{host}:{url.port}" if url.port else host
    return urlunsplit((url.scheme, netloc, url.path, "", "")) or "REDIS_URL"


if __name__ == "__main__":
    sys.exit(main())

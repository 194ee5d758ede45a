"""Command line of the service: `python -m server [serve | hash-key | ledger | dead-letters | events | catalog]`.

serve                                   run the gRPC service (the default); configured by environment variables
hash-key                                make a new random API key and print it with its configuration entry
ledger USER_ID                          print a player's audit ledger, newest first (for support)
dead-letters list                       print the webhook events set aside after failing too often
dead-letters replay (ID | --all)        put dead letters back on their event stream, once the cause is fixed
dead-letters discard (ID | --all)       delete dead letters that must never be applied
events status                           per partition: stream length, pending and undelivered entries, consumers
catalog refresh [--project N]           read the projects' catalogs from Xsolla now and keep them for the service
catalog show [--project N]              print the catalog the service uses for a project (items, then bundles)

The operator commands reach Redis as the service does (REDIS_URL, or the embedded server's data directory, which
a running service holds locked: use REDIS_URL to inspect a live system).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import secrets
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry

from core import connections, logs
from core.connections import RedisClient, reply_text
from core.errors import ConfigError
from core.keys import CONSUMER_GROUP
from core.lifecycle import wait_for_stop_signal
from providers import xsolla as xsolla_provider
from providers.xsolla import OrderSettings as XsollaOrderSettings
from server.app import Service
from server.auth import SCOPES, hash_key
from server.catalog import Catalogs
from server.config import Settings
from server.consumer import group_info
from server.deadletters import DeadLetters
from server.embedded import EmbeddedRedis
from server.metrics import CatalogMetrics
from server.store import KIND_NAMES, EntitlementStore

log = structlog.get_logger("server")


async def serve(
    settings: Settings, xsolla: XsollaOrderSettings, xsolla_catalog: xsolla_provider.CatalogSettings
) -> None:
    """Runs the service, following orders at Xsolla, until SIGTERM or SIGINT, then shuts down gracefully."""
    if settings.insecure_dev_mode:
        log.warning(
            "INSECURE_DEV_MODE",
            message="ENTITLEMENTS_INSECURE_DEV_MODE is on: "
            + ("every caller has every scope" if not settings.api_keys else "API keys are still checked")
            + ". Never run this in production.",
        )
    service = Service(settings, xsolla, xsolla_catalog=xsolla_catalog)
    await service.start()
    await wait_for_stop_signal()
    log.info("shutdown_requested", grace_s=settings.shutdown_grace_s)
    await service.stop()


@contextlib.asynccontextmanager
async def operator_redis(settings: Settings) -> AsyncIterator[RedisClient]:
    """A Redis client for a one-off operator command: REDIS_URL, or the embedded server started for the command."""
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir, appendfsync=settings.appendfsync)
        await embedded.start()
        url = embedded.url
    redis = connections.connect(
        url, cluster=settings.redis_cluster, timeout_s=settings.redis_timeout_s, max_connections=2
    )
    try:
        yield redis
    finally:
        await redis.aclose()
        if embedded is not None:
            await embedded.stop()


async def print_ledger(settings: Settings, user_id: str, count: int) -> None:
    """Prints the newest `count` ledger entries of a player as JSON lines."""
    async with operator_redis(settings) as redis:
        store = EntitlementStore(redis, timeout_s=settings.redis_timeout_s, idempotency_ttl_ms=1)
        for entry in await store.ledger(user_id, count):
            print(json.dumps({"id": entry.entry_id, **entry.fields}, ensure_ascii=False))


async def dead_letters_command(
    settings: Settings, action: str, entry_id: str | None, *, count: int = 100, out: TextIO | None = None
) -> int:
    """Runs `dead-letters list|replay|discard` and prints JSON lines; returns the exit status (1: no such id).

    Args:
        action: "list", "replay" or "discard".
        entry_id: the dead letter's id (as listed), or None for all of them (replay, discard).
        count: list at most this many per partition.
    """
    out = out or sys.stdout
    async with operator_redis(settings) as redis:
        letters = DeadLetters(redis, settings.event_partitions)
        if action == "list":
            for letter in await letters.read(count):
                print(json.dumps(letter.as_dict(), ensure_ascii=False), file=out)
            return 0
        if action == "replay":
            replayed = await letters.replay(entry_id)
            for item in replayed:
                print(
                    json.dumps(
                        {"replayed": item.dead_letter_id, "partition": item.partition, "new_id": item.new_entry_id}
                    ),
                    file=out,
                )
            return 1 if entry_id is not None and not replayed else 0
        deleted = await letters.discard(entry_id)
        print(json.dumps({"discarded": deleted}), file=out)
        return 1 if entry_id is not None and not deleted else 0


async def events_status(settings: Settings, *, out: TextIO | None = None) -> int:
    """Prints, per partition, the event stream's length, the consumer group's pending and undelivered entries,
    its consumers, and the dead letters waiting, as JSON lines."""
    out = out or sys.stdout
    async with operator_redis(settings) as redis:
        letters = DeadLetters(redis, settings.event_partitions)
        for keys in letters.partitions:
            row: dict[str, Any] = {
                "partition": keys.partition,
                "stream": keys.stream,
                "length": int(await redis.xlen(keys.stream)),
                "dead_letters": await letters.waiting(keys),
            }
            group = await group_info(redis, keys) if row["length"] or await redis.exists(keys.stream) else None
            if group is not None:
                row.update(
                    pending=int(group["pending"]),
                    undelivered=group.get("lag"),
                    last_delivered_id=reply_text(group["last-delivered-id"]),
                    consumers=[
                        {"name": reply_text(c["name"]), "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
                        for c in await redis.xinfo_consumers(keys.stream, CONSUMER_GROUP)
                    ],
                )
            print(json.dumps(row, ensure_ascii=False), file=out)
    return 0


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
    async with operator_redis(settings) as redis:
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


def _entry_id(text: str) -> str:
    """A stream entry id, `<ms>-<seq>` (argparse type)."""
    if not re.fullmatch(r"\d+-\d+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a stream entry id like 1785478223000-0")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description="Xsolla entitlement service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (default)")
    hash_parser = commands.add_parser("hash-key", help="make a new API key and print its configuration entry")
    hash_parser.add_argument("--name", default="gameserver", help="the key's name (logged, in the ledger)")
    hash_parser.add_argument("--scopes", default="read,write", help=f"comma list of {sorted(SCOPES)}")
    ledger_parser = commands.add_parser("ledger", help="print a player's audit ledger, newest first")
    ledger_parser.add_argument("user_id")
    ledger_parser.add_argument("--count", type=int, default=100)
    dead_parser = commands.add_parser("dead-letters", help="list, replay or discard webhook events that kept failing")
    dead_actions = dead_parser.add_subparsers(dest="action", required=True)
    dead_list = dead_actions.add_parser("list", help="print the dead letters as JSON lines, oldest first")
    dead_list.add_argument("--count", type=int, default=100, help="at most this many per partition")
    for action, text in (("replay", "put back on the event stream"), ("discard", "delete for good")):
        action_parser = dead_actions.add_parser(action, help=f"{text}: one dead letter by id, or --all")
        which = action_parser.add_mutually_exclusive_group(required=True)
        which.add_argument("id", nargs="?", type=_entry_id, help="the dead letter's id, as `list` prints it")
        which.add_argument("--all", action="store_true", help="every dead letter of every partition")
    events_parser = commands.add_parser("events", help="inspect the webhook event streams")
    events_actions = events_parser.add_subparsers(dest="action", required=True)
    events_actions.add_parser("status", help="per partition: length, pending, undelivered, consumers, dead letters")
    catalog_parser = commands.add_parser("catalog", help="read or print the projects' catalogs")
    catalog_actions = catalog_parser.add_subparsers(dest="action", required=True)
    for action, text in (
        ("refresh", "read the catalogs from Xsolla now (every listed project, or --project) and store them"),
        ("show", "print the catalog in use for a project (the default one unless --project)"),
    ):
        catalog_actions.add_parser(action, help=text).add_argument("--project", type=int, default=None)
    args = parser.parse_args(argv)

    if args.command == "hash-key":
        key = secrets.token_urlsafe(32)
        print(f"API key (give it to the caller, store it nowhere else): {key}")
        print(f"ENTITLEMENTS_API_KEYS entry: {args.name}:{hash_key(key)}:{args.scopes}")
        return 0

    try:
        settings = Settings.from_env(provider=xsolla_provider.PROVIDER)
        settings = dataclasses.replace(settings, projects=xsolla_provider.with_env_credentials(settings.projects))
        xsolla = XsollaOrderSettings.from_env()
        xsolla_catalog = xsolla_provider.CatalogSettings.from_env()
        if args.command in (None, "serve"):
            settings.check_servable()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    if args.command == "ledger":
        asyncio.run(print_ledger(settings, args.user_id, args.count))
        return 0
    if args.command == "dead-letters":
        entry_id = None if args.action == "list" or args.all else args.id
        return asyncio.run(dead_letters_command(settings, args.action, entry_id, count=getattr(args, "count", 100)))
    if args.command == "events":
        return asyncio.run(events_status(settings))
    if args.command == "catalog":
        return asyncio.run(catalog_command(settings, xsolla_catalog, args.action, args.project))
    asyncio.run(serve(settings, xsolla, xsolla_catalog))
    return 0


if __name__ == "__main__":
    sys.exit(main())

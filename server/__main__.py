"""Command line of the service: `python -m server [serve | hash-key | ledger USER_ID]`.

serve              run the gRPC service (the default); configured by environment variables (README)
hash-key           make a new random API key and print it with its configuration entry
ledger USER_ID     print a player's audit ledger, newest first (for support)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys

import structlog

from server import connections, logs
from server.app import Service
from server.auth import SCOPES, hash_key
from server.config import Settings
from server.embedded import EmbeddedRedis
from server.errors import ConfigError
from server.store import EntitlementStore

log = structlog.get_logger("server")


async def serve(settings: Settings) -> None:
    """Runs the service until SIGTERM or SIGINT, then shuts down gracefully."""
    if settings.insecure_dev_mode:
        log.warning(
            "INSECURE_DEV_MODE",
            message="ENTITLEMENTS_INSECURE_DEV_MODE is on: "
            + ("every caller has every scope" if not settings.api_keys else "API keys are still checked")
            + ". Never run this in production.",
        )
    service = Service(settings)
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutdown_requested", grace_s=settings.shutdown_grace_s)
    await service.stop()


async def print_ledger(settings: Settings, user_id: str, count: int) -> None:
    """Prints the newest `count` ledger entries of a player as JSON lines."""
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
        store = EntitlementStore(redis, timeout_s=settings.redis_timeout_s, idempotency_ttl_ms=1)
        for entry in await store.ledger(user_id, count):
            print(json.dumps({"id": entry.entry_id, **entry.fields}, ensure_ascii=False))
    finally:
        await redis.aclose()
        if embedded is not None:
            await embedded.stop()


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
    args = parser.parse_args(argv)

    if args.command == "hash-key":
        key = secrets.token_urlsafe(32)
        print(f"API key (give it to the caller, store it nowhere else): {key}")
        print(f"ENTITLEMENTS_API_KEYS entry: {args.name}:{hash_key(key)}:{args.scopes}")
        return 0

    try:
        settings = Settings.from_env()
        if args.command in (None, "serve"):
            settings.check_servable()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    if args.command == "ledger":
        asyncio.run(print_ledger(settings, args.user_id, args.count))
        return 0
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Python client's conformance runner: maps the ops of conformance/PROTOCOL.md onto `AsyncEntitlementsClient`.

It reads one JSON request per line on stdin and answers on stdout; `clients/python/conformance-runner` starts it.
Only the client's public API is used: what the runner does is what a game server would write.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from entitlements import (
    AsyncEntitlementsClient,
    EntitlementKind,
    EntitlementsError,
    OrderStatusUpdate,
    RetryPolicy,
    TLSConfig,
)
from entitlements.v1 import entitlements_pb2 as pb


def emit(line: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def as_json(message: Message) -> dict[str, Any]:
    return MessageToDict(message)


def duration(value: str | None) -> timedelta | None:
    if value is None:
        return None
    parsed = duration_pb2.Duration()
    parsed.FromJsonString(value)
    return parsed.ToTimedelta()


def connect(args: Mapping[str, Any]) -> AsyncEntitlementsClient:
    tls: TLSConfig | None = None
    if args.get("tls"):
        files = args["tls"]
        tls = TLSConfig.from_files(
            root_certificates_file=files.get("ca_file"),
            private_key_file=files.get("key_file"),
            certificate_chain_file=files.get("cert_file"),
            server_name_override=files.get("server_name"),
        )
    retry = RetryPolicy()
    if args.get("retry"):
        policy = args["retry"]
        retry = RetryPolicy(
            max_attempts=int(policy["max_attempts"]),
            initial_backoff_s=policy["initial_backoff_ms"] / 1000,
            max_backoff_s=policy["max_backoff_ms"] / 1000,
        )
    return AsyncEntitlementsClient(
        args["target"],
        api_key=args.get("api_key"),
        tls=tls,
        timeout_s=args.get("timeout_ms", 5000) / 1000,
        retry_policy=retry,
        project_id=int(args.get("project_id", 0)),
    )


def write_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `grant` and `revoke` that the request sets (absent ones keep the defaults)."""
    kwargs: dict[str, Any] = {"project_id": int(args.get("project_id", 0))}
    for name in ("idempotency_key", "reason", "metadata"):
        if name in args:
            kwargs[name] = args[name]
    if "quantity" in args:
        kwargs["quantity"] = int(args["quantity"])
    if "duration" in args:
        kwargs["duration"] = duration(args["duration"])
    if "kind" in args:
        kind = args["kind"]
        kwargs["kind"] = EntitlementKind.Value(kind) if isinstance(kind, str) else int(kind)
    return kwargs


def reached(until: Mapping[str, Any], checked: Any, error: EntitlementsError | None) -> bool:
    """Whether a cache check answered what `until` waits for: an error code, or the entitlement's quantity (0:
    none held)."""
    if "error" in until:
        return error is not None and error_code(error) == until["error"]
    held = checked.entitlement.quantity if error is None and checked.entitlement is not None else 0
    return error is None and held == int(until["quantity"])


async def follow(updates: AsyncIterator[OrderStatusUpdate], request_id: int) -> list[dict[str, Any]]:
    seen = []
    async for update in updates:
        event = as_json(update)
        seen.append(event)
        emit({"id": request_id, "event": event})
    return seen


#: The cache's own refusals carry no gRPC code: the protocol names them (conformance/PROTOCOL.md, cache ops).
CACHE_ERROR_CODES = {"NotCachedError": "NOT_CACHED", "StaleError": "STALE", "CacheClosedError": "CLOSED"}


def error_code(exc: EntitlementsError) -> str:
    if type(exc).__name__ in CACHE_ERROR_CODES:
        return CACHE_ERROR_CODES[type(exc).__name__]
    return exc.code.name if exc.code is not None else "UNKNOWN"


def client_method(client: AsyncEntitlementsClient, name: str) -> Any:
    """The client's method `name`; a client version without it answers RUNNER for the op, not a crash."""
    method = getattr(client, name, None)
    if method is None:
        raise ValueError(f"this version of the Python client has no {name}")
    return method


class Runner:
    def __init__(self) -> None:
        self.clients: dict[str, AsyncEntitlementsClient] = {}
        self.caches: dict[str, Any] = {}

    async def cache_op(self, op: str, client: AsyncEntitlementsClient, args: Mapping[str, Any]) -> dict[str, Any]:
        """The cache ops: `cache_open`, `cache_check`, `cache_stats`, `cache_close`."""
        name = str(args["cache"])
        if op == "cache_open":
            kwargs: dict[str, Any] = {"project_id": int(args.get("project_id", 0))}
            if "max_staleness_ms" in args:
                kwargs["max_staleness"] = args["max_staleness_ms"] / 1000
            cache = client_method(client, "entitlement_cache")(list(args.get("players", [])), **kwargs)
            await cache.start()
            if (old := self.caches.pop(name, None)) is not None:
                await old.close()
            self.caches[name] = cache
            return {}
        cache = self.caches[name]
        if op == "cache_close":
            await cache.close()  # kept under its name: later ops see CLOSED
            return {}
        if op == "cache_stats":
            counters = cache.counters
            return {
                "changesApplied": counters.changes_applied,
                "snapshots": counters.snapshots,
                "reopenings": counters.reopenings,
                "gaps": counters.gaps,
                "duplicates": counters.duplicates,
            }
        until = args.get("until")
        deadline = asyncio.get_running_loop().time() + args.get("wait_ms", 5000) / 1000
        while True:
            checked: Any = None
            error: EntitlementsError | None = None
            try:
                checked = cache.check(args["user_id"], args["sku"])
            except EntitlementsError as exc:
                error = exc
            if until is None or asyncio.get_running_loop().time() > deadline or reached(until, checked, error):
                if error is not None:
                    raise error
                result = pb.CheckEntitlementResponse(active=checked.active)
                if checked.entitlement is not None:
                    result.entitlement.CopyFrom(checked.entitlement)
                return as_json(result)
            await asyncio.sleep(0.01)

    async def run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op, args = request["op"], request.get("args") or {}
        if op == "connect":
            if (old := self.clients.pop(args["name"], None)) is not None:
                await old.close()
            self.clients[args["name"]] = connect(args)
            return {}
        if op == "close":
            client = self.clients.pop(str(args.get("name", request.get("client"))), None)
            if client is not None:
                await client.close()
            return {}
        client = self.clients[request["client"]]
        user, project = args.get("user_id", ""), int(args.get("project_id", 0))
        if op == "grant":
            return as_json(await client.grant(user, args.get("sku", ""), **write_args(args)))
        if op == "revoke":
            kwargs = {k: v for k, v in write_args(args).items() if k in ("project_id", "idempotency_key", "reason")}
            return as_json(await client.revoke(user, args.get("sku", ""), **kwargs))
        if op == "check":
            return as_json(await client.check_entitlement(user, args.get("sku", ""), project_id=project))
        if op == "check_entitlements":
            pairs = [(check.get("user_id", ""), check.get("sku", "")) for check in args.get("checks", [])]
            return as_json(await client_method(client, "check_entitlements")(pairs, project_id=project))
        if op in ("cache_open", "cache_check", "cache_stats", "cache_close"):
            return await self.cache_op(op, client, args)
        if op == "list_entitlements":
            page = await client.list_entitlements(
                user,
                project_id=project,
                page_size=int(args.get("page_size", 0)),
                page_token=args.get("page_token", ""),
                include_expired=bool(args.get("include_expired", False)),
            )
            return as_json(page)
        if op == "list_all_entitlements":
            every = client.iter_entitlements(
                user,
                project_id=project,
                page_size=int(args.get("page_size", 0)),
                include_expired=bool(args.get("include_expired", False)),
            )
            return {"entitlements": [as_json(entitlement) async for entitlement in every]}
        if op == "list_subscriptions":
            subscriptions = await client.list_subscriptions(
                user,
                project_id=project,
                limit=int(args.get("limit", 0)),
                offset=int(args.get("offset", 0)),
                locale=args.get("locale", ""),
                include_inactive=bool(args.get("include_inactive", False)),
            )
            return as_json(subscriptions)
        if op == "list_ledger":
            ledger = await client.list_ledger(
                user, project_id=project, page_size=int(args.get("page_size", 0)), page_token=args.get("page_token", "")
            )
            return as_json(ledger)
        order = {
            "project_id": project,
            "token": args.get("token", ""),
            "max_wait": duration(args.get("max_wait")),
        }
        if op == "get_order_status":
            async with client.get_order_status(args.get("order_id", ""), user, **order) as stream:
                return {"updates": await follow(stream, request["id"])}
        if op == "follow_order":
            async with client.follow_order(args.get("order_id", ""), user, **order) as follower:
                updates = await follow(follower, request["id"])
                return {"updates": updates, "opens": follower.opens}
        raise ValueError(f"unknown op {op!r}")

    async def close(self) -> None:
        for cache in self.caches.values():
            await cache.close()
        for client in self.clients.values():
            await client.close()


async def main() -> int:
    runner = Runner()
    emit({"ready": True, "client": "python"})
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            if not line.strip():
                continue
            request: dict[str, Any] = {}
            try:
                request = json.loads(line)
                if request.get("op") == "exit":
                    break
                emit({"id": request["id"], "ok": True, "result": await runner.run(request)})
            except EntitlementsError as exc:
                error = {"code": error_code(exc), "message": exc.details, "type": type(exc).__name__}
                emit({"id": request.get("id"), "ok": False, "error": error})
            except (KeyError, ValueError, TypeError) as exc:
                error = {"code": "RUNNER", "message": repr(exc), "type": type(exc).__name__}
                emit({"id": request.get("id"), "ok": False, "error": error})
    finally:
        await runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

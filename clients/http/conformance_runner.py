"""The HTTP/JSON API's conformance runner (conformance/PROTOCOL.md), and a reference HTTP client of the API.

It is written to be read by engineers who call the HTTP/JSON API from a language without a client of ours (Lua,
C#, Unreal C++): `HttpClient` is everything such a client needs, in the order to port it.

- Every request carries `Authorization: Bearer <api key>` and, for unary calls, the time left of the call's
  deadline as `Grpc-Timeout` (`<n>m`, milliseconds), so the service stops working for a caller that gave up.
- Writes (Grant, Revoke) carry an idempotency key; the client makes one (a UUID v4) when the caller gives none,
  before the first attempt, so every retry sends the same key and the service applies the write once.
- A failure is an `ApiError` with the gRPC code name and the server's message, read from the JSON
  `google.rpc.Status` body (`{"code": 3, "message": "..."}`). An answer without that body (a proxy's 502 page)
  gets the code gRPC gives to such HTTP statuses; no connection at all is UNAVAILABLE.
- UNAVAILABLE (HTTP 503, a dropped connection) is retried with exponential backoff and jitter (`RetryPolicy`),
  within the call's deadline; nothing else is, since the service wrote nothing and would answer the same again.
- `follow_order` reads GetOrderStatus's Server-Sent Events, opens the stream again when it breaks (the connection
  closes without `event: end`, or `event: error` / HTTP 503 with code 14), and delivers only what is new.

`clients/http/conformance-runner` starts it on the project's .venv; it reads one JSON request per line on stdin.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

#: gRPC status code names by number (the `code` of a google.rpc.Status).
CODE_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
#: The code of an HTTP error that carries no google.rpc.Status (not from the service: a proxy, a load balancer),
#: as gRPC itself maps HTTP statuses (grpc/doc/http-grpc-status-mapping.md).
CODE_OF_BARE_HTTP_STATUS = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED"}
BARE_UNAVAILABLE = frozenset({429, 502, 503, 504})

#: The order statuses by name, in the order they move (compared as numbers, as the .proto numbers them).
ORDER_STATUS = {"ORDER_STATUS_UNSPECIFIED": 0, "ORDER_STATUS_NEW": 1, "ORDER_STATUS_PAID": 2, "ORDER_STATUS_DONE": 3}
ORDER_STATUS |= {"ORDER_STATUS_CANCELED": 4, "ORDER_STATUS_EXPIRED": 5}


class ApiError(Exception):
    """A failed call: `code` is the gRPC code name (`INVALID_ARGUMENT`, `UNAVAILABLE`, ...), `message` the server's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code == "UNAVAILABLE"


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE: before attempt n, a random wait of up to min(initial * 2^(n-2), max) seconds."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def delay_s(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based): full jitter, so retrying clients spread out."""
        return random.uniform(0, min(self.initial_backoff_s * 2 ** (attempt - 1), self.max_backoff_s))


def status_error(body: bytes, http_status: int) -> ApiError:
    """The error an HTTP error response (or an SSE `error` event) stands for."""
    try:
        status = json.loads(body)
        return ApiError(CODE_NAMES[int(status["code"])], str(status.get("message", "")))
    except (ValueError, KeyError, IndexError, TypeError):
        bare = "UNAVAILABLE" if http_status in BARE_UNAVAILABLE else CODE_OF_BARE_HTTP_STATUS.get(http_status)
        return ApiError(bare or "UNKNOWN", f"HTTP {http_status}: {body[:200].decode(errors='replace')}")


def camel(name: str) -> str:
    """A .proto field name as its proto3 JSON name: `idempotency_key` -> `idempotencyKey`."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def duration_s(value: str) -> float:
    """A proto3 JSON duration ("3.5s") in seconds."""
    if not value.endswith("s"):
        raise ValueError(f"not a duration: {value!r}")
    return float(value[:-1])


class HttpClient:
    """A client of the HTTP/JSON API: base URL, API key, TLS, a default deadline, retries.

    Args:
        base_url: `http://host:port` or `https://host:port` of the service's HTTP port.
        api_key: sent as `Authorization: Bearer <api_key>`; None sends no header.
        project_id: the project of calls that name none (0: the key's or the service's default).
        timeout_s: the deadline of a unary call, retries included.
        tls: an SSL context for https (a CA, and a client certificate for mTLS); `server_name` overrides the name
            the server's certificate is checked against.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        project_id: int = 0,
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.project_id = project_id
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
        self._tls: ssl.SSLContext | bool = tls if tls is not None else True
        self._server_name = server_name
        self._session: aiohttp.ClientSession | None = None  # made on first use, inside the running loop

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _with_project(self, fields: dict[str, Any]) -> dict[str, Any]:
        if not int(fields.get("project_id", 0)) and self.project_id:
            fields["project_id"] = self.project_id
        return fields

    async def call(self, method: str, path: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """One unary RPC: `fields` (proto names) as the JSON body of a POST or the query of a GET; retried on
        UNAVAILABLE within the deadline, with the same request each time. Raises ApiError."""
        message = {camel(name): value for name, value in self._with_project(dict(fields)).items()}
        if method == "GET":
            query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in message.items()}
            request: dict[str, Any] = {"params": query}
        else:
            request = {"json": message}
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(method, path, request, deadline)
            except ApiError as error:
                delay = self.retry.delay_s(attempt)
                if not error.retryable or attempt >= self.retry.max_attempts or time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)

    async def _attempt(self, method: str, path: str, request: dict[str, Any], deadline: float) -> dict[str, Any]:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            raise ApiError("DEADLINE_EXCEEDED", "the call's deadline passed")
        headers = {"Grpc-Timeout": f"{max(1, int(left_s * 1000))}m"}
        try:
            async with self._http().request(
                method,
                self.base_url + path,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=left_s),
                ssl=self._tls,
                server_hostname=self._server_name,
                **request,
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise status_error(body, response.status)
                result: dict[str, Any] = json.loads(body)
                return result
        except TimeoutError as exc:
            raise ApiError("DEADLINE_EXCEEDED", "the call's deadline passed") from exc
        except aiohttp.ClientError as exc:  # no connection, or it dropped before the answer
            raise ApiError("UNAVAILABLE", f"{type(exc).__name__}: {exc}") from exc

    async def grant(self, fields: dict[str, Any]) -> dict[str, Any]:
        fields.setdefault("idempotency_key", str(uuid.uuid4()))  # made once: every retry sends it
        return await self.call("POST", "/v1/entitlements:grant", fields)

    async def revoke(self, fields: dict[str, Any]) -> dict[str, Any]:
        fields.setdefault("idempotency_key", str(uuid.uuid4()))
        return await self.call("POST", "/v1/entitlements:revoke", fields)

    async def check_entitlements(self, fields: dict[str, Any]) -> dict[str, Any]:
        """CheckEntitlements: `checks` is a list of {user_id, sku}; a read, retried like every call."""
        if isinstance(fields.get("checks"), list):
            fields["checks"] = [
                {camel(name): value for name, value in check.items()} if isinstance(check, dict) else check
                for check in fields["checks"]
            ]
        return await self.call("POST", "/v1/entitlements:batchCheck", fields)

    async def order_status(self, fields: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One GetOrderStatus stream: yields each update; ends on `event: end`; raises ApiError on an error (before
        the stream, or `event: error`) and UNAVAILABLE when the connection closes without `event: end`. No deadline:
        the service ends the stream after `max_wait`."""
        message = {camel(name): value for name, value in self._with_project(dict(fields)).items()}
        try:
            async with self._http().post(
                self.base_url + "/v1/orders:status",
                json=message,
                headers={"Accept": "text/event-stream"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
                ssl=self._tls,
                server_hostname=self._server_name,
            ) as response:
                if response.status != 200:
                    raise status_error(await response.read(), response.status)
                async for name, data in server_sent_events(response.content):
                    if name == "update":
                        yield json.loads(data)
                    elif name == "error":
                        raise status_error(data.encode(), 500)
                    elif name == "end":
                        return
        except TimeoutError as exc:
            raise ApiError("UNAVAILABLE", "could not connect in time") from exc
        except aiohttp.ClientError as exc:
            raise ApiError("UNAVAILABLE", f"the stream broke: {type(exc).__name__}: {exc}") from exc
        raise ApiError("UNAVAILABLE", "the stream broke: the connection closed without `event: end`")

    async def follow_order(self, fields: Mapping[str, Any], follower: Follower) -> AsyncIterator[dict[str, Any]]:
        """The updates of one order across as many streams as it takes (conformance/PROTOCOL.md): reopens on
        UNAVAILABLE after a backoff with `maxWait` reduced by the time spent, and skips what was delivered."""
        requested = fields.get("max_wait")
        deadline = time.monotonic() + (duration_s(requested) if requested is not None else 600.0)
        last_status, granted = 0, False
        attempt = 0
        while True:
            request = dict(fields)
            if follower.opens:  # a reopening asks only for what is left of the caller's max_wait
                request["max_wait"] = f"{max(deadline - time.monotonic(), 0.001):.3f}s"
            follower.opens += 1
            try:
                async for update in self.order_status(request):
                    attempt = 0  # the stream works again: the next break starts from the first backoff
                    status = ORDER_STATUS.get(update.get("status", "ORDER_STATUS_UNSPECIFIED"), 0)
                    now_granted = bool(update.get("entitlementsGranted"))
                    if update.get("timedOut"):
                        yield update
                    elif status > last_status or (status == last_status and now_granted and not granted):
                        last_status, granted = status, granted or now_granted
                        yield update
                return
            except ApiError as error:
                attempt += 1
                delay = self.retry.delay_s(attempt)
                if not error.retryable or time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)


@dataclass
class Follower:
    """What `follow_order` reports besides the updates: how many times it opened the stream."""

    opens: int = 0


async def server_sent_events(lines: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of each event of a `text/event-stream` body, as the SSE format defines them: fields up
    to a blank line, `data` lines joined by newlines, `:` lines (keep-alive comments) ignored."""
    name, data = "message", list[str]()
    async for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


# ---- the runner: conformance/PROTOCOL.md's ops on HttpClient ----


def emit(line: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def connect(args: Mapping[str, Any]) -> HttpClient:
    tls, server_name = None, None
    if args.get("tls"):
        files = args["tls"]
        tls = ssl.create_default_context(cafile=files.get("ca_file"))
        if files.get("cert_file"):
            tls.load_cert_chain(files["cert_file"], files.get("key_file"))
        server_name = files.get("server_name")
    retry = None
    if args.get("retry"):
        policy = args["retry"]
        retry = RetryPolicy(
            int(policy["max_attempts"]), policy["initial_backoff_ms"] / 1000, policy["max_backoff_ms"] / 1000
        )
    return HttpClient(
        args["http_base_url"],
        args.get("api_key"),
        project_id=int(args.get("project_id", 0)),
        timeout_s=args.get("timeout_ms", 5000) / 1000,
        retry=retry,
        tls=tls,
        server_name=server_name,
    )


class Runner:
    def __init__(self) -> None:
        self.clients: dict[str, HttpClient] = {}

    async def run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op, args = request["op"], dict(request.get("args") or {})
        if op == "connect":
            if (old := self.clients.pop(args["name"], None)) is not None:
                await old.close()
            self.clients[args["name"]] = connect(args)
            return {}
        if op == "close":
            if (client := self.clients.pop(str(args.get("name", request.get("client"))), None)) is not None:
                await client.close()
            return {}
        client = self.clients[request["client"]]
        if op == "grant":
            return await client.grant(args)
        if op == "revoke":
            return await client.revoke(args)
        if op == "check":
            return await client.call("GET", "/v1/entitlements:check", args)
        if op == "check_entitlements":
            return await client.check_entitlements(args)
        if op == "list_entitlements":
            return await client.call("GET", "/v1/entitlements", args)
        if op == "list_all_entitlements":
            entitlements: list[dict[str, Any]] = []
            while True:  # every page until the token is empty: a short or empty page is not the end (AIP-158)
                page = await client.call("GET", "/v1/entitlements", args)
                entitlements += page.get("entitlements", [])
                if not page.get("nextPageToken"):
                    return {"entitlements": entitlements}
                args["page_token"] = page["nextPageToken"]
        if op == "list_subscriptions":
            return await client.call("GET", "/v1/subscriptions", args)
        if op == "list_ledger":
            return await client.call("GET", "/v1/ledger", args)
        if op == "get_order_status":
            updates = []
            async for update in client.order_status(args):
                updates.append(update)
                emit({"id": request["id"], "event": update})
            return {"updates": updates}
        if op == "follow_order":
            follower = Follower()
            updates = []
            async for update in client.follow_order(args, follower):
                updates.append(update)
                emit({"id": request["id"], "event": update})
            return {"updates": updates, "opens": follower.opens}
        raise ValueError(f"unknown op {op!r}")

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


async def main() -> int:
    runner = Runner()
    emit({"ready": True, "client": "http"})
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
            except ApiError as exc:
                error = {"code": exc.code, "message": exc.message, "type": type(exc).__name__}
                emit({"id": request.get("id"), "ok": False, "error": error})
            except (KeyError, ValueError, TypeError) as exc:
                error = {"code": "RUNNER", "message": repr(exc), "type": type(exc).__name__}
                emit({"id": request.get("id"), "ok": False, "error": error})
    finally:
        await runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

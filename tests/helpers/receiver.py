"""A webhook endpoint for tests of the simulator's webhooks: a real aiohttp server on a free port that records
every request and answers what the test tells it to.

    async with receiver_factory_context() as start:
        receiver = await start(answers_by_type={"payment": [503, 204]})
        sim = XsollaSimulator(webhook_url=receiver.url, ...)
        ...
        assert receiver.types() == ["payment", "payment", "order_paid"]

It listens on `/webhooks/xsolla` and on `/webhooks/xsolla/<project_id>` (`receiver.url_for(project)`), as the
gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PATH = "/webhooks/xsolla"


@dataclass
class Received:
    """One request as the receiver saw it."""

    at: float  # loop.time() on arrival
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def type(self) -> str:
        """The body's `notification_type` ("" when the body is not a JSON object naming one)."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return ""
        return str(document.get("notification_type", "")) if isinstance(document, dict) else ""

    def signed_with(self, secret: str) -> bool:
        """Whether the Authorization header is Xsolla's signature of the body with `secret` (computed here)."""
        expected = "Signature " + hashlib.sha1(self.body + secret.encode()).hexdigest()  # noqa: S324  # Xsolla's scheme
        return self.headers.get("Authorization") == expected


@dataclass
class Receiver:
    """Answers each request with the next of `answers_by_type[type]`, else the next of `answers`, else `default`
    (after `delay_s`), and records it."""

    answers: list[int] = field(default_factory=list)
    answers_by_type: dict[str, list[int]] = field(default_factory=dict)
    default: int = 204
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    base_url: str = ""  # set once listening
    answered: list[tuple[str, int, float]] = field(default_factory=list)  # (type, status, loop.time() answered)

    @property
    def url(self) -> str:
        """The bare webhook path."""
        return self.base_url + PATH

    def url_for(self, project_id: int) -> str:
        """The per-project webhook path."""
        return f"{self.url}/{project_id}"

    def types(self) -> list[str]:
        """The notification types received, in order of arrival."""
        return [request.type for request in self.received]

    def of_type(self, notification_type: str) -> list[Received]:
        return [request for request in self.received if request.type == notification_type]

    async def handle(self, request: web.Request) -> web.Response:
        received = Received(
            asyncio.get_running_loop().time(), request.path, dict(request.headers), await request.read()
        )
        self.received.append(received)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        queued = self.answers_by_type.get(received.type) or self.answers
        status = queued.pop(0) if queued else self.default
        self.answered.append((received.type, status, asyncio.get_running_loop().time()))
        if status == 204:
            return web.Response(status=204)
        return web.json_response({"error": {"code": "INVALID_PARAMETER", "message": "no"}}, status=status)


ReceiverFactory = Callable[..., Awaitable[Receiver]]


@contextlib.asynccontextmanager
async def receiver_factory_context() -> AsyncIterator[ReceiverFactory]:
    """Yields `start(**kwargs)`, which starts receivers on free ports; all of them are stopped on exit."""
    runners: list[web.AppRunner] = []

    async def start(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        app = web.Application()
        app.router.add_post(PATH, receiver.handle)
        app.router.add_post(PATH + "/{project_id}", receiver.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return receiver

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()

"""user_validation and user_search against a real studio backend (a small aiohttp server on a free port)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from tests.helpers.gateway import SECRET, fixture, gateway_settings, running_gateway, send, stored_events
from tests.helpers.services import data_keys
from tests.helpers.stores import StoreUnderTest
from webhook_gateway import Gateway

TOKEN = "directory-token-0123456789"


class DirectoryBackend:
    """The studio's side of the http user directory: knows player 1234567 (public id 1234567 -> player-1)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], str | None]] = []
        self.delay_s = 0.0
        self.status: int | None = None  # forces this status when set
        self.search_body: bytes | None = None  # forces this search answer when set
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/players/check", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/players/check"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        document = await request.json()
        self.requests.append((document, request.headers.get("Authorization")))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status is not None:
            return web.Response(status=self.status)
        if document["action"] == "validate":
            return web.Response(status=204 if document["user_id"] == "1234567" else 404)
        if self.search_body is not None:
            return web.Response(body=self.search_body, content_type="application/json")
        if document["public_id"] == "1234567":
            return web.json_response({"id": "player-1", "name": "John Smith", "age": 30})
        return web.Response(status=404)


@pytest.fixture
async def backend() -> AsyncIterator[DirectoryBackend]:
    """The studio backend, running."""
    server = DirectoryBackend()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def gateway(redis_server: StoreUnderTest, backend: DirectoryBackend) -> AsyncIterator[Gateway]:
    """A gateway asking the backend, with a 0.3 s directory timeout and a bearer token."""
    settings = gateway_settings(
        redis_url=redis_server.url,
        user_directory="http",
        user_directory_url=backend.url,
        user_directory_timeout_s=0.3,
        user_directory_token=TOKEN,
    )
    async with running_gateway(settings) as gateway:
        yield gateway


UNAVAILABLE = {"error": {"code": "SERVER_ERROR", "message": "The user directory is unavailable; retry later"}}
INVALID_USER = {"error": {"code": "INVALID_USER", "message": "Invalid user"}}


async def test_known_user_is_valid_and_the_backend_gets_the_documented_request(
    gateway: Gateway, http: aiohttp.ClientSession, backend: DirectoryBackend, redis_client: aioredis.Redis
) -> None:
    """A player the backend knows answers 204; the backend got action, project, user id and Xsolla's user object."""
    body = fixture("user_validation")
    answer = await send(http, gateway.url, body)
    assert (answer.status, answer.body) == (204, b"")
    ((request, authorization),) = backend.requests
    assert request == {
        "action": "validate",
        "provider": "xsolla",
        "project_id": 18404,
        "user_id": "1234567",
        "public_id": "",
        "user": json.loads(body)["user"],
    }
    assert authorization == f"Bearer {TOKEN}"
    assert await data_keys(redis_client) == 0


async def test_unknown_user_is_400_invalid_user(
    gateway: Gateway, http: aiohttp.ClientSession, backend: DirectoryBackend
) -> None:
    """A player the backend answers 404 for gets 400 INVALID_USER."""
    answer = await send(http, gateway.url, fixture("user_validation").replace(b'"1234567"', b'"7654321"'))
    assert (answer.status, answer.json()) == (400, INVALID_USER)


async def test_backend_down_is_503(gateway: Gateway, http: aiohttp.ClientSession, backend: DirectoryBackend) -> None:
    """A directory that refuses connections is a 503, never INVALID_USER."""
    await backend.stop()
    answer = await send(http, gateway.url, fixture("user_validation"))
    assert (answer.status, answer.json()) == (503, UNAVAILABLE)


async def test_slow_backend_times_out_as_503(
    gateway: Gateway, http: aiohttp.ClientSession, backend: DirectoryBackend
) -> None:
    """A directory slower than GATEWAY_USER_DIRECTORY_TIMEOUT_S is a 503 shortly after the timeout."""
    backend.delay_s = 2.0
    started = time.monotonic()
    answer = await send(http, gateway.url, fixture("user_validation"))
    assert (answer.status, answer.json()) == (503, UNAVAILABLE)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("status", [500, 401, 400])
async def test_unexpected_backend_status_is_503(
    gateway: Gateway, http: aiohttp.ClientSession, backend: DirectoryBackend, status: int
) -> None:
    """Any status but 2xx and 404 means the directory could not decide: 503."""
    backend.status = status
    answer = await send(http, gateway.url, fixture("user_validation"))
    assert (answer.status, answer.json()) == (503, UNAVAILABLE)


async def test_search_answers_the_backends_user(
    gateway: Gateway, http: aiohttp.ClientSession, backend: DirectoryBackend
) -> None:
    """user_search answers 200 with Xsolla's {"user": {...}}: the backend's id and name, the public id asked."""
    answer = await send(http, gateway.url, fixture("user_search"))
    assert (answer.status, answer.json()) == (200, {"user": {"id": "player-1", "name": "John Smith"}})
    ((request, _),) = backend.requests
    assert (request["action"], request["public_id"], request["user_id"]) == ("search", "1234567", "")


async def test_search_for_unknown_public_id_is_400_invalid_user(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """A public id the backend does not know answers 400 INVALID_USER."""
    answer = await send(http, gateway.url, fixture("user_search").replace(b'"1234567"', b'"nobody"'))
    assert (answer.status, answer.json()) == (400, INVALID_USER)


@pytest.mark.parametrize("answer_body", [b"not json", b"[]", b'{"name": "no id"}', b'{"id": 5}'])
async def test_malformed_search_answer_is_503(
    gateway: Gateway, http: aiohttp.ClientSession, backend: DirectoryBackend, answer_body: bytes
) -> None:
    """A search answer without a string id is the directory's fault: 503."""
    backend.search_body = answer_body
    answer = await send(http, gateway.url, fixture("user_search"))
    assert (answer.status, answer.json()) == (503, UNAVAILABLE)


async def test_orders_do_not_depend_on_the_directory(
    gateway: Gateway, http: aiohttp.ClientSession, backend: DirectoryBackend, redis_client: aioredis.Redis
) -> None:
    """With the directory down, order webhooks are still stored (only user_* ask it)."""
    await backend.stop()
    assert (await send(http, gateway.url, fixture("order_paid_separate"), SECRET)).status == 204
    assert len(await stored_events(redis_client)) == 1

"""The support console in tests: its API keys, a consuming service with it on a free port, and an HTTP session that
logs in and sends its forms as a browser would (cookies, the forms' hidden fields)."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from server.app import Service
from server.auth import hash_key, parse_api_keys
from tests.helpers.events import consumer_settings
from tests.helpers.services import API_KEYS, ServiceFactory

#: A support agent who may act (console, write), one who may only look (console), and their names.
AGENT_KEY = "agent-key-0123456789"
VIEWER_KEY = "viewer-key-0123456789"
AGENT, VIEWER = "alice", "bob"
CONSOLE_KEYS = API_KEYS + parse_api_keys(
    f"{AGENT}:{hash_key(AGENT_KEY)}:console,read,write\n{VIEWER}:{hash_key(VIEWER_KEY)}:console"
)


async def console_service(factory: ServiceFactory, redis_url: str, **overrides: Any) -> Service:
    """A consuming service (the test catalog, fast consumer) with the console keys and the console on a free
    port."""
    settings: dict[str, Any] = {"redis_url": redis_url, "api_keys": CONSOLE_KEYS, **consumer_settings()}
    settings.update(overrides)
    return await factory(**settings)


def console_url(service: Service) -> str:
    assert service.endpoints is not None
    assert service.endpoints.console_port is not None
    return f"http://127.0.0.1:{service.endpoints.console_port}"


def hidden(page: str, name: str, form_id: str | None = None) -> str:
    """The value of a hidden field of a page (in the form `form_id` when given)."""
    if form_id is not None:
        start = page.index(f'id="{form_id}"')
        page = page[start : page.index("</form>", start)]
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no hidden field {name}"
    return html.unescape(found.group(1))


class ConsoleBrowser:
    """An HTTP session on the console, with its cookies: what a browser sends, without one."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.http = session
        self.base = base

    async def get(self, path: str, **params: str) -> tuple[int, str]:
        async with self.http.get(self.base + path, params=params or None) as response:
            return response.status, await response.text()

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        async with self.http.post(self.base + path, data=form) as response:
            return response.status, await response.text()

    async def login(self, key: str) -> tuple[int, str]:
        """Opens the login form and sends `key` with the form's token; the status and page after redirects."""
        _, page = await self.get("/login")
        return await self.post("/login", {"api_key": key, "login_token": hidden(page, "login_token")})

    async def player_page(self, project: int, user_id: str) -> str:
        status, page = await self.get(f"/p/{project}/player", id=user_id)
        assert status == 200, page
        return page

    async def grant_form(self, project: int, user_id: str, **fields: str) -> dict[str, str]:
        """The grant form of a freshly shown player page, filled in with `fields`."""
        page = await self.player_page(project, user_id)
        form = {
            "csrf": hidden(page, "csrf", "grant-form"),
            "user_id": hidden(page, "user_id", "grant-form"),
            "idempotency_key": hidden(page, "idempotency_key", "grant-form"),
            "action": "grant",
        }
        return form | fields


@asynccontextmanager
async def console_browser(service: Service) -> AsyncIterator[ConsoleBrowser]:
    """A fresh session (no cookies) on the service's console."""
    # unsafe: keep the cookies of an IP address host (127.0.0.1), as browsers do.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield ConsoleBrowser(session, console_url(service))

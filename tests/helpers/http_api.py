"""Calling the service's HTTP/JSON API from tests: requests with a Bearer key, and Server-Sent Events read as they
arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from server.app import Service


def http_base(service: Service, scheme: str = "http") -> str:
    """The base URL of a started service's HTTP/JSON API."""
    assert service.endpoints is not None
    assert service.endpoints.http_port is not None
    return f"{scheme}://127.0.0.1:{service.endpoints.http_port}"


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer: status, headers and the body parsed as JSON."""

    status: int
    headers: dict[str, str]
    body: Any


async def call(http: aiohttp.ClientSession, method: str, url: str, key: str | None, **kwargs: Any) -> Answer:
    """One request with `key` as its Bearer token; the answer's body must be JSON."""
    headers = {**bearer(key), **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, **kwargs) as response:
        assert response.content_type == "application/json", (response.status, await response.text())
        return Answer(response.status, dict(response.headers), json.loads(await response.read()))


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event, or a comment (`name` "comment", `data` its text)."""

    name: str
    data: Any


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """The events of a `text/event-stream` response as they arrive, comments included, until the server closes it."""
    name, data = "message", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            yield Event("comment", line[1:].strip())
        elif line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data += line[len("data:") :].strip()
        elif not line and data:
            yield Event(name, json.loads(data))
            name, data = "message", ""

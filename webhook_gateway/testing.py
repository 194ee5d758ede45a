"""Helpers for tests that drive a real gateway: sign and post webhooks as Xsolla does, read back what was stored.

Used by this repository's gateway tests and by end-to-end tests of the service's consumer; nothing in the
gateway itself imports it.

    async with running_gateway(settings) as gateway, aiohttp.ClientSession() as http:
        answer = await post(http, gateway.url, body, secret="...")
        assert answer.status == 204
        events = await stored_events(redis, partitions=settings.event_partitions)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp

from core.connections import RedisClient
from core.keys import EventKeys
from entitlements.v1 import events_pb2
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings
from webhook_gateway.signature import sign

_UNSET: Any = object()


@dataclass(frozen=True)
class Answer:
    """The gateway's HTTP answer."""

    status: int
    body: bytes
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class StoredEvent:
    """One entry of the event log: the decoded event, the raw body and the type field, as the consumer sees them."""

    entry_id: str
    partition: int
    event: events_pb2.WebhookEvent
    raw: bytes
    type_name: str


@contextlib.asynccontextmanager
async def running_gateway(settings: GatewaySettings, **kwargs: Any) -> AsyncIterator[Gateway]:
    """A started `Gateway(settings, **kwargs)`, stopped on exit."""
    gateway = Gateway(settings, **kwargs)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    secret: str | None = None,
    authorization: str | None = _UNSET,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """POSTs `body` like Xsolla: JSON content type, `Authorization: Signature sha1(body + secret)`.

    Args:
        secret: signs the body with it. `authorization` overrides the header (None leaves it out).
        headers: extra headers.
    """
    sent = {"Content-Type": "application/json"}
    if authorization is _UNSET:
        if secret is None:
            raise ValueError("give a secret to sign with, or an explicit authorization")
        sent["Authorization"] = sign(body, secret)
    elif authorization is not None:
        sent["Authorization"] = authorization
    sent.update(headers or {})
    async with http.post(url, data=body, headers=sent) as response:
        return Answer(response.status, await response.read(), response.headers)


async def stored_events(redis: RedisClient, *, partitions: int = 1) -> list[StoredEvent]:
    """Every entry of every partition's event stream, oldest first within a partition."""
    found: list[StoredEvent] = []
    for partition in range(partitions):
        # redis-py types stream replies loosely; without decode_responses they are bytes.
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(EventKeys(partition).stream))
        for entry_id, fields in entries:
            event = events_pb2.WebhookEvent()
            event.ParseFromString(fields[b"event"])
            found.append(
                StoredEvent(
                    entry_id=entry_id.decode(),
                    partition=partition,
                    event=event,
                    raw=fields[b"raw"],
                    type_name=fields[b"type"].decode(),
                )
            )
    return found

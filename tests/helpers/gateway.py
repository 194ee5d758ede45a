"""Helpers for tests that drive a real gateway: test settings and secrets, the fact sheet's payloads, signing
and posting webhooks as Xsolla does, reading back what was stored.

Used by the gateway tests and by end-to-end tests of the service's consumer and order tracking.

    async with running_gateway(settings) as gateway, aiohttp.ClientSession() as http:
        answer = await post(http, gateway.url, body, secret="...")
        assert answer.status == 204
        events = await stored_events(redis, partitions=settings.event_partitions)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import aiohttp

from core.connections import RedisClient
from core.keys import PROJECTS_KEY, EventKeys
from entitlements.v1 import events_pb2
from providers.xsolla import WebhookSettings
from providers.xsolla.signature import sign
from tests.helpers.stores import is_cluster_url
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings

FIXTURES = Path(__file__).parent.parent / "fixtures" / "xsolla"
ROOT = Path(__file__).resolve().parents[2]
SECRET = "default-secret-0123456789abcdef"
PROJECT = 308077
PROJECT_SECRET = "project-308077-secret-fedcba9876"
# The default project of the test gateways: no secret of its own, so the default secret signs for it, and a webhook
# naming no project signed with the default secret is its.
DEFAULT_PROJECT = 310000

GatewayFactory = Callable[..., Awaitable[Gateway]]

_UNSET: Any = object()


def fixture(name: str) -> bytes:
    """A fact-sheet payload's exact bytes."""
    return (FIXTURES / f"{name}.json").read_bytes()


def signed(body: bytes, secret: str = SECRET) -> str:
    """Xsolla's header, computed here independently of the gateway's code."""
    return "Signature " + hashlib.sha1(body + secret.encode()).hexdigest()  # noqa: S324  # Xsolla's scheme


def gateway_settings(**overrides: Any) -> GatewaySettings:
    """Settings for a test gateway: free ports, the deployed Redis bound (2 s: a gateway's first append on a cluster
    opens its connections inside it, which a loaded machine can hold past a shorter one), short other timeouts (the
    durability wait below the Redis timeout)."""
    settings = GatewaySettings(
        port=0,
        metrics_port=0,
        redis_timeout_s=2.0,
        durability_timeout_ms=400,
        request_timeout_s=5.0,
        shutdown_grace_s=1.0,
    )
    if "redis_cluster" not in overrides:
        overrides["redis_cluster"] = is_cluster_url(overrides.get("redis_url"))
    return replace(settings, **overrides)


def xsolla_settings(**overrides: Any) -> WebhookSettings:
    """Xsolla's secrets for a test gateway: a default secret, project 308077 with its own, and the default project
    310000 (signed for by the default secret)."""
    settings = WebhookSettings(
        default_secret=SECRET,
        project_secrets=MappingProxyType({PROJECT: (PROJECT_SECRET,)}),
        default_project=DEFAULT_PROJECT,
    )
    return replace(settings, **overrides)


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
async def running_gateway(
    settings: GatewaySettings, xsolla: WebhookSettings | None = None, **kwargs: Any
) -> AsyncIterator[Gateway]:
    """A started `Gateway(settings, xsolla, **kwargs)` (Xsolla's test secrets by default), stopped on exit."""
    gateway = Gateway(settings, xsolla or xsolla_settings(), **kwargs)
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
    """Every entry of every partition's event stream of every project that has events, by partition, oldest first
    within a partition (the projects' streams merged by entry id)."""
    found: list[StoredEvent] = []
    projects = sorted(int(member) for member in await redis.smembers(PROJECTS_KEY))
    for project_id, partition in [(p, n) for p in projects for n in range(partitions)]:
        # redis-py types stream replies loosely; without decode_responses they are bytes.
        stream = EventKeys(project_id, partition).stream
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(stream))
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
    return sorted(found, key=lambda e: (e.partition, *map(int, e.entry_id.split("-"))))


async def send(http: aiohttp.ClientSession, url: str, body: bytes, secret: str = SECRET, **kwargs: Any) -> Answer:
    """Posts `body` signed with `secret` (or with `authorization=...` as given)."""
    if "authorization" not in kwargs:
        kwargs["authorization"] = signed(body, secret)
    return await post(http, url, body, **kwargs)


def command_env(**extra: str) -> dict[str, str]:
    """This process's environment without any GATEWAY_, REDIS_ or ENTITLEMENTS_ variable, plus `extra`."""
    prefixes = ("GATEWAY_", "REDIS_", "ENTITLEMENTS_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(extra)
    return env


async def start_gateway_command(redis_url: str, projects_file: Path | None = None) -> asyncio.subprocess.Process:
    """`python -m webhook_gateway` on `redis_url`, free ports and JSON logs; stderr piped (its first lines end with
    `gateway_started`, which names the port and the path). The caller stops it.

    Args:
        projects_file: its projects file (ENTITLEMENTS_PROJECTS_FILE). None: the test's default secret
            (GATEWAY_XSOLLA_SECRET) with the default project (ENTITLEMENTS_XSOLLA_PROJECT_ID).
    """
    if projects_file is None:
        xsolla = {"GATEWAY_XSOLLA_SECRET": SECRET, "ENTITLEMENTS_XSOLLA_PROJECT_ID": str(DEFAULT_PROJECT)}
    else:
        xsolla = {"ENTITLEMENTS_PROJECTS_FILE": str(projects_file)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhook_gateway",
        env=command_env(
            REDIS_URL=redis_url,
            REDIS_CLUSTER="true" if is_cluster_url(redis_url) else "false",
            GATEWAY_PORT="0",
            GATEWAY_METRICS_PORT="0",
            GATEWAY_LOG_JSON="1",
            **xsolla,
        ),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )

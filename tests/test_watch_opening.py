"""How a WatchEntitlements stream opens: the service accepts the key before reading any message (its response
headers), and the Python client writes only then, so a refused key always reads as the service's refusal.

grpc.aio reports a write that crossed the service's refusal as INTERNAL "Internal error from Core" in place of the
service's status (grpc/grpc#36066): a cache would then take a wrong key for a transient failure and retry it."""

from __future__ import annotations

import asyncio

import grpc

from entitlements import AsyncEntitlementCache, AsyncEntitlementsClient, AuthenticationError, CacheState, FollowPolicy
from server.app import Service
from tests.helpers.services import PROJECT, READER_KEY, ClientFactory
from tests.helpers.waiting import eventually
from tests.helpers.watch import Watcher, watch_channel

#: Enough opens that the race (one in a few under load, before the fix) would be seen.
OPENS = 40


async def test_the_stream_is_accepted_before_its_first_message(service: Service) -> None:
    """A key with the read scope gets the response headers with no message written; the stream then works."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel, key=READER_KEY)
        await asyncio.wait_for(watcher.call.initial_metadata(), timeout=5.0)
        assert not watcher.call.done()
        await watcher.send(project_id=PROJECT, add_user_ids=["p1"])
        await watcher.next_of("heartbeat")
        watcher.cancel()


async def test_a_stranger_gets_no_headers_only_the_refusal(service: Service) -> None:
    async with watch_channel(service) as channel:
        watcher = Watcher(channel, key="not-a-key-of-this-service")
        await asyncio.wait_for(watcher.call.initial_metadata(), timeout=5.0)
        assert watcher.call.done()
        assert await watcher.call.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_refused_key_is_unauthenticated_on_every_open(service: Service, client_factory: ClientFactory) -> None:
    """The raw stream of the Python client: every open with a wrong key raises AuthenticationError, never INTERNAL."""
    client = await client_factory(service, api_key="wrong-key-0123456789", retry_policy=None)
    for _ in range(OPENS):
        async with client.watch_entitlements(project_id=PROJECT, user_ids=["p1"], snapshot=True) as stream:
            try:
                await anext(stream)
            except AuthenticationError:
                continue
            raise AssertionError("a stream opened with a wrong key answered")


async def test_a_cache_with_a_refused_key_stops_at_once(service: Service, client_factory: ClientFactory) -> None:
    """The cache stops on the refusal (it does not retry a wrong key as if the service were away)."""
    client: AsyncEntitlementsClient = await client_factory(service, api_key="wrong-key-0123456789", retry_policy=None)
    for _ in range(OPENS // 4):
        cache = client.entitlement_cache(
            ["p1"],
            project_id=PROJECT,
            wait_ready=False,
            policy=FollowPolicy(initial_backoff_s=0.01, max_backoff_s=0.05),
        )
        async with cache as opened:

            def stopped(opened: AsyncEntitlementCache = opened) -> bool:
                return opened.state is CacheState.FAILED

            await eventually(stopped, what="the cache to stop")
            assert isinstance(opened.failure, AuthenticationError)

"""The gateway's fences before a body is believed: size, time, method, path and the sender's network."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from providers.xsolla import NAMED_NETWORKS
from tests.helpers.gateway import (
    PROJECT_SECRET,
    SECRET,
    fixture,
    gateway_settings,
    running_gateway,
    send,
    signed,
    stored_events,
)
from tests.helpers.services import data_keys
from tests.helpers.stores import StoreUnderTest
from webhook_gateway import Gateway
from webhook_gateway.sources import SourceFilter, parse_address, parse_networks

LIMIT = 2048


@pytest.fixture
async def gateway(redis_server: StoreUnderTest) -> AsyncIterator[Gateway]:
    """A gateway with a 2 KiB body limit and a 0.5 s request timeout."""
    settings = gateway_settings(redis_url=redis_server.url, max_body_bytes=LIMIT, request_timeout_s=0.5)
    async with running_gateway(settings) as gateway:
        yield gateway


async def raw_exchange(gateway: Gateway, request: bytes, *, hold_open_s: float = 0.0) -> tuple[bytes, float]:
    """Writes `request` on a fresh connection, keeps it open (not sending the rest) and reads the answer.

    Returns:
        The whole answer (until the gateway closes the connection) and how long it took.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    started = time.monotonic()
    try:
        writer.write(request)
        await writer.drain()
        if hold_open_s:
            await asyncio.sleep(hold_open_s)
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    return answer, time.monotonic() - started


def head(path: str, content_length: int, authorization: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Authorization: {authorization}\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()


def padded(size: int) -> bytes:
    """A valid order_paid body of exactly `size` bytes (JSON whitespace padding)."""
    body = fixture("order_paid_separate")
    return body + b" " * (size - len(body))


# --- size ---------------------------------------------------------------------------------------------------------


async def test_body_at_the_limit_is_accepted(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A body of exactly GATEWAY_MAX_BODY_BYTES is accepted."""
    assert (await send(http, gateway.url, padded(LIMIT))).status == 204
    assert len(await stored_events(redis_client)) == 1


async def test_announced_oversized_body_is_413(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Content-Length over the limit answers 413 in Xsolla's error shape, even when correctly signed."""
    answer = await send(http, gateway.url, padded(LIMIT + 1))
    assert (answer.status, answer.json()) == (
        413,
        {"error": {"code": "INVALID_PARAMETER", "message": f"The request body is larger than {LIMIT} bytes"}},
    )
    assert await data_keys(redis_client) == 0


async def test_chunked_oversized_body_is_413(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A chunked body (no Content-Length) is cut off at the limit while reading: 413."""
    body = padded(LIMIT + 512)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256):
            yield body[start : start + 256]

    headers = {"Authorization": signed(body), "Content-Type": "application/json"}
    async with http.post(gateway.url, data=chunks(), headers=headers) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "INVALID_PARAMETER"
    assert await data_keys(redis_client) == 0


async def test_huge_announced_body_is_refused_without_reading_it(gateway: Gateway) -> None:
    """Content-Length of 10 GiB: 413 at once, and the connection closes without the body being waited for."""
    answer, took_s = await raw_exchange(gateway, head(gateway.path, 10 * 2**30, "Signature " + "0" * 40))
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"INVALID_PARAMETER"' in answer
    assert took_s < 3  # the answer at once, and the connection closed with it


# --- time ---------------------------------------------------------------------------------------------------------


async def test_body_that_does_not_arrive_in_time_is_408(gateway: Gateway, redis_client: aioredis.Redis) -> None:
    """A sender that stalls mid-body gets 408 after the request timeout, and the connection is closed."""
    body = fixture("order_paid_separate")
    request = head(gateway.path, len(body), signed(body)) + body[:20]
    answer, took_s = await raw_exchange(gateway, request)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'{"error":{"code":"INVALID_PARAMETER","message":"The request body was not received in time"}}' in answer
    assert 0.4 < took_s < 3
    assert await data_keys(redis_client) == 0


async def test_bodies_are_taken_as_sent_never_decompressed(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Content-Encoding is not applied: the signature and the JSON are those of the bytes on the wire."""
    body = fixture("order_paid_separate")
    compressed = gzip.compress(body)
    answer = await send(http, gateway.url, compressed, headers={"Content-Encoding": "gzip"})
    assert (answer.status, answer.json()) == (
        400,
        {"error": {"code": "INVALID_PARAMETER", "message": "The body is not a JSON object"}},
    )
    assert (await send(http, gateway.url, body, headers={"Content-Encoding": "gzip"})).status == 204
    assert [stored.raw for stored in await stored_events(redis_client)] == [body]


# --- methods and paths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_405(gateway: Gateway, http: aiohttp.ClientSession, method: str) -> None:
    """Anything but POST on the webhook path answers 405 with Allow: POST, in Xsolla's error shape."""
    async with http.request(method, gateway.url) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert (await response.json())["error"]["code"] == "INVALID_PARAMETER"


@pytest.mark.parametrize("suffix", ["/abc", "/12/34", "s", "/" + "1" * 19])
async def test_unknown_path_is_404(gateway: Gateway, http: aiohttp.ClientSession, suffix: str) -> None:
    """Paths other than <path> and <path>/<project id> answer 404 in the same shape."""
    body = fixture("order_paid_separate")
    answer = await send(http, gateway.url + suffix, body)
    assert (answer.status, answer.json()["error"]["code"]) == (404, "INVALID_PARAMETER")


async def test_path_is_configurable(
    redis_server: StoreUnderTest, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """GATEWAY_PATH moves the webhook endpoint."""
    settings = gateway_settings(redis_url=redis_server.url, path="/hooks/xs")
    async with running_gateway(settings) as gateway:
        assert gateway.url.endswith("/hooks/xs")
        assert (await send(http, gateway.url, fixture("order_paid_separate"))).status == 204
        assert (await send(http, gateway.url + "/308077", fixture("payment"), PROJECT_SECRET)).status == 204
    assert len(await stored_events(redis_client)) == 2


# --- the sender's network ---------------------------------------------------------------------------------------


@pytest.fixture
async def xsolla_only(redis_server: StoreUnderTest) -> AsyncIterator[Gateway]:
    """A gateway that only takes webhooks from Xsolla's published networks, seen by the socket peer."""
    settings = gateway_settings(redis_url=redis_server.url, allowed_networks=parse_networks("xsolla", NAMED_NETWORKS))
    async with running_gateway(settings) as gateway:
        yield gateway


@pytest.fixture
async def behind_proxy(redis_server: StoreUnderTest) -> AsyncIterator[Gateway]:
    """The same allow-list behind two trusted proxies that append to X-Forwarded-For."""
    settings = gateway_settings(
        redis_url=redis_server.url,
        allowed_networks=parse_networks("xsolla", NAMED_NETWORKS),
        trusted_proxy_header="X-Forwarded-For",
        trusted_proxy_hops=2,
    )
    async with running_gateway(settings) as gateway:
        yield gateway


async def test_allow_list_refuses_other_networks_before_reading(
    xsolla_only: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """With the allow-list on, a correctly signed webhook from 127.0.0.1 is 403 INVALID_CLIENT_IP."""
    answer = await send(http, xsolla_only.url, fixture("order_paid_separate"))
    assert (answer.status, answer.json()) == (
        403,
        {"error": {"code": "INVALID_CLIENT_IP", "message": "The request does not come from an allowed network"}},
    )
    # Without a trusted proxy header configured, a forwarding header proves nothing.
    spoofed = await send(
        http, xsolla_only.url, fixture("order_paid_separate"), headers={"X-Forwarded-For": "185.30.20.1"}
    )
    assert spoofed.status == 403
    assert await data_keys(redis_client) == 0


async def test_allow_list_takes_the_client_from_the_trusted_header(
    behind_proxy: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Behind N trusted proxies the client is the N-th address from the right; entries further left are ignored."""
    body = fixture("order_paid_separate")
    cases = [
        ("185.30.21.9, 10.0.0.2", 204),  # Xsolla -> proxy 1 -> proxy 2 (the socket peer)
        ("185.30.20.1, 198.51.100.7, 10.0.0.2", 403),  # a client-written entry on the left proves nothing
        ("::ffff:34.102.38.178, 10.0.0.2", 204),  # IPv4-mapped IPv6
        ("10.0.0.2", 403),  # fewer entries than proxies
        ("garbage, 10.0.0.2", 403),
    ]
    for value, status in cases:
        answer = await send(http, behind_proxy.url, body, headers={"X-Forwarded-For": value})
        assert answer.status == status, value
    missing = await send(http, behind_proxy.url, body)
    assert missing.status == 403
    assert len(await stored_events(redis_client)) == 1


async def test_allow_list_is_off_by_default(
    redis_server: StoreUnderTest, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Without GATEWAY_ALLOWED_NETWORKS every network may send (the signature is the authentication)."""
    async with running_gateway(gateway_settings(redis_url=redis_server.url)) as gateway:
        assert not gateway.settings.allowed_networks
        assert (await send(http, gateway.url, fixture("order_paid_separate"), SECRET)).status == 204


def test_networks_and_addresses_parse() -> None:
    """`xsolla` expands to the published list; addresses with ports, brackets and IPv4-mapped forms parse."""
    networks = parse_networks("xsolla, 10.0.0.0/8 2001:db8::/32", NAMED_NETWORKS)
    assert len(networks) == 11
    allowed = SourceFilter(networks)
    for text, expected in [
        ("185.30.22.255", True),
        ("185.30.24.1", False),
        ("34.94.69.44", True),
        ("34.94.69.45", False),
        ("10.1.2.3:5555", True),
        ("[2001:db8::1]:443", True),
        ("::ffff:185.30.23.4", True),
        ("not-an-address", False),
    ]:
        assert allowed.allows(parse_address(text)) is expected, text
    assert SourceFilter(()).allows(None)
    with pytest.raises(ValueError, match="not a network"):
        parse_networks("xsolla, 300.1.1.1", NAMED_NETWORKS)

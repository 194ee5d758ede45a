"""Property-based fuzzing of the gateway over real HTTP: bodies, headers, signatures, methods and paths.

Two properties, each over a bounded number of examples against one running gateway:

- a request whose signature is not valid for its body under any configured secret never gets a 2xx, never
  gets a traceback, and stores nothing;
- a correctly signed body, however mangled, is answered 2xx or 400 (never 5xx), never with a traceback, and a
  400 stores nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.gateway import FIXTURES, PROJECT_SECRET, SECRET, gateway_settings, running_gateway, signed
from tests.helpers.services import data_keys
from tests.helpers.stores import StoreUnderTest
from webhook_gateway import Gateway

SECRETS = (SECRET, PROJECT_SECRET)
PAYLOADS = [json.loads(path.read_bytes()) for path in sorted(FIXTURES.glob("*.json"))]
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
async def gateway(redis_server: StoreUnderTest) -> AsyncIterator[Gateway]:
    """One gateway for all of a test's examples, with a 4 KiB body limit."""
    async with running_gateway(gateway_settings(redis_url=redis_server.url, max_body_bytes=4096)) as gateway:
        yield gateway


# --- strategies ---------------------------------------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["[null]", "", "1", "sandbox", "2015-01-22T19:25:25+04:00", "0001-01-01T00:00:00+05:00", "\ud800"]),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@st.composite
def mangled_payloads(draw: st.DrawFn) -> bytes:
    """A fact-sheet payload with keys dropped and values replaced at any depth."""

    def mangle(value: Any) -> Any:
        if isinstance(value, dict):
            kept: dict[str, Any] = {}
            for key, item in value.items():
                choice = draw(st.integers(0, 9))
                if choice == 0:
                    continue
                kept[key] = draw(json_values) if choice == 1 else mangle(item)
            return kept
        if isinstance(value, list):
            return [mangle(item) for item in value if draw(st.integers(0, 9))]
        return draw(json_values) if draw(st.integers(0, 9)) == 0 else value

    document = mangle(draw(st.sampled_from(PAYLOADS)))
    return json.dumps(document).encode()


bodies = st.one_of(
    st.binary(max_size=256),
    st.builds(lambda value: json.dumps(value).encode(), json_values),
    mangled_payloads(),
    st.sampled_from([b"", b"{}", b"[]", b"null", b'{"notification_type": NaN}', b"[" * 3000 + b"]" * 3000]),
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
hex_digits = st.text("0123456789abcdef", min_size=40, max_size=40)


@st.composite
def bad_authorizations(draw: st.DrawFn, body: bytes) -> str | None:
    """An Authorization header that is not Xsolla's signature of `body` under any configured secret."""
    good = [signed(body, secret) for secret in SECRETS]
    candidate: str | None = draw(
        st.one_of(
            st.none(),
            header_text,
            hex_digits.map(lambda digits: "Signature " + digits),
            st.sampled_from(good).map(str.upper),
            # Not `value + " "`: HTTP strips whitespace around a header value, so that one is valid.
            st.sampled_from(good).map(lambda value: value.replace("Signature ", "Signature  ")),
            st.sampled_from(good).map(lambda value: value.replace("Signature ", "signature ")),
            st.builds(lambda secret: signed(body, secret), st.text(min_size=1, max_size=20)),
            st.builds(lambda other: signed(other, SECRET), st.binary(max_size=64)),
        )
    )
    if candidate is not None and candidate.strip(" \t") in good:  # HTTP drops whitespace around a value
        candidate = "Signature " + "0" * 40
    return candidate


extra_headers = st.dictionaries(
    st.sampled_from(["X-Forwarded-For", "X-Real-IP", "Content-Type", "Content-Encoding", "X-Custom", "Accept"]),
    st.one_of(header_text, st.sampled_from(["gzip", "deflate", "identity", "application/json", "185.30.20.1"])),
    max_size=3,
)
suffixes = st.one_of(st.just(""), st.integers(0, 10**19).map(lambda n: f"/{n}"), st.sampled_from(["/x", "/", "/1/2"]))


async def _exchange(
    http: aiohttp.ClientSession, method: str, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    async with http.request(method, url, data=body, headers=headers) as response:
        return response.status, await response.read()


def _assert_clean_error(status: int, body: bytes) -> None:
    """An error answer is Xsolla's JSON shape with no traceback or internals."""
    assert b"Traceback" not in body
    assert b'File "' not in body
    document = json.loads(body)
    assert set(document) == {"error"}, body
    assert set(document["error"]) == {"code", "message"}, body


# --- properties -----------------------------------------------------------------------------------------------------


@FUZZ
@given(
    data=st.data(),
    body=bodies,
    headers=extra_headers,
    suffix=suffixes,
    method=st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE"]),
)
async def test_bad_signature_never_succeeds_never_leaks_and_stores_nothing(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    data: st.DataObject,
    body: bytes,
    headers: dict[str, str],
    suffix: str,
    method: str,
) -> None:
    """No 2xx without a valid signature, no traceback in any answer, nothing stored, whatever else is sent."""
    authorization = data.draw(bad_authorizations(body))
    sent = dict(headers)
    if authorization is not None:
        sent["Authorization"] = authorization
    status, answer = await _exchange(http, method, gateway.url + suffix, body, sent)
    assert not 200 <= status < 300, (status, answer)
    assert status < 500, (status, answer)
    _assert_clean_error(status, answer)
    assert await data_keys(redis_client) == 0


@FUZZ
@given(body=bodies, headers=extra_headers)
async def test_signed_garbage_is_refused_cleanly_or_stored(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """A correctly signed body of any shape is answered 2xx or 400, never 5xx; a 400 stores nothing."""
    headers.pop("Content-Encoding", None)  # the signature covers the bytes as the gateway decodes them
    before = await data_keys(redis_client)
    status, answer = await _exchange(
        http, "POST", gateway.url, body, {**headers, "Authorization": signed(body, SECRET)}
    )
    assert status in (200, 204, 400, 413), (status, answer)
    if status >= 400:
        _assert_clean_error(status, answer)
        assert await data_keys(redis_client) == before

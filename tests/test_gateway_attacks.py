"""The gateway against senders without a secret: nothing is parsed before a configured secret has signed the body,
refusals from the headers alone neither wait for the body nor read it, large bodies are read a few at a time at
a bounded pace, and HTTP-level garbage leaves one JSON log line each.

The bare path's decision (which project a webhook is, from the secret that signed it) is checked against the rule
written out plainly (parse the body, take the project it names, check that the signing secret is one of that
project's, or let the secret name the project when the body names none): for any configuration, body and signing
secret, the same requests are accepted, for the same project, and the same refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import suppress
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from core.webhooks import Action, Rejected, Verified
from providers.xsolla import WebhookSettings, XsollaWebhooks, fields
from tests.helpers.gateway import (
    DEFAULT_PROJECT,
    PROJECT,
    PROJECT_SECRET,
    SECRET,
    Answer,
    fixture,
    gateway_settings,
    running_gateway,
    send,
    signed,
    start_gateway_command,
    stored_events,
    xsolla_settings,
)
from tests.helpers.services import data_keys
from tests.helpers.stores import StoreUnderTest
from webhook_gateway import Gateway
from webhook_gateway.bodies import BodyReader, Pace

MEGABYTE = 1024 * 1024
OTHER = 18404
OTHER_SECRET = "project-18404-secret-0a1b2c3d4e"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every body the Xsolla provider parses, in order (a spy on `fields.parse_body`)."""
    seen: list[bytes] = []
    parse = fields.parse_body

    def spy(raw: bytes) -> dict[str, Any] | None:
        seen.append(raw)
        return parse(raw)

    monkeypatch.setattr(fields, "parse_body", spy)
    return seen


@pytest.fixture
async def gateway(redis_server: StoreUnderTest) -> AsyncIterator[Gateway]:
    """A gateway with the default 1 MiB body limit: a default secret and two projects with their own."""
    secrets = MappingProxyType({PROJECT: (PROJECT_SECRET,), OTHER: (OTHER_SECRET,)})
    async with running_gateway(
        gateway_settings(redis_url=redis_server.url), xsolla_settings(project_secrets=secrets)
    ) as gateway:
        yield gateway


def error_code(answer: Answer) -> tuple[int, str]:
    return answer.status, answer.json()["error"]["code"]


def naming(project: int | None, name: str = "payment") -> bytes:
    """A fact-sheet payload naming `project` in settings.project_id (None: naming none)."""
    document = json.loads(fixture(name))
    document.pop("settings", None)
    if project is not None:
        document["settings"] = {"project_id": project, "merchant_id": 1}
    return json.dumps(document).encode()


# --- nothing parsed before a secret signed it --------------------------------------------------------------------

HOSTILE_BODIES = {
    "deeply-nested": b"[" * (MEGABYTE - 1),
    "decimals": b"[" + b"1.5," * (MEGABYTE // 4 - 1) + b"1]",
    "not-json": os.urandom(MEGABYTE),
    "a-real-order": fixture("order_paid_combined") + b" " * (MEGABYTE - len(fixture("order_paid_combined"))),
}


@pytest.mark.parametrize("route", ["", f"/{PROJECT}"], ids=["bare-path", "project-path"])
@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
async def test_badly_signed_megabyte_bodies_are_refused_unparsed(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    parses: list[bytes],
    name: str,
    route: str,
) -> None:
    """1 MiB bodies under a well-formed wrong signature: INVALID_SIGNATURE, the parser never called, nothing stored."""
    body = HOSTILE_BODIES[name]
    for authorization in ("Signature " + "0" * 40, signed(body, "not-a-configured-secret")):
        answer = await send(http, gateway.url + route, body, authorization=authorization)
        assert error_code(answer) == (400, "INVALID_SIGNATURE")
    assert parses == []
    assert await data_keys(redis_client) == 0
    # The spy sees what the gateway parses: the same body correctly signed is parsed (once) after the check.
    answer = await send(http, gateway.url + route, body, PROJECT_SECRET)
    assert answer.status in (204, 400)
    assert parses == [body]


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Writes `request` on a fresh connection to the gateway on `port`, sends nothing more, and reads until the
    gateway closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Authorization header not found"),
        ("Signature " + "0" * 39, "Authorization header is not of the form 'Signature <40 lower-case hex digits>'"),
        ("Bearer abc", "Authorization header is not of the form 'Signature <40 lower-case hex digits>'"),
    ],
    ids=["missing", "39-hex", "bearer"],
)
async def test_missing_or_malformed_signature_is_refused_before_the_body(
    gateway: Gateway, parses: list[bytes], authorization: str | None, message: str
) -> None:
    """A 10 GiB body announced without a usable signature: 400 INVALID_SIGNATURE with none of it sent, then closed."""
    head = f"POST {gateway.path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {10 * 2**30}\r\n"
    if authorization is not None:
        head += f"Authorization: {authorization}\r\n"
    assert gateway.port is not None
    answer = await raw_exchange(gateway.port, (head + "\r\n").encode())
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in rest
    error = {"error": {"code": "INVALID_SIGNATURE", "message": message}}
    assert rest.endswith(json.dumps(error, separators=(",", ":")).encode())
    assert parses == []


async def test_a_refused_body_is_not_drained(gateway: Gateway) -> None:
    """After refusing from the headers, the gateway closes the connection instead of reading the body it is sent."""
    announced = 64 * MEGABYTE
    head = f"POST {gateway.path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {announced}\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    written = 0
    try:
        writer.write(head.encode())
        answer = await asyncio.wait_for(reader.readuntil(b'"}}'), timeout=10)
        assert answer.startswith(b"HTTP/1.1 400 ")
        reset = False
        try:  # reset once what the two sockets' buffers hold is full
            while written < announced:
                writer.write(b" " * MEGABYTE)
                await asyncio.wait_for(writer.drain(), timeout=10)
                written += MEGABYTE
        except ConnectionError:
            reset = True
        assert reset
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
    # A lingering close would have read and discarded all of it, at the speed of loopback.
    assert written < announced // 4


# --- large bodies: a few at a time, at a bounded rate ------------------------------------------------------------


class Arriving:
    """A body arriving in the chunks a test hands it (`arrive`), read with `next_chunk` as aiohttp's `readany`."""

    def __init__(self, *chunks: bytes, end: bool = True) -> None:
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.arrive(*chunks, end=end)

    def arrive(self, *chunks: bytes, end: bool = False) -> None:
        for chunk in chunks:
            self._chunks.put_nowait(chunk)
        if end:
            self._chunks.put_nowait(b"")

    async def next_chunk(self) -> bytes:
        return await self._chunks.get()


async def settle() -> None:
    """Lets every task that can run, run."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_large_bodies_wait_for_one_another_small_ones_do_not() -> None:
    """Past the small size a body is read only while it holds a slot; a small body never waits for one."""
    reader = BodyReader(MEGABYTE, small_body_bytes=1024, large_body_slots=1, pace=Pace(1e12))
    deadline = asyncio.get_running_loop().time() + 30
    fed: list[tuple[str, int]] = []

    async def read(name: str, body: Arriving) -> bytes:
        return await reader.read(body.next_chunk, None, deadline, lambda chunk: fed.append((name, len(chunk))))

    first = Arriving(b"a" * 2048, end=False)  # holds the slot, waiting for the rest of its body
    holding = asyncio.create_task(read("first", first))
    await settle()
    second = Arriving(b"b" * 2048, b"b")
    waiting = asyncio.create_task(read("second", second))
    await settle()
    small = await read("small", Arriving(b"c" * 1000))
    await settle()
    assert (len(small), holding.done(), waiting.done()) == (1000, False, False)
    first.arrive(b"a", end=True)
    assert len(await holding) == 2049
    assert len(await waiting) == 2049
    # The second was hashed as its first read came in, then waited for the first body to be done.
    assert fed == [("first", 2048), ("second", 2048), ("small", 1000), ("first", 1), ("second", 1)]


async def test_bytes_past_the_small_size_are_paced() -> None:
    """Every byte past the small size books time on one pace shared by all large bodies, in arrival order."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    pace = Pace(1000, sleep=sleep)
    await pace.take(500)
    await pace.take(500)  # booked after the first: a second from the first call
    assert [round(wait, 2) for wait in waits] == [0.5, 1.0]

    reader = BodyReader(MEGABYTE, small_body_bytes=1024, pace=pace)  # the same pace, watched
    waits.clear()
    deadline = asyncio.get_running_loop().time() + 30
    body = Arriving(b"x" * 1500, b"y" * 200)
    assert await reader.read(body.next_chunk, None, deadline, lambda chunk: None) == b"x" * 1500 + b"y" * 200
    # Booked after the second above (one second from the first): 476 bytes past the small size, then 200.
    assert [round(wait, 1) for wait in waits] == [1.0 + 0.5, 1.0 + 0.5 + 0.2]


async def test_a_signed_body_larger_than_any_webhook_is_still_accepted(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A correctly signed 600 KiB order (past the small size, so slotted and paced) is stored."""
    body = fixture("order_paid_combined") + b" " * (600 * 1024)
    assert (await send(http, gateway.url, body, PROJECT_SECRET)).status == 204
    assert [stored.raw for stored in await stored_events(redis_client)] == [body]


# --- the bare path: the candidates and the project the body names ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "secret", "project"),
    [
        (naming(PROJECT), PROJECT_SECRET, PROJECT),  # the project's own secret
        (naming(PROJECT), OTHER_SECRET, None),  # another project's secret
        (naming(PROJECT), SECRET, None),  # the default, for a project with its own
        (naming(None), SECRET, DEFAULT_PROJECT),  # a body naming no project, the default secret: the default project
        (naming(None), PROJECT_SECRET, PROJECT),  # ... a project's own secret: that project
        (naming(777), SECRET, 777),  # a project without a secret of its own: the default
        (naming(777), OTHER_SECRET, None),
    ],
    ids=["own", "other-projects", "default-for-own", "none-default", "none-project", "unconfigured", "unconf-other"],
)
async def test_bare_path_accepts_only_a_secret_of_the_project_the_body_names(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    parses: list[bytes],
    body: bytes,
    secret: str,
    project: int | None,
) -> None:
    """On the bare path a configured secret must sign the body and sign for the project the body names (or, when it
    names none, decide one); the event records that project."""
    answer = await send(http, gateway.url, body, secret)
    if project is not None:
        assert answer.status == 204
        assert [stored.event.project_id for stored in await stored_events(redis_client)] == [project]
    else:
        assert error_code(answer) == (400, "INVALID_SIGNATURE")
        assert await data_keys(redis_client) == 0
    assert parses == [body]  # parsed once, after a configured secret was found to have signed it


async def test_bare_path_rotation_and_a_secret_shared_by_two_projects(
    redis_server: StoreUnderTest, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Both secrets of a project in rotation verify; a secret two projects share verifies for each of them."""
    secrets = MappingProxyType({PROJECT: ("old-secret", "new-secret"), OTHER: ("new-secret",), 5: ("five",)})
    async with running_gateway(
        gateway_settings(redis_url=redis_server.url), xsolla_settings(default_secret=None, project_secrets=secrets)
    ) as gateway:
        for body, secret, status in [
            (naming(PROJECT), "old-secret", 204),
            (naming(PROJECT, "refund"), "new-secret", 204),
            (naming(OTHER), "new-secret", 204),
            (naming(OTHER, "refund"), "old-secret", 400),
            (naming(5), "old-secret", 400),
            (naming(None), "new-secret", 400),  # a shared secret does not tell which project a body naming none is
        ]:
            assert (await send(http, gateway.url, body, secret)).status == status, (body[:60], secret)
    assert len(await stored_events(redis_client)) == 3


# The bare path's rule, written out plainly over the configuration as given: parse the body, take the project it
# names, and check the signing secret against it; the project of the stored event, or None when refused.
def parse_then_decide(
    default: str | None, projects: dict[int, list[str]], default_project: int | None, body: bytes, signer: str
) -> int | None:
    configured = {default} | {name for names in projects.values() for name in names}
    if signer not in configured:
        return None
    document = fields.parse_body(body)
    if document is None:
        return None
    named = set()
    for holder in (document, fields.section(document, "billing")):
        value = fields.section(holder, "settings").get("project_id")
        if value is not None:
            project = fields.integer(value, 0, fields.INT64_MAX)
            if project is None:
                return None  # a malformed project id
            if project:
                named.add(project)

    def signs_for(project: int) -> bool:
        return signer in projects.get(project, ()) or (project not in projects and signer == default)

    if len(named) > 1:
        return None
    if named:
        project = named.pop()
        return project if signs_for(project) else None
    if signer != default:
        owners = [project for project, names in projects.items() if signer in names]
        return owners[0] if len(owners) == 1 else None
    return default_project if default_project is not None and signs_for(default_project) else None


project_ids = st.sampled_from([1, 2, 3])
secret_names = st.sampled_from(["a", "b", "c", "d"])
project_values = st.one_of(
    st.none(), project_ids, project_ids.map(str), st.just(0), st.just("abc"), st.just(-1), st.just(1.5), st.just(2**64)
)
PAYMENT = json.loads(fixture("payment"))


@st.composite
def bare_path_cases(draw: st.DrawFn) -> tuple[str | None, dict[int, list[str]], int | None, bytes, str]:
    """A configuration (default secret, projects' secrets, default project), a body naming any project (or none, or
    garbage, or two), and the secret that signs it."""
    default = draw(st.one_of(st.none(), secret_names))
    projects = draw(st.dictionaries(project_ids, st.lists(secret_names, min_size=1, max_size=2, unique=True)))
    if default is None and not projects:
        projects = {1: ["a"]}
    default_project = draw(st.one_of(st.none(), project_ids, st.just(4)))
    document: dict[str, Any] = {key: value for key, value in PAYMENT.items() if key != "settings"}
    for path in draw(st.lists(st.sampled_from(["settings", "billing"]), max_size=2, unique=True)):
        value = {"project_id": draw(project_values)}
        document[path] = value if path == "settings" else {"settings": value}
    body = draw(st.sampled_from([json.dumps(document).encode(), b"not json", b"[1]"]))
    return default, projects, default_project, body, draw(secret_names)


def decided_project(webhooks: XsollaWebhooks, body: bytes, signature: str, chunk_size: int) -> int | None:
    """The project of the event the provider makes of `body` on the bare path, fed in chunks; None when refused."""
    authentication = webhooks.authentication({"Authorization": signature}, None)
    for start in range(0, len(body), chunk_size):
        authentication.update(body[start : start + chunk_size])
    try:
        verified: Verified = authentication.verify(body)
        notification = webhooks.interpret(verified, 0)
    except Rejected:
        return None
    assert notification.action is Action.STORE
    return notification.project_id


@settings(max_examples=400, deadline=None)
@given(bare_path_cases(), st.integers(min_value=1, max_value=64))
def test_bare_path_decides_what_the_rule_written_out_decides(
    case: tuple[str | None, dict[int, list[str]], int | None, bytes, str], chunk_size: int
) -> None:
    """For any configuration, body and signing secret, the bare path stores the webhook for the project the plain
    rule gives, and refuses it when the rule does."""
    default, projects, default_project, body, signer = case
    webhooks = XsollaWebhooks(
        WebhookSettings(
            default_secret=default,
            project_secrets=MappingProxyType({project: tuple(names) for project, names in projects.items()}),
            default_project=default_project,
        )
    )
    expected = parse_then_decide(default, projects, default_project, body, signer)
    assert decided_project(webhooks, body, signed(body, signer), chunk_size) == expected


# --- HTTP-level garbage: one JSON log line each ----------------------------------------------------------------

HTTP_GARBAGE = {
    "over-long URL": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge header": b"POST /webhooks/xsolla HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
    "200 headers": b"POST /webhooks/xsolla HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % number for number in range(200))
    + b"\r\n",
    "bad version": b"GET / HTTP/9.9x\r\n\r\n",
    "bad Content-Length": b"POST /webhooks/xsolla HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "bad chunk": b"POST /webhooks/xsolla HTTP/1.1\r\nHost: x\r\nAuthorization: Signature "
    + b"0" * 40
    + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    "binary": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
}


@pytest.mark.slow
async def test_http_level_errors_are_one_json_line_each(
    redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """`python -m webhook_gateway` answers HTTP garbage 400, logs each as one JSON line, and still stores webhooks."""
    process = await start_gateway_command(redis_server.url)
    assert process.stderr is not None
    lines: list[bytes] = []
    started = asyncio.get_running_loop().create_future()

    async def read_stderr() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            lines.append(line)
            if b'"event": "gateway_started"' in line and not started.done():
                started.set_result(json.loads(line))

    reading = asyncio.create_task(read_stderr())
    try:
        gateway = await asyncio.wait_for(started, timeout=30)
        for name, request in HTTP_GARBAGE.items():
            answer = await raw_exchange(gateway["port"], request)
            assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", name
        url = f"http://127.0.0.1:{gateway['port']}{gateway['path']}"
        async with aiohttp.ClientSession() as http:
            assert (await send(http, url, fixture("order_paid_separate"))).status == 204
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        await asyncio.wait_for(reading, timeout=10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reading.cancel()

    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line[:200]!r}")
    library = [record for record in records if record.get("logger") == "aiohttp.server"]
    # One warning per malformed request, naming aiohttp's error, with no traceback: the sender's fault, not the
    # server's. Bytes that are not HTTP at all on a new connection (a TLS hello, a scanner) aiohttp logs at debug
    # level, below what the gateway logs.
    assert len(library) == len(HTTP_GARBAGE) - 1
    for record in library:
        assert record["level"] == "warning"
        assert "exception" not in record
        assert record["event"].startswith("Error handling request from 127.0.0.1: ")
    assert {record["event"].split(": ")[1].split(" ")[0] for record in library} >= {"LineTooLong", "BadHttpMessage"}
    assert not [record for record in records if record["level"] == "error"]
    assert records[-1]["event"] == "gateway_stopped"
    assert len(await stored_events(redis_client)) == 1

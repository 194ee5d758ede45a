"""The log lines (`core.logs`): what the service writes on stderr, line by line, is what structlog's stock processors
wrote (the same events, keys, values and bytes), while costing about half as much per line.

The reference is the configuration `core.logs.configure` had with structlog's own processors (`_STOCK`), run on the
same events side by side with today's; and a real `python -m server` whose RPC lines are checked key by key."""

from __future__ import annotations

import datetime
import enum
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from core import logs
from entitlements import AsyncEntitlementsClient, AuthenticationError, InvalidArgumentError
from server.auth import hash_key
from server.embedded import EmbeddedRedis
from tests.helpers.processes import serving, start_service_process
from tests.helpers.services import PROJECT, WRITER_KEY
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually

# An ISO UTC timestamp as `TimeStamper(fmt="iso", utc=True)` writes it: no fraction at a whole second.
TIMESTAMP = re.compile(r'"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"')


def _stock(fields: dict[str, object] | None) -> list[structlog.typing.Processor]:
    """The processors `configure(json=True)` had before its own: structlog's, in the same order."""
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fields:
        shared.append(logs._Fields(dict(fields)))
    return [*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Named(str):
    """A str subclass (json writes its text)."""


class Reported:
    def __structlog__(self) -> str:
        return "reported ü"


class Opaque:
    def __repr__(self) -> str:
        return "<opaque ☃>"


def _raised(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


# Events as the service's modules log them, and the values JSON makes a renderer choose about.
EVENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "rpc",
        {
            "method": "CheckEntitlement",
            "code": "OK",
            "duration_ms": 0.412,
            "user": "9f86d081884c7d65",
            "project_id": PROJECT,
            "principal": "writer",
        },
    ),
    ("rpc", {"method": "Grant", "code": "INVALID_ARGUMENT", "duration_ms": 1.0, "error": 'sku: "épée" ⚔ 🗡 \x01\t\n'}),
    ("non_ascii_é", {"text": "日本語 Ωmega", "quote": '"\\/', "lone_surrogate": "\udc80", "nul": "\x00"}),
    ("numbers", {"big": 2**70, "negative": -(2**63), "small": 1e-7, "large": 1e16, "nan": math.nan, "inf": -math.inf}),
    ("numbers", {"zero": 0.0, "neg_zero": -0.0, "third": 1 / 3, "true": True, "none": None, "int_enum": Level.HIGH}),
    ("keys", {"nested": {1: "int key", 2.5: "float key", False: "bool key", None: "none key", "é": ["a", ("t", 1)]}}),
    (
        "objects",
        {
            "when": datetime.datetime(2026, 12, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
            "color": Color.RED,
            "id": uuid.UUID(int=7),
            "raw": b"\xff bytes",
            "set": {1},
            "named": Named("subclass é"),
            "reported": Reported(),
            "opaque": Opaque(),
        },
    ),
    ("caught", {"exc_info": _raised("boom ü")}),
    ("caught", {"exc_info": (ValueError, _raised("tuple ü"), None)}),
    ("no_exception", {"exc_info": None}),
    ("overrides", {"level": "custom", "worker": 9}),
]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """structlog's configuration and the root logger's handlers back as they were after the test."""
    previous = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.configure(**previous)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        logs._library_handler = next((h for h in root.handlers if h is logs._library_handler), None)
        root.setLevel(level)


def _render(processors: list[structlog.typing.Processor], method: str, event: str, values: dict[str, Any]) -> str:
    """The line a bound logger with `processors` writes for `log.<method>(event, **values)`."""
    event_dict: Any = {**values, "event": event}
    for processor in processors:
        event_dict = processor(None, method, event_dict)
    assert isinstance(event_dict, str)
    return event_dict


def _same_instant(line: str) -> str:
    return TIMESTAMP.sub('"timestamp": "T"', line)


@pytest.mark.parametrize("fields", [None, {"worker": 1}], ids=["process", "worker"])
@pytest.mark.parametrize(("event", "values"), EVENTS, ids=[f"{e}-{i}" for i, (e, _) in enumerate(EVENTS)])
def test_a_line_is_the_stock_processors_line_byte_for_byte(
    event: str, values: dict[str, Any], fields: dict[str, object] | None, restore_logging: None
) -> None:
    """Every event renders to the very text structlog's own processors wrote (apart from the instant in its
    timestamp), including non-ASCII, exceptions, non-str keys and values JSON cannot hold."""
    logs.configure("debug", json=True, cache_loggers=False, fields=fields)
    ours = structlog.get_config()["processors"]
    assert len(ours) == len(_stock(fields))
    for method in ("info", "warning", "exception"):
        expected, actual = _render(_stock(fields), method, event, values), _render(ours, method, event, values)
        assert TIMESTAMP.search(actual)
        assert TIMESTAMP.search(expected)
        assert _same_instant(actual) == _same_instant(expected)
        json.loads(actual)  # Python's parser takes it (NaN and Infinity as json.dumps writes them)


@pytest.mark.parametrize("fields", [None, {"worker": 1}], ids=["process", "worker"])
def test_a_line_refused_by_json_is_refused_alike(fields: dict[str, object] | None, restore_logging: None) -> None:
    """A value JSON cannot write raises what structlog's own renderer raised, for the caller to see."""
    logs.configure("info", json=True, cache_loggers=False, fields=fields)
    ours = structlog.get_config()["processors"]
    circular: dict[str, Any] = {}
    circular["self"] = circular
    refusals: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"loop": circular}, ValueError, "Circular reference detected"),
        ({"bad": {(1, 2): "tuple key"}}, TypeError, "keys must be str, int, float, bool or None, not tuple"),
    ]
    for values, error, message in refusals:
        for processors in (_stock(fields), ours):
            with pytest.raises(error, match=re.escape(message)):
                _render(processors, "info", "refused", values)
            # The next line, with the same containers as the refused one, is written as ever.
            following = {"again": [1, 2], "nested": {"a": "b"}}
            assert _same_instant(_render(ours, "info", "next", following)) == _same_instant(
                _render(_stock(fields), "info", "next", following)
            )


def test_the_timestamp_is_timestampers_text_at_every_instant() -> None:
    """The timestamp text is datetime's isoformat with "Z" for any instant: whole seconds without a fraction,
    microseconds rounded down, a new second's text as soon as it starts."""
    stamp = logs._IsoUtcTimestamp()
    second = 1_796_180_645  # 2026-12-02
    for ns in (
        second * 10**9,
        second * 10**9 + 999,
        second * 10**9 + 1_000,
        second * 10**9 + 999_999_999,
        (second + 1) * 10**9,
        (second + 1) * 10**9 + 500_000_000,
        second * 10**9 - 1,
        951_782_400 * 10**9 + 123_456_789,  # 2000-02-29
        0,
    ):
        moment = datetime.datetime.fromtimestamp(ns // 10**9, datetime.UTC).replace(microsecond=ns // 1000 % 10**6)
        assert stamp.text(ns) == moment.isoformat().replace("+00:00", "Z"), ns


def test_the_timestamp_is_read_from_the_clock_timestamper_reads() -> None:
    """A line's timestamp lies between two of structlog's TimeStamper taken before and after it."""
    stock = structlog.processors.TimeStamper(fmt="iso", utc=True)
    ours = logs._IsoUtcTimestamp()

    def instant(stamper: Callable[..., Any]) -> datetime.datetime:
        text = stamper(None, "info", {})["timestamp"]
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

    for _ in range(1000):
        before, now, after = instant(stock), instant(ours), instant(stock)
        assert before <= now <= after


def test_context_variables_still_reach_every_line(restore_logging: None) -> None:
    """Bound context variables are merged into a line as structlog's processor merges them, in its order."""
    logs.configure("info", json=True, cache_loggers=False)
    ours = structlog.get_config()["processors"]
    with structlog.contextvars.bound_contextvars(request_id="r-1", tenant="t é"):
        expected = _render(_stock(None), "info", "bound", {"a": 1})
        actual = _render(ours, "info", "bound", {"a": 1})
    assert '"request_id": "r-1"' in actual
    assert _same_instant(actual) == _same_instant(expected)
    after = _render(ours, "info", "unbound", {"a": 1})
    assert "request_id" not in after


def test_a_cached_logger_keeps_its_methods_and_an_uncached_one_follows_reconfiguration(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """With caching (the services) `get_logger`'s methods are looked up once; without it (tests) every
    `structlog.configure` is followed, like structlog's own proxy."""
    logs.configure("info", json=True, cache_loggers=False)
    following = logs.get_logger("test.following")
    following.info("first")
    with structlog.testing.capture_logs() as captured:
        following.info("captured")
    assert [entry["event"] for entry in captured] == ["captured"]
    assert "info" not in vars(following)

    logs.configure("info", json=True, cache_loggers=True)
    cached, stock = logs.get_logger("test.cached"), structlog.get_logger("test.stock")
    for logger in (cached, stock):
        logger.info("cached", n=1)
    assert "info" in vars(cached)
    with structlog.testing.capture_logs() as captured:  # it edits the processors' list that loggers hold
        for logger in (cached, stock):
            logger.info("captured", n=2)
    assert [entry["event"] for entry in captured] == ["captured", "captured"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    for logger in (cached, stock):
        logger.info("kept", n=3)  # a cached logger keeps the level it was made with
        logger.debug("filtered")
    written = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    events = [(line["event"], line.get("n")) for line in written]
    assert events == [("first", None), ("cached", 1), ("cached", 1), ("kept", 3), ("kept", 3)]


def test_library_records_are_the_same_json_lines(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    """A library's record (stdlib logging), its traceback and non-ASCII included, is one JSON line with the keys
    and values it always had."""
    logs.configure("info", json=True, cache_loggers=False)
    library = logging.getLogger("some.library")
    try:
        raise RuntimeError("broken ü ☃")
    except RuntimeError:
        library.exception("failed %s", "é")
    logging.getLogger("other.library").warning("slow ✓ %d", 3)
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    parsed = [json.loads(line) for line in lines]
    assert [list(line) for line in parsed] == [
        ["event", "level", "timestamp", "logger", "exception"],
        ["event", "level", "timestamp", "logger"],
    ]
    assert parsed[0]["event"] == "failed é"
    assert parsed[0]["logger"] == "some.library"
    assert parsed[0]["level"] == "error"
    assert parsed[0]["exception"].startswith("Traceback (most recent call last):")
    assert parsed[0]["exception"].endswith("RuntimeError: broken ü ☃")
    assert parsed[1] == {
        "event": "slow ✓ 3",
        "level": "warning",
        "timestamp": parsed[1]["timestamp"],
        "logger": "other.library",
    }
    assert all(line.isascii() for line in lines)  # non-ASCII is escaped, as json.dumps writes it


def test_the_console_renderer_is_structlogs(restore_logging: None) -> None:
    """`json=False` keeps structlog's console renderer, with no traceback formatter before it."""
    logs.configure("info", json=False, cache_loggers=False)
    processors = structlog.get_config()["processors"]
    assert isinstance(processors[-1], structlog.dev.ConsoleRenderer)
    assert len(processors) == 4


# --- the real service ---------------------------------------------------------------------------------------------

#: Keys of an RPC line, in order, as the service writes them (`server.rpc.RpcRuntime._finish`).
RPC_KEYS_OK = ["method", "code", "duration_ms", "user", "project_id", "principal", "event", "level", "timestamp"]


@pytest.mark.timeout(90)
async def test_the_services_rpc_lines_on_stderr_are_unchanged(single_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """A real `python -m server` (loggers cached, as deployed) writes one JSON line per RPC on stderr with the keys,
    order and values it always had, for successes and errors alike, and nothing else unparseable."""
    log_file = tmp_path / "service.log"
    store = StoreUnderTest(single_redis.url, cluster=False, embedded=single_redis)
    service = await start_service_process(
        store,
        log_file,
        ENTITLEMENTS_LOG_LEVEL="info",
        ENTITLEMENTS_LOG_JSON="1",
        ENTITLEMENTS_API_KEYS=f"writer:{hash_key(WRITER_KEY)}:read,write",
        ENTITLEMENTS_XSOLLA_PROJECT_ID=str(PROJECT),
    )
    client = AsyncEntitlementsClient(service.target, api_key=WRITER_KEY)
    anonymous = AsyncEntitlementsClient(service.target)
    try:
        await eventually(lambda: serving(client, "probe"), timeout_s=60, what="the service to serve")
        await client.grant("joueur-é", "gold")
        await client.check_entitlement("joueur-é", "gold")
        with pytest.raises(InvalidArgumentError):
            await client.check_entitlement("joueur-é", "épée\x01")
        with pytest.raises(AuthenticationError):
            await anonymous.check_entitlement("joueur-é", "gold")
    finally:
        await client.close()
        await anonymous.close()
        await service.stop()
    text = log_file.read_bytes().decode()
    lines = [line for line in text.splitlines() if line]
    parsed = [json.loads(line) for line in lines]  # every line is JSON
    assert all(line.isascii() for line in lines)
    rpc = [line for line in parsed if line["event"] == "rpc" and line.get("user") != logs.user_ref("probe")]
    user = logs.user_ref("joueur-é")
    assert [list(line) for line in rpc] == [
        RPC_KEYS_OK,
        RPC_KEYS_OK,
        [*RPC_KEYS_OK[:-3], "error", "event", "level", "timestamp"],
        ["method", "code", "duration_ms", "error", "event", "level", "timestamp"],
    ]
    common = {"user": user, "project_id": PROJECT, "principal": "writer", "event": "rpc", "level": "info"}
    assert [{k: v for k, v in line.items() if k not in ("duration_ms", "timestamp")} for line in rpc] == [
        {"method": "Grant", "code": "OK", **common},
        {"method": "CheckEntitlement", "code": "OK", **common},
        {
            "method": "CheckEntitlement",
            "code": "INVALID_ARGUMENT",
            **common,
            "error": "sku: must not contain control characters",
        },
        {
            "method": "CheckEntitlement",
            "code": "UNAUTHENTICATED",
            "error": "missing API key: send 'authorization: Bearer <key>'",
            "event": "rpc",
            "level": "info",
        },
    ]
    for line in rpc:
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] > 0
        assert TIMESTAMP.search(f'"timestamp": "{line["timestamp"]}"')
    for raw in lines:
        if '"event": "rpc"' in raw:  # operators' filters match the text as json.dumps writes it
            assert raw.startswith('{"method": "')
            assert raw.endswith('Z"}')
    assert "joueur" not in text

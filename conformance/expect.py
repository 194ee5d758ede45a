"""How the harness reads what runners answer: normalization, expectations, and the transcript compared across clients.

Runners print proto3 JSON with their language's printer, so the same message can be written differently: int64
as "5" (canonical) or 5, timestamps and durations with more or fewer fractional digits. `normalize` makes those
equal. Expectations (`matches`) are partial: a scenario names only the fields it is about, with a few operators.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

_INT = re.compile(r"^-?\d{1,19}$")
_DURATION = re.compile(r"^-?\d+(\.\d+)?s$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LEDGER_ENTRY = re.compile(r"^\d+-\d+$")


def _instant(text: str) -> datetime:
    head, _, rest = text.partition(".")
    if rest:  # Python parses at most 6 fractional digits; a printer may write 9.
        digits = re.match(r"\d+", rest)
        assert digits is not None
        rest = digits.group()[:6].ljust(6, "0") + rest[len(digits.group()) :]
        text = f"{head}.{rest}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def normalize(value: Any) -> Any:
    """int64 strings to ints, durations to seconds (float), timestamps to aware datetimes; recursively."""
    if isinstance(value, dict):
        return {key: normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalize(item) for item in value]
    if isinstance(value, str):
        if _INT.match(value):
            return int(value)
        if _DURATION.match(value):
            return float(value[:-1])
        if _TIMESTAMP.match(value):
            return _instant(value)
    return value


def matches(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """What in `actual` differs from `expected` (both normalized); empty when it matches.

    Dicts match partially (keys not named are not checked). Operators, as a dict with one key:
    `{"$absent": true}` (the key is missing: proto3 JSON leaves out default values), `{"$present": true}`,
    `{"$gte": n}`, `{"$len": n}`, `{"$contains": "text"}` (a substring of a string), `{"$last": expected}` and
    `{"$each": expected}` (on lists), `{"$ne": value}`.
    """
    if isinstance(expected, dict) and len(expected) == 1 and next(iter(expected)).startswith("$"):
        return _operator(next(iter(expected)), next(iter(expected.values())), actual, path)
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems = []
        for key, want in expected.items():
            if isinstance(want, dict) and want.get("$absent"):
                if key in actual:
                    problems.append(f"{path}.{key}: expected absent, got {actual[key]!r}")
                continue
            if key not in actual:
                problems.append(f"{path}.{key}: missing (expected {want!r})")
                continue
            problems += matches(want, actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} items, got {actual!r}"]
        return [
            p
            for i, (want, got) in enumerate(zip(expected, actual, strict=True))
            for p in matches(want, got, f"{path}[{i}]")
        ]
    if expected != actual:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


def _operator(name: str, operand: Any, actual: Any, path: str) -> list[str]:
    if name == "$present":
        return []
    if name == "$gte":
        return (
            []
            if isinstance(actual, int | float) and actual >= operand
            else [f"{path}: expected >= {operand}, got {actual!r}"]
        )
    if name == "$len":
        return (
            []
            if isinstance(actual, list) and len(actual) == operand
            else [f"{path}: expected {operand} items, got {actual!r}"]
        )
    if name == "$contains":
        return (
            []
            if isinstance(actual, str) and operand in actual
            else [f"{path}: expected to contain {operand!r}, got {actual!r}"]
        )
    if name == "$ne":
        return [] if actual != operand else [f"{path}: expected anything but {operand!r}"]
    if name in ("$last", "$each"):
        if not isinstance(actual, list) or not actual:
            return [f"{path}: expected a non-empty list, got {actual!r}"]
        items = actual[-1:] if name == "$last" else actual
        return [
            p for i, item in enumerate(items) for p in matches(operand, item, f"{path}[{i if name == '$each' else -1}]")
        ]
    return [f"{path}: unknown operator {name}"]


def forward_only(updates: list[dict[str, Any]]) -> list[str]:
    """The rules of an order stream: statuses never go back, none is delivered twice (except when
    `entitlementsGranted` turns true), and only the last update may be `timedOut`."""
    order = ["ORDER_STATUS_UNSPECIFIED", "ORDER_STATUS_NEW", "ORDER_STATUS_PAID", "ORDER_STATUS_DONE",
             "ORDER_STATUS_CANCELED", "ORDER_STATUS_EXPIRED"]  # fmt: skip
    problems = []
    last_rank, granted = 0, False
    for i, update in enumerate(updates):
        if update.get("timedOut"):
            if i != len(updates) - 1:
                problems.append(f"updates[{i}]: timedOut before the end")
            continue
        rank = order.index(update.get("status", "ORDER_STATUS_UNSPECIFIED"))
        now_granted = bool(update.get("entitlementsGranted"))
        if rank < last_rank or (rank == last_rank and not (now_granted and not granted)):
            problems.append(f"updates[{i}]: {update.get('status')} (granted={now_granted}) repeats or goes back")
        last_rank, granted = max(rank, last_rank), granted or now_granted
    return problems


def masked(value: Any, names: dict[str, str]) -> Any:
    """`value` with what differs between runs replaced: the run's own ids (`names`: value -> placeholder),
    times, UUIDs (idempotency keys the clients made), ledger entry ids."""
    if isinstance(value, dict):
        return {key: masked(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [masked(item, names) for item in value]
    if isinstance(value, datetime):
        return "<time>"
    if isinstance(value, str):
        for real, placeholder in names.items():
            value = value.replace(real, placeholder)
        if _LEDGER_ENTRY.match(value):
            return "<entry>"
        return _UUID.sub("<uuid>", value)
    if isinstance(value, int) and str(value) in names:
        return names[str(value)]
    return value

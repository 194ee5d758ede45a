"""Readers of the fields of Xsolla's notification bodies: liberal where Xsolla's own examples disagree (ids as
integers or strings, `dry_run` absent or 1, amounts written as "[null]"), strict only about what an event cannot
exist without, naming the field when it is missing (`InvalidParameter`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import quote

from core.limits import MAX_ID_BYTES, identifier_problem
from core.webhooks import InvalidParameter

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


def parse_body(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (bad UTF-8, bad JSON, not an object).

    Decimals are kept exact (`Decimal`), so amounts travel as the provider wrote them; JSON's non-standard
    NaN and Infinity literals are refused.
    """
    try:
        value = json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return None
    return value if isinstance(value, dict) else None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def section(holder: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An optional nested object; anything that is not an object counts as absent."""
    value = holder.get(key)
    return value if isinstance(value, dict) else {}


def required_section(holder: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = holder.get(key)
    if not isinstance(value, dict):
        raise InvalidParameter(key, "is required (an object)")
    return value


def required_id(value: Any, path: str) -> str:
    """An identifier: a non-empty string or a non-negative integer (Xsolla sends both), as a string, within the
    limits the service applies to every identifier (`core.limits`): an id the service could never store is
    refused here, before its event is acknowledged."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        # An integer of more than 1,024 bits has more than 256 digits: too long, and not worth writing out.
        written = str(value) if value.bit_length() <= 1024 else "9" * (MAX_ID_BYTES + 1)
    elif isinstance(value, str) and value.strip():
        written = value
    else:
        raise InvalidParameter(path, "is required (a non-empty string or an integer)")
    problem = identifier_problem(written)
    if problem is not None:
        raise InvalidParameter(path, problem)
    return written


def text(value: Any) -> str:
    """An optional informational string; numbers are written out, anything else is empty."""
    if isinstance(value, str):
        # Lone surrogates (from "\\ud800"-style escapes) cannot be stored as protobuf strings.
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return ""


def decimal(value: Any) -> str:
    """An amount as the provider wrote it; Xsolla's "[null]" and non-numbers become empty."""
    written = text(value)
    return "" if written == "[null]" else written


def flag(value: Any) -> bool:
    """True for true, 1 or "1"/"true" (Xsolla writes `dry_run: 1` and booleans)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in ("1", "true")


def integer(value: Any, minimum: int, maximum: int) -> int | None:
    """An integer within [minimum, maximum] from an int, an integral decimal or a digit string; else None."""
    number: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        number = int(value) if abs(value.adjusted()) < 20 else None
    elif isinstance(value, str) and value.isascii() and value.strip().isdigit() and len(value) < 20:
        number = int(value)
    if number is None or not minimum <= number <= maximum:
        return None
    return number


def date(value: Any, path: str) -> datetime | None:
    """An ISO-8601 date with or without offset (UTC when without); None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidParameter(path, "must be an ISO-8601 date")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidParameter(path, "must be an ISO-8601 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # a year-1 date with a positive offset, or year 9999 with a negative one
        raise InvalidParameter(path, "is out of range") from None


def utc_text(moment: datetime) -> str:
    """A UTC moment as ISO-8601 with a Z, to the second (to the microsecond when it has any)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def check_unicode(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameter(path, "is not valid Unicode") from None


def key(part: str) -> str:
    """A free-form id made safe inside an event id (no ':' or other separators)."""
    return quote(part, safe="-._~@+")

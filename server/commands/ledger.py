"""`python -m server ledger USER_ID`: a player's audit ledger as a table, newest first (or JSON lines with --json),
in the plain words of `server.ledger_view`, the same as `ListLedger` and the support console show."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from server.commands.context import operator_redis
from server.config import Settings
from server.ledger_view import LedgerLine, ledger_page
from server.store import CONSUMABLE, PERMANENT, TIME_LIMITED, EntitlementStore
from server.validation import MAX_PAGE_SIZE

COLUMNS = ("time (UTC)", "operation", "sku", "before -> after", "actor", "reason", "summary")
# Control characters (a newline, a terminal escape sequence) in what callers wrote are shown escaped: one entry,
# one line, and nothing a reason holds can act on the operator's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


async def ledger_command(
    settings: Settings, project_id: int, user_id: str, limit: int, *, as_json: bool = False, out: TextIO | None = None
) -> int:
    """Prints the newest `limit` ledger entries of a player of a project: a table, or JSON lines (`as_json`: each
    `LedgerLine` as an object). Returns the exit status (0; a player with no ledger is said on stderr)."""
    out = out or sys.stdout
    lines: list[LedgerLine] = []
    async with operator_redis(settings, writes=False) as redis:
        store = EntitlementStore(redis, timeout_s=settings.redis_timeout_s, idempotency_ttl_ms=1)
        token = ""
        while len(lines) < limit:
            page, token = await ledger_page(store, project_id, user_id, min(MAX_PAGE_SIZE, limit - len(lines)), token)
            lines += page
            if not token:
                break
    if as_json:
        for line in lines:
            print(json.dumps(dataclasses.asdict(line), ensure_ascii=False), file=out)
        return 0
    if not lines:
        print(f"player {shown(user_id)} has no ledger entries in project {project_id}", file=sys.stderr)
        return 0
    print(table([row(line) for line in lines]), file=out)
    return 0


def row(line: LedgerLine) -> tuple[str, ...]:
    """A ledger line as the table's cells."""
    moment = datetime.fromtimestamp(line.at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return tuple(
        shown(cell) for cell in (moment, line.operation, line.sku, change(line), line.actor, line.reason, line.summary)
    )


def change(line: LedgerLine) -> str:
    """What the entry changed, before -> after: units, expiry or ownership ("" when it changed no item)."""
    if line.quantity_before is None or line.quantity_after is None:
        return ""
    if line.kind == CONSUMABLE:
        return f"{line.quantity_before} -> {line.quantity_after}"
    if line.kind == PERMANENT:
        owned = ("owned" if quantity else "not owned" for quantity in (line.quantity_before, line.quantity_after))
        return " -> ".join(owned)
    if line.kind == TIME_LIMITED:
        ends = (_until(ms) for ms in (line.expires_before_ms, line.expires_after_ms))
        return " -> ".join(ends)
    return ""


def _until(ms: int | None) -> str:
    if ms is None:
        return "not held"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("until %Y-%m-%d %H:%M")


def shown(text: str) -> str:
    """Text as one safe line: control characters escaped (`\\n`, `\\x1b`)."""
    return _CONTROL.sub(lambda match: json.dumps(match.group())[1:-1], text)


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows under the column titles, each column as wide as its widest cell; the last column is not padded."""
    every = [COLUMNS, *rows]
    widths = [max(len(cells[n]) for cells in every) for n in range(len(COLUMNS) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)), cells[-1]]).rstrip()
        for cells in every
    )

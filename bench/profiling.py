"""Where the service's CPU goes under load: py-spy samples of its event-loop thread, grouped by library.

`python -m bench --profile python` (or `native`) adds a run after the measured ones: h2load drives
CheckEntitlement again while py-spy samples the service, then the samples of the main thread (the one
running the asyncio loop and every handler) are summed up two ways:

- inclusive: the share of busy samples with a frame of the library anywhere on the stack, its callees
  included (the structlog share contains the `write` of each log line);
- self: each sample charged to the innermost frame that belongs to a known library (asyncio included) or to
  the service;
- by_caller: the same, skipping asyncio, so that time spent in the event loop on behalf of a library (redis-py
  awaiting its socket, its timers) is charged to that library. What is left, "event loop", is the loop itself
  and, in `python` mode, the C and Cython code py-spy cannot see into (grpc's aio server above all).

`python` mode samples without stopping the process (`--nonblocking`), so throughput is unchanged, but code
compiled with Cython (grpc) or C (protobuf's upb, asyncio's C parts) has no Python frame and is charged to the
nearest Python caller. `native` mode unwinds C stacks too, which needs the process paused at each sample:
throughput drops by about half during that run, but the shares are what a full picture gives.

py-spy is not a dependency of the project: install it into the venv to use this (`pip install py-spy`).
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.processes import Child

# Checked in order: the first fragment found in a frame's file names its category.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("cygrpc", "grpc"),
    ("grpc/", "grpc"),
    ("redis/", "redis-py"),
    ("hiredis", "redis-py"),
    ("structlog/", "structlog"),
    ("prometheus_client/", "prometheus"),
    ("google/protobuf", "protobuf"),
    ("_message.abi3", "protobuf"),
    ("json/", "json"),
    ("_json.c", "json"),
    ("hashlib", "hashlib"),
    ("_hashopenssl", "hashlib"),
    ("libcrypto", "hashlib"),
    ("server/__main__.py", "entry"),
    ("server/", "service code"),
    ("asyncio/", "asyncio"),
    ("_asynciomodule", "asyncio"),
    ("selectors.py", "asyncio"),
    ("selectmodule", "asyncio"),
    ("runpy", "entry"),
)
EVENT_LOOP = "event loop"
# Categories whose inclusive share says nothing (every sample passes through them).
_FRAMING = frozenset({"entry", "asyncio", "service code"})
# A main-thread sample whose innermost frame is one of these is the loop waiting for work, not working.
_IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "poll ", "select ", "EpollSelector.select")
_FRAME_FILE = re.compile(r"\(([^()]*)\)$")


def executable() -> str | None:
    """The path of py-spy (in the venv or on PATH), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start(pid: int, *, duration_s: float, native: bool, cores: Sequence[int] | None, output: Path) -> Child:
    """Starts py-spy sampling process `pid` for `duration_s`, writing collapsed stacks to `output`.

    Raises:
        RuntimeError: py-spy is not installed.
    """
    binary = executable()
    if binary is None:
        raise RuntimeError("py-spy is not installed: `.venv/bin/pip install py-spy` to profile")
    argv = [
        binary,
        "record",
        f"--pid={pid}",
        f"--duration={max(1, round(duration_s))}",
        "--rate=100",
        "--threads",
        "--format=raw",
        f"--output={output}",
        "--native" if native else "--nonblocking",
    ]
    return Child("py-spy", argv, cores=cores, stdout=None)


def _category(frame: str) -> str | None:
    match = _FRAME_FILE.search(frame)
    where = match.group(1) if match else frame
    for fragment, name in CATEGORIES:
        if fragment in where:
            return name
    return None


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    """Sums py-spy's collapsed stacks of the main thread into shares per library and per function.

    Returns:
        `busy_samples`, `idle_samples`, `inclusive`, `self` and `by_caller` (category -> share of busy
        samples), and `top_self` (the `top` innermost functions with their shares).
    """
    busy = idle = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    by_caller: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "MainThread" not in frames[0]:
            continue
        count = int(count_text)
        frames = frames[1:]
        if frames and frames[-1].startswith(_IDLE_LEAVES):
            idle += count
            continue
        busy += count
        categories = [_category(frame) for frame in frames]
        for name in {c for c in categories if c is not None and c not in _FRAMING}:
            inclusive[name] += count
        innermost = next((c for c in reversed(categories) if c is not None and c != "entry"), "other")
        own[innermost] += count
        caller = next((c for c in reversed(categories) if c not in (None, "entry", "asyncio")), EVENT_LOOP)
        by_caller[caller] += count
        leaves[frames[-1] if frames else "?"] += count

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {name: round(n / busy, 4) for name, n in counter.most_common()} if busy else {}

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "inclusive": shares(inclusive),
        "self": shares(own),
        "by_caller": shares(by_caller),
        "top_self": {name: round(n / busy, 4) for name, n in leaves.most_common(top)} if busy else {},
    }


def render(summary: dict[str, Any]) -> str:
    """The summary as text for the console."""
    lines = [f"main thread: {summary['busy_samples']} busy samples, {summary['idle_samples']} idle"]
    for title in ("inclusive", "self", "by_caller", "top_self"):
        lines.append(f"{title}:")
        lines.extend(f"  {share:6.1%}  {name}" for name, share in summary[title].items())
    return "\n".join(lines)

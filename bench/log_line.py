"""The per-call log line (`core.logs`): CPU per line of the service's JSON logging, against structlog's stock
processors measured in the same process.

Every RPC and every webhook writes one line, so its cost is part of each call's. The baseline is the configuration
`core.logs.configure` had with structlog's own processors (context walk, `TimeStamper`, `format_exc_info`,
`JSONRenderer`) and a lazy `structlog.get_logger` proxy, which write the same bytes (`tests/test_log_lines.py`).
Each is measured in turns (stock, service, stock, service) in one child process pinned to a core, writing its
stderr to a file as a deployed service's is, with the fields of a `CheckEntitlement` line from inside an asyncio
task (whose context the walk goes through); the best of the turns counts, CPU time not wall time.

    python -m bench.log_line [--lines 50000] [--core 1]

The `core` part runs it after its RPC runs, on the load core.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import structlog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The fields `server.rpc.RpcRuntime` logs for a CheckEntitlement answered OK.
RPC_FIELDS: dict[str, Any] = {
    "method": "CheckEntitlement",
    "code": "OK",
    "duration_ms": 0.412,
    "user": "9f86d081884c7d65",
    "project_id": 308077,
    "principal": "bench",
}
TURNS = 3


@dataclasses.dataclass(frozen=True)
class LogLineResult:
    """CPU µs per line, the stock processors and the service's, and their ratio (stock / service)."""

    lines: int
    stock_us: float
    service_us: float

    @property
    def speedup(self) -> float:
        return self.stock_us / self.service_us

    def describe(self) -> str:
        return (
            f"  log line: {self.service_us:.1f} µs of CPU per line, structlog's stock processors {self.stock_us:.1f}"
            f" µs ({self.speedup:.2f}x), {self.lines:,} lines per turn"
        )


def measure(lines: int = 50_000, cores: Sequence[int] | None = None) -> LogLineResult:
    """Runs the measurement in a child process (on `cores` when given) and returns its figures."""
    command = [sys.executable, "-m", "bench.log_line", "--child", "--lines", str(lines)]
    if cores:
        command = ["taskset", "-c", ",".join(str(core) for core in cores), *command]
    with tempfile.TemporaryDirectory(prefix="bench-log-line-") as directory:
        env = {**os.environ, "BENCH_LOG_LINE_FILE": os.path.join(directory, "stderr.log")}
        # This interpreter and fixed arguments, never input.
        output = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout  # noqa: S603
    return LogLineResult(**json.loads(output))


def _stock_configure() -> None:
    """`core.logs.configure("info", json=True)` as it was with structlog's own processors."""
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _per_line_us(log: Any, lines: int) -> float:
    for _ in range(lines // 20):  # warm-up: the logger cached, the second's timestamp text formatted
        log.info("rpc", **RPC_FIELDS)
    started = time.process_time()
    for _ in range(lines):
        log.info("rpc", **RPC_FIELDS)
    return (time.process_time() - started) / lines * 1e6


async def _child(lines: int) -> dict[str, Any]:
    from core import logs  # the tree's logging, in this child only

    stock: list[float] = []
    service: list[float] = []
    for turn in range(TURNS):
        structlog.reset_defaults()
        _stock_configure()
        stock.append(_per_line_us(structlog.get_logger(f"bench.stock.{turn}"), lines))
        structlog.reset_defaults()
        logs.configure("info", json=True)
        service.append(_per_line_us(logs.get_logger(f"bench.service.{turn}"), lines))
    return {"lines": lines, "stock_us": round(min(stock), 2), "service_us": round(min(service), 2)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.log_line", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000, help="lines per turn (default 50000)")
    parser.add_argument("--core", type=int, default=None, help="pin the measuring process to this core")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        # stderr, where the lines go, becomes the file; the figures go to stdout.
        target = os.open(os.environ["BENCH_LOG_LINE_FILE"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(target, 2)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        print(json.dumps(asyncio.run(_child(args.lines))))
        return
    result = measure(args.lines, None if args.core is None else [args.core])
    print(result.describe())


if __name__ == "__main__":
    main()

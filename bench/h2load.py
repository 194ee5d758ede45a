"""h2load as a gRPC load generator: the same pre-encoded request, over and over, on a few HTTP/2 connections.

A unary gRPC call is an HTTP/2 POST whose body is one length-prefixed message (1 flag byte, 0 for
uncompressed, then the 4-byte big-endian length, then the serialized protobuf) with `content-type:
application/grpc` and `te: trailers`. h2load can send exactly that from a file, and costs about 35 µs of CPU
per request where a Python grpc.aio client costs about 160 µs, so it saturates a one-core Python server
without needing the whole other core.

h2load knows nothing of gRPC: it reports a call answered with an error status in the trailers as a
successful HTTP 200. Callers must check the gRPC status separately (`bench.counters`).

Latency percentiles come from h2load's `--log-file`, one line per request of the measured window
(warm-up excluded): start time (µs since the epoch), HTTP status (-1 for a failed stream), duration (µs).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from bench.processes import Child
from bench.report import Latency, Run

_FINISHED = re.compile(r"^finished in ([\d.]+)s, ([\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", re.MULTILINE
)


def executable() -> str | None:
    """The path of h2load, or None when it is not installed."""
    return shutil.which("h2load")


def grpc_frame(message: Message) -> bytes:
    """The body of a unary gRPC request carrying `message`: uncompressed flag, big-endian length, bytes."""
    payload = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


@dataclass(frozen=True)
class Load:
    """How h2load drives the server: `clients` HTTP/2 connections with `streams` calls in flight on each."""

    clients: int
    streams: int

    def describe(self) -> str:
        return f"h2load -c {self.clients} -m {self.streams}"


def run(
    *,
    scenario: str,
    server: str,
    url: str,
    body: bytes,
    headers: Sequence[tuple[str, str]],
    load: Load,
    warmup_s: float,
    duration_s: float,
    cores: Sequence[int] | None,
    workdir: Path,
) -> Run:
    """Runs h2load for `warmup_s` then `duration_s` against `url`, posting `body`, and parses what it saw.

    Args:
        scenario: the label of the measurement (for the report).
        server: "service" or "bare" (for the report).
        url: `http://host:port/package.Service/Method`.
        body: the request body, from `grpc_frame`.
        headers: extra request headers (gRPC's own are added here).
        load: connections and streams.
        warmup_s: seconds of load before the measured window; whole seconds or milliseconds.
        duration_s: the measured window, in seconds.
        cores: where h2load runs (`taskset -c`).
        workdir: where the body file and the per-request log go.

    Raises:
        RuntimeError: h2load is missing, failed, or printed nothing parsable.
    """
    binary = executable()
    if binary is None:
        raise RuntimeError("h2load is not installed (Debian/Ubuntu package nghttp2-client)")
    stem = f"{scenario}-{server}".replace(" ", "_").replace(",", "").replace("/", "_")
    body_path = workdir / f"{stem}.bin"
    body_path.write_bytes(body)
    log_path = workdir / f"{stem}.h2load.log"
    argv = [
        binary,
        f"--clients={load.clients}",
        f"--max-concurrent-streams={load.streams}",
        "--threads=1",
        f"--warm-up-time={int(warmup_s * 1000)}ms",
        f"--duration={int(duration_s * 1000)}ms",
        f"--data={body_path}",
        f"--log-file={log_path}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        *(f"--header={name}: {value}" for name, value in headers),
        url,
    ]
    child = Child(f"h2load ({scenario}, {server})", argv, cores=cores)
    try:
        out, _ = child.process.communicate(timeout=warmup_s + duration_s + 30)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"h2load did not finish within {warmup_s + duration_s + 30:g} s") from exc
    finally:
        child.stop(grace_s=2)
    if child.process.returncode != 0:
        raise RuntimeError(f"h2load exited with code {child.process.returncode}:\n{out[-2000:]}")
    return _parse(scenario, server, load, duration_s, out, log_path)


def _parse(scenario: str, server: str, load: Load, duration_s: float, out: str, log_path: Path) -> Run:
    finished = _FINISHED.search(out)
    requests = _REQUESTS.search(out)
    if finished is None or requests is None:
        raise RuntimeError(f"cannot parse h2load's output:\n{out[-2000:]}")
    done, succeeded = int(requests.group(3)), int(requests.group(4))
    durations: list[float] = []
    non_200 = 0
    for line in log_path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        if fields[1] != "200":
            non_200 += 1
        durations.append(float(fields[2]))
    return Run(
        scenario=scenario,
        server=server,
        generator=load.describe(),
        duration_s=duration_s,
        completed=done,
        failed=max(done - succeeded, non_200),
        qps=done / duration_s,
        latency=Latency.from_micros(durations),
        samples_us=tuple(durations),
    )

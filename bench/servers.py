"""The two servers under test, started as pinned child processes on free loopback ports.

- the service: `python -m server` with its embedded Valkey in a temporary data directory, one API key with
  both scopes (so every call pays for authentication), and JSON log lines to a file, as in production;
- the bare server: `python -m bench.bare`.

Both are started on the server core. The service's Valkey inherits that core from it and is then moved to
wherever the placement says. With `cluster` (`--cluster`), the service uses that Redis Cluster instead of an
embedded Valkey (`bench.stores`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.cluster import RedisCluster

from bench.cores import cpu_list, pin_process
from bench.processes import Child, wait_until
from bench.stores import BenchCluster
from server.auth import hash_key

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 30.0

#: The project the benchmarks' service serves as its default (the simulator's test project).
BENCH_PROJECT = 308077


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which cores each part runs on (all None when the machine has a single core: nothing is pinned)."""

    server: tuple[int, ...] | None
    load: tuple[int, ...] | None
    valkey: tuple[int, ...] | None

    @classmethod
    def for_cores(cls, server_core: int, load_core: int, valkey_core: int | None) -> Placement:
        """The server alone on `server_core`; load, orchestration and Valkey (unless `valkey_core` says
        otherwise) on `load_core`. Nothing is pinned on a machine with a single core.

        Raises:
            SystemExit: the two cores are the same or not available to this process.
        """
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return cls(None, None, None)
        if server_core == load_core or not {server_core, load_core} <= set(available):
            raise SystemExit(f"the server core and the load core must be two different cores among {available}")
        valkey = load_core if valkey_core is None else valkey_core
        return cls((server_core,), (load_core,), (valkey,))

    def describe(self) -> dict[str, str]:
        return {
            "server_under_test": cpu_list(self.server),
            "load_generators_and_orchestrator": cpu_list(self.load),
            "embedded_valkey": cpu_list(self.valkey),
        }


@dataclasses.dataclass(frozen=True)
class ServiceEndpoints:
    """Where the started service listens, and its store: its embedded Valkey, or the cluster it was given."""

    target: str
    metrics_url: str
    #: The embedded Valkey's pid (None on a cluster).
    valkey_pid: int | None
    #: The embedded Valkey's unix socket (unused on a cluster).
    redis_socket: Path
    cluster: BenchCluster | None = None

    @property
    def redis_url(self) -> str:
        """The store's URL, as the gateway would be given it (a seed node on a cluster)."""
        return self.cluster.url if self.cluster is not None else f"unix://{self.redis_socket}"

    def store_client(self, timeout_s: float = 30.0) -> redis.Redis | RedisCluster:
        """A synchronous client of the service's store, for seeding data and reading INFO behind its back."""
        if self.cluster is not None:
            return self.cluster.client(timeout_s)
        return redis.Redis(unix_socket_path=str(self.redis_socket), socket_timeout=timeout_s)

    def store_io(self) -> dict[str, int]:
        """The store's command and client-socket-read counters so far (INFO stats; summed over the primaries)."""
        if self.cluster is not None:
            return self.cluster.store_io()
        client = redis.Redis(unix_socket_path=str(self.redis_socket), socket_timeout=5.0)
        try:
            stats = client.info("stats")
        finally:
            client.close()
        return {"commands": int(stats["total_commands_processed"]), "reads": int(stats["total_reads_processed"])}


def _read_line(child: Child, prefix: str, timeout_s: float) -> str:
    """The rest of the first line of `child`'s stdout that starts with `prefix`."""
    stream = child.process.stdout
    assert stream is not None
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"{child.name} printed no {prefix!r} line within {timeout_s:g} s")
        ready, _, _ = select.select([stream], [], [], remaining)
        if ready:
            line = stream.readline()
            if not line:
                raise RuntimeError(f"{child.name} exited with code {child.process.wait()} before serving")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


def start_bare(placement: Placement, workdir: Path) -> tuple[Child, str]:
    """Starts `bench.bare` on the server core; returns it and its `host:port`."""
    child = Child(
        "bare server",
        [sys.executable, "-m", "bench.bare", "--port", "0"],
        cores=placement.server,
        log_path=workdir / "bare.log",
        cwd=ROOT,
    )
    try:
        port = _read_line(child, "PORT ", STARTUP_TIMEOUT_S)
    except BaseException:
        child.stop()
        raise
    return child, f"127.0.0.1:{port}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process could still take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serving(target: str) -> bool:
    """True once the gRPC health service at `target` answers SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def start_service(
    placement: Placement,
    workdir: Path,
    api_key: str,
    *,
    log_level: str = "info",
    extra_env: Mapping[str, str] | None = None,
    name: str = "service",
    root: Path | None = None,
    cluster: BenchCluster | None = None,
) -> tuple[Child, ServiceEndpoints]:
    """Starts `python -m server` on the server core with embedded Valkey (or on `cluster`), one API key and free
    ports.

    Args:
        placement: the cores; Valkey is moved to `placement.valkey` once started.
        workdir: holds the data directory and the service's log file.
        api_key: the clear key; the service is configured with its hash and both scopes.
        log_level: the service's ENTITLEMENTS_LOG_LEVEL ("info" writes one line per RPC).
        extra_env: more settings (e.g. ENTITLEMENTS_MAX_ORDER_TRACKERS), over the ones above.
        name: what to call the process in messages.
        root: run the service of another checkout of the project (its `server/`, `core/`, ... and generated
            client) with this virtualenv, to compare two versions in one run; None for this tree.
        cluster: a started Redis Cluster to use instead of an embedded Valkey.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "REDIS_"))}
    # Ports chosen here rather than 0: the service announces the ports it bound only in an info log line,
    # which a higher log level leaves out.
    grpc_port, metrics_port = free_port(), free_port()
    env.update(
        ENTITLEMENTS_API_KEYS=f"bench:{hash_key(api_key)}:read,write",
        ENTITLEMENTS_XSOLLA_PROJECT_ID=str(BENCH_PROJECT),
        ENTITLEMENTS_GRPC_PORT=str(grpc_port),
        ENTITLEMENTS_METRICS_PORT=str(metrics_port),
        ENTITLEMENTS_CONSOLE_ENABLED="false",
        ENTITLEMENTS_HTTP_ENABLED="false",
        ENTITLEMENTS_DATA_DIR=str(workdir / "data"),
        ENTITLEMENTS_LOG_JSON="1",
        ENTITLEMENTS_LOG_LEVEL=log_level,
        ENTITLEMENTS_SHUTDOWN_GRACE_S="2",
        # The benchmark's one API key opens every stream.
        ENTITLEMENTS_ORDER_STREAMS_PER_KEY="1000000",
    )
    if cluster is not None:
        env.update(cluster.env())
    env.update(extra_env or {})
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "clients" / "python")])
    target = f"127.0.0.1:{grpc_port}"
    child = Child(
        name,
        [sys.executable, "-m", "server"],
        cores=placement.server,
        env=env,
        stdout=subprocess.DEVNULL,
        log_path=workdir / "service.log",
        cwd=root or ROOT,
    )
    try:
        wait_until(lambda: _serving(target), STARTUP_TIMEOUT_S, "the service to serve", child=child)
        valkey = child.adopt_descendants() if cluster is None else []
        valkey_pid = valkey[0] if valkey else None
        if valkey_pid is not None and placement.valkey is not None:
            pin_process(valkey_pid, placement.valkey)
    except BaseException:
        child.stop()
        raise
    return child, ServiceEndpoints(
        target=target,
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        valkey_pid=valkey_pid,
        redis_socket=workdir / "data" / "valkey.sock",
        cluster=cluster,
    )


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, leaving out the per-RPC lines that would bury the cause of a failure."""
    with contextlib.suppress(OSError):
        kept = [line for line in path.read_text().splitlines() if '"event": "rpc"' not in line]
        return "\n".join(kept[-lines:])
    return "(none)"

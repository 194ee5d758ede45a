"""Several service replicas and webhook gateways as real processes on one Redis Cluster.

`Stack` starts `python -m server` and `python -m webhook_gateway` as deployed, each in a process of its own
(`bench.processes.Child`: its own process group, stopped whatever happens), all on the same cluster
(`REDIS_URL` a seed node, `REDIS_CLUSTER=true`) with the same number of event partitions, so the streams spread
over the primaries. Each service consumes every partition (their consumers share the group) and serves gRPC on a
port of its own; each gateway serves the webhook path on a port of its own. The processes log JSON lines to one
file each, which `traceback_lines` reads back.

Used by `bench.failover` and by the tests that run several processes on a cluster
(tests/test_cluster_processes.py, tests/test_cluster_failover.py). Nothing is pinned to a core: what these
figures measure is correctness and unavailability, not throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.processes import Child
from bench.servers import BENCH_PROJECT, ROOT, free_port
from server.auth import hash_key

#: How long a process may take to serve (several start at once on a busy machine).
STARTUP_TIMEOUT_S = 90.0


@dataclasses.dataclass(frozen=True)
class StackSettings:
    """What the processes are started with.

    Attributes:
        services, gateways: how many of each.
        partitions: `GATEWAY_EVENT_PARTITIONS` and `ENTITLEMENTS_EVENT_PARTITIONS`.
        durability: the gateways' `GATEWAY_DURABILITY` (`replicas`: the 204 waits until a replica holds the event).
        durability_timeout_ms: the gateways' `GATEWAY_DURABILITY_TIMEOUT_MS`.
        claim_idle_s: the services' `ENTITLEMENTS_CONSUMER_CLAIM_IDLE_S`.
        log_level: both processes' log level.
        extra_env: more variables for every process.
    """

    services: int = 2
    gateways: int = 2
    partitions: int = 6
    durability: str = "replicas"
    durability_timeout_ms: int = 1000
    claim_idle_s: float = 5.0
    log_level: str = "info"
    extra_env: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Process:
    """One started process: what it is, where it answers, its log file."""

    name: str
    child: Child
    address: str
    metrics_url: str
    log_path: Path

    @property
    def running(self) -> bool:
        return self.child.running()


class Stack:
    """The services and gateways of `settings` on the cluster whose seed is `redis_url`.

    Args:
        redis_url: a node of the cluster.
        workdir: the processes' log files.
        settings: how many processes, and their settings.
    """

    def __init__(self, redis_url: str, workdir: Path, settings: StackSettings | None = None) -> None:
        self.redis_url = redis_url
        self.workdir = workdir
        self.settings = settings or StackSettings()
        self.project_id = BENCH_PROJECT
        #: The webhook secret of the project (every gateway verifies with it).
        self.secret = secrets.token_hex(16)
        #: A clear API key with the read and write scopes on every service.
        self.api_key = secrets.token_hex(16)
        self.services: list[Process] = []
        self.gateways: list[Process] = []

    @property
    def processes(self) -> list[Process]:
        return [*self.services, *self.gateways]

    async def start(self) -> None:
        """Starts every process at once, then waits until each serves (gRPC health SERVING; `/readyz` 200).

        Raises:
            RuntimeError: a process exited or did not serve within `STARTUP_TIMEOUT_S` (its log's last lines in
                the message); every process started is stopped then.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for number in range(self.settings.services):
                self.services.append(self._start_service(f"service-{number}"))
            for number in range(self.settings.gateways):
                self.gateways.append(self._start_gateway(f"gateway-{number}"))
            async with aiohttp.ClientSession() as http:
                await asyncio.gather(
                    *(_until_ready(process, _service_serving) for process in self.services),
                    *(_until_ready(process, lambda p: _gateway_ready(http, p)) for process in self.gateways),
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops every process (SIGTERM, then SIGKILL after a grace period)."""
        for process in reversed(self.processes):
            process.child.stop(grace_s=10.0)

    def traceback_lines(self) -> dict[str, list[str]]:
        """Each process's log lines that carry a traceback (an `exception` field: something failed that the code did
        not expect), and any line that is not JSON (printed outside the logger)."""
        found: dict[str, list[str]] = {}
        for process in self.processes:
            lines: list[str] = []
            with contextlib.suppress(OSError):
                for line in process.log_path.read_text(errors="replace").splitlines():
                    try:
                        record = json.loads(line) if line.strip() else {}
                    except ValueError:
                        record = None
                    if not isinstance(record, dict) or "exception" in record:
                        lines.append(line)
            found[process.name] = lines
        return found

    def _environment(self, **values: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "REDIS_", "GATEWAY_"))}
        env.update(
            REDIS_URL=self.redis_url,
            REDIS_CLUSTER="true",
            ENTITLEMENTS_XSOLLA_PROJECT_ID=str(self.project_id),
        )
        env.update(values)
        env.update(self.settings.extra_env)
        return env

    def _start_service(self, name: str) -> Process:
        grpc_port, metrics_port = free_port(), free_port()
        env = self._environment(
            ENTITLEMENTS_API_KEYS=f"bench:{hash_key(self.api_key)}:read,write",
            ENTITLEMENTS_GRPC_PORT=str(grpc_port),
            ENTITLEMENTS_METRICS_PORT=str(metrics_port),
            ENTITLEMENTS_CONSOLE_ENABLED="false",
            ENTITLEMENTS_HTTP_ENABLED="false",
            ENTITLEMENTS_EVENT_PARTITIONS=str(self.settings.partitions),
            ENTITLEMENTS_CONSUMER_CLAIM_IDLE_S=f"{self.settings.claim_idle_s:g}",
            ENTITLEMENTS_LOG_JSON="1",
            ENTITLEMENTS_LOG_LEVEL=self.settings.log_level,
            ENTITLEMENTS_SHUTDOWN_GRACE_S="2",
            ENTITLEMENTS_ORDER_STREAMS_PER_KEY="100000",
        )
        return self._launch(name, env, f"127.0.0.1:{grpc_port}", metrics_port, "server")

    def _start_gateway(self, name: str) -> Process:
        port, metrics_port = free_port(), free_port()
        env = self._environment(
            GATEWAY_XSOLLA_SECRET=self.secret,
            GATEWAY_PORT=str(port),
            GATEWAY_METRICS_PORT=str(metrics_port),
            GATEWAY_EVENT_PARTITIONS=str(self.settings.partitions),
            GATEWAY_DURABILITY=self.settings.durability,
            GATEWAY_DURABILITY_TIMEOUT_MS=str(self.settings.durability_timeout_ms),
            GATEWAY_LOG_JSON="1",
            GATEWAY_LOG_LEVEL=self.settings.log_level,
            GATEWAY_SHUTDOWN_GRACE_S="2",
        )
        return self._launch(name, env, f"http://127.0.0.1:{port}", metrics_port, "webhook_gateway")

    def _launch(self, name: str, env: dict[str, str], address: str, metrics_port: int, module: str) -> Process:
        log_path = self.workdir / f"{name}.log"
        child = Child(
            name,
            [sys.executable, "-m", module],
            cores=None,
            env=env,
            stdout=subprocess.DEVNULL,
            log_path=log_path,
            cwd=ROOT,
        )
        return Process(name, child, address, f"http://127.0.0.1:{metrics_port}/metrics", log_path)


async def _service_serving(process: Process) -> bool:
    async with grpc.aio.insecure_channel(process.address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _gateway_ready(http: aiohttp.ClientSession, process: Process) -> bool:
    try:
        async with http.get(f"{process.address}/readyz", timeout=aiohttp.ClientTimeout(total=1.0)) as answer:
            return answer.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _until_ready(process: Process, ready: Callable[[Process], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not await ready(process):
        if not process.running:
            raise RuntimeError(f"{process.name} exited with code {process.child.process.returncode}: {_tail(process)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not serve within {STARTUP_TIMEOUT_S:g} s: {_tail(process)}")
        await asyncio.sleep(0.1)


def _tail(process: Process, lines: int = 10) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(process.log_path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"

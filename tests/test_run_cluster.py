"""`make run-cluster` (`python -m tools.devstack --cluster`): the stack on a local Redis Cluster it starts, kept
between runs, and nothing of it left running after Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from entitlements import AsyncEntitlementsClient
from tests.helpers.gateway import PROJECT, ROOT, SECRET, command_env, fixture, send
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

READY_TIMEOUT_S = 90.0
#: The player and item of the fixture's order_paid (a sandbox order: the stack is told to grant those).
WEBHOOK_PLAYER = "a1b2c3d4-0000-4000-8000-019fb6caa51e"
WEBHOOK_SKU = "artifact_centaurs_axe"


@dataclass
class RunningStack:
    """One `python -m tools.devstack --cluster` process and what it printed until it was ready."""

    process: asyncio.subprocess.Process
    lines: list[str]

    def field(self, pattern: str) -> str:
        for line in self.lines:
            if found := re.search(pattern, line):
                return found.group(1)
        raise AssertionError(f"no line matches {pattern!r} in:\n" + "\n".join(self.lines))

    @property
    def grpc_target(self) -> str:
        return self.field(r"gRPC:\s+(\S+)")

    @property
    def webhook_url(self) -> str:
        return self.field(r"webhooks:\s+(\S+)")

    @property
    def node_ports(self) -> list[int]:
        ports: list[int] = []
        for line in self.lines:
            if line.strip().startswith("primary "):
                ports.extend(int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", line))
        return ports


@contextlib.asynccontextmanager
async def run_cluster(folder: Path) -> AsyncIterator[RunningStack]:
    """Starts the stack on the cluster in `folder`, yields it once ready, then sends it SIGINT and waits for it
    to exit (killing its process group only if it does not, so a failing test leaves nothing behind)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.devstack",
        "--cluster",
        f"--cluster-dir={folder}",
        cwd=ROOT,
        env=command_env(
            ENTITLEMENTS_INSECURE_DEV_MODE="1",
            ENTITLEMENTS_XSOLLA_PROJECT_ID=str(PROJECT),
            ENTITLEMENTS_SANDBOX_POLICY="grant",
            ENTITLEMENTS_XSOLLA_WS_ENABLED="false",
            ENTITLEMENTS_RECONCILE_SWEEPER="false",
            ENTITLEMENTS_GRPC_PORT="0",
            ENTITLEMENTS_METRICS_PORT="0",
            ENTITLEMENTS_CONSOLE_ENABLED="false",
            ENTITLEMENTS_HTTP_ENABLED="false",
            ENTITLEMENTS_LOG_JSON="1",
            GATEWAY_XSOLLA_SECRET=SECRET,
            GATEWAY_PORT="0",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = asyncio.ensure_future(process.stderr.read())
    lines: list[str] = []
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):  # a bound on a hang, not a speed goal
            while not lines or not lines[-1].startswith("ready"):
                line = await process.stdout.readline()
                if not line:
                    await process.wait()
                    pytest.fail(f"exited with {process.returncode} before ready:\n{(await stderr).decode()[-3000:]}")
                lines.append(line.decode().rstrip())
        yield RunningStack(process, lines)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(60):
                    lines.extend((await process.stdout.read()).decode().splitlines())
                    await process.wait()
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
                pytest.fail("did not stop within 60 s of SIGINT; it printed:\n" + "\n".join(lines))
        stderr.cancel()


def processes_in(folder: Path) -> list[int]:
    """The processes working in `folder` (each cluster node runs in its node's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.append(int(entry.name))
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_run_cluster_serves_grants_and_webhooks_and_keeps_its_data(tmp_path: Path) -> None:
    """The stack on its cluster grants and checks over gRPC and applies a signed webhook; SIGINT stops every node;
    a second run restarts the same nodes on the same ports, with the data of the first."""
    folder = (tmp_path / "cluster").resolve()
    async with run_cluster(folder) as stack, aiohttp.ClientSession() as http:
        assert any(line.startswith("cluster: a new one") for line in stack.lines), stack.lines
        ports = stack.node_ports
        assert len(ports) == 6, stack.lines
        assert "(6 event partitions)" in stack.field(r"(webhooks:.*)")
        async with AsyncEntitlementsClient(stack.grpc_target) as client:
            granted = await client.grant("player-1", "gold", quantity=3, idempotency_key="run-cluster-1")
            assert granted.entitlement.quantity == 3
            assert (await client.check_entitlement("player-1", "gold")).active
            answer = await send(http, stack.webhook_url, fixture("order_paid_combined"), SECRET)
            assert answer.status == 204, answer

            async def applied() -> bool:
                return (await client.check_entitlement(WEBHOOK_PLAYER, WEBHOOK_SKU)).active

            await eventually(applied, timeout_s=30, what="the webhook's order applied from its stream")
    assert stack.process.returncode == 0, stack.lines
    assert stack.lines[-1].startswith("cluster stopped"), stack.lines
    assert processes_in(folder) == []
    assert not any(listening(port) for port in ports)

    async with run_cluster(folder) as again:
        assert any("restarted on their ports, with their data" in line for line in again.lines), again.lines
        assert sorted(again.node_ports) == sorted(ports)
        async with AsyncEntitlementsClient(again.grpc_target) as client:
            kept = await client.check_entitlement("player-1", "gold")
            assert kept.active
            assert kept.entitlement.quantity == 3
            assert (await client.check_entitlement(WEBHOOK_PLAYER, WEBHOOK_SKU)).active
    assert again.process.returncode == 0, again.lines
    assert processes_in(folder) == []


async def test_run_cluster_refuses_a_folder_in_use_and_sets_aside_a_cluster_whose_port_is_taken(
    tmp_path: Path,
) -> None:
    """A second run on a folder another run holds, or with REDIS_URL set, is one line on stderr and exit 2, and
    starts nothing; a run whose recorded port is taken sets the old nodes aside and starts a new cluster."""
    folder = (tmp_path / "cluster").resolve()
    async with run_cluster(folder) as first:
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.devstack",
            "--cluster",
            f"--cluster-dir={folder}",
            cwd=ROOT,
            env=command_env(ENTITLEMENTS_INSECURE_DEV_MODE="1", GATEWAY_XSOLLA_SECRET=SECRET),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await second.communicate()
        assert second.returncode == 2
        assert "in use by another `make run-cluster`" in err.decode()
    with_url = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.devstack",
        "--cluster",
        f"--cluster-dir={tmp_path / 'other'}",
        cwd=ROOT,
        env=command_env(ENTITLEMENTS_INSECURE_DEV_MODE="1", GATEWAY_XSOLLA_SECRET=SECRET, REDIS_URL="redis://x"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await with_url.communicate()
    assert with_url.returncode == 2
    assert "REDIS_URL is set" in err.decode()
    assert not (tmp_path / "other").exists()

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", first.node_ports[0]))
        squatter.listen()
        async with run_cluster(folder) as moved:
            assert any("is not reused: one of its ports" in line for line in moved.lines), moved.lines
            assert any(line.startswith("cluster: a new one") for line in moved.lines), moved.lines
            assert first.node_ports[0] not in moved.node_ports
    assert (folder / "previous" / "node0" / "nodes.conf").is_file()
    assert processes_in(folder) == []

"""Valkey servers configured for a case, on loopback TCP ports: with or without an append-only file, a replica of
another (attached over TCP with `replicaof`), or a cluster of one node. A replica can be stopped with SIGSTOP
(`Valkey.pause`), so that it acknowledges nothing, and resumed.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import redis.asyncio as aioredis

from server.embedded import server_binary
from tests.helpers.waiting import eventually


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Valkey:
    """A valkey-server on a loopback TCP port, configured for the case: append-only file or not, replica of
    another or not."""

    def __init__(
        self,
        data_dir: Path,
        *,
        aof: bool,
        appendfsync: str = "always",
        replica_of: int | None = None,
        cluster: bool = False,
    ):
        self.data_dir = data_dir
        self._cluster = cluster
        self.port = _free_port()
        self._aof = aof
        self._appendfsync = appendfsync
        self._replica_of = replica_of
        self.process: asyncio.subprocess.Process | None = None
        self.client = aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"dir {self.data_dir}",
            f"port {self.port}",
            "bind 127.0.0.1",
            f"appendonly {'yes' if self._aof else 'no'}",
            f"appendfsync {self._appendfsync}",
            'save ""',
            "daemonize no",
            "loglevel warning",
            f"logfile {self.data_dir / 'valkey.log'}",
        ]
        if self._replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {self._replica_of}")
        if self._cluster:
            # The bus port is the client port + 10000 unless set: past 65535 for a high free port.
            lines += [
                "cluster-enabled yes",
                f"cluster-port {_free_port()}",
                f"cluster-config-file {self.data_dir / 'nodes.conf'}",
            ]
        config = self.data_dir / "valkey.conf"
        config.write_text("\n".join(lines) + "\n")
        self.process = await asyncio.create_subprocess_exec(
            server_binary(), str(config), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )

        async def answers() -> bool:
            try:
                return bool(await self.client.ping())
            except (aioredis.RedisError, OSError):
                return False

        await eventually(answers, what=f"valkey on port {self.port} to answer")
        if self._replica_of is not None:

            async def linked() -> bool:
                info = await self.client.info("replication")
                return info.get("master_link_status") == "up"

            await eventually(linked, what="the replica's link to its primary")
        if self._cluster:
            # A cluster of this one node, holding every slot.
            await self.client.cluster("ADDSLOTSRANGE", "0", "16383")

            async def serving() -> bool:
                info = await self.client.cluster("INFO")
                return bool(info["cluster_state"] == "ok")

            await eventually(serving, what="the cluster to serve")

    def pause(self) -> None:
        """Stops the process (SIGSTOP): it holds its connections and answers nothing until `resume`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Lets a paused process run again (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        await self.client.aclose()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped replica must run to take SIGTERM
            self.process.terminate()
            await self.process.wait()

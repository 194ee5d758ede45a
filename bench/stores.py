"""The Redis Cluster the parts run against with `--cluster`, instead of the single Valkey each starts.

`BenchCluster` starts a `tools.cluster.LocalCluster` (3 primaries with 1 replica each, the same Valkey binary as
the single server) in the part's scratch directory, moves every node to the Valkey core (where the single server
runs in the other mode), and stops it at the end. The service and the gateway reach it as a deployment does:
`REDIS_URL` names a seed node, `REDIS_CLUSTER=true`, and the events spread over `PARTITIONS` partitions so that
every primary holds some of the streams.

    with BenchCluster(workdir, placement.valkey, appendfsync="everysec") as cluster:
        start_service(..., cluster=cluster)
        cluster.store_io()   # INFO stats summed over the primaries

Start it from the main thread (the nodes get a parent-death signal from the thread that starts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis
from redis.cluster import RedisCluster

from bench.cores import pin_process
from tools.cluster import LocalCluster

#: Event partitions on the cluster: two per primary, so that each primary holds streams.
PARTITIONS = 6


class BenchCluster:
    """A local Redis Cluster for one part, its nodes on `cores`.

    Args:
        workdir: the nodes' folders go under `workdir / "cluster"`.
        cores: where the nodes run (None: anywhere).
        appendfsync: the nodes' `appendfsync`, the same as the single server's in the part.
    """

    def __init__(self, workdir: Path, cores: Sequence[int] | None, *, appendfsync: str) -> None:
        self.cluster = LocalCluster(workdir / "cluster", appendfsync=appendfsync)
        self.cores = cores
        self.appendfsync = appendfsync

    def __enter__(self) -> BenchCluster:
        self.cluster.start()
        try:
            if self.cores:
                for node in self.cluster.nodes:
                    if node.process is not None:
                        pin_process(node.process.pid, self.cores)
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.cluster.stop()

    @property
    def url(self) -> str:
        """A seed node's URL."""
        return self.cluster.url

    @property
    def pids(self) -> list[int]:
        return [node.process.pid for node in self.cluster.nodes if node.process is not None]

    def env(self) -> dict[str, str]:
        """The settings that point the service and the gateway at the cluster."""
        return {
            "REDIS_URL": self.url,
            "REDIS_CLUSTER": "true",
            "ENTITLEMENTS_EVENT_PARTITIONS": str(PARTITIONS),
            "GATEWAY_EVENT_PARTITIONS": str(PARTITIONS),
        }

    def client(self, timeout_s: float = 30.0) -> RedisCluster:
        """A synchronous cluster client (for seeding data behind the service's back)."""
        return RedisCluster.from_url(self.url, socket_timeout=timeout_s)

    def store_io(self) -> dict[str, int]:
        """Commands processed and client-socket reads so far, summed over the primaries (INFO stats)."""
        totals = {"commands": 0, "reads": 0}
        for node in self.cluster.primaries():
            client: redis.Redis = node.client(timeout_s=5.0)
            try:
                stats = client.info("stats")
            finally:
                client.close()
            totals["commands"] += int(stats["total_commands_processed"])
            totals["reads"] += int(stats["total_reads_processed"])
        return totals

    def describe(self) -> str:
        masters, replicas = self.cluster.masters, self.cluster.replicas
        return (
            f"local Redis Cluster, {masters} primaries x {replicas} replica, appendfsync {self.appendfsync}, "
            f"{PARTITIONS} event partitions"
        )

"""A local Redis Cluster from the embedded Valkey binary: for the tests, the benchmarks and `make run-cluster`.

`LocalCluster` starts `masters` primaries with `replicas` replicas each, every node a valkey-server in cluster
mode on a free loopback port of its own, in its own folder under `base_dir`, and joins them with
`valkey-cli --cluster create` (shipped in the same wheel as the server). It is ready when every node says
`cluster_state:ok`, every node sees the same slot map, and every replica's link to its primary is up: a replica
can take over only once it is in sync, so a test may kill a primary only after `start` returned.

Two details that cost time when found the hard way:
- each node also listens on its port + 10000 (the cluster bus), so ports are chosen below 55536 with the bus port
  free too;
- the servers are started with a parent-death signal from the thread that calls `start` (Linux sends it when
  that *thread* ends): call it from the main thread or the event loop's, never from a worker thread.

The methods that wait are synchronous (they are short, and a session-wide cluster outlives any one event loop);
`wait_failover` has an async twin for tests that must keep their loop running while a replica takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from server.embedded import die_with_parent, server_binary

#: The cluster bus listens on the node's port + this.
BUS_OFFSET = 10000
_HIGHEST_PORT = 65535 - BUS_OFFSET


@dataclass
class Node:
    """One valkey-server of the cluster."""

    name: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    #: The slot ranges it served when it was last killed (empty for a replica).
    slots: list[tuple[int, int]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, timeout_s: float = 2.0) -> redis.Redis:
        """A plain client on this node alone (cluster redirections not followed)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            return dict(client.info(section))

    def cluster_info(self) -> dict[str, str]:
        with self.client() as client:
            return {str(k): str(v) for k, v in client.cluster("INFO").items()}


class LocalCluster:
    """A Redis Cluster of `masters` primaries with `replicas` replicas each on loopback ports.

    Args:
        base_dir: each node's folder (AOF, nodes.conf, log) is created under it.
        node_timeout_ms: `cluster-node-timeout`: how long a primary may be unreachable before its replica is
            promoted (a failover takes about twice this).
        appendfsync: the nodes' `appendfsync` policy (each keeps an append-only file).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        appendfsync: str = "always",
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries")
        self.base_dir = base_dir.resolve()
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.nodes: list[Node] = []

    @property
    def url(self) -> str:
        """A redis-py URL of one node, a seed from which a cluster client discovers the others."""
        seed = next((node for node in self.nodes if node.running), None)
        if seed is None:
            raise RuntimeError("the cluster is not running")
        return f"redis://{seed.address}/0"

    @property
    def seeds(self) -> list[str]:
        """Every node's host:port (for a client given several seeds)."""
        return [node.address for node in self.nodes]

    # --- starting and stopping -----------------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> None:
        """Starts the nodes, joins them into a cluster and waits until it serves every slot with every replica in
        sync.

        Raises:
            RuntimeError: a node did not start, or the cluster was not ready within `timeout_s`.
        """
        count = self.masters * (1 + self.replicas)
        ports = free_cluster_ports(count)
        self.nodes = [Node(f"node{i}", port, self.base_dir / f"node{i}") for i, port in enumerate(ports)]
        self._run_nodes(timeout_s, create=True)

    def resume(self, ports: Sequence[int], timeout_s: float = 60.0) -> None:
        """Starts again, on the ports they had, the nodes of a cluster created before in `base_dir` (stopped, not
        removed): each node's nodes.conf remembers the cluster and its append-only file the data, so they rejoin
        without `--cluster create`. Returns once the cluster is healthy, as `start` does.

        Raises:
            ValueError: `ports` is not one port per node.
            RuntimeError: a node did not start (its folder is not a node's, or a port is taken), or the cluster
                was not healthy within `timeout_s`.
        """
        count = self.masters * (1 + self.replicas)
        if len(ports) != count:
            raise ValueError(f"{count} nodes need {count} ports, not {len(ports)}")
        self.nodes = [Node(f"node{i}", port, self.base_dir / f"node{i}") for i, port in enumerate(ports)]
        missing = [node.name for node in self.nodes if not (node.data_dir / "nodes.conf").is_file()]
        if missing:
            raise RuntimeError(f"no nodes.conf in {', '.join(missing)} under {self.base_dir}: not a cluster's folder")
        self._run_nodes(timeout_s, create=False)

    def _run_nodes(self, timeout_s: float, *, create: bool) -> None:
        """Starts every node of `self.nodes`, waits until each answers, joins them (`create`: a new cluster; else
        they rejoin as their nodes.conf says) and waits until the cluster is healthy; stops them all on failure."""
        try:
            for node in self.nodes:
                self._launch(node)
            deadline = time.monotonic() + timeout_s
            for node in self.nodes:
                _wait(functools.partial(_pings, node), deadline, f"{node.address} to answer")
            if create:
                self._create(deadline)
            self.wait_healthy(timeout_s=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops every node (SIGTERM, then SIGKILL after 10 s). The folders are left for the caller."""
        for node in self.nodes:
            _terminate(node)

    def kill(self, node: Node) -> None:
        """Kills one node abruptly (SIGKILL), as a crash of its host would; remembers the slots it served."""
        node.slots = _slots_of(node) if node.running else []
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def restart(self, node: Node, timeout_s: float = 20.0) -> None:
        """Starts a node that was killed or stopped again, on its folder (it rejoins as its nodes.conf says: a
        former primary whose replica took over comes back as that replica's replica)."""
        if node.running:
            raise RuntimeError(f"{node.address} is still running")
        self._launch(node)
        _wait(lambda: _pings(node), time.monotonic() + timeout_s, f"{node.address} to answer")

    # --- what the cluster looks like -----------------------------------------------------------------------------

    def primaries(self) -> list[Node]:
        """The running nodes that are primaries now (after a failover, a former replica is among them)."""
        return [node for node in self.nodes if node.running and _role(node) == "master"]

    def replicas_of(self, primary: Node) -> list[Node]:
        """The running replicas whose link to `primary` is up."""
        found = []
        for node in self.nodes:
            if node is primary or not node.running:
                continue
            info = node.info("replication")
            if info.get("role") == "slave" and int(str(info.get("master_port", 0))) == primary.port:
                found.append(node)
        return found

    def primary_for(self, key: str | bytes) -> Node:
        """The running primary that serves `key`'s slot now."""
        port = self.slot_owner(key_slot(key.encode() if isinstance(key, str) else key))
        return next(node for node in self.nodes if node.port == port)

    def slot_owner(self, slot: int) -> int:
        """The port of the primary that serves `slot`, as the first running node that answers says."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(redis.RedisError, OSError):
                    return _slot_owner(node, slot)
        raise RuntimeError("no node of the cluster is running")

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Waits until every running node serves the whole slot map (`cluster_state:ok`) and agrees on who owns
        each slot, and every running replica is in sync with its primary."""
        deadline = time.monotonic() + timeout_s
        running = [node for node in self.nodes if node.running]
        for node in running:
            _wait(functools.partial(_serves, node), deadline, f"{node.address} to serve the cluster")
        _wait(lambda: len({_slot_map(node) for node in running}) == 1, deadline, "the nodes to agree on the slots")
        for node in running:
            _wait(functools.partial(_in_sync, node), deadline, f"{node.address}'s replication link")

    def wait_failover(self, killed: Node, timeout_s: float = 30.0) -> Node:
        """After `kill(killed)` of a primary: waits until another node serves its slots and every running node says
        `cluster_state:ok`, and returns the node that took over."""
        if not killed.slots:
            raise ValueError(f"{killed.address} served no slots when it was killed")
        deadline = time.monotonic() + timeout_s
        slot = killed.slots[0][0]

        def taken_over() -> bool:
            port = self.slot_owner(slot)
            if port == killed.port:
                return False
            return all(node.cluster_info().get("cluster_state") == "ok" for node in self.nodes if node.running)

        _wait(taken_over, deadline, f"a replica of {killed.address} to take over")
        return next(node for node in self.nodes if node.port == self.slot_owner(slot))

    async def wait_failover_async(self, killed: Node, timeout_s: float = 30.0) -> Node:
        """`wait_failover` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_failover, killed, timeout_s)

    def flush(self) -> None:
        """Deletes every key on every primary (between tests sharing one cluster), then waits until the replicas
        have applied it."""
        for node in self.primaries():
            with node.client() as client:
                client.flushall()
                client.execute_command("WAIT", len(self.replicas_of(node)), 2000)

    # --- internals -----------------------------------------------------------------------------------------------

    def _launch(self, node: Node) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        config = node.data_dir / "valkey.conf"
        config.write_text(
            "\n".join(
                [
                    f"dir {node.data_dir}",
                    f"port {node.port}",
                    "bind 127.0.0.1",
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    f"cluster-node-timeout {self.node_timeout_ms}",
                    # A replica may take over whatever its last contact with its primary (tests kill primaries
                    # at will), and a cluster with a slot down still serves the others.
                    "cluster-replica-validity-factor 0",
                    "cluster-require-full-coverage no",
                    "cluster-allow-reads-when-down no",
                    "appendonly yes",
                    f"appendfsync {self.appendfsync}",
                    'save ""',
                    "daemonize no",
                    "protected-mode no",
                    "loglevel warning",
                    "logfile valkey.log",
                ]
            )
            + "\n"
        )
        node.process = subprocess.Popen(  # noqa: S603 - the shipped server binary and a file we wrote
            [*die_with_parent(), server_binary(), str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _create(self, deadline: float) -> None:
        cli = str(Path(server_binary()).with_name("valkey-cli"))
        command = [cli, "--cluster", "create", *self.seeds, "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        try:
            done = subprocess.run(  # noqa: S603 - the shipped valkey-cli and our own node addresses
                command, capture_output=True, timeout=max(1.0, deadline - time.monotonic()), check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("valkey-cli --cluster create did not finish in time") from exc
        if done.returncode != 0:
            raise RuntimeError(f"valkey-cli --cluster create failed: {done.stdout.decode()[-500:]}")


def free_cluster_ports(count: int) -> list[int]:
    """`count` free loopback ports below 55536 whose cluster-bus ports (+10000) are free too."""
    chosen: list[int] = []
    held: list[socket.socket] = []
    try:
        for _ in range(1000):
            if len(chosen) == count:
                return chosen
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            held.append(probe)  # held until every port is chosen, so none is chosen twice
            if port > _HIGHEST_PORT:
                continue
            bus = socket.socket()
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                bus.close()
                continue
            held.append(bus)
            chosen.append(port)
        raise RuntimeError(f"found no {count} free ports below {_HIGHEST_PORT + 1} with free bus ports")
    finally:
        for held_socket in held:
            held_socket.close()


def cluster_ports_free(ports: Sequence[int]) -> bool:
    """Whether every port of `ports` and its cluster-bus port (+10000) can be bound on loopback now."""
    for port in ports:
        for candidate in (port, port + BUS_OFFSET):
            with socket.socket() as probe:
                # As the server binds (its own connections' TIME_WAIT does not hold the port; a listener does).
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", candidate))
                except OSError:
                    return False
    return True


def _wait(ready: Callable[[], bool], deadline: float, what: str) -> None:
    last: Exception | None = None
    while True:
        try:
            if ready():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(0.05)


def _pings(node: Node) -> bool:
    if not node.running:
        raise RuntimeError(f"valkey-server on {node.address} exited; see {node.data_dir / 'valkey.log'}")
    with node.client(timeout_s=0.5) as client:
        return bool(client.ping())


def _serves(node: Node) -> bool:
    return node.cluster_info().get("cluster_state") == "ok"


def _role(node: Node) -> str:
    return str(node.info("replication").get("role"))


def _in_sync(node: Node) -> bool:
    info = node.info("replication")
    return info.get("role") == "master" or info.get("master_link_status") == "up"


def _slot_map(node: Node) -> tuple[tuple[int, int, int], ...]:
    return tuple(sorted(_slot_ranges(node)))


def _slot_ranges(node: Node) -> list[tuple[int, int, int]]:
    """(first slot, last slot, primary's port) of each range, as `node` sees them."""
    with node.client() as client:
        reply = client.execute_command("CLUSTER", "SLOTS")
    return [(int(start), int(end), int(primary[1])) for start, end, primary, *_ in reply]


def _slot_owner(node: Node, slot: int) -> int:
    return next((port for start, end, port in _slot_ranges(node) if start <= slot <= end), -1)


def _slots_of(node: Node) -> list[tuple[int, int]]:
    return [(start, end) for start, end, port in _slot_ranges(node) if port == node.port]


def _terminate(node: Node) -> None:
    process = node.process
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)  # a stopped node must run to take SIGTERM
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cleanup_folder(base_dir: Path) -> None:
    """Removes the cluster's folders (after `stop`)."""
    shutil.rmtree(base_dir, ignore_errors=True)

"""`make run` and `make run-cluster`: the service and the webhook gateway in one process.

`make run` (`python -m tools.devstack`): on one embedded Redis. The service starts first (with its embedded Valkey
when REDIS_URL is unset); the gateway then shares its Redis client and Prometheus registry, so `/metrics` on the
service's port shows both. Each can also run on its own: `python -m server` and `python -m webhook_gateway`.

`make run-cluster` (`python -m tools.devstack --cluster`): the same stack on a local Redis Cluster of 3 primaries
with 1 replica each (`tools.cluster.LocalCluster`), its nodes in `./var/cluster`, with `REDIS_CLUSTER=true`,
6 event partitions (so the streams spread over the primaries), `GATEWAY_DURABILITY=replicas` and
`ENTITLEMENTS_WRITE_DURABILITY=replicas`, unless the environment says otherwise. Ctrl-C stops the gateway, the
service, then the cluster. A later run starts the same nodes on the same ports (`ports.json`), so the data stays;
when one of those ports is taken, the old nodes are set aside in `./var/cluster/previous` and a new cluster starts
on free ports (docs/CLUSTER.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from core import logs
from core.errors import ConfigError
from core.lifecycle import stop_signals
from providers import xsolla
from server.__main__ import load_settings
from server.app import Service
from server.config import Settings
from server.embedded import server_binary
from tools.cluster import LocalCluster, cluster_ports_free
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings

log = structlog.get_logger("devstack")

#: What `--cluster` sets unless the environment sets it.
CLUSTER_DEFAULTS = {
    "REDIS_CLUSTER": "true",
    "ENTITLEMENTS_EVENT_PARTITIONS": "6",
    "GATEWAY_EVENT_PARTITIONS": "6",
    # Replicas, not the primary's AOF, are what survive a primary's failover.
    "GATEWAY_DURABILITY": "replicas",
    "ENTITLEMENTS_WRITE_DURABILITY": "replicas",
}


async def run(
    settings: Settings,
    gateway_settings: GatewaySettings,
    xsolla_orders: xsolla.OrderSettings,
    xsolla_webhooks: xsolla.WebhookSettings,
    xsolla_catalog: xsolla.CatalogSettings,
    on_ready: Callable[[Service, Gateway], None] | None = None,
) -> None:
    """Runs both until SIGTERM or SIGINT, then stops the gateway first (no new events), then the service.

    `on_ready` is called once both serve.
    """
    if settings.insecure_dev_mode:
        log.warning("INSECURE_DEV_MODE", message="no API keys are checked. Never run this in production.")
    async with stop_signals() as stop:
        service = Service(settings, xsolla_orders, xsolla_catalog=xsolla_catalog)
        await service.start()
        gateway = Gateway(gateway_settings, xsolla_webhooks, redis=service.redis, registry=service.registry)
        try:
            await gateway.start()
        except BaseException:
            await service.stop()
            raise
        endpoints = service.endpoints
        log.info(
            "devstack_ready",
            webhook_url=gateway.url,
            grpc_port=endpoints and endpoints.grpc_port,
            http_port=endpoints and endpoints.http_port,
        )
        if on_ready is not None:
            on_ready(service, gateway)
        await stop.wait()
        await gateway.stop()
        await service.stop()


# --- make run-cluster ---------------------------------------------------------------------------------------------


class ClusterFolder:
    """The folder of `make run-cluster`'s cluster: a folder per node (`node0`... : AOF, nodes.conf, valkey.log),
    `ports.json` (the ports the nodes listen on), and `lock`, held while a run uses them.

    Raises (on entering):
        ConfigError: another run holds the folder.
    """

    RECORD = "ports.json"

    def __init__(self, path: Path, say: Callable[[str], None]) -> None:
        self.path = path.resolve()
        self._say = say
        self._lock: int | None = None

    def __enter__(self) -> ClusterFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{self.path} is in use by another `make run-cluster`") from None
        self._lock = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def start(self) -> LocalCluster:
        """Starts the cluster recorded here on its ports, or a new one (the old nodes set aside) when there is
        none, one of its ports is taken, or it does not come back; returns it healthy."""
        cluster = LocalCluster(self.path)
        ports = self._recorded_ports()
        if ports and cluster_ports_free(ports):
            try:
                cluster.resume(ports)
            except (RuntimeError, ValueError) as exc:
                self._set_aside(f"it did not come back ({exc})")
            else:
                self._say(f"cluster: the nodes of {self.path} restarted on their ports, with their data")
                return cluster
        elif ports:
            self._set_aside(f"one of its ports ({', '.join(map(str, ports))}) or their bus ports is taken")
        cluster.start()
        (self.path / self.RECORD).write_text(json.dumps({"ports": [node.port for node in cluster.nodes]}) + "\n")
        self._say(f"cluster: a new one in {self.path}")
        return cluster

    def _recorded_ports(self) -> list[int]:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            ports = json.loads((self.path / self.RECORD).read_text())["ports"]
            if isinstance(ports, list) and all(isinstance(port, int) for port in ports):
                return ports
        return []

    def _set_aside(self, why: str) -> None:
        previous = self.path / "previous"
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir()
        for entry in sorted(self.path.iterdir()):
            if entry.name.startswith("node") or entry.name == self.RECORD:
                entry.rename(previous / entry.name)
        self._say(f"cluster: the one recorded in {self.path} is not reused: {why}; its nodes are in {previous}")


def describe_cluster(cluster: LocalCluster) -> list[str]:
    """Each primary with its slots and replicas, and how to reach it with valkey-cli."""
    lines = []
    for primary in sorted(cluster.primaries(), key=lambda node: node.port):
        replicas = ", ".join(node.address for node in cluster.replicas_of(primary)) or "none"
        lines.append(f"  primary {primary.address} ({primary.name}), replicas: {replicas}")
    cli = Path(server_binary()).with_name("valkey-cli")
    lines.append(f"  valkey-cli: {cli} -c -p {cluster.nodes[0].port}")
    return lines


def announce(cluster: LocalCluster, say: Callable[[str], None]) -> Callable[[Service, Gateway], None]:
    """What to print once the stack serves: where to reach it."""

    def ready(service: Service, gateway: Gateway) -> None:
        endpoints = service.endpoints
        assert endpoints is not None
        partitions = service.settings.event_partitions
        for line in describe_cluster(cluster):
            say(line)
        say(f"  gRPC:     127.0.0.1:{endpoints.grpc_port}")
        if endpoints.http_port is not None:
            say(f"  HTTP:     http://127.0.0.1:{endpoints.http_port} (JSON, docs/HTTP_API.md)")
        say(f"  webhooks: {gateway.url} ({partitions} event partitions)")
        say(f"  metrics:  http://127.0.0.1:{endpoints.metrics_port}/metrics")
        say("ready; Ctrl-C stops the gateway, the service, then the cluster")

    return ready


def _cluster_env(env: Mapping[str, str]) -> dict[str, str]:
    if env.get("REDIS_URL", "").strip():
        raise ConfigError("REDIS_URL is set: make run-cluster starts its own cluster; unset it")
    return {**CLUSTER_DEFAULTS, **env}


def _say(message: str) -> None:
    print(message, flush=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", action="store_true", help="run on a local Redis Cluster (make run-cluster)")
    parser.add_argument(
        "--cluster-dir", type=Path, default=Path("var/cluster"), help="the cluster's folder (default var/cluster)"
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        env = _cluster_env(os.environ) if args.cluster else dict(os.environ)
        settings, xsolla_orders = load_settings(env)
        settings.check_servable()
        # The gateway's metrics are served by the service's endpoint (shared registry).
        gateway_settings = replace(
            GatewaySettings.from_env(env, named_networks=xsolla.NAMED_NETWORKS), metrics_port=None
        )
        xsolla_webhooks = xsolla.WebhookSettings.from_env(env)
        xsolla_catalog = xsolla.CatalogSettings.from_env(env)
        folder = ClusterFolder(args.cluster_dir, _say) if args.cluster else None
        with folder or _nothing():
            logs.configure(settings.log_level, settings.log_json)
            if folder is None:
                asyncio.run(run(settings, gateway_settings, xsolla_orders, xsolla_webhooks, xsolla_catalog))
                return 0
            try:
                cluster = folder.start()
            except RuntimeError as exc:
                print(f"the local cluster did not start: {exc}", file=sys.stderr)
                return 1
            try:
                settings = replace(settings, redis_url=cluster.url)
                gateway_settings = replace(gateway_settings, redis_url=cluster.url)
                ready = announce(cluster, _say)
                asyncio.run(
                    run(settings, gateway_settings, xsolla_orders, xsolla_webhooks, xsolla_catalog, on_ready=ready)
                )
            finally:
                cluster.stop()
                _say(f"cluster stopped; its data stays in {folder.path}")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

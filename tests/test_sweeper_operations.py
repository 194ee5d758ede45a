"""The sweeper in operation: two service processes on one Redis (one sweeps; killed mid-sweep, the other resumes),
and the operator command `python -m server reconcile` (a table, --dry-run, status, clear one-line failures)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from core.keys import LAYOUT_KEY, EventKeys, sweeper_lease_key
from providers import xsolla as xsolla_provider
from server.__main__ import main
from server.commands.reconcile import reconcile_command, reconcile_status
from server.config import Settings
from server.reconcile import Range, SweeperLease, SweepRecords
from server.store import EntitlementStore
from tests.helpers.events import CATALOG, PARTITIONS, drained
from tests.helpers.services import PROJECT
from tests.helpers.stores import StoreUnderTest, key_count
from tests.helpers.sweeps import API_KEY, SWEPT, pay, reconcile, shop_context
from tests.helpers.waiting import eventually
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def shop(redis_server: StoreUnderTest, simulators: SimulatorFactory) -> AsyncIterator[XsollaSimulator]:
    """The simulator, its webhooks sent to a real gateway on the test's Redis (`tests.helpers.sweeps`)."""
    async with shop_context(redis_server.url, simulators) as sim:
        yield sim


async def stored_events(redis: aioredis.Redis) -> int:
    """How many entries the project's event streams hold."""
    return sum([int(await redis.xlen(EventKeys(PROJECT, n).stream)) for n in range(PARTITIONS)])


async def grants_per_order(redis: aioredis.Redis, users: list[str]) -> tuple[Counter[str], list[int]]:
    """Each order's grant entries on its players' ledgers, and each player's gold."""
    store = EntitlementStore(redis, timeout_s=2.0, idempotency_ttl_ms=1)
    counted: Counter[str] = Counter()
    held = []
    for user in users:
        for entry in await store.ledger(PROJECT, user, 10_000):
            if entry.fields["op"] == "grant":
                counted[entry.fields["order_id"]] += 1
        record = await store.get(PROJECT, user, "gold")
        held.append(record.quantity if record else 0)
    return counted, held


def service_env(store: StoreUnderTest, sim: XsollaSimulator, projects_file: Path) -> dict[str, str]:
    """A service process's environment: the test's Redis, the simulator as Xsolla's admin API, sweeping every
    second at 4 requests a second with a one-second lease."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "REDIS_"))}
    return env | {
        "REDIS_URL": store.url,
        "REDIS_CLUSTER": str(store.cluster).lower(),
        "ENTITLEMENTS_PROJECTS_FILE": str(projects_file),
        "ENTITLEMENTS_XSOLLA_ADMIN_API": sim.store_api_url,
        "ENTITLEMENTS_INSECURE_DEV_MODE": "true",
        "ENTITLEMENTS_GRPC_PORT": "0",
        "ENTITLEMENTS_METRICS_PORT": "0",
        "ENTITLEMENTS_CONSOLE_PORT": "0",
        "ENTITLEMENTS_HTTP_PORT": "0",
        "ENTITLEMENTS_EVENT_PARTITIONS": str(PARTITIONS),
        "ENTITLEMENTS_CONSUMER_BLOCK_MS": "50",
        "ENTITLEMENTS_CONSUMER_CLAIM_IDLE_S": "0.5",
        "ENTITLEMENTS_RECONCILE_INTERVAL_S": "1",
        "ENTITLEMENTS_RECONCILE_LEASE_S": "1",
        "ENTITLEMENTS_RECONCILE_REQUESTS_PER_S": "4",
        "ENTITLEMENTS_RECONCILE_TRACKER": "false",
        "ENTITLEMENTS_LOG_LEVEL": "warning",
    }


@pytest.mark.slow
async def test_two_replicas_sweep_one_at_a_time_and_a_killed_holder_is_taken_over(
    redis_server: StoreUnderTest, redis_client: aioredis.Redis, shop: XsollaSimulator, tmp_path: Path
) -> None:
    """Of two service processes, one sweeps (pages asked once each, in order); killed -9 mid-sweep, the other takes
    the lease once it expires, resumes from the stored offset, and nothing is granted twice."""
    users = [f"player-{n}" for n in range(10)]
    shop.drop_webhooks(share=1.0)
    ids = [await pay(shop, users[n % 10]) for n in range(200)]
    projects_file = tmp_path / "projects.toml"
    projects_file.write_text(
        f'[projects.{PROJECT}]\n  [projects.{PROJECT}.xsolla]\n  webhook_secrets = []\n  api_key = "{API_KEY}"\n'
    )
    env = service_env(redis_server, shop, projects_file)
    replicas = []
    logs = [(tmp_path / f"replica-{n}.log").open("wb") for n in range(2)]
    for log in logs:
        replicas.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", cwd=ROOT, env=env, stdout=log, stderr=log
            )
        )
    records = SweepRecords(redis_client, timeout_s=2.0)
    try:

        async def mid_sweep() -> bool:
            return (await records.progress(PROJECT)).offset >= 30

        await eventually(mid_sweep, timeout_s=30.0, what="the first sweep to pass offset 30")
        raw = await redis_client.get(sweeper_lease_key(PROJECT))
        holder = raw.decode() if isinstance(raw, bytes) else ""
        pid = int(holder.split(":")[1])
        assert pid in {replica.pid for replica in replicas}
        before = list(shop.order_search.calls_for(PROJECT))
        offsets = [call.offset for call in before if call.status == 200]
        assert offsets == list(range(0, 10 * len(offsets), 10)), "two sweepers asked for the same pages"
        killed_at = asyncio.get_running_loop().time()
        os.kill(pid, signal.SIGKILL)

        async def finished() -> bool:
            return (await records.progress(PROJECT)).last_success_ms > 0

        await eventually(finished, timeout_s=60.0, what="the other replica to finish the sweep")
        progress = await records.progress(PROJECT)
        assert progress.holder != holder
        assert int(progress.holder.split(":")[1]) in {r.pid for r in replicas} - {pid}
        after = [call.offset or 0 for call in shop.order_search.calls_for(PROJECT) if call.at > killed_at]
        assert min(after) >= 20, "the survivor started the window again instead of resuming it"
        await drained(redis_client, timeout_s=30.0)
        counted, held = await grants_per_order(redis_client, users)
        assert counted == Counter(dict.fromkeys(ids, 1))
        assert held == [200] * 10
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.send_signal(signal.SIGTERM)
            await replica.wait()
        for log in logs:
            log.close()


def operator_settings(store: StoreUnderTest) -> Settings:
    return Settings(
        **store.settings,
        projects=SWEPT,
        local_catalogs={0: CATALOG},
        event_partitions=PARTITIONS,
        reconcile=reconcile(),
    )


async def run(settings: Settings, sim: XsollaSimulator, **kwargs: object) -> tuple[int, str]:
    """`reconcile_command` with Xsolla's search and catalog pointed at the simulator; (exit status, stdout)."""
    admin = xsolla_provider.CatalogSettings(admin_api=sim.store_api_url, http_timeout_s=5.0)
    registry = CollectorRegistry()
    out = io.StringIO()
    status = await reconcile_command(
        settings,
        xsolla_provider.order_search(admin, registry),
        xsolla_provider.catalog_source(admin, registry),
        PROJECT,
        provider=xsolla_provider.PROVIDER,
        provider_name=xsolla_provider.NAME,
        out=out,
        **kwargs,  # type: ignore[arg-type]
    )
    return status, out.getvalue()


async def test_reconcile_dry_run_prints_the_table_and_changes_nothing_then_a_run_applies(
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    shop: XsollaSimulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dry-run prints each order and what would be done and writes nothing; the run then queues the orders,
    reports the unresolved one, and `status` shows the progress and the report."""
    shop.drop_webhooks(share=1.0)
    paid = [await pay(shop, f"buyer-{n}") for n in range(3)]
    shop.order_search.include_user_id = False
    settings = operator_settings(redis_server)
    # As on a store no process has marked yet: the dry run must not mark it either.
    await redis_client.delete(LAYOUT_KEY)
    before = await key_count(redis_client)
    status, table = await run(settings, shop, dry_run=True)
    assert status == 0
    lines = table.splitlines()
    assert lines[0].split() == ["ORDER", "STATUS", "AT", "XSOLLA", "PLAYER", "ACTION", "NOTE"]
    assert {tuple(line.split()[:4]) for line in lines[1:4]} == {(order, "paid", "-", "unresolved") for order in paid}
    assert "dry run: nothing appended, recorded or reported" in lines[-1]
    assert await key_count(redis_client) == before

    shop.order_search.include_user_id = True
    _, table = await run(settings, shop, dry_run=True)
    assert [line.split()[3] for line in table.splitlines()[1:4]] == ["apply"] * 3
    assert await stored_events(redis_client) == 0
    status, table = await run(settings, shop, span=None)
    assert status == 0
    assert "applied 3" in table.splitlines()[-1]
    assert await stored_events(redis_client) == 3
    _, table = await run(settings, shop)
    assert "already 3" in table.splitlines()[-1]

    out = io.StringIO()
    assert await reconcile_status(settings, PROJECT, out=out) == 0
    shown = out.getvalue()
    assert "lease:            free" in shown
    assert "window under way: none" in shown
    assert "reported orders: 0" in shown
    capsys.readouterr()


async def test_reconcile_fails_in_one_clear_line(
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    shop: XsollaSimulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A held lease, refused credentials and bad arguments each end the command with one line on stderr: exit 1
    for the first two (the refusal kept in the progress), 2 for the arguments."""
    settings = operator_settings(redis_server)
    holder = SweeperLease(redis_client, PROJECT, lease_s=30.0, timeout_s=2.0)
    assert await holder.acquire()
    status, _ = await run(settings, shop, span=Range(0, 1_000))
    err = capsys.readouterr().err.splitlines()
    assert (status, len(err)) == (1, 1)
    assert f"is being swept by {holder.holder}" in err[0]
    await holder.release()

    shop.admin_auth.set_api_key(PROJECT, "rotated")
    status, _ = await run(settings, shop)
    err = capsys.readouterr().err.splitlines()
    assert (status, len(err)) == (1, 1)
    assert "fix its api_key and api_user" in err[0]
    assert "fix its api_key" in (await SweepRecords(redis_client, timeout_s=2.0).progress(PROJECT)).last_error

    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_CLUSTER", str(redis_server.cluster).lower())
    for argv in (
        ["reconcile", "--project", str(PROJECT), "--from", "yesterday", "--until", "2026-01-01T00:00:00Z"],
        ["reconcile", "--project", str(PROJECT), "--from", "2026-01-02T00:00:00Z", "--until", "2026-01-01"],
        ["reconcile", "--project", str(PROJECT), "--from", "2026-01-02T00:00:00Z"],
        ["reconcile", "sweep-all"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        err = capsys.readouterr().err.splitlines()
        assert (exited.value.code, len(err)) == (2, 1), argv
        assert err[0].startswith("python -m server reconcile: ")

"""The key layout's version on a real Valkey: an empty store is marked, a store written by layout 1 (keys without
a project, written here by hand as that version wrote them) is refused by the service, the gateway and the operator
commands with a message that says what to do, and `migrate-layout` moves it into a project, resumably."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core import layout
from core.keys import LAYOUT_KEY, PROJECTS_KEY, EventKeys, UserKeys
from core.layout import LayoutMismatch, check_layout, migrate_layout
from core.projects import Projects
from providers.xsolla import CatalogSettings
from server.__main__ import catalog_command
from server.app import Service
from server.commands.events import dead_letters_command, events_status
from server.commands.ledger import ledger_command
from server.commands.reconcile import reconcile_status
from server.config import Settings
from server.embedded import EmbeddedRedis
from server.errors import StoreUnavailable
from server.store import GrantCommand
from tests.helpers.events import consumer_settings, drained, order_event, store_of
from tests.helpers.gateway import gateway_settings, running_gateway
from tests.helpers.services import PROJECT, ServiceFactory, base_settings
from tests.helpers.stores import StoreUnderTest, all_keys, key_count

ROOT = Path(__file__).resolve().parent.parent
GOLD = '{"k":1,"q":7,"g":1767225600000,"u":1767225600000}'


async def write_layout_1(redis: aioredis.Redis) -> None:
    """A store as layout 1 left it: a player's items and idempotency key (with a TTL), and an unconsumed event."""
    await redis.hset("ent:{u:player-1}:items", "gold", GOLD)
    await redis.zadd("ent:{u:player-1}:skus", {"gold": 0})
    await redis.set("ent:{u:player-1}:idem:k1", "fingerprint", px=3_600_000)
    event = order_event("paid", "9001", "player-1", [("gold", 5)], project_id=0)
    await redis.xadd("ent:{ev:1}:events", {"event": event.SerializeToString(), "raw": b"{}", "type": "x"})
    await redis.set("ent:{ev:1}:dedup:xsolla:0:order:9001:paid", "1", px=3_600_000)


async def run_command(store: StoreUnderTest, *args: str) -> tuple[int, str, str]:
    """`python -m server ARGS` against the test's Redis: (exit status, stdout, stderr)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "REDIS_"))},
        "REDIS_URL": store.url,
        "REDIS_CLUSTER": str(store.cluster).lower(),
        "ENTITLEMENTS_XSOLLA_PROJECT_ID": str(PROJECT),
        "ENTITLEMENTS_EVENT_PARTITIONS": "2",
        "ENTITLEMENTS_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, env=env, cwd=ROOT, stdout=-1, stderr=-1
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return int(process.returncode or 0), out.decode(), err.decode()


async def test_an_empty_store_is_marked_and_a_marked_one_accepted(redis_client: aioredis.Redis) -> None:
    """The first check marks an empty store with layout 2; later checks accept it."""
    await check_layout(redis_client)
    assert await redis_client.get(LAYOUT_KEY) == b"2"
    await check_layout(redis_client)
    assert await redis_client.get(LAYOUT_KEY) == b"2"


async def test_a_check_that_must_not_write_accepts_an_empty_store_and_leaves_it_empty(
    redis_client: aioredis.Redis,
) -> None:
    """`mark=False` (read-only operator commands, a dry run) accepts an empty store without marking it, and still
    refuses a layout-1 one."""
    await check_layout(redis_client, mark=False)
    assert await key_count(redis_client) == 0
    await write_layout_1(redis_client)
    with pytest.raises(LayoutMismatch, match="migrate-layout --project"):
        await check_layout(redis_client, mark=False)


async def test_read_only_operator_commands_leave_an_empty_store_empty(
    redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """The ledger, `events status`, `dead-letters list`, `reconcile status` and `catalog show` read a store no
    process has used yet and write nothing into it, not even the layout's mark; `dead-letters discard` writes, so
    it marks it."""
    settings = Settings(**redis_server.settings, projects=Projects.single(PROJECT))
    out = io.StringIO()
    assert await ledger_command(settings, PROJECT, "nobody", 10, out=out) == 0
    assert await events_status(settings, PROJECT, out=out) == 0
    assert await dead_letters_command(settings, PROJECT, "list", None, out=out) == 0
    assert await reconcile_status(settings, PROJECT, out=out) == 0
    assert await catalog_command(settings, CatalogSettings(), "show", PROJECT, out=out) == 0
    assert await key_count(redis_client) == 0
    assert await dead_letters_command(settings, PROJECT, "discard", None, out=out) == 0
    assert await redis_client.get(LAYOUT_KEY) == b"2"


async def test_another_version_is_refused(redis_client: aioredis.Redis) -> None:
    """A store marked with another layout version is refused, naming the version."""
    await redis_client.set(LAYOUT_KEY, "3")
    with pytest.raises(LayoutMismatch, match="layout '3'"):
        await check_layout(redis_client)


async def test_a_layout_1_store_is_refused_by_the_service_and_the_gateway(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """Neither process starts on a layout-1 store, and the message names the command that migrates it."""
    await write_layout_1(redis_client)
    with pytest.raises(LayoutMismatch, match="migrate-layout --project"):
        await service_factory(redis_url=redis_server.url)
    with pytest.raises(LayoutMismatch, match="migrate-layout --project"):
        async with running_gateway(gateway_settings(redis_url=redis_server.url)):
            pass
    assert await redis_client.get(LAYOUT_KEY) is None  # nothing was written
    assert await redis_client.exists(PROJECTS_KEY) == 0


async def test_migrate_layout_moves_a_layout_1_store_into_a_project(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """The operator commands refuse the old store; migrate-layout moves its keys (TTLs kept) into the project; the
    service then starts, serves the player's items there and applies the event that was waiting."""
    await write_layout_1(redis_client)
    status, _, err = await run_command(redis_server, "events", "status")
    assert status == 1
    assert "key layout 1" in err
    assert "migrate-layout --project" in err

    status, out, err = await run_command(redis_server, "migrate-layout", "--project", str(PROJECT))
    assert status == 0, err
    assert json.loads(out.splitlines()[-1]) == {"project_id": PROJECT, "moved": 5, "layout": "current"}
    keys = UserKeys(PROJECT, "player-1")
    assert await redis_client.hget(keys.items, "gold") == GOLD.encode()
    assert 0 < await redis_client.pttl(keys.idempotency("k1")) <= 3_600_000
    assert await redis_client.xlen(EventKeys(PROJECT, 1).stream) == 1
    assert await all_keys(redis_client, "ent:{u:player-1}*") == []
    assert await all_keys(redis_client, "ent:{ev:1}*") == []
    assert await redis_client.smembers(PROJECTS_KEY) == {str(PROJECT).encode()}

    service = await service_factory(redis_url=redis_server.url, **consumer_settings())
    await drained(redis_client)
    record = await store_of(service).get(PROJECT, "player-1", "gold")
    assert record is not None
    assert record.quantity == 12  # 7 held before, 5 from the event that waited

    status, out, _ = await run_command(redis_server, "migrate-layout", "--project", str(PROJECT))
    assert status == 0
    assert json.loads(out.splitlines()[-1])["moved"] == 0  # already current: nothing to do


async def test_an_interrupted_migration_is_refused_and_finished_by_running_it_again(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration stopped halfway leaves the store refused (naming the project); run again, it moves the rest."""
    await write_layout_1(redis_client)
    monkeypatch.setattr(layout, "SCAN_COUNT", 2)

    def interrupt(moved: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await migrate_layout(redis_client, PROJECT, progress=interrupt)
    assert len(await all_keys(redis_client, "ent:{u:player-1}*") + await all_keys(redis_client, "ent:{ev:1}*")) == 3
    with pytest.raises(LayoutMismatch, match=f"migrate-layout --project {PROJECT}` again"):
        await check_layout(redis_client)
    with pytest.raises(LayoutMismatch, match=f"interrupted: finish it with --project {PROJECT}"):
        await migrate_layout(redis_client, PROJECT + 1)

    result = await migrate_layout(redis_client, PROJECT)
    assert result.moved == 3
    await check_layout(redis_client)
    assert await redis_client.hget(UserKeys(PROJECT, "player-1").items, "gold") == GOLD.encode()
    assert len(await all_keys(redis_client, f"ent:{{u:{PROJECT}:player-1}}*")) == 3
    assert len(await all_keys(redis_client, f"ent:{{ev:{PROJECT}:1}}*")) == 2


async def test_a_service_started_while_redis_is_down_checks_before_its_first_write(
    embedded_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    """Redis down at start: the service starts; once Redis is back as a layout-1 store, writes are refused
    UNAVAILABLE with the layout message and nothing is written."""
    await write_layout_1(redis_client)
    await embedded_server.stop()
    service = Service(base_settings(redis_url=embedded_server.url))
    await service.start()
    try:
        await embedded_server.start()
        with pytest.raises(StoreUnavailable, match="key layout 1"):
            await store_of(service).grant(GrantCommand(PROJECT, "player-1", "gold", 0, 1, 0, "k2"), "test")
        assert await redis_client.exists(UserKeys(PROJECT, "player-1").items) == 0
    finally:
        await service.stop(grace_s=0)

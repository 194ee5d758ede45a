"""Catalogs read from Xsolla's admin catalog API (the simulator's, over real sockets), kept in Redis, used by the
consumer and by Grant; calendar months computed by the Lua grant path on the Redis clock.
"""

from __future__ import annotations

import calendar
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from core.backoff import Backoff
from core.catalogs import CONSUMABLE, PERMANENT, TIME_LIMITED, CatalogRefused, CatalogUnavailable, Period
from core.errors import ConfigError
from core.keys import catalog_key
from core.projects import CATALOG_PROVIDER, Project, Projects
from entitlements.errors import InvalidArgumentError
from entitlements.v1 import entitlements_pb2 as pb
from providers.xsolla import CatalogSettings, WebhookSettings, XsollaCatalog, with_env_credentials
from providers.xsolla.metrics import XsollaMetrics
from server.__main__ import catalog_command
from server.app import Service
from server.catalog import Catalog
from server.config import Settings
from server.deadletters import DeadLetters
from server.store import TIME_LIMITED as STORED_TIME_LIMITED
from server.store import GrantCommand
from tests.helpers.events import FAST, PARTITIONS, dead_letters, drained, order_event, xadd
from tests.helpers.gateway import gateway_settings, running_gateway
from tests.helpers.services import ClientFactory, ServiceFactory
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from xsolla_simulator import XsollaSimulator, admin_bundle, admin_item
from xsolla_simulator.testing import SimulatorFactory, running_simulator

PROJECT = 308077
API_KEY = "admin-api-key-0123456789"
SECRET = "catalog-test-webhook-secret"
DAY_MS = 86_400_000
ITEMS = [
    admin_item("vip_30d", expiration=("day", 30)),
    admin_item("vip_month", expiration=("month", 1)),
    admin_item("gold", consumable=True),
    admin_item("castle"),
]
FAST_TRIES = Backoff(base_s=0.01, cap_s=0.02)


@pytest.fixture
async def sim() -> AsyncIterator[XsollaSimulator]:
    """The simulator for project 308077, whose admin catalog holds ITEMS and opens with API_KEY."""
    async with running_simulator(project_id=PROJECT, webhook_secret=SECRET) as simulator:
        simulator.catalog.set_project(PROJECT, api_key=API_KEY, items=ITEMS)
        yield simulator


def project(**provider: object) -> Project:
    """Project 308077 reading Xsolla's catalog with API_KEY (or the table given)."""
    return Project(
        PROJECT, catalog_source=CATALOG_PROVIDER, provider=MappingProxyType(provider or {"api_key": API_KEY})
    )


def catalog_projects() -> Projects:
    """The service's projects: 308077 only (the default), with Xsolla's catalog."""
    return Projects.single(PROJECT, project())


def source(sim: XsollaSimulator) -> XsollaCatalog:
    """The admin catalog reader pointed at the simulator, with short waits between tries."""
    settings = CatalogSettings(admin_api=sim.store_api_url, http_timeout_s=5.0)
    return XsollaCatalog(settings, XsollaMetrics.on(CollectorRegistry()), backoff=FAST_TRIES)


async def start_service(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, sim: XsollaSimulator, **overrides: object
) -> Service:
    """A consuming service on the test's Valkey whose catalog is the simulator's."""
    return await service_factory(
        redis_url=redis_server.url,
        projects=catalog_projects(),
        event_partitions=PARTITIONS,
        consumer=FAST,
        xsolla_catalog=CatalogSettings(admin_api=sim.store_api_url, http_timeout_s=5.0),
        **overrides,
    )


async def stored_catalog(redis: aioredis.Redis) -> Catalog | None:
    raw = await redis.hget(catalog_key(PROJECT), "catalog")
    return None if raw is None else Catalog.from_json(raw)


def refreshes(service: Service, result: str) -> float:
    return service.registry.get_sample_value("entitlements_catalog_refreshes_total", {"result": result}) or 0.0


# --- Xsolla's admin catalog API ------------------------------------------------------------------------------


async def test_items_map_to_kinds_and_periods_and_bundles_keep_their_contents(sim: XsollaSimulator) -> None:
    """expiration_period makes an item time-limited (months as calendar months), consumable a consumable, neither
    a permanent item; virtual_item_type wins when present; bundles keep their contents."""
    sim.catalog.set_project(
        PROJECT,
        items=[
            *ITEMS,
            admin_item("season_pass", expiration=("year", 1)),
            admin_item("legacy", virtual_item_type="consumable"),
            admin_item("broken", expiration=("fortnight", 1)),
        ],
        bundles=[admin_bundle("starter", [("gold", 100), ("castle", 1)])],
    )
    reader = source(sim)
    try:
        fetched = await reader.fetch(project())
    finally:
        await reader.close()
    kinds = {sku: (item.kind, item.period) for sku, item in fetched.items.items()}
    assert kinds == {
        "vip_30d": (TIME_LIMITED, Period(ms=30 * DAY_MS)),
        "vip_month": (TIME_LIMITED, Period(months=1)),
        "season_pass": (TIME_LIMITED, Period(months=12)),
        "gold": (CONSUMABLE, None),
        "castle": (PERMANENT, None),
        "legacy": (CONSUMABLE, None),
    }
    assert dict(fetched.bundles) == {"starter": (("gold", 100), ("castle", 1))}


@pytest.mark.parametrize("count", [50, 120])
async def test_pages_are_read_until_a_short_page(sim: XsollaSimulator, count: int) -> None:
    """The list has no has_more: pages of 50 are read until one is shorter, so every item is read once."""
    sim.catalog.set_project(PROJECT, items=[admin_item(f"item_{n:03d}") for n in range(count)])
    reader = source(sim)
    try:
        fetched = await reader.fetch(project())
    finally:
        await reader.close()
    assert sorted(fetched.items) == [f"item_{n:03d}" for n in range(count)]
    calls = sim.catalog.calls_for(PROJECT, "virtual_items")
    assert [(c.offset, c.limit) for c in calls] == [(offset, 50) for offset in range(0, count + 1, 50)]


async def test_bad_credentials_are_refused_once_and_never_retried(sim: XsollaSimulator) -> None:
    """401 on a wrong API key is CatalogRefused at the first answer; no second request is made."""
    reader = source(sim)
    try:
        with pytest.raises(CatalogRefused, match="401"):
            await reader.fetch(project(api_key="wrong-key"))
    finally:
        await reader.close()
    assert [c.status for c in sim.catalog.calls_for(PROJECT)] == [401]


async def test_merchant_credentials_open_the_project_catalog(sim: XsollaSimulator) -> None:
    """Basic auth with the merchant id and the merchant's API key reads any of its projects' catalogs."""
    sim.catalog.merchant_api_key = "merchant-key-0123"
    reader = source(sim)
    try:
        fetched = await reader.fetch(project(api_key="merchant-key-0123", api_user=sim.catalog.merchant_id))
    finally:
        await reader.close()
    assert set(fetched.items) == {"vip_30d", "vip_month", "gold", "castle"}


async def test_rate_limit_waits_retry_after_then_reads(sim: XsollaSimulator) -> None:
    """A 429 with Retry-After is waited out and the page asked again; one longer than the cap fails at once."""
    sim.catalog.fail(1, 429, retry_after_s=1)
    reader = source(sim)
    try:
        fetched = await reader.fetch(project())
        assert len(fetched.items) == 4
        assert [c.status for c in sim.catalog.calls_for(PROJECT, "virtual_items")] == [429, 200]
        sim.catalog.fail(1, 429, retry_after_s=3600)
        with pytest.raises(CatalogUnavailable, match="Retry-After 3600"):
            await reader.fetch(project())
    finally:
        await reader.close()


async def test_server_errors_are_retried_then_reported_unavailable(sim: XsollaSimulator) -> None:
    """5xx answers are retried with backoff; three in a row make the read fail as temporary."""
    reader = source(sim)
    try:
        sim.catalog.fail(2, 503)
        assert len((await reader.fetch(project())).items) == 4
        sim.catalog.fail(3, 502)
        with pytest.raises(CatalogUnavailable, match="502"):
            await reader.fetch(project())
    finally:
        await reader.close()


# --- calendar months in the Lua grant path ---------------------------------------------------------------------


def python_add_months(ms: int, months: int) -> int:
    """The reference: the same day and time `months` later in UTC, clamped to the month's last day."""
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return int(moment.replace(year=year, month=month + 1, day=day).timestamp() * 1000) + ms % 1000


async def test_calendar_months_match_the_calendar(redis_client: aioredis.Redis) -> None:
    """kinds.lua's add_months gives Jan 31 + 1 month = Feb 28 (29 in a leap year), keeps the time of day, and
    agrees with Python's calendar on a thousand random dates and spans."""
    lua = (Path(__file__).parent.parent / "server" / "lua" / "kinds.lua").read_text()
    script = redis_client.register_script(lua + "\nreturn add_months(tonumber(ARGV[1]), tonumber(ARGV[2]))")

    def at(text: str) -> int:
        return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)

    edges = [
        ("2025-01-31T10:30:00", 1, "2025-02-28T10:30:00"),
        ("2024-01-31T10:30:00", 1, "2024-02-29T10:30:00"),
        ("2025-01-31T00:00:00", 2, "2025-03-31T00:00:00"),
        ("2024-02-29T23:59:59", 12, "2025-02-28T23:59:59"),
        ("2025-12-15T08:00:00", 1, "2026-01-15T08:00:00"),
        ("2025-08-31T12:00:00", 1, "2025-09-30T12:00:00"),
        ("1999-12-31T00:00:00", 1200, "2099-12-31T00:00:00"),
    ]
    for start, months, end in edges:
        assert int(await script(args=[at(start), months])) == at(end), (start, months)
    rng = random.Random(9)
    for _ in range(1000):
        ms, months = rng.randrange(0, 4_000_000_000_000), rng.randrange(1, 1200)
        assert int(await script(args=[ms, months])) == python_add_months(ms, months), (ms, months)


async def test_a_monthly_grant_extends_by_calendar_months_through_the_store(
    service_factory: ServiceFactory, redis_server: StoreUnderTest
) -> None:
    """A grant of 2 monthly periods ends 2 calendar months after it starts; another adds 1 month to that expiry."""
    service = await service_factory(redis_url=redis_server.url)
    assert service.store is not None
    first = await service.store.grant(
        GrantCommand(PROJECT, "p1", "pass", STORED_TIME_LIMITED, 2, 0, "k1", period_months=1), "test"
    )
    record = first.entitlement
    assert (record.period_months, record.period_ms) == (1, None)
    assert record.expires_at_ms == python_add_months(record.granted_at_ms, 2)
    second = await service.store.grant(GrantCommand(PROJECT, "p1", "pass", 0, 1, 0, "k2", period_months=1), "test")
    assert second.entitlement.expires_at_ms == python_add_months(python_add_months(record.granted_at_ms, 2), 1)


# --- the service -------------------------------------------------------------------------------------------------


async def test_time_limited_sku_bought_twice_through_webhooks_ends_two_periods_after_the_first(
    service_factory: ServiceFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    sim: XsollaSimulator,
    simulators: SimulatorFactory,
) -> None:
    """With no local file, the period comes from Xsolla's catalog: two purchases of a 30-day item end 60 days after
    the first."""
    service = await start_service(service_factory, redis_server, sim)
    client = await client_factory(service)
    settings = gateway_settings(redis_url=redis_server.url, event_partitions=PARTITIONS)
    async with running_gateway(settings, WebhookSettings(default_secret=SECRET)) as gateway:
        # A second simulator of the same project, as the shop that sends the webhooks to this gateway.
        shop = await simulators(project_id=PROJECT, webhook_url=gateway.url, webhook_secret=SECRET)
        for _ in range(2):
            order = shop.create_order("buyer", [{"sku": "vip_30d", "quantity": 1}])
            await shop.set_status(order.order_id, "paid", ["webhook"])
            await shop.wait_webhooks_settled()
    await drained(redis_client)
    entitlement = (await client.check_entitlement("buyer", "vip_30d")).entitlement
    assert entitlement.kind == pb.ENTITLEMENT_KIND_TIME_LIMITED
    span = entitlement.expires_at.ToMilliseconds() - entitlement.granted_at.ToMilliseconds()
    assert span == 2 * 30 * DAY_MS
    assert (await stored_catalog(redis_client)) is not None


async def test_unknown_sku_is_dead_lettered_then_granted_after_the_catalog_learns_it(
    service_factory: ServiceFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    sim: XsollaSimulator,
) -> None:
    """A sku Xsolla's catalog lacks is never granted as a guess: retried, dead-lettered with "sku not in catalog";
    once an operator refreshes the catalog that now has it, replaying the dead letter grants it."""
    service = await start_service(service_factory, redis_server, sim)
    client = await client_factory(service)
    await xadd(redis_client, order_event("paid", "o-1", "p1", [("gem_pack", 3)]))
    await eventually(lambda: _count_dead(redis_client, 1), what="the order to be dead-lettered")
    [(_, fields)] = await dead_letters(redis_client)
    assert b"sku not in catalog: gem_pack" in fields[b"error"]
    assert not (await client.check_entitlement("p1", "gem_pack")).HasField("entitlement")

    sim.catalog.set_project(PROJECT, items=[*ITEMS, admin_item("gem_pack", consumable=True)])
    operator = Settings(**redis_server.settings, projects=catalog_projects(), event_partitions=PARTITIONS)
    admin = CatalogSettings(admin_api=sim.store_api_url)
    assert await catalog_command(operator, admin, "refresh", None) == 0
    assert len(await DeadLetters(redis_client, PARTITIONS).replay(PROJECT, None)) == 1
    await drained(redis_client)
    assert (await client.check_entitlement("p1", "gem_pack")).entitlement.quantity == 3


async def _count_dead(redis: aioredis.Redis, count: int) -> bool:
    return len(await dead_letters(redis)) == count


async def test_catalog_api_down_at_start_the_stored_catalog_is_used(
    service_factory: ServiceFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    sim: XsollaSimulator,
) -> None:
    """A service that cannot reach Xsolla at start still starts, and grants with the catalog kept in Redis."""
    first = await start_service(service_factory, redis_server, sim)
    await eventually(lambda: _has_catalog(redis_client), what="the first service to store the catalog")
    await first.stop(grace_s=0)
    sim.catalog.fail(1000, 503)
    service = await start_service(service_factory, redis_server, sim)
    await eventually(lambda: refreshes(service, "unavailable") >= 1, what="the refresh at start to fail")
    client = await client_factory(service)
    await xadd(redis_client, order_event("paid", "o-2", "p2", [("vip_30d", 1)]))
    await drained(redis_client)
    entitlement = (await client.check_entitlement("p2", "vip_30d")).entitlement
    assert entitlement.expires_at.ToMilliseconds() - entitlement.granted_at.ToMilliseconds() == 30 * DAY_MS
    assert await dead_letters(redis_client) == []


async def _has_catalog(redis: aioredis.Redis) -> bool:
    return await stored_catalog(redis) is not None


async def test_grant_without_duration_takes_the_catalog_period(
    service_factory: ServiceFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    sim: XsollaSimulator,
) -> None:
    """Grant of a time-limited sku the catalog knows may leave duration unset; an unknown one still needs it."""
    service = await start_service(service_factory, redis_server, sim)
    await eventually(lambda: _has_catalog(redis_client), what="the catalog to be read")
    client = await client_factory(service)
    granted = (await client.grant("p3", "vip_month", kind=pb.ENTITLEMENT_KIND_TIME_LIMITED)).entitlement
    expected = python_add_months(granted.granted_at.ToMilliseconds(), 1)
    assert granted.expires_at.ToMilliseconds() == expected
    again = (await client.grant("p3", "vip_30d")).entitlement
    assert again.expires_at.ToMilliseconds() - again.granted_at.ToMilliseconds() == 30 * DAY_MS
    with pytest.raises(InvalidArgumentError, match="duration: is required for time-limited items the catalog"):
        await client.grant("p3", "unknown_pass", kind=pb.ENTITLEMENT_KIND_TIME_LIMITED)
    explicit = (await client.grant("p3", "unknown_pass", duration=timedelta(hours=2))).entitlement
    assert explicit.period.ToMilliseconds() == 2 * 3_600_000


async def test_catalog_show_prints_the_catalog_in_use(
    redis_server: StoreUnderTest, sim: XsollaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`catalog refresh` stores Xsolla's catalog; `catalog show` prints it with kinds and periods; a refused key
    makes refresh exit 1."""
    operator = Settings(**redis_server.settings, projects=catalog_projects())
    admin = CatalogSettings(admin_api=sim.store_api_url)
    assert await catalog_command(operator, admin, "refresh", PROJECT) == 0
    capsys.readouterr()
    assert await catalog_command(operator, admin, "show", None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert '"sku": "vip_month", "kind": "time-limited", "period": "1mo"' in "\n".join(lines)
    assert '"sku": "castle", "kind": "permanent", "period": null' in "\n".join(lines)
    sim.catalog.set_project(PROJECT, api_key="rotated")
    assert await catalog_command(operator, admin, "refresh", None) == 1
    assert '"result": "refused"' in capsys.readouterr().out


def test_settings_read_the_refresh_interval_and_refuse_the_old_file_with_a_projects_file(tmp_path: Path) -> None:
    """ENTITLEMENTS_CATALOG_REFRESH_S is read; ENTITLEMENTS_CATALOG_FILE beside a projects file is refused."""
    assert Settings.from_env({}).catalog_refresh_s == 600.0
    assert Settings.from_env({"ENTITLEMENTS_CATALOG_REFRESH_S": "60"}).catalog_refresh_s == 60.0
    projects_file = tmp_path / "projects.toml"
    projects_file.write_text('[projects.308077]\ncatalog = "none"\n')
    env = {"ENTITLEMENTS_PROJECTS_FILE": str(projects_file), "ENTITLEMENTS_CATALOG_FILE": "c.toml"}
    with pytest.raises(ConfigError, match="put it in the projects file"):
        Settings.from_env(env, provider="xsolla")
    assert Settings.from_env({}).projects.listed is False  # without a project id: any project is served


def test_single_project_credentials_come_from_the_environment(tmp_path: Path) -> None:
    """Without a projects file, ENTITLEMENTS_XSOLLA_API_KEY[_FILE] and _API_USER make the catalog Xsolla's; with
    a projects file they are refused, and a malformed user is named."""
    single = Projects.single(PROJECT, Project(0))
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    credited = with_env_credentials(single, {"ENTITLEMENTS_XSOLLA_API_KEY_FILE": str(key_file)})
    listed = credited.projects[PROJECT]
    assert (listed.catalog_source, dict(listed.provider)) == (CATALOG_PROVIDER, {"api_key": "from-a-file"})
    assert credited.template.catalog_source == CATALOG_PROVIDER
    env = {"ENTITLEMENTS_XSOLLA_API_KEY": "k", "ENTITLEMENTS_XSOLLA_API_USER": "887981"}
    assert with_env_credentials(single, env).projects[PROJECT].provider["api_user"] == 887981
    assert with_env_credentials(single, {}) is single
    with pytest.raises(ConfigError, match="ENTITLEMENTS_XSOLLA_API_USER must be"):
        with_env_credentials(single, {"ENTITLEMENTS_XSOLLA_API_KEY": "k", "ENTITLEMENTS_XSOLLA_API_USER": "me"})
    from_file = Projects.from_mapping({"projects": {"1": {}}}, "xsolla", source="projects file p.toml")
    with pytest.raises(ConfigError, match="put api_key and api_user in the projects file"):
        with_env_credentials(from_file, {"ENTITLEMENTS_XSOLLA_API_KEY": "k"})

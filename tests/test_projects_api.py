"""Projects through the API: which project a request acts on, API keys bound to projects, and the same player in
two projects kept apart, over the real gRPC server on real Valkey, through the project's own client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog

from core import logs
from core.projects import MAX_PROJECT_ID
from entitlements import (
    AsyncEntitlementsClient,
    EntitlementsClient,
    InvalidArgumentError,
    PermissionDeniedError,
)
from server.app import Service
from server.auth import hash_key, parse_api_keys
from server.config import Settings
from server.embedded import EmbeddedRedis
from server.errors import ConfigError
from tests.helpers.services import ClientFactory, ServiceFactory, served, store_changes

LIVE, STAGING, OTHER_GAME = 1001, 1002, 1004
NOT_SERVED = 1003
LIVE_KEY = "live-only-key-0123456789"
TWO_KEY = "live-and-staging-key-0123456789"
STAGING_OTHER_KEY = "staging-and-other-key-0123456789"
ALL_KEY = "every-project-key-0123456789"
KEYS = parse_api_keys(
    "\n".join(
        [
            f"live-only:{hash_key(LIVE_KEY)}:read,write:{LIVE}",
            f"live-and-staging:{hash_key(TWO_KEY)}:read,write:{LIVE},{STAGING}",
            f"staging-and-other:{hash_key(STAGING_OTHER_KEY)}:read,write:{STAGING},{OTHER_GAME}",
            f"every-project:{hash_key(ALL_KEY)}:read,write",
        ]
    )
)

ServiceWith = Callable[..., Awaitable[Service]]


@pytest.fixture
def projects_service(service_factory: ServiceFactory, redis_server: EmbeddedRedis) -> ServiceWith:
    """Starts a service serving LIVE, STAGING and OTHER_GAME with the bound keys, and `default` as its default
    project."""

    async def start(default: int | None = None, **overrides: Any) -> Service:
        return await service_factory(
            redis_url=redis_server.url,
            api_keys=KEYS,
            projects=served(LIVE, STAGING, OTHER_GAME, default=default),
            **overrides,
        )

    return start


async def _stream(client: AsyncEntitlementsClient, **kwargs: Any) -> None:
    """Opens GetOrderStatus on an order no source knows (webhooks only, 50 ms) and reads it to its end."""
    async for _ in client.get_order_status("order-1", "player-1", max_wait=timedelta(milliseconds=50), **kwargs):
        pass


# Every RPC, called with the given keyword arguments (project_id among them).
CALLS: dict[str, Callable[..., Awaitable[Any]]] = {
    "Grant": lambda client, **kw: client.grant("player-1", "gold", idempotency_key="grant-1", **kw),
    "Revoke": lambda client, **kw: client.revoke("player-1", "gold", idempotency_key="revoke-1", **kw),
    "CheckEntitlement": lambda client, **kw: client.check_entitlement("player-1", "gold", **kw),
    "ListEntitlements": lambda client, **kw: client.list_entitlements("player-1", **kw),
    "ListSubscriptions": lambda client, **kw: client.list_subscriptions("player-1", **kw),
    "ListLedger": lambda client, **kw: client.list_ledger("player-1", **kw),
    "GetOrderStatus": lambda client, **kw: _stream(client, **kw),
}


# --- which project a request acts on ------------------------------------------------------------------------------


async def test_key_bound_to_one_project_defaults_to_it(
    projects_service: ServiceWith, client_factory: ClientFactory
) -> None:
    """A request leaving project_id at 0 acts on the key's single project, even when the default is another."""
    service = await projects_service(default=STAGING)
    client = await client_factory(service, api_key=LIVE_KEY)
    granted = await client.grant("player-1", "gold", quantity=2)
    assert granted.project_id == LIVE
    revoked = await client.revoke("player-1", "gold")
    assert (revoked.revoked, revoked.project_id) == (True, LIVE)


async def test_key_bound_to_several_projects_uses_the_default(
    projects_service: ServiceWith, client_factory: ClientFactory
) -> None:
    """A key bound to several projects (or all) acts on the service's default project when project_id is 0."""
    service = await projects_service(default=LIVE)
    for key in (TWO_KEY, ALL_KEY):
        client = await client_factory(service, api_key=key)
        assert (await client.grant("player-1", "gold")).project_id == LIVE
        assert (await client.grant("player-1", "gold", project_id=STAGING)).project_id == STAGING


@pytest.mark.parametrize("method", sorted(CALLS))
async def test_no_project_without_a_default_is_invalid_argument(
    projects_service: ServiceWith, client_factory: ClientFactory, redis_client: aioredis.Redis, method: str
) -> None:
    """With no default project, project_id 0 from a key bound to several or all projects is INVALID_ARGUMENT
    naming project_id, and nothing is written."""
    service = await projects_service(default=None)
    before = await store_changes(redis_client)
    for key, bound in ((TWO_KEY, "several projects"), (ALL_KEY, "every project")):
        client = await client_factory(service, api_key=key)
        expected = (
            f"project_id: is 0, the API key is bound to {bound} and the service has no default project; set project_id"
        )
        with pytest.raises(InvalidArgumentError) as caught:
            await CALLS[method](client)
        assert caught.value.details == expected
    assert await store_changes(redis_client) == before


async def test_default_the_key_is_not_bound_to_is_invalid_argument(
    projects_service: ServiceWith, client_factory: ClientFactory
) -> None:
    """project_id 0 from a key bound to several projects, none of them the default one, is INVALID_ARGUMENT."""
    service = await projects_service(default=LIVE)
    client = await client_factory(service, api_key=STAGING_OTHER_KEY)
    with pytest.raises(InvalidArgumentError, match=f"not bound to the service's default project {LIVE}; set project"):
        await client.check_entitlement("player-1", "gold")
    assert not (await client.check_entitlement("player-1", "gold", project_id=OTHER_GAME)).active


@pytest.mark.parametrize(
    ("project_id", "problem"),
    [
        (NOT_SERVED, f"{NOT_SERVED} is not a project this service serves (it serves {LIVE}, {STAGING}, {OTHER_GAME})"),
        (-1, f"must be between 1 and {MAX_PROJECT_ID}, not -1"),
        (-(2**63), f"must be between 1 and {MAX_PROJECT_ID}, not {-(2**63)}"),
    ],
)
@pytest.mark.parametrize("method", sorted(CALLS))
async def test_bad_project_is_invalid_argument(
    projects_service: ServiceWith,
    client_factory: ClientFactory,
    redis_client: aioredis.Redis,
    method: str,
    project_id: int,
    problem: str,
) -> None:
    """A negative project id, or one the service does not serve, is INVALID_ARGUMENT naming project_id; nothing is
    written."""
    service = await projects_service(default=LIVE)
    client = await client_factory(service, api_key=ALL_KEY)
    before = await store_changes(redis_client)
    with pytest.raises(InvalidArgumentError) as caught:
        await CALLS[method](client, project_id=project_id)
    assert caught.value.details.startswith(f"project_id: {problem}")
    assert await store_changes(redis_client) == before


async def test_largest_project_id_is_valid_but_not_served(
    projects_service: ServiceWith, client_factory: ClientFactory
) -> None:
    """The largest int64 is a well-formed project id: refused only because the service does not serve it."""
    service = await projects_service(default=LIVE)
    client = await client_factory(service, api_key=ALL_KEY)
    with pytest.raises(InvalidArgumentError, match=f"project_id: {2**63 - 1} is not a project this service serves"):
        await client.check_entitlement("player-1", "gold", project_id=2**63 - 1)


# --- keys bound to projects ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CALLS))
async def test_key_bound_to_a_project_cannot_use_another(
    projects_service: ServiceWith, client_factory: ClientFactory, redis_client: aioredis.Redis, method: str
) -> None:
    """A key bound to LIVE is PERMISSION_DENIED on STAGING (served) and on a project not served alike, for every
    RPC, and nothing is written."""
    service = await projects_service(default=STAGING)
    client = await client_factory(service, api_key=LIVE_KEY)
    before = await store_changes(redis_client)
    for project_id in (STAGING, NOT_SERVED):
        with pytest.raises(PermissionDeniedError) as caught:
            await CALLS[method](client, project_id=project_id)
        assert caught.value.details == f"API key 'live-only' is not bound to project {project_id}"
    assert await store_changes(redis_client) == before


async def test_bound_key_reads_and_writes_only_its_project(
    projects_service: ServiceWith, client_factory: ClientFactory
) -> None:
    """What a key bound to STAGING cannot reach in LIVE, a key bound to LIVE reads and writes there."""
    service = await projects_service(default=LIVE)
    live = await client_factory(service, api_key=LIVE_KEY)
    staging = await client_factory(service, api_key=STAGING_OTHER_KEY)
    await live.grant("player-1", "sword", kind=2, project_id=LIVE)
    assert (await live.check_entitlement("player-1", "sword")).active
    with pytest.raises(PermissionDeniedError):
        await staging.check_entitlement("player-1", "sword", project_id=LIVE)
    with pytest.raises(PermissionDeniedError):
        await staging.revoke("player-1", "sword", project_id=LIVE)
    assert (await live.check_entitlement("player-1", "sword")).active


async def test_insecure_dev_mode_may_use_every_project(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, client_factory: ClientFactory
) -> None:
    """In development mode without keys, the caller may act on every served project, and still names one when
    there is no default."""
    service = await service_factory(
        redis_url=redis_server.url, api_keys=(), insecure_dev_mode=True, projects=served(LIVE, STAGING)
    )
    client = await client_factory(service, api_key=None)
    for project_id in (LIVE, STAGING):
        assert (await client.grant("player-1", "gold", project_id=project_id)).project_id == project_id
    message = r"development mode, no API key\) may use every project and the service has no default"
    with pytest.raises(InvalidArgumentError, match=message):
        await client.grant("player-1", "gold")


# --- the same player in two projects ------------------------------------------------------------------------------


async def test_same_player_and_sku_in_two_projects_are_two_inventories(
    projects_service: ServiceWith, client_factory: ClientFactory
) -> None:
    """The same player, sku and idempotency key in LIVE and STAGING are two grants into two inventories: checks,
    listings and a revoke in one never see or touch the other."""
    service = await projects_service(default=LIVE)
    client = await client_factory(service, api_key=ALL_KEY)
    live = await client.grant("player-1", "gold", quantity=3, idempotency_key="order-1", project_id=LIVE)
    staging = await client.grant("player-1", "gold", quantity=5, idempotency_key="order-1", project_id=STAGING)
    assert (live.entitlement.quantity, live.replayed) == (3, False)
    assert (staging.entitlement.quantity, staging.replayed) == (5, False)
    await client.grant("player-1", "season-pass", duration=timedelta(days=30), project_id=STAGING)

    assert (await client.check_entitlement("player-1", "gold", project_id=LIVE)).entitlement.quantity == 3
    assert (await client.check_entitlement("player-1", "gold", project_id=STAGING)).entitlement.quantity == 5
    live_page = await client.list_entitlements("player-1", project_id=LIVE)
    staging_page = await client.list_entitlements("player-1", project_id=STAGING)
    assert [(e.sku, e.quantity) for e in live_page.entitlements] == [("gold", 3)]
    assert [(e.sku, e.quantity) for e in staging_page.entitlements] == [("gold", 5), ("season-pass", 1)]
    assert not (await client.list_subscriptions("player-1", project_id=LIVE)).subscriptions
    assert [s.id for s in (await client.list_subscriptions("player-1", project_id=STAGING)).subscriptions] == [
        "season-pass"
    ]

    assert (await client.revoke("player-1", "gold", project_id=LIVE)).revoked
    assert not (await client.check_entitlement("player-1", "gold", project_id=LIVE)).active
    assert (await client.check_entitlement("player-1", "gold", project_id=STAGING)).entitlement.quantity == 5
    assert not (await client.check_entitlement("player-1", "gold", project_id=OTHER_GAME)).active


async def test_page_token_of_one_project_is_refused_in_another(
    projects_service: ServiceWith, client_factory: ClientFactory
) -> None:
    """A page token ListEntitlements made for LIVE is INVALID_ARGUMENT in STAGING, for the same player."""
    service = await projects_service(default=LIVE)
    client = await client_factory(service, api_key=ALL_KEY)
    for sku in ("a", "b"):
        await client.grant("player-1", sku, project_id=LIVE)
        await client.grant("player-1", sku, project_id=STAGING)
    first = await client.list_entitlements("player-1", page_size=1, project_id=LIVE)
    assert first.next_page_token
    with pytest.raises(InvalidArgumentError, match="page_token: belongs to a different project"):
        await client.list_entitlements("player-1", page_token=first.next_page_token, project_id=STAGING)
    second = await client.list_entitlements("player-1", page_token=first.next_page_token, project_id=LIVE)
    assert [e.sku for e in second.entitlements] == ["b"]


# --- the client's default project ---------------------------------------------------------------------------------


async def test_client_default_project_applies_when_a_call_names_none(
    projects_service: ServiceWith, client_factory: ClientFactory
) -> None:
    """A client made with project_id sends it on every call that leaves its own at 0; a call's own wins."""
    service = await projects_service(default=LIVE)
    client = await client_factory(service, api_key=ALL_KEY, project_id=STAGING)
    assert (await client.grant("player-1", "gold", quantity=4)).project_id == STAGING
    assert (await client.grant("player-1", "gold", project_id=LIVE)).project_id == LIVE
    assert (await client.check_entitlement("player-1", "gold")).entitlement.quantity == 4
    assert [e.quantity async for e in client.iter_entitlements("player-1")] == [4]
    assert (await client.check_entitlement("player-1", "gold", project_id=LIVE)).entitlement.quantity == 1

    assert service.endpoints is not None
    target = f"127.0.0.1:{service.endpoints.grpc_port}"

    def blocking() -> tuple[int, int]:
        with EntitlementsClient(target, api_key=ALL_KEY, project_id=STAGING) as sync_client:
            granted = sync_client.grant("player-1", "gold")
            return granted.project_id, sync_client.check_entitlement("player-1", "gold").entitlement.quantity

    assert await asyncio.to_thread(blocking) == (STAGING, 5)


async def test_client_refuses_a_project_id_that_is_not_an_int(client_factory: ClientFactory, service: Service) -> None:
    """A project_id that is not an int fails in the client with TypeError, before anything is sent."""
    with pytest.raises(TypeError, match="project_id must be an int, not str"):
        AsyncEntitlementsClient("127.0.0.1:1", project_id="1001")  # type: ignore[arg-type]
    client = await client_factory(service)
    with pytest.raises(TypeError, match="project_id must be an int, not bool"):
        await client.check_entitlement("player-1", "gold", project_id=True)


# --- the log line -------------------------------------------------------------------------------------------------


async def test_rpc_log_line_names_the_resolved_project(
    projects_service: ServiceWith, client_factory: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The RPC's log line carries the project 0 resolved to; the metrics carry no project label."""
    service = await projects_service(default=STAGING)
    client = await client_factory(service, api_key=LIVE_KEY)
    previous = structlog.get_config()
    logs.configure("info", json=True, cache_loggers=False)
    try:
        await client.check_entitlement("player-1", "gold")
        await _stream(client)
    finally:
        structlog.configure(**previous)
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in (captured.err + captured.out).splitlines() if line.strip()]
    rpc_lines = [line for line in lines if line["event"] == "rpc"]
    assert [(line["method"], line["project_id"]) for line in rpc_lines] == [
        ("CheckEntitlement", LIVE),
        ("GetOrderStatus", LIVE),
    ]
    samples = [
        s for metric in service.registry.collect() for s in metric.samples if s.name.startswith("entitlements_rpc")
    ]
    assert samples
    assert not [s for s in samples if "project" in "".join(s.labels)]


# --- configuration ------------------------------------------------------------------------------------------------

DIGEST = "a" * 64


@pytest.mark.parametrize(
    ("entry", "projects"),
    [
        (f"k:{DIGEST}:read", None),
        (f"k:{DIGEST}:read:*", None),
        (f"k:{DIGEST}:read: * ", None),
        (f"k:{DIGEST}:read:308077", frozenset({308077})),
        (f"k:{DIGEST}:read,write:1, 2,2", frozenset({1, 2})),
        (f"k:{DIGEST}:read:{MAX_PROJECT_ID}", frozenset({MAX_PROJECT_ID})),
    ],
)
def test_key_entries_bind_projects(entry: str, projects: frozenset[int] | None) -> None:
    """A key entry's optional fourth part binds it to projects: `*` or absent is every project, else the ids."""
    (key,) = parse_api_keys(entry)
    assert key.projects == projects


@pytest.mark.parametrize(
    "projects",
    [
        "",
        ",",
        "1,,2",
        "0",
        "-1",
        "+1",
        "1.5",
        "abc",
        "*,1",
        str(MAX_PROJECT_ID + 1),
        "\uff11\uff12",
        "1:2",
        DIGEST + "x",
    ],
)
def test_bad_project_bindings_are_config_errors(projects: str) -> None:
    """A key entry with a malformed project list is refused, naming the entry and never echoing its text."""
    entry = f"matchmaker:{DIGEST}:read:{projects}"
    with pytest.raises(ValueError, match=r"^entry 1") as caught:
        parse_api_keys(entry)
    assert DIGEST not in str(caught.value)
    assert "matchmaker" in str(caught.value) or "is not name:sha256-hex:scopes[:projects]" in str(caught.value)


def test_key_bound_to_a_project_not_served_refuses_to_start() -> None:
    """A key bound to a project the service does not serve is a configuration error naming the key and project."""
    settings = Settings(api_keys=KEYS, projects=served(LIVE, STAGING))
    with pytest.raises(ConfigError, match=f"key 'staging-and-other' is bound to project\\(s\\) {OTHER_GAME}, which"):
        settings.check_servable()
    Settings(api_keys=KEYS, projects=served(LIVE, STAGING, OTHER_GAME)).check_servable()
    Settings(api_keys=KEYS).check_servable()  # no list of projects: any project id may be served


def test_hash_key_prints_a_bound_entry(capsys: pytest.CaptureFixture[str]) -> None:
    """`hash-key --projects` prints an entry bound to those projects that the service parses back; a bad list
    prints no key and exits 2."""
    from server.__main__ import main

    assert main(["hash-key", "--name", "launcher", "--scopes", "read", "--projects", f"{LIVE},{STAGING}"]) == 0
    out = capsys.readouterr().out
    key = out.split("store it nowhere else): ", 1)[1].split("\n", 1)[0]
    entry = out.split("ENTITLEMENTS_API_KEYS entry: ", 1)[1].strip()
    (parsed,) = parse_api_keys(entry)
    assert (parsed.name, parsed.sha256, parsed.scopes, parsed.projects) == (
        "launcher",
        hash_key(key),
        frozenset({"read"}),
        frozenset({LIVE, STAGING}),
    )
    assert main(["hash-key", "--projects", "live"]) == 2
    captured = capsys.readouterr()
    assert "API key" not in captured.out
    assert "projects must be * or a comma list of project ids" in captured.err

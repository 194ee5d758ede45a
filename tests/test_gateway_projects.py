"""Several Xsolla projects behind one gateway, configured by the projects file: a webhook's project is decided by
what verified its signature (the URL's project, the signing secret's projects), never by the body alone.

Real Valkey, the real gateway on a free port, real HTTP requests, settings read from a real TOML file.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from core.webhooks import FoundUser, UserQuery
from providers.xsolla import WebhookSettings, load_projects
from tests.helpers.gateway import Answer, fixture, gateway_settings, running_gateway, send, stored_events
from tests.helpers.services import data_keys
from tests.helpers.stores import StoreUnderTest
from webhook_gateway import Gateway

LIVE, STAGING, EVENT_A, EVENT_B = 308077, 18404, 320001, 320002
LIVE_OLD, LIVE_NEW = "live-secret-old-0123456789", "live-secret-new-0123456789"
STAGING_SECRET = "staging-secret-0123456789"
SHARED = "events-shared-secret-0123456789"

PROJECTS_FILE = f"""
default_project = {LIVE}

[projects.{LIVE}]
name = "live"
  [projects.{LIVE}.xsolla]
  webhook_secrets = ["{LIVE_NEW}", {{ env = "LIVE_OLD_SECRET" }}]
  api_key = {{ env = "NOT_READ_BY_THE_GATEWAY" }}
  api_user = 887981

[projects.{STAGING}]
name = "staging"
sandbox = "grant"
  [projects.{STAGING}.xsolla]
  webhook_secrets = [{{ file = "{{staging_file}}" }}]

[projects.{EVENT_A}]
[projects.{EVENT_B}]

[xsolla]
shared_webhook_secrets = [{{ projects = [{EVENT_A}, {EVENT_B}], secret = "{SHARED}" }}]
"""


class RecordingDirectory:
    """A user directory that knows every player and records the questions it is asked."""

    name = "recording"

    def __init__(self) -> None:
        self.queries: list[UserQuery] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def validate(self, query: UserQuery) -> None:
        self.queries.append(query)

    async def search(self, query: UserQuery) -> FoundUser:
        self.queries.append(query)
        return FoundUser(id=query.public_id)


def write_projects(directory: Path) -> Path:
    """The projects file above, with the staging secret in a file beside it."""
    staging_file = directory / "staging.secret"
    staging_file.write_text(STAGING_SECRET + "\n")
    path = directory / "projects.toml"
    path.write_text(PROJECTS_FILE.replace("{staging_file}", str(staging_file)))
    return path


def projects_settings(directory: Path) -> WebhookSettings:
    """Xsolla's webhook settings read from the projects file, as both processes read it."""
    path = write_projects(directory)
    return WebhookSettings.from_env({"LIVE_OLD_SECRET": LIVE_OLD}, projects=load_projects(path))


@pytest.fixture
def directory() -> RecordingDirectory:
    """The gateway's user directory, recording its questions."""
    return RecordingDirectory()


@pytest.fixture
async def gateway(
    redis_server: StoreUnderTest, tmp_path: Path, directory: RecordingDirectory
) -> AsyncIterator[Gateway]:
    """A gateway for the four projects of the file above."""
    settings = gateway_settings(redis_url=redis_server.url)
    async with running_gateway(settings, projects_settings(tmp_path), user_directory=directory) as gateway:
        yield gateway


def naming(project: int | None, name: str = "order_paid_separate") -> bytes:
    """A fact-sheet payload naming `project` in settings.project_id (None: naming none)."""
    document: dict[str, Any] = json.loads(fixture(name))
    document.pop("settings", None)
    if project is not None:
        document["settings"] = {"project_id": project, "merchant_id": 887981}
    return json.dumps(document).encode()


def refusal(answer: Answer) -> tuple[int, str]:
    return answer.status, answer.json()["error"]["code"]


async def stored_projects(redis_client: aioredis.Redis) -> list[int]:
    return [stored.event.project_id for stored in await stored_events(redis_client)]


async def test_an_order_signed_with_another_projects_secret_is_refused_on_every_path(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """An order_paid for the live project signed with staging's secret is refused on the bare path, on the live
    project's URL and on staging's, and nothing at all is stored."""
    body = fixture("order_paid_combined")  # names project 308077 in billing.settings
    for url in (gateway.url, f"{gateway.url}/{LIVE}", f"{gateway.url}/{STAGING}"):
        assert refusal(await send(http, url, body, STAGING_SECRET)) == (400, "INVALID_SIGNATURE"), url
    assert await data_keys(redis_client) == 0
    assert (await send(http, gateway.url, body, LIVE_NEW)).status == 204
    assert await stored_projects(redis_client) == [LIVE]


async def test_a_body_naming_another_project_than_its_url_is_refused(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A body naming the live project, posted to staging's URL with staging's own secret, is refused: the URL's
    project is the only one its secrets may sign for."""
    answer = await send(http, f"{gateway.url}/{STAGING}", naming(LIVE), STAGING_SECRET)
    assert refusal(answer) == (400, "INVALID_SIGNATURE")
    assert await data_keys(redis_client) == 0
    assert (await send(http, f"{gateway.url}/{STAGING}", naming(STAGING), STAGING_SECRET)).status == 204
    assert await stored_projects(redis_client) == [STAGING]


async def test_a_body_naming_no_project_is_the_project_of_its_url_or_its_secret(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """An order naming no project (separate mode) is the URL's project, or on the bare path the one project whose
    own secret signed it."""
    order = fixture("order_paid_separate")
    assert (await send(http, f"{gateway.url}/{STAGING}", order, STAGING_SECRET)).status == 204
    canceled = fixture("order_canceled")
    assert (await send(http, gateway.url, canceled, STAGING_SECRET)).status == 204
    refund = fixture("refund")
    assert (await send(http, gateway.url, refund, LIVE_OLD)).status == 204
    assert await stored_projects(redis_client) == [STAGING, STAGING, LIVE]


async def test_a_shared_secret_signs_for_each_of_its_projects_and_no_other(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A secret declared shared verifies the webhooks of each of its projects, on the bare path and on their URLs,
    and never another project's."""
    for project in (EVENT_A, EVENT_B):
        assert (await send(http, gateway.url, naming(project), SHARED)).status == 204
        assert (await send(http, f"{gateway.url}/{project}", naming(None, "refund"), SHARED)).status == 204
    for url in (gateway.url, f"{gateway.url}/{LIVE}"):
        assert refusal(await send(http, url, naming(LIVE), SHARED)) == (400, "INVALID_SIGNATURE")
    assert await stored_projects(redis_client) == [EVENT_A, EVENT_A, EVENT_B, EVENT_B]


async def test_a_shared_secret_does_not_decide_the_project_of_an_event_naming_none(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """On the bare path, an event naming no project signed with a secret two projects share is refused naming
    settings.project_id (it could be either project's), and nothing is stored."""
    answer = await send(http, gateway.url, fixture("order_paid_separate"), SHARED)
    assert refusal(answer) == (400, "INVALID_PARAMETER")
    assert answer.json()["error"]["message"].startswith("settings.project_id is required")
    assert await data_keys(redis_client) == 0


async def test_both_secrets_of_a_project_in_rotation_verify(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """The live project's current secret and the one being retired (read from a variable) both verify."""
    assert (await send(http, gateway.url, naming(LIVE), LIVE_NEW)).status == 204
    assert (await send(http, f"{gateway.url}/{LIVE}", naming(LIVE, "refund"), LIVE_OLD)).status == 204
    assert await stored_projects(redis_client) == [LIVE, LIVE]


async def test_a_project_not_in_the_file_is_refused(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A project the file does not list has no secret: its URL and a body naming it are refused, whatever signed it."""
    assert refusal(await send(http, f"{gateway.url}/777", naming(None), LIVE_NEW)) == (400, "INVALID_SIGNATURE")
    assert refusal(await send(http, gateway.url, naming(777), LIVE_NEW)) == (400, "INVALID_SIGNATURE")
    assert await data_keys(redis_client) == 0


async def test_user_questions_are_answered_with_the_project_the_signature_decided(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis, directory: RecordingDirectory
) -> None:
    """user_validation and user_search naming no project are answered, even under a shared secret; the directory is
    asked with the project the signature decided (0 when a shared secret decided none)."""
    validation = naming(None, "user_validation")
    assert (await send(http, gateway.url, validation, STAGING_SECRET)).status == 204
    assert (await send(http, gateway.url, validation, SHARED)).status == 204
    assert (await send(http, f"{gateway.url}/{EVENT_B}", validation, SHARED)).status == 204
    search = fixture("user_search")  # names project 0: none
    assert (await send(http, gateway.url, search, LIVE_NEW)).status == 200
    assert [(query.project_id, query.user_id or query.public_id) for query in directory.queries] == [
        (STAGING, "1234567"),
        (0, "1234567"),
        (EVENT_B, "1234567"),
        (LIVE, "1234567"),
    ]
    assert await data_keys(redis_client) == 0


async def test_the_start_line_counts_projects_and_secrets_and_shows_none(tmp_path: Path) -> None:
    """What the gateway logs about its configuration: four projects, four secrets, where they came from."""
    settings = projects_settings(tmp_path)
    described = settings.describe()
    assert described == {
        "projects": 4,
        "secrets": 4,
        "secret_for_unlisted_projects": False,
        "default_project": LIVE,
        "settings": f"projects file {tmp_path / 'projects.toml'}",
    }
    assert settings.warnings() == {}
    for secret in (LIVE_OLD, LIVE_NEW, STAGING_SECRET, SHARED):
        assert secret not in repr(settings) + repr(settings.secrets) + repr(described)

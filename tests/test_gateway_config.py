"""The gateway's configuration (environment variables) and its own command, `python -m webhook_gateway`."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from core.errors import ConfigError
from providers.xsolla import NAMED_NETWORKS, WebhookSettings
from providers.xsolla.networks import XSOLLA_NETWORKS
from providers.xsolla.settings import SINGLE_PROJECT_VARIABLES, parse_project_secrets
from tests.helpers.gateway import ROOT, command_env, fixture, send, start_gateway_command, stored_events
from tests.helpers.stores import StoreUnderTest
from webhook_gateway.config import GatewaySettings


def read_env(env: dict[str, str]) -> tuple[GatewaySettings, WebhookSettings]:
    """Both halves of the gateway's configuration, read as `python -m webhook_gateway` reads them."""
    return GatewaySettings.from_env(env, named_networks=NAMED_NETWORKS), WebhookSettings.from_env(env)


def test_defaults() -> None:
    """With only a secret set, every other setting has its documented default."""
    settings, xsolla = read_env({"GATEWAY_XSOLLA_SECRET": "s3cret"})
    # No path: the provider's, `/webhooks/xsolla` (test_gateway checks the served URL).
    assert (settings.host, settings.port, settings.path) == ("127.0.0.1", 8080, None)
    assert (xsolla.default_secret, dict(xsolla.project_secrets), xsolla.default_project) == ("s3cret", {}, None)
    assert settings.projects_file is None
    assert (settings.redis_url, settings.redis_cluster, settings.redis_timeout_s) == (None, False, 2.0)
    assert (settings.max_body_bytes, settings.request_timeout_s) == (1024 * 1024, 10.0)
    assert (settings.event_partitions, settings.dedup_ttl_h, settings.dedup_ttl_s) == (1, 72.0, 72 * 3600)
    assert (settings.allowed_networks, settings.trusted_proxy_header, settings.trusted_proxy_hops) == ((), None, 1)
    assert (settings.user_directory, settings.user_directory_url, settings.user_directory_timeout_s) == (
        "allow_all",
        None,
        2.0,
    )
    assert (settings.metrics_host, settings.metrics_port, settings.shutdown_grace_s) == ("127.0.0.1", 9465, 10.0)
    assert (settings.log_level, settings.log_json) == ("info", None)


def test_every_variable_is_read() -> None:
    """Each documented variable reaches its setting."""
    settings, xsolla = read_env(
        {
            "GATEWAY_HOST": "192.0.2.10",
            "GATEWAY_PORT": "9000",
            "GATEWAY_PATH": "/hooks/xsolla",
            "GATEWAY_XSOLLA_SECRET": "default",
            "GATEWAY_XSOLLA_PROJECT_SECRETS": "308077=live;18404=sandbox",
            "ENTITLEMENTS_XSOLLA_PROJECT_ID": "308077",
            "REDIS_URL": "redis://redis:6379/0",
            "REDIS_CLUSTER": "true",
            "GATEWAY_REDIS_TIMEOUT_S": "1.5",
            "GATEWAY_REDIS_MAX_CONNECTIONS": "8",
            "GATEWAY_MAX_BODY_BYTES": "65536",
            "GATEWAY_REQUEST_TIMEOUT_S": "3",
            "GATEWAY_EVENT_PARTITIONS": "16",
            "GATEWAY_DEDUP_TTL_H": "96",
            "GATEWAY_ALLOWED_NETWORKS": "xsolla,10.0.0.0/8",
            "GATEWAY_TRUSTED_PROXY_HEADER": "X-Forwarded-For",
            "GATEWAY_TRUSTED_PROXY_HOPS": "2",
            "GATEWAY_USER_DIRECTORY": "http",
            "GATEWAY_USER_DIRECTORY_URL": "https://backend.internal/xsolla/users",
            "GATEWAY_USER_DIRECTORY_TIMEOUT_S": "1",
            "GATEWAY_USER_DIRECTORY_TOKEN": "tok",
            "GATEWAY_METRICS_HOST": "192.0.2.10",
            "GATEWAY_METRICS_PORT": "off",
            "GATEWAY_SHUTDOWN_GRACE_S": "5",
            "GATEWAY_LOG_LEVEL": "DEBUG",
            "GATEWAY_LOG_JSON": "true",
        }
    )
    assert (settings.host, settings.port, settings.path) == ("192.0.2.10", 9000, "/hooks/xsolla")
    assert [secret.value for secret in xsolla.secrets_for(308077)] == ["live"]
    assert [secret.value for secret in xsolla.secrets_for(18404)] == ["sandbox"]
    assert [secret.value for secret in xsolla.secrets_for(1)] == ["default"]
    assert xsolla.default_project == 308077
    assert (settings.redis_url, settings.redis_cluster, settings.redis_timeout_s) == ("redis://redis:6379/0", True, 1.5)
    assert (settings.redis_max_connections, settings.max_body_bytes, settings.request_timeout_s) == (8, 65536, 3.0)
    assert (settings.event_partitions, settings.dedup_ttl_h) == (16, 96.0)
    assert len(settings.allowed_networks) == len(XSOLLA_NETWORKS) + 1
    assert (settings.trusted_proxy_header, settings.trusted_proxy_hops) == ("X-Forwarded-For", 2)
    assert (settings.user_directory, settings.user_directory_url) == ("http", "https://backend.internal/xsolla/users")
    assert (settings.user_directory_timeout_s, settings.user_directory_token) == (1.0, "tok")
    assert (settings.metrics_host, settings.metrics_port, settings.shutdown_grace_s) == ("192.0.2.10", None, 5.0)
    assert (settings.log_level, settings.log_json) == ("debug", True)


def test_project_secrets_parse_with_comments_and_rotation() -> None:
    """Entries split on ';' or lines, '#' lines are comments, and a project listed twice accepts both secrets."""
    parsed = parse_project_secrets("# live and sandbox\n308077 = old ; 18404=sb\n308077=new\n\n308077=old")
    assert dict(parsed) == {308077: ("old", "new"), 18404: ("sb",)}


def test_secret_files(tmp_path: Path) -> None:
    """The _FILE variants read the default secret and the project secrets from files (e.g. mounted secrets)."""
    (tmp_path / "secret").write_text("from-file\n")
    (tmp_path / "projects").write_text("# projects\n308077=p1\n18404=p2\n")
    xsolla = WebhookSettings.from_env(
        {
            "GATEWAY_XSOLLA_SECRET_FILE": str(tmp_path / "secret"),
            "GATEWAY_XSOLLA_PROJECT_SECRETS": "1=inline",
            "GATEWAY_XSOLLA_PROJECT_SECRETS_FILE": str(tmp_path / "projects"),
        }
    )
    assert xsolla.default_secret == "from-file"
    assert dict(xsolla.project_secrets) == {1: ("inline",), 308077: ("p1",), 18404: ("p2",)}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_XSOLLA_SECRET": ""}, "no Xsolla secret configured"),
        ({"GATEWAY_XSOLLA_SECRET": "  "}, "no Xsolla secret configured"),
        ({"GATEWAY_XSOLLA_PROJECT_SECRETS": "abc=topsecret"}, "entry 1 is not of the form projectid=secret"),
        ({"GATEWAY_XSOLLA_PROJECT_SECRETS": "1=a;2topsecret"}, "entry 2 is not of the form projectid=secret"),
        ({"GATEWAY_XSOLLA_PROJECT_SECRETS": "1="}, "entry 1 is not of the form projectid=secret"),
        ({"GATEWAY_XSOLLA_SECRET_FILE": "/nonexistent/secret"}, "cannot read /nonexistent/secret"),
        ({"GATEWAY_PATH": "webhooks"}, "GATEWAY_PATH must start with '/'"),
        ({"GATEWAY_PATH": "/webhooks/"}, "must not end with '/'"),
        ({"GATEWAY_PORT": "http"}, "GATEWAY_PORT must be an integer"),
        ({"GATEWAY_MAX_BODY_BYTES": "10"}, "GATEWAY_MAX_BODY_BYTES must be at least 1024"),
        ({"GATEWAY_DEDUP_TTL_H": "24"}, "GATEWAY_DEDUP_TTL_H must be a finite number of at least 48"),
        ({"GATEWAY_EVENT_PARTITIONS": "0"}, "GATEWAY_EVENT_PARTITIONS must be between 1 and 1024"),
        ({"GATEWAY_ALLOWED_NETWORKS": "xsolla,example.com"}, "'example.com' is not a network"),
        ({"GATEWAY_USER_DIRECTORY": "ldap"}, "GATEWAY_USER_DIRECTORY must be one of allow_all, http"),
        ({"GATEWAY_USER_DIRECTORY": "http"}, "needs GATEWAY_USER_DIRECTORY_URL"),
        ({"GATEWAY_USER_DIRECTORY_URL": "ftp://x"}, "must be an http:// or https:// URL"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER must be true or false"),
        ({"GATEWAY_REQUEST_TIMEOUT_S": "nan"}, "GATEWAY_REQUEST_TIMEOUT_S must be a finite number"),
    ],
)
def test_bad_configuration_is_refused_without_echoing_secrets(env: dict[str, str], message: str) -> None:
    """Malformed or unsafe settings raise ConfigError naming the variable, never showing a secret."""
    if "SECRET" not in "".join(env):
        env = {"GATEWAY_XSOLLA_SECRET": "topsecret", **env}
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        read_env(env)
    assert "topsecret" not in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "no Xsolla secret configured"),
        ({"GATEWAY_XSOLLA_SECRET": "s"}, "REDIS_URL is not set"),
    ],
)
async def test_command_refuses_to_start_without_secret_or_redis(extra: dict[str, str], message: str) -> None:
    """`python -m webhook_gateway` exits 2 with a clear message when a secret or REDIS_URL is missing."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhook_gateway",
        env=command_env(**extra),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert message in stderr.decode()


@pytest.mark.slow
async def test_command_serves_alone_and_stops_on_sigterm(
    redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """`python -m webhook_gateway` serves webhooks on its own, logs JSON (its durability decided: local on an AOF
    server, replicas on a cluster whose primaries have replicas), and exits 0 on SIGTERM."""
    process = await start_gateway_command(redis_server.url)
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        started: dict[str, Any] | None = None
        while started is None:
            line = await asyncio.wait_for(process.stderr.readline(), timeout=30)
            assert line, "the gateway exited before serving"
            record = json.loads(line)
            lines.append(record)
            if record["event"] == "gateway_started":
                started = record
        url = f"http://127.0.0.1:{started['port']}{started['path']}"
        async with aiohttp.ClientSession() as http:
            assert (await send(http, url, fixture("order_paid_separate"))).status == 204
            async with http.get(f"http://127.0.0.1:{started['metrics_port']}/metrics") as response:
                assert b"gateway_webhooks_total" in await response.read()
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0
        assert b'"event": "gateway_stopped"' in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert [record["event"] for record in lines] == [
        "USER_DIRECTORY_ALLOW_ALL",
        "XSOLLA_UNLISTED_PROJECTS_OPEN",
        "durability_decided",
        "gateway_started",
    ]
    mode = "replicas" if redis_server.cluster else "local"
    assert (lines[2]["mode"], lines[3]["durability"]) == (mode, mode)
    assert len(await stored_events(redis_client)) == 1


# --- the projects file ------------------------------------------------------------------------------------------

LIVE_SECRET, STAGING_SECRET, SHARED_SECRET = "live-topsecret", "staging-topsecret", "shared-topsecret"
# Project 1 with its secret, and what project 2 may add to it.
LIVE = f'[projects.1.xsolla]\nwebhook_secrets = ["{LIVE_SECRET}"]\n'
TWICE = LIVE + f'[projects.2.xsolla]\nwebhook_secrets = ["{LIVE_SECRET}"]\n'
SHARED_BY = '[projects.1]\n[projects.2]\n[xsolla]\nshared_webhook_secrets = [{ projects = %s, secret = "%s" }]\n'


def projects_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "projects.toml"
    path.write_text(text)
    return path


def from_file(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> WebhookSettings:
    """Xsolla's webhook settings as `python -m webhook_gateway` reads them from ENTITLEMENTS_PROJECTS_FILE."""
    return WebhookSettings.from_env({"ENTITLEMENTS_PROJECTS_FILE": str(projects_file(tmp_path, text)), **(env or {})})


def test_projects_file_gives_each_secret_its_projects(tmp_path: Path) -> None:
    """Each project's secrets (inline, from a file, from a variable) and a shared secret belong to their projects."""
    (tmp_path / "old").write_text("live-old\n")
    xsolla = from_file(
        tmp_path,
        f"""
        default_project = 1
        [projects.1.xsolla]
        webhook_secrets = ["{LIVE_SECRET}", {{ file = "{tmp_path / "old"}" }}]
        api_key = {{ env = "UNSET_AND_NOT_READ_HERE" }}
        api_user = 887981
        [projects.2.xsolla]
        webhook_secrets = [{{ env = "STAGING" }}, {{ env = "STAGING" }}]
        [projects.3]
        [xsolla]
        shared_webhook_secrets = [{{ projects = [2, 3], secret = "{SHARED_SECRET}" }}]
        """,
        {"STAGING": STAGING_SECRET},
    )
    assert {(secret.value, secret.projects, secret.unlisted) for secret in xsolla.secrets} == {
        (LIVE_SECRET, frozenset({1}), False),
        ("live-old", frozenset({1}), False),
        (STAGING_SECRET, frozenset({2}), False),
        (SHARED_SECRET, frozenset({2, 3}), False),
    }
    assert [secret.value for secret in xsolla.secrets_for(3)] == [SHARED_SECRET]
    assert xsolla.secrets_for(4) == ()
    assert (xsolla.default_project, xsolla.default_secret, xsolla.warnings()) == (1, None, {})


@pytest.mark.parametrize("variable", SINGLE_PROJECT_VARIABLES)
def test_single_project_variables_beside_the_projects_file_are_refused(tmp_path: Path, variable: str) -> None:
    """With a projects file, a single-project variable is a ConfigError that names it (and shows no secret)."""
    text = LIVE
    with pytest.raises(ConfigError) as caught:
        from_file(tmp_path, text, {variable: "1"})
    assert (
        str(caught.value) == f"{variable}: not read when ENTITLEMENTS_PROJECTS_FILE is set; put it in the projects file"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            f'[projects.1.xsolla]\nwebhook_secrets = ["{LIVE_SECRET}"]\n'
            f'[projects.2.xsolla]\nwebhook_secrets = ["x", "{LIVE_SECRET}"]\n',
            "projects.2.xsolla.webhook_secrets[1] is the same secret as projects.1.xsolla.webhook_secrets[0]. A secret "
            "two projects share must be configured as shared, once: [xsolla] shared_webhook_secrets = "
            "[{ projects = [1, 2], secret = ... }]",
        ),
        (
            f'[projects.1.xsolla]\nwebhook_secrets = ["{LIVE_SECRET}"]\n[projects.2]\n'
            f'[xsolla]\nshared_webhook_secrets = [{{ projects = [1, 2], secret = "{LIVE_SECRET}" }}]\n',
            "projects.1.xsolla.webhook_secrets[0] is the same secret as xsolla.shared_webhook_secrets[0].secret",
        ),
        (
            f'[projects.1.xsolla]\nwebhook_secrets = ["{LIVE_SECRET}"]\nsecret = "{LIVE_SECRET}"\n',
            "projects.1.xsolla: unknown keys ['secret']; it may hold webhook_secrets, api_key, api_user",
        ),
        (
            f'[projects.1.xsolla]\nwebhook_secrets = ["{LIVE_SECRET}"]\n[xsolla]\nwebhook_secret = "{LIVE_SECRET}"\n',
            "[xsolla]: unknown keys ['webhook_secret']; it may hold shared_webhook_secrets",
        ),
        ("[projects.1]\nname = 'live'\n", "projects.1.xsolla.webhook_secrets is missing"),
        (
            f'[projects.1.xsolla]\nwebhook_secrets = "{LIVE_SECRET}"\n',
            "projects.1.xsolla.webhook_secrets must be a list",
        ),
        ('[projects.1.xsolla]\nwebhook_secrets = [""]\n', "projects.1.xsolla.webhook_secrets[0]: the secret is empty"),
        (
            '[projects.1.xsolla]\nwebhook_secrets = [{ env = "NOT_SET_ANYWHERE" }]\n',
            "projects.1.xsolla.webhook_secrets[0]: the variable NOT_SET_ANYWHERE is not set",
        ),
        ("[projects.1.xsolla]\nwebhook_secrets = []\n", "no project has a webhook secret"),
        (
            SHARED_BY % ("[1]", SHARED_SECRET),
            "xsolla.shared_webhook_secrets[0].projects must name at least two projects",
        ),
        (
            f'[projects.1]\n[xsolla]\nshared_webhook_secrets = [{{ projects = [1, 9], secret = "{SHARED_SECRET}" }}]\n',
            "xsolla.shared_webhook_secrets[0].projects: [9] not listed as [projects.<id>]",
        ),
        (
            f'[projects.1]\n[xsolla]\nshared_webhook_secrets = [{{ secret = "{SHARED_SECRET}" }}]\n',
            "xsolla.shared_webhook_secrets[0] must be { projects = [<id>, <id>, ...], secret = ... }",
        ),
    ],
    ids=[
        "unshared-duplicate",
        "own-and-shared",
        "unknown-project-key",
        "unknown-top-key",
        "no-secrets",
        "not-a-list",
        "empty",
        "unset-variable",
        "all-empty",
        "shared-by-one",
        "shared-with-stranger",
        "shared-shape",
    ],
)
def test_bad_projects_file_entries_are_refused_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    """Each malformed or unsafe entry of the projects file is a ConfigError naming it, never showing a secret."""
    with pytest.raises(ConfigError) as caught:
        from_file(tmp_path, text)
    assert message in str(caught.value)
    assert str(tmp_path / "projects.toml") in str(caught.value)
    assert "topsecret" not in str(caught.value)


def test_a_project_with_an_empty_secret_list_is_refused_with_a_warning(tmp_path: Path) -> None:
    """`webhook_secrets = []` is explicit: the project's webhooks are refused, and the start-up says so."""
    xsolla = from_file(
        tmp_path,
        f'[projects.1.xsolla]\nwebhook_secrets = ["{LIVE_SECRET}"]\n[projects.2.xsolla]\nwebhook_secrets = []\n',
    )
    assert (xsolla.secrets_for(2), xsolla.unsigned_projects) == ((), frozenset({2}))
    assert list(xsolla.warnings()) == ["XSOLLA_PROJECTS_REFUSED"]


@pytest.mark.parametrize(
    ("env", "warnings"),
    [
        ({"GATEWAY_XSOLLA_SECRET": "s"}, ["XSOLLA_UNLISTED_PROJECTS_OPEN", "XSOLLA_NO_DEFAULT_PROJECT"]),
        ({"GATEWAY_XSOLLA_SECRET": "s", "ENTITLEMENTS_XSOLLA_PROJECT_ID": "7"}, ["XSOLLA_UNLISTED_PROJECTS_OPEN"]),
        ({"GATEWAY_XSOLLA_PROJECT_SECRETS": "7=s"}, []),
    ],
)
def test_the_single_project_variables_warn_while_a_secret_is_open(env: dict[str, str], warnings: list[str]) -> None:
    """GATEWAY_XSOLLA_SECRET, which signs for every unlisted project, is warned about (and a missing default project
    with it); projects listed with their own secrets are not."""
    assert list(WebhookSettings.from_env(env).warnings()) == warnings


def test_the_gateway_reads_the_projects_file_variable(tmp_path: Path) -> None:
    """ENTITLEMENTS_PROJECTS_FILE, shared with the service, reaches the gateway's settings."""
    settings = GatewaySettings.from_env({"ENTITLEMENTS_PROJECTS_FILE": str(tmp_path / "projects.toml")})
    assert settings.projects_file == tmp_path / "projects.toml"


async def run_command(env: dict[str, str]) -> tuple[int | None, str]:
    """`python -m webhook_gateway` with `env` (and nothing else of this process's settings): exit code, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhook_gateway",
        env=command_env(**env),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode, stderr.decode()


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        (
            TWICE,
            {},
            "projects.2.xsolla.webhook_secrets[0] is the same secret as projects.1.xsolla.webhook_secrets[0]",
        ),
        (
            LIVE,
            {"GATEWAY_XSOLLA_SECRET": "topsecret"},
            "GATEWAY_XSOLLA_SECRET: not read when ENTITLEMENTS_PROJECTS_FILE is set; put it in the projects file",
        ),
    ],
    ids=["duplicate", "old-variable"],
)
async def test_command_refuses_a_bad_projects_file(
    tmp_path: Path, text: str, extra: dict[str, str], message: str
) -> None:
    """`python -m webhook_gateway` exits 2 naming the projects file's bad entry, never showing the secret."""
    path = projects_file(tmp_path, text)
    code, stderr = await run_command({"ENTITLEMENTS_PROJECTS_FILE": str(path), "REDIS_URL": "redis://x", **extra})
    assert code == 2
    assert message in stderr
    assert "topsecret" not in stderr


@pytest.mark.slow
async def test_command_serves_the_projects_of_its_projects_file(
    tmp_path: Path, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """`python -m webhook_gateway` reads ENTITLEMENTS_PROJECTS_FILE: its start line counts the projects and secrets
    (showing none), each project's secret verifies only its webhooks, and the event records the project."""
    path = projects_file(
        tmp_path,
        f'[projects.308077.xsolla]\nwebhook_secrets = ["{LIVE_SECRET}"]\n'
        f'[projects.18404.xsolla]\nwebhook_secrets = ["{STAGING_SECRET}"]\n',
    )
    process = await start_gateway_command(redis_server.url, projects_file=path)
    assert process.stderr is not None
    try:
        started: dict[str, Any] | None = None
        while started is None:
            line = await asyncio.wait_for(process.stderr.readline(), timeout=30)
            assert line, "the gateway exited before serving"
            record = json.loads(line)
            if record["event"] == "gateway_started":
                started = record
        assert (started["projects"], started["secrets"], started["secret_for_unlisted_projects"]) == (2, 2, False)
        assert started["settings"] == f"projects file {path}"
        url = f"http://127.0.0.1:{started['port']}{started['path']}"
        order = fixture("order_paid_combined")  # names project 308077
        async with aiohttp.ClientSession() as http:
            assert (await send(http, f"{url}/308077", order, STAGING_SECRET)).status == 400
            assert (await send(http, url, order, STAGING_SECRET)).status == 400
            assert (await send(http, url, order, LIVE_SECRET)).status == 204
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "topsecret" not in json.dumps(started) + rest.decode()
    assert [stored.event.project_id for stored in await stored_events(redis_client)] == [308077]

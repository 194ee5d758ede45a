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
from providers.xsolla.settings import parse_project_secrets
from server.embedded import EmbeddedRedis
from tests.helpers.gateway import ROOT, command_env, fixture, send, start_gateway_command, stored_events
from webhook_gateway.config import GatewaySettings


def read_env(env: dict[str, str]) -> tuple[GatewaySettings, WebhookSettings]:
    """Both halves of the gateway's configuration, read as `python -m webhook_gateway` reads them."""
    return GatewaySettings.from_env(env, named_networks=NAMED_NETWORKS), WebhookSettings.from_env(env)


def test_defaults() -> None:
    """With only a secret set, every other setting has its documented default."""
    settings, xsolla = read_env({"GATEWAY_XSOLLA_SECRET": "s3cret"})
    # No path: the provider's, `/webhooks/xsolla` (test_gateway checks the served URL).
    assert (settings.host, settings.port, settings.path) == ("127.0.0.1", 8080, None)
    assert (xsolla.default_secret, dict(xsolla.project_secrets)) == ("s3cret", {})
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
    assert xsolla.secrets_for(308077) == ("live",)
    assert xsolla.secrets_for(18404) == ("sandbox",)
    assert xsolla.secrets_for(1) == ("default",)
    assert xsolla.secrets_for(None) == ("default",)
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
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    """`python -m webhook_gateway` serves webhooks on its own, logs JSON, and exits 0 on SIGTERM."""
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
    assert [record["event"] for record in lines] == ["USER_DIRECTORY_ALLOW_ALL", "gateway_started"]
    assert len(await stored_events(redis_client)) == 1

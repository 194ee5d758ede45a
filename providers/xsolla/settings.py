"""Xsolla's settings, read once from the environment at start-up: the webhook secrets (the gateway's) and the
order APIs (the service's).

Every variable is listed with its default in the README. Secrets are kept out of `repr()` and out of every
error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from core.environ import EnvReader
from core.errors import ConfigError

STORE_API = "https://store.xsolla.com/api"
WS_URL = "wss://ws-store.xsolla.com/connection/websocket"
_MAX_PROJECT_ID = 2**63 - 1


def _no_project_secrets() -> Mapping[int, tuple[str, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class WebhookSettings:
    """The secrets Xsolla's webhooks are signed with (Publisher Account -> Project settings -> Webhooks).

    The project a webhook belongs to picks its secret: `project_secrets[project]` when that project is
    configured (several secrets are accepted while one is being rotated), otherwise `default_secret`.
    """

    default_secret: str | None = field(default=None, repr=False)
    project_secrets: Mapping[int, tuple[str, ...]] = field(default_factory=_no_project_secrets, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookSettings:
        """Reads `GATEWAY_XSOLLA_SECRET[_FILE]` and `GATEWAY_XSOLLA_PROJECT_SECRETS[_FILE]`.

        Raises:
            ConfigError: a variable is malformed, a file it names cannot be read, or no secret is set at all.
        """
        reader = EnvReader(os.environ if env is None else env)
        default_secret = reader.text("GATEWAY_XSOLLA_SECRET", "")
        secret_file = reader.text("GATEWAY_XSOLLA_SECRET_FILE", "")
        if secret_file:
            if default_secret:
                raise ConfigError("set GATEWAY_XSOLLA_SECRET or GATEWAY_XSOLLA_SECRET_FILE, not both")
            default_secret = reader.file_text("GATEWAY_XSOLLA_SECRET_FILE").strip()
            if not default_secret:
                raise ConfigError(f"GATEWAY_XSOLLA_SECRET_FILE: {secret_file} is empty")
        secrets_text = reader.text("GATEWAY_XSOLLA_PROJECT_SECRETS", "")
        if reader.text("GATEWAY_XSOLLA_PROJECT_SECRETS_FILE", ""):
            secrets_text += "\n" + reader.file_text("GATEWAY_XSOLLA_PROJECT_SECRETS_FILE")
        settings = cls(default_secret=default_secret or None, project_secrets=parse_project_secrets(secrets_text))
        settings.check()
        return settings

    def check(self) -> None:
        """Refuses a configuration that could verify no webhook.

        Raises:
            ConfigError: no default secret and no project secret.
        """
        if not self.default_secret and not self.project_secrets:
            raise ConfigError(
                "no Xsolla secret configured: set GATEWAY_XSOLLA_SECRET (the project's webhook secret key) "
                "and/or GATEWAY_XSOLLA_PROJECT_SECRETS"
            )

    def secrets_for(self, project_id: int | None) -> tuple[str, ...]:
        """The secrets a webhook of `project_id` may be signed with (empty when none is configured)."""
        if project_id is not None:
            configured = self.project_secrets.get(project_id)
            if configured:
                return configured
        return (self.default_secret,) if self.default_secret else ()


def parse_project_secrets(text: str) -> Mapping[int, tuple[str, ...]]:
    """Parses `projectid=secret` entries separated by `;` or newlines (`#` starts a comment line).

    A project listed twice accepts both secrets, which is how a secret is rotated without refusing webhooks.

    Raises:
        ConfigError: an entry is malformed. The message names the entry's position, never its text.
    """
    found: dict[int, list[str]] = {}
    entries = [part.strip() for line in text.splitlines() for part in line.split(";")]
    number = 0
    for entry in entries:
        if not entry or entry.startswith("#"):
            continue
        number += 1
        project, sep, secret = entry.partition("=")
        project, secret = project.strip(), secret.strip()
        if not sep or not project.isdigit() or not project.isascii() or not secret:
            raise ConfigError(f"GATEWAY_XSOLLA_PROJECT_SECRETS: entry {number} is not of the form projectid=secret")
        project_id = int(project)
        if project_id > _MAX_PROJECT_ID:
            raise ConfigError(f"GATEWAY_XSOLLA_PROJECT_SECRETS: entry {number} has an out-of-range project id")
        found.setdefault(project_id, [])
        if secret not in found[project_id]:
            found[project_id].append(secret)
    return MappingProxyType({project: tuple(values) for project, values in found.items()})


@dataclass(frozen=True)
class OrderSettings:
    """How the service reaches Xsolla to follow orders for GetOrderStatus (see docs/ORDER_STATUS.md)."""

    # Xsolla project used when a request leaves project_id at 0; 0: none configured.
    project_id: int = 0
    # Base URL of Xsolla's Store API (Get order: {store_api}/v2/project/{project}/order/{order}).
    store_api: str = STORE_API
    # Xsolla's order-status WebSocket (Centrifugo).
    ws_url: str = WS_URL
    # Off: follow orders at Xsolla by polling only.
    ws_enabled: bool = True
    # A socket not connected this long after it was opened counts as failed: its orders fall back to polling.
    ws_connect_timeout_s: float = 10.0
    # Timeout of one Get order request.
    http_timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OrderSettings:
        """Reads the `ENTITLEMENTS_XSOLLA_*` variables.

        Raises:
            ConfigError: a variable is malformed.
        """
        reader = EnvReader(os.environ if env is None else env)
        return cls(
            project_id=reader.integer("ENTITLEMENTS_XSOLLA_PROJECT_ID", 0, minimum=0, maximum=_MAX_PROJECT_ID),
            store_api=reader.url("ENTITLEMENTS_XSOLLA_STORE_API", STORE_API, schemes=("http", "https")),
            ws_url=reader.url("ENTITLEMENTS_XSOLLA_WS_URL", WS_URL, schemes=("ws", "wss")),
            ws_enabled=reader.boolean("ENTITLEMENTS_XSOLLA_WS_ENABLED", True),
            ws_connect_timeout_s=reader.number("ENTITLEMENTS_XSOLLA_WS_CONNECT_TIMEOUT_S", 10.0, minimum=0.1),
            http_timeout_s=reader.number("ENTITLEMENTS_XSOLLA_HTTP_TIMEOUT_S", 10.0, minimum=0.1),
        )

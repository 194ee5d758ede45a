"""The gateway's settings, read once from the environment at start-up.

Every variable is listed with its default in `docs/WEBHOOKS.md`. They are prefixed `GATEWAY_`, except
`REDIS_URL` and `REDIS_CLUSTER`, which the gateway shares with the service. Secrets are kept out of `repr()`
and out of every error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from core.environ import EnvReader
from webhook_gateway.errors import ConfigError
from webhook_gateway.sources import Network, parse_networks

USER_DIRECTORIES = ("allow_all", "http")
_MAX_PROJECT_ID = 2**63 - 1


def _no_project_secrets() -> Mapping[int, tuple[str, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class GatewaySettings:
    """Typed configuration of the webhook gateway.

    The project a webhook belongs to picks its secret: `project_secrets[project]` when that project is
    configured (several secrets are accepted while one is being rotated), otherwise `default_secret`.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    path: str = "/webhooks/xsolla"
    default_secret: str | None = field(default=None, repr=False)
    project_secrets: Mapping[int, tuple[str, ...]] = field(default_factory=_no_project_secrets, repr=False)
    # None: the caller passes a Redis client to `Gateway` (in-process use); `python -m webhook_gateway` needs it.
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_timeout_s: float = 2.0
    redis_max_connections: int = 32
    max_body_bytes: int = 1024 * 1024
    request_timeout_s: float = 10.0
    event_partitions: int = 1
    dedup_ttl_h: float = 72.0
    allowed_networks: tuple[Network, ...] = ()
    trusted_proxy_header: str | None = None
    trusted_proxy_hops: int = 1
    user_directory: str = "allow_all"
    user_directory_url: str | None = None
    user_directory_timeout_s: float = 2.0
    user_directory_token: str | None = field(default=None, repr=False)
    # None: no metrics listener of its own (the process that embeds the gateway serves the registry).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9465
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_json: bool | None = None  # None: JSON unless stderr is a terminal

    @property
    def dedup_ttl_s(self) -> int:
        return int(self.dedup_ttl_h * 3600)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        """Reads the settings from environment variables.

        Raises:
            ConfigError: a variable is malformed or a file it names cannot be read.
        """
        env = os.environ if env is None else env
        reader = EnvReader(env, ConfigError)
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
        path = reader.text("GATEWAY_PATH", "/webhooks/xsolla")
        directory = reader.text("GATEWAY_USER_DIRECTORY", "allow_all").lower()
        try:
            networks = parse_networks(reader.text("GATEWAY_ALLOWED_NETWORKS", ""))
        except ValueError as exc:
            raise ConfigError(f"GATEWAY_ALLOWED_NETWORKS: {exc}") from None
        metrics_port_text = reader.text("GATEWAY_METRICS_PORT", "").lower()
        log_json_text = reader.text("GATEWAY_LOG_JSON", "")
        settings = cls(
            host=reader.text("GATEWAY_HOST", "127.0.0.1"),
            port=reader.integer("GATEWAY_PORT", 8080, minimum=0, maximum=65535),
            path=path,
            default_secret=default_secret or None,
            project_secrets=parse_project_secrets(secrets_text),
            redis_url=reader.text("REDIS_URL", "") or None,
            redis_cluster=reader.boolean("REDIS_CLUSTER", False),
            redis_timeout_s=reader.number("GATEWAY_REDIS_TIMEOUT_S", 2.0, minimum=0.05),
            redis_max_connections=reader.integer("GATEWAY_REDIS_MAX_CONNECTIONS", 32, minimum=1),
            max_body_bytes=reader.integer("GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            request_timeout_s=reader.number("GATEWAY_REQUEST_TIMEOUT_S", 10.0, minimum=0.1),
            event_partitions=reader.integer("GATEWAY_EVENT_PARTITIONS", 1, minimum=1, maximum=1024),
            dedup_ttl_h=reader.number("GATEWAY_DEDUP_TTL_H", 72.0, minimum=48.0),
            allowed_networks=networks,
            trusted_proxy_header=reader.text("GATEWAY_TRUSTED_PROXY_HEADER", "") or None,
            trusted_proxy_hops=reader.integer("GATEWAY_TRUSTED_PROXY_HOPS", 1, minimum=1, maximum=16),
            user_directory=directory,
            user_directory_url=reader.text("GATEWAY_USER_DIRECTORY_URL", "") or None,
            user_directory_timeout_s=reader.number("GATEWAY_USER_DIRECTORY_TIMEOUT_S", 2.0, minimum=0.05),
            user_directory_token=reader.text("GATEWAY_USER_DIRECTORY_TOKEN", "") or None,
            metrics_host=reader.text("GATEWAY_METRICS_HOST", "127.0.0.1"),
            metrics_port=None
            if metrics_port_text == "off"
            else reader.integer("GATEWAY_METRICS_PORT", 9465, minimum=0, maximum=65535),
            shutdown_grace_s=reader.number("GATEWAY_SHUTDOWN_GRACE_S", 10.0, minimum=0.0),
            log_level=reader.text("GATEWAY_LOG_LEVEL", "info").lower(),
            log_json=None if not log_json_text else reader.boolean("GATEWAY_LOG_JSON", True),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Checks the combination of settings (`from_env` calls it; call it for hand-built settings).

        Raises:
            ConfigError: no secret at all, a malformed path, or an `http` directory without a URL.
        """
        if not self.default_secret and not self.project_secrets:
            raise ConfigError(
                "no Xsolla secret configured: set GATEWAY_XSOLLA_SECRET (the project's webhook secret key) "
                "and/or GATEWAY_XSOLLA_PROJECT_SECRETS"
            )
        if not self.path.startswith("/") or self.path.endswith("/") or "{" in self.path or "}" in self.path:
            raise ConfigError("GATEWAY_PATH must start with '/', must not end with '/' and must not hold braces")
        if self.user_directory not in USER_DIRECTORIES:
            raise ConfigError(f"GATEWAY_USER_DIRECTORY must be one of {', '.join(USER_DIRECTORIES)}")
        if self.user_directory == "http" and not self.user_directory_url:
            raise ConfigError("GATEWAY_USER_DIRECTORY=http needs GATEWAY_USER_DIRECTORY_URL")
        if self.user_directory_url and not self.user_directory_url.startswith(("http://", "https://")):
            raise ConfigError("GATEWAY_USER_DIRECTORY_URL must be an http:// or https:// URL")
        if self.trusted_proxy_header is not None and not self.trusted_proxy_header.isascii():
            raise ConfigError("GATEWAY_TRUSTED_PROXY_HEADER must be a header name")

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

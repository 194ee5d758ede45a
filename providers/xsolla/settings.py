"""Xsolla's settings, read once at start-up: the webhook secrets (the gateway's) and the order APIs (the service's).

The webhook secrets come from the projects file both processes read (`ENTITLEMENTS_PROJECTS_FILE`, laid out in
`core.projects`) or, without one, from the single-project variables `GATEWAY_XSOLLA_*`. In the file, Xsolla's
part of a project and the top-level table for what several projects share:

    [projects.308077.xsolla]
    webhook_secrets = ["<current>", { file = "/run/secrets/xsolla-old" }]  # several while one is rotated
    api_key = { env = "XSOLLA_API_KEY" }    # the admin API's credentials (read by the catalog's settings)
    api_user = 887981                        # merchant id or project id

    [xsolla]
    # A secret two projects share, declared once as such; listed under each of them it is refused.
    shared_webhook_secrets = [{ projects = [308077, 310000], secret = { env = "XSOLLA_SHARED_SECRET" } }]

Each secret belongs to a set of projects (`WebhookSecret`), and a webhook it verified is one of those projects'
(`providers.xsolla.webhooks`). Every variable is listed with its default in the README. Secrets are kept out of
`repr()` and out of every error message, which name the entry instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

from core.environ import EnvReader
from core.errors import ConfigError
from core.projects import MAX_PROJECT_ID, Projects, secret_value

#: Xsolla's name in events, webhook paths and the projects file's tables.
PROVIDER = "xsolla"
STORE_API = "https://store.xsolla.com/api"
WS_URL = "wss://ws-store.xsolla.com/connection/websocket"

#: What a project's `[projects.<id>.xsolla]` table may hold: its webhook secrets (read here) and the admin API's
#: credentials (read by the catalog's settings).
PROJECT_TABLE_KEYS = ("webhook_secrets", "api_key", "api_user")
#: What the top-level `[xsolla]` table may hold.
TOP_TABLE_KEYS = ("shared_webhook_secrets",)
#: The single-project variables a projects file replaces: setting one beside the file is an error.
SINGLE_PROJECT_VARIABLES = (
    "GATEWAY_XSOLLA_SECRET",
    "GATEWAY_XSOLLA_SECRET_FILE",
    "GATEWAY_XSOLLA_PROJECT_SECRETS",
    "GATEWAY_XSOLLA_PROJECT_SECRETS_FILE",
    "ENTITLEMENTS_XSOLLA_PROJECT_ID",
)
_KEY_FORMS = 'text, { file = "<path>" } or { env = "<NAME>" }'


def _no_project_secrets() -> Mapping[int, tuple[str, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class WebhookSecret:
    """One webhook secret and the projects whose webhooks it may sign.

    Attributes:
        value: the secret key.
        projects: the projects it is configured for.
        unlisted: it also signs for every project no secret is configured for (`GATEWAY_XSOLLA_SECRET`, without a
            projects file): the one case where a secret signs for projects nobody named.
    """

    value: str = field(repr=False)
    projects: frozenset[int] = frozenset()
    unlisted: bool = False


@dataclass(frozen=True)
class WebhookSettings:
    """The secrets Xsolla's webhooks are signed with (Publisher Account -> Project settings -> Webhooks), and the
    projects each one belongs to (`secrets`).

    Attributes:
        default_secret: the secret of every project not configured in `project_secrets` or `shared_secrets`
            (`GATEWAY_XSOLLA_SECRET`); always None with a projects file.
        project_secrets: each project's own secrets (several while one is being rotated). Built by hand, a secret
            listed under several projects belongs to each; the projects file refuses that unless it is declared in
            `shared_secrets`.
        shared_secrets: secrets declared as shared, each with the projects it belongs to.
        default_project: the project of a webhook that names none, when the secret that signed it is the default
            secret and belongs to it (a project's own secret tells its project by itself).
        unsigned_projects: projects configured with no webhook secret at all (`webhook_secrets = []`): their
            webhooks are refused.
        source: where the settings came from ("environment", "projects file <path>"), for messages.
    """

    default_secret: str | None = field(default=None, repr=False)
    project_secrets: Mapping[int, tuple[str, ...]] = field(default_factory=_no_project_secrets, repr=False)
    shared_secrets: tuple[tuple[frozenset[int], str], ...] = field(default=(), repr=False)
    default_project: int | None = None
    unsigned_projects: frozenset[int] = frozenset()
    source: str = "environment"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, projects: Projects | None = None) -> WebhookSettings:
        """The secrets of the projects file when there is one (`ENTITLEMENTS_PROJECTS_FILE`), otherwise of
        `GATEWAY_XSOLLA_SECRET[_FILE]` and `GATEWAY_XSOLLA_PROJECT_SECRETS[_FILE]`, with
        `ENTITLEMENTS_XSOLLA_PROJECT_ID` as the default project.

        Args:
            env: the variables (default `os.environ`).
            projects: the projects file, when the caller has read it already.

        Raises:
            ConfigError: a variable or an entry of the file is malformed, a file it names cannot be read, a
                single-project variable is set beside a projects file, or no secret is configured at all.
        """
        environ = os.environ if env is None else env
        reader = EnvReader(environ)
        projects_file = reader.text("ENTITLEMENTS_PROJECTS_FILE", "")
        if projects is not None or projects_file:
            stray = [name for name in SINGLE_PROJECT_VARIABLES if reader.text(name, "")]
            if stray:
                raise ConfigError(
                    f"{', '.join(stray)}: not read when ENTITLEMENTS_PROJECTS_FILE is set; put it in the projects file"
                )
            if projects is None:
                projects = Projects.load(Path(projects_file), PROVIDER, env=environ)
            return cls.from_projects(projects, environ)
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
        default_project = reader.integer("ENTITLEMENTS_XSOLLA_PROJECT_ID", 0, minimum=0, maximum=MAX_PROJECT_ID)
        settings = cls(
            default_secret=default_secret or None,
            project_secrets=parse_project_secrets(secrets_text),
            default_project=default_project or None,
        )
        settings.check()
        return settings

    @classmethod
    def from_projects(cls, projects: Projects, env: Mapping[str, str] | None = None) -> WebhookSettings:
        """The webhook secrets of a projects file: each project's `webhook_secrets` and the top-level
        `shared_webhook_secrets`.

        Args:
            projects: the projects file (`core.projects.Projects.load(path, "xsolla")`).
            env: the environment `{ env = ... }` secrets are read from (default `os.environ`).

        Raises:
            ConfigError: an entry is malformed or cannot be read; a project has no `webhook_secrets` and no
                shared secret; one secret is listed twice (under two projects: it must be declared shared). The
                message names the entry, never the secret.
        """
        check_projects(projects)
        source = projects.source
        claimed: dict[str, tuple[str, int | None]] = {}  # secret -> (the entry that listed it, its project)

        def claim(value: str, entry: str, project: int | None) -> None:
            if value in claimed:
                first, other = claimed[value]
                ids = f"{other}, {project}" if other is not None and project is not None else "<id>, <id>"
                raise ConfigError(
                    f"{source}: {entry} is the same secret as {first}. A secret two projects share must be "
                    f"configured as shared, once: [{PROVIDER}] shared_webhook_secrets = "
                    f"[{{ projects = [{ids}], secret = ... }}]"
                )
            claimed[value] = (entry, project)

        shared = _shared_secrets(projects, env, claim)
        covered = frozenset(project for members, _ in shared for project in members)
        own: dict[int, tuple[str, ...]] = {}
        unsigned: set[int] = set()
        for project_id in sorted(projects.projects):
            table = projects.projects[project_id].provider
            entry = f"projects.{project_id}.{PROVIDER}.webhook_secrets"
            if "webhook_secrets" not in table:
                if project_id in covered:
                    continue
                raise ConfigError(
                    f"{source}: {entry} is missing: list the project's webhook secret key (Publisher Account -> "
                    "Project settings -> Webhooks), or share one in "
                    f"[{PROVIDER}] shared_webhook_secrets; webhook_secrets = [] refuses all of its webhooks"
                )
            values = table["webhook_secrets"]
            if not isinstance(values, list):
                raise ConfigError(f"{source}: {entry} must be a list of secrets, each {_KEY_FORMS}")
            mine: list[str] = []
            for index, value in enumerate(values):
                text = secret_value(value, f"{source}: {entry}[{index}]", env)
                if text not in mine:  # the same secret twice for one project: once is enough
                    claim(text, f"{entry}[{index}]", project_id)
                    mine.append(text)
            if mine:
                own[project_id] = tuple(mine)
            elif project_id not in covered:
                unsigned.add(project_id)
        settings = cls(
            project_secrets=MappingProxyType(own),
            shared_secrets=tuple(shared),
            default_project=projects.default_project,
            unsigned_projects=frozenset(unsigned),
            source=source,
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuses a configuration that could verify no webhook.

        Raises:
            ConfigError: no secret at all.
        """
        if self.secrets:
            return
        if self.source == "environment":
            raise ConfigError(
                "no Xsolla secret configured: set GATEWAY_XSOLLA_SECRET (the project's webhook secret key) "
                "and/or GATEWAY_XSOLLA_PROJECT_SECRETS, or list the projects in ENTITLEMENTS_PROJECTS_FILE"
            )
        raise ConfigError(f"{self.source}: no project has a webhook secret (projects.<id>.{PROVIDER}.webhook_secrets)")

    @cached_property
    def secrets(self) -> tuple[WebhookSecret, ...]:
        """Every configured secret once, with the projects it belongs to."""
        owners: dict[str, set[int]] = {}
        for project, values in self.project_secrets.items():
            for value in values:
                owners.setdefault(value, set()).add(project)
        for members, value in self.shared_secrets:
            owners.setdefault(value, set()).update(members)
        if self.default_secret:
            owners.setdefault(self.default_secret, set())
        return tuple(
            WebhookSecret(value, frozenset(projects), unlisted=value == self.default_secret)
            for value, projects in owners.items()
        )

    @cached_property
    def listed(self) -> frozenset[int]:
        """The projects a secret is configured for (the default secret signs for every other project)."""
        return frozenset(project for secret in self.secrets for project in secret.projects)

    def signs_for(self, secret: WebhookSecret, project: int) -> bool:
        """Whether `secret` may sign webhooks of `project`."""
        if project <= 0:
            return False
        return project in secret.projects or (secret.unlisted and project not in self.listed)

    def secrets_for(self, project: int) -> tuple[WebhookSecret, ...]:
        """The secrets that may sign webhooks of `project` (empty when none is configured)."""
        return tuple(secret for secret in self.secrets if self.signs_for(secret, project))

    def implied_project(self, secret: WebhookSecret) -> int | None:
        """The project of a webhook that names none, decided by the secret that signed it: the one project the
        secret belongs to, or the default project when the secret is the default secret and signs for it. None
        otherwise: a secret that several projects share does not tell which of them a webhook is from."""
        if not secret.unlisted:
            return next(iter(secret.projects)) if len(secret.projects) == 1 else None
        default = self.default_project
        return default if default is not None and self.signs_for(secret, default) else None

    def describe(self) -> dict[str, object]:
        """What the start-up log line says: how many projects and secrets, never a secret."""
        return {
            "projects": len(self.listed),
            "secrets": len(self.secrets),
            "secret_for_unlisted_projects": self.default_secret is not None,
            "default_project": self.default_project,
            "settings": self.source,
        }

    def warnings(self) -> dict[str, str]:
        """What an operator should fix, by a short code: each is logged once at start."""
        found: dict[str, str] = {}
        if self.default_secret is not None:
            found["XSOLLA_UNLISTED_PROJECTS_OPEN"] = (
                "GATEWAY_XSOLLA_SECRET verifies the webhooks of every project not listed in "
                "GATEWAY_XSOLLA_PROJECT_SECRETS, whichever project they name. List your projects with their own "
                "secrets (a projects file, ENTITLEMENTS_PROJECTS_FILE, or GATEWAY_XSOLLA_PROJECT_SECRETS without "
                "GATEWAY_XSOLLA_SECRET) so that only a project's own secret signs its webhooks."
            )
            if self.default_project is None:
                found["XSOLLA_NO_DEFAULT_PROJECT"] = (
                    "ENTITLEMENTS_XSOLLA_PROJECT_ID is not set: a webhook that names no project (order_paid and "
                    "order_canceled in separate mode, refund) signed with GATEWAY_XSOLLA_SECRET is refused unless "
                    "it is posted to <path>/<project id>."
                )
        if self.unsigned_projects:
            found["XSOLLA_PROJECTS_REFUSED"] = (
                f"projects {', '.join(map(str, sorted(self.unsigned_projects)))} have webhook_secrets = []: "
                "every webhook of theirs is refused."
            )
        return found


def check_projects(projects: Projects) -> None:
    """Checks the keys of the projects file's Xsolla tables (both processes read the file; each checks it).

    Raises:
        ConfigError: a key that is not one of `PROJECT_TABLE_KEYS` (in a project's table) or `TOP_TABLE_KEYS` (at
            the top level), named.
    """
    unknown = sorted(set(projects.provider) - set(TOP_TABLE_KEYS))
    if unknown:
        raise ConfigError(
            f"{projects.source}: [{PROVIDER}]: unknown keys {unknown}; it may hold {', '.join(TOP_TABLE_KEYS)}"
        )
    for project_id in sorted(projects.projects):
        unknown = sorted(set(projects.projects[project_id].provider) - set(PROJECT_TABLE_KEYS))
        if unknown:
            raise ConfigError(
                f"{projects.source}: projects.{project_id}.{PROVIDER}: unknown keys {unknown}; "
                f"it may hold {', '.join(PROJECT_TABLE_KEYS)}"
            )


def _shared_secrets(
    projects: Projects, env: Mapping[str, str] | None, claim: Callable[[str, str, int | None], None]
) -> list[tuple[frozenset[int], str]]:
    """The top-level `shared_webhook_secrets`: each a secret and the two or more listed projects it belongs to."""
    entries = projects.provider.get("shared_webhook_secrets", [])
    name = f"{PROVIDER}.shared_webhook_secrets"
    form = "{ projects = [<id>, <id>, ...], secret = ... }"
    if not isinstance(entries, list):
        raise ConfigError(f"{projects.source}: {name} must be a list of {form}")
    shared: list[tuple[frozenset[int], str]] = []
    for index, entry in enumerate(entries):
        where = f"{name}[{index}]"
        if not isinstance(entry, Mapping) or set(entry) != {"projects", "secret"}:
            raise ConfigError(f"{projects.source}: {where} must be {form}")
        members = entry["projects"]
        if not isinstance(members, list) or any(isinstance(m, bool) or not isinstance(m, int) for m in members):
            raise ConfigError(f"{projects.source}: {where}.projects must be a list of project ids")
        strangers = sorted(set(members) - set(projects.projects))
        if strangers:
            raise ConfigError(f"{projects.source}: {where}.projects: {strangers} not listed as [projects.<id>]")
        if len(set(members)) < 2:
            raise ConfigError(
                f"{projects.source}: {where}.projects must name at least two projects; a project's own secret "
                f"goes in projects.<id>.{PROVIDER}.webhook_secrets"
            )
        value = secret_value(entry["secret"], f"{projects.source}: {where}.secret", env)
        claim(value, f"{where}.secret", None)
        shared.append((frozenset(members), value))
    return shared


def parse_project_secrets(text: str) -> Mapping[int, tuple[str, ...]]:
    """Parses `projectid=secret` entries separated by `;` or newlines (`#` starts a comment line).

    A project listed twice accepts both secrets, which is how a secret is rotated without refusing webhooks; a
    secret listed for two projects signs for both.

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
        if not 0 < project_id <= MAX_PROJECT_ID:
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
            project_id=reader.integer("ENTITLEMENTS_XSOLLA_PROJECT_ID", 0, minimum=0, maximum=MAX_PROJECT_ID),
            store_api=reader.url("ENTITLEMENTS_XSOLLA_STORE_API", STORE_API, schemes=("http", "https")),
            ws_url=reader.url("ENTITLEMENTS_XSOLLA_WS_URL", WS_URL, schemes=("ws", "wss")),
            ws_enabled=reader.boolean("ENTITLEMENTS_XSOLLA_WS_ENABLED", True),
            ws_connect_timeout_s=reader.number("ENTITLEMENTS_XSOLLA_WS_CONNECT_TIMEOUT_S", 10.0, minimum=0.1),
            http_timeout_s=reader.number("ENTITLEMENTS_XSOLLA_HTTP_TIMEOUT_S", 10.0, minimum=0.1),
        )

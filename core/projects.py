"""The provider projects one deployment serves, read by both processes from one TOML file.

A studio with a live project and a test project (or two games) runs one service and one gateway for all of them;
every stored record is namespaced by project (`core.keys`), so nothing of one project ever touches another's.
`ENTITLEMENTS_PROJECTS_FILE` names the file, and the service and the gateway read the same one:

    # The project of a request that leaves project_id at 0 and whose API key is bound to several projects.
    # Optional when exactly one project is listed.
    default_project = 308077

    [projects.308077]
    name = "live"                 # for logs; default: the id
    sandbox = "ignore"            # sandbox orders and dry-run payments: "ignore" (default) or "grant"
    catalog = "xsolla"            # "xsolla" (the provider's admin catalog; needs API credentials), "file", "none"
    catalog_file = "catalog.toml" # optional: overrides or completes the provider's catalog

      [projects.308077.xsolla]    # the provider's own settings (see the provider's settings module)
      webhook_secrets = ["...", { file = "/run/secrets/old" }]
      api_key = { env = "XSOLLA_API_KEY_LIVE" }

    [projects.310000]
    name = "staging"
    sandbox = "grant"
    catalog = "file"
    catalog_file = "staging-catalog.toml"

The provider's table (`[projects.<id>.<provider>]`, and `[<provider>]` at the top level for what concerns several
projects, such as a webhook secret shared by two of them) is kept as parsed TOML in `Project.provider` and
`Projects.provider`; the provider's settings read it (`providers.xsolla.settings`). Any secret there may be
given inline, as `{ file = "<path>" }` (relative to the projects file's folder, like `catalog_file`) or as
`{ env = "<VARIABLE>" }` (`secret_value`).

Without the file, each process builds its `Projects` from its older single-project variables (documented in the
README): then no project list may be known at all (`Projects.listed` is False) and any project id is served with
the settings of `Projects.template`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core.errors import ConfigError

#: What a project does with sandbox orders and dry-run payments.
SANDBOX_IGNORE = "ignore"
SANDBOX_GRANT = "grant"
SANDBOX_POLICIES = (SANDBOX_IGNORE, SANDBOX_GRANT)

#: Where a project's catalog comes from: the provider's admin catalog API, a local file only, or nowhere (every
#: sku is then a plain item).
CATALOG_PROVIDER = "provider"
CATALOG_FILE = "file"
CATALOG_NONE = "none"

#: Project ids are the provider's: positive 63-bit integers.
MAX_PROJECT_ID = 2**63 - 1

_PROJECT_KEYS = frozenset({"name", "sandbox", "catalog", "catalog_file"})
_TOP_KEYS = frozenset({"default_project", "projects"})


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Project:
    """One provider project and how this deployment treats it.

    Attributes:
        id: the provider's project id.
        name: a short name for logs and the console (the id unless configured).
        sandbox: `SANDBOX_IGNORE` or `SANDBOX_GRANT`.
        catalog_source: `CATALOG_PROVIDER`, `CATALOG_FILE` or `CATALOG_NONE`.
        catalog_file: a local catalog that overrides or completes the provider's (or is the whole catalog).
        provider: the provider's own table for this project, as parsed from TOML (secrets, API credentials).
    """

    id: int
    name: str = ""
    sandbox: str = SANDBOX_IGNORE
    catalog_source: str = CATALOG_NONE
    catalog_file: Path | None = None
    provider: Mapping[str, Any] = field(default_factory=_empty, repr=False)

    @property
    def label(self) -> str:
        """The name, or the id when it has none."""
        return self.name or str(self.id)


@dataclass(frozen=True)
class Projects:
    """The projects a process serves.

    Attributes:
        projects: project id -> Project. Empty when no list is known (`listed` False).
        default_project: the project of a request that names none; None when there is none.
        listed: True when the projects are a closed list (a projects file, or a single configured project): a
            project not in it is refused. False: any project id is served, with `template`'s settings.
        template: the settings of a project not listed, when `listed` is False (its `id` is 0).
        provider: the provider's top-level table (settings spanning several projects), as parsed from TOML.
        source: where the list came from, for messages ("projects file <path>", "environment").
    """

    projects: Mapping[int, Project] = field(default_factory=_empty)
    default_project: int | None = None
    listed: bool = False
    template: Project = field(default_factory=lambda: Project(0))
    provider: Mapping[str, Any] = field(default_factory=_empty, repr=False)
    source: str = "environment"

    def get(self, project_id: int) -> Project | None:
        """The project's settings; None when the list is closed and does not hold it."""
        project = self.projects.get(project_id)
        if project is not None:
            return project
        if self.listed or project_id <= 0:
            return None
        return replace(self.template, id=project_id)

    def serves(self, project_id: int) -> bool:
        """Whether `project_id` is one of this deployment's projects (what `get` says, without building the
        settings of an unlisted one: every RPC asks)."""
        return project_id in self.projects or (not self.listed and project_id > 0)

    @property
    def ids(self) -> tuple[int, ...]:
        """The listed project ids, in ascending order (empty when no list is known)."""
        return tuple(sorted(self.projects))

    def or_single(self, project_id: int | None) -> Projects:
        """These projects; or, when they are an open list and `project_id` is set (the single-project variable, or
        settings made in code), that project alone, listed and default."""
        if project_id and not self.listed:
            return Projects.single(project_id, self.template)
        return self

    @classmethod
    def single(cls, project_id: int | None, template: Project | None = None) -> Projects:
        """The projects of the single-project variables: `project_id` listed and default when given (non-zero),
        otherwise an open list with no default project."""
        base = template or Project(0)
        if project_id:
            project = replace(base, id=project_id)
            return cls(MappingProxyType({project_id: project}), project_id, True, base)
        return cls(default_project=None, listed=False, template=base)

    @classmethod
    def load(cls, path: Path, provider_name: str, *, env: Mapping[str, str] | None = None) -> Projects:
        """Reads a projects file.

        Args:
            path: the TOML file.
            provider_name: the provider's name, which is the name of its tables and of the `catalog` value that
                means "the provider's admin catalog" (e.g. "xsolla").
            env: the environment `{ env = ... }` secrets are read from (checked here only for form).

        Raises:
            ConfigError: the file cannot be read or parsed, or an entry is invalid; the message names the file
                and the entry, never a secret.
        """
        where = f"projects file {path}"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"ENTITLEMENTS_PROJECTS_FILE: cannot read {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
        return cls.from_mapping(data, provider_name, source=where, base_dir=path.parent)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], provider_name: str, *, source: str = "projects", base_dir: Path | None = None
    ) -> Projects:
        """Builds the projects from parsed TOML (see the module's docstring for the layout).

        Raises:
            ConfigError: an entry is invalid; the message names it.
        """
        unknown = set(data) - _TOP_KEYS - {provider_name}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
        tables = data.get("projects")
        if not isinstance(tables, Mapping) or not tables:
            raise ConfigError(f"{source}: list at least one project as [projects.<project id>]")
        projects: dict[int, Project] = {}
        for key, table in tables.items():
            project = _project(source, key, table, provider_name, base_dir)
            projects[project.id] = project
        default = data.get("default_project")
        if default is None:
            default_id = next(iter(projects)) if len(projects) == 1 else None
        else:
            if isinstance(default, bool) or not isinstance(default, int) or default not in projects:
                raise ConfigError(f"{source}: default_project must be the id of a listed project")
            default_id = default
        provider = data.get(provider_name, {})
        if not isinstance(provider, Mapping):
            raise ConfigError(f"{source}: [{provider_name}] must be a table")
        return cls(
            projects=MappingProxyType(projects),
            default_project=default_id,
            listed=True,
            provider=MappingProxyType(_resolve_files(provider, base_dir)),
            source=source,
        )


def project_id_problem(value: Any) -> str | None:
    """What makes `value` unusable as a project id, in words that follow the field's name; None when fine."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if value <= 0 or value > MAX_PROJECT_ID:
        return f"must be between 1 and {MAX_PROJECT_ID}"
    return None


def secret_value(value: Any, where: str, env: Mapping[str, str] | None = None) -> str:
    """A secret as configured: inline text, `{ file = "<path>" }` (its content, stripped) or `{ env = "<NAME>" }`.

    Raises:
        ConfigError: the form is wrong, the file cannot be read, the variable is unset, or the secret is empty.
            The message names `where` and the file or variable, never the secret.
    """
    environ = os.environ if env is None else env
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, Mapping) and len(value) == 1 and isinstance(next(iter(value.values())), str):
        kind, target = next(iter(value.items()))
        if kind == "file":
            try:
                text = Path(target).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(f"{where}: cannot read {target}: {detail}") from None
        elif kind == "env":
            if target not in environ:
                raise ConfigError(f"{where}: the variable {target} is not set")
            text = environ[target].strip()
        else:
            raise ConfigError(f'{where}: a secret is text, {{ file = "<path>" }} or {{ env = "<NAME>" }}')
    else:
        raise ConfigError(f'{where}: a secret is text, {{ file = "<path>" }} or {{ env = "<NAME>" }}')
    if not text:
        raise ConfigError(f"{where}: the secret is empty")
    return text


def _resolve_files(table: Mapping[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """`table` with every `{ file = "<relative path>" }` secret made relative to the projects file's folder, as
    `catalog_file` is, so a file means the same whatever directory the process starts in."""

    def resolved(value: Any) -> Any:
        if isinstance(value, Mapping):
            if base_dir is not None and set(value) == {"file"} and isinstance(value["file"], str):
                target = Path(value["file"])
                return {"file": str(target if target.is_absolute() else base_dir / target)}
            return {key: resolved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [resolved(item) for item in value]
        return value

    return {key: resolved(value) for key, value in table.items()}


def _project(source: str, key: Any, table: Any, provider_name: str, base_dir: Path | None) -> Project:
    where = f"{source}: projects.{key}"
    text = str(key)
    if not text.isascii() or not text.isdigit():
        raise ConfigError(f"{where}: the key must be the provider's project id (digits)")
    project_id = int(text)
    problem = project_id_problem(project_id)
    if problem is not None:
        raise ConfigError(f"{where}: the project id {problem}")
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(table) - _PROJECT_KEYS - {provider_name}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    name = table.get("name", "")
    if not isinstance(name, str) or len(name) > 64 or not name.isprintable():
        raise ConfigError(f"{where}: name must be printable text of at most 64 characters")
    sandbox = table.get("sandbox", SANDBOX_IGNORE)
    if sandbox not in SANDBOX_POLICIES:
        raise ConfigError(f"{where}: sandbox must be {' or '.join(SANDBOX_POLICIES)}, not {sandbox!r}")
    provider = table.get(provider_name, {})
    if not isinstance(provider, Mapping):
        raise ConfigError(f"{where}.{provider_name}: must be a table")
    catalog_file = table.get("catalog_file")
    path: Path | None = None
    if catalog_file is not None:
        if not isinstance(catalog_file, str) or not catalog_file:
            raise ConfigError(f"{where}: catalog_file must be a path")
        path = Path(catalog_file)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    sources = {provider_name: CATALOG_PROVIDER, CATALOG_FILE: CATALOG_FILE, CATALOG_NONE: CATALOG_NONE}
    catalog = table.get("catalog")
    if catalog is None:
        # What a reader of the file would guess: the provider's catalog when it can be read, else the file.
        catalog_source = CATALOG_PROVIDER if "api_key" in provider else CATALOG_FILE if path else CATALOG_NONE
    elif catalog in sources:
        catalog_source = sources[catalog]
    else:
        raise ConfigError(f"{where}: catalog must be one of {', '.join(sources)}, not {catalog!r}")
    if catalog_source == CATALOG_FILE and path is None:
        raise ConfigError(f'{where}: catalog = "file" needs catalog_file')
    return Project(
        id=project_id,
        name=name,
        sandbox=sandbox,
        catalog_source=catalog_source,
        catalog_file=path,
        provider=MappingProxyType(_resolve_files(provider, base_dir)),
    )

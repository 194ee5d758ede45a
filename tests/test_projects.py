"""The projects file both processes read (`core.projects`): its layout, its defaults and its errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.projects import (
    CATALOG_FILE,
    CATALOG_NONE,
    CATALOG_PROVIDER,
    SANDBOX_GRANT,
    SANDBOX_IGNORE,
    Project,
    Projects,
    secret_value,
)
from providers.xsolla import load_projects
from server.__main__ import load_settings, main

TWO_PROJECTS = """
default_project = 308077

[projects.308077]
name = "live"
catalog_file = "live-catalog.toml"
  [projects.308077.xsolla]
  webhook_secrets = ["live-secret"]
  api_key = { env = "LIVE_API_KEY" }

[projects.310000]
name = "staging"
sandbox = "grant"
catalog = "file"
catalog_file = "/etc/staging.toml"

[xsolla]
shared_webhook_secrets = []
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "projects.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_two_projects(tmp_path: Path) -> None:
    """Each project keeps its own settings; relative catalog files are read beside the projects file."""
    projects = Projects.load(write(tmp_path, TWO_PROJECTS), "xsolla")
    assert projects.listed
    assert projects.ids == (308077, 310000)
    assert projects.default_project == 308077
    live, staging = projects.get(308077), projects.get(310000)
    assert live is not None
    assert staging is not None
    assert (live.label, live.sandbox, live.catalog_source) == ("live", SANDBOX_IGNORE, CATALOG_PROVIDER)
    assert live.catalog_file == tmp_path / "live-catalog.toml"
    assert dict(live.provider) == {"webhook_secrets": ["live-secret"], "api_key": {"env": "LIVE_API_KEY"}}
    assert (staging.sandbox, staging.catalog_source, staging.catalog_file) == (
        SANDBOX_GRANT,
        CATALOG_FILE,
        Path("/etc/staging.toml"),
    )
    assert dict(projects.provider) == {"shared_webhook_secrets": []}


def test_closed_list(tmp_path: Path) -> None:
    """A project not in the file is not served, whatever its id."""
    projects = Projects.load(write(tmp_path, TWO_PROJECTS), "xsolla")
    assert projects.get(1) is None
    assert not projects.serves(1)
    assert not projects.serves(0)


def test_single_project_is_its_own_default(tmp_path: Path) -> None:
    """With one project listed and no default_project, that project is the default; its catalog defaults to none."""
    projects = Projects.load(write(tmp_path, "[projects.42]\n"), "xsolla")
    assert projects.default_project == 42
    only = projects.get(42)
    assert only is not None
    assert (only.label, only.catalog_source) == ("42", CATALOG_NONE)


def test_several_projects_have_no_default_unless_named(tmp_path: Path) -> None:
    """Two projects and no default_project: requests must name their project."""
    projects = Projects.load(write(tmp_path, "[projects.1]\n[projects.2]\n"), "xsolla")
    assert projects.default_project is None


def test_without_the_file() -> None:
    """The single-project variables: one project listed and default, or an open list served with the template."""
    template = Project(0, sandbox=SANDBOX_GRANT)
    single = Projects.single(7, template)
    assert single.listed
    assert single.ids == (7,)
    assert single.default_project == 7
    assert not single.serves(8)
    assert single.get(7) == Project(7, sandbox=SANDBOX_GRANT)
    open_list = Projects.single(None, template)
    assert not open_list.listed
    assert open_list.default_project is None
    assert open_list.get(9) == Project(9, sandbox=SANDBOX_GRANT)
    assert open_list.get(0) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "list at least one project"),
        ("[projects.abc]\n", "projects.abc: the key must be the provider's project id"),
        ("[projects.0]\n", "projects.0: the project id must be between 1 and"),
        ("[projects.99999999999999999999]\n", "the project id must be between 1 and"),
        ("[projects.1]\nsandbox = 'maybe'\n", "sandbox must be ignore or grant"),
        ("[projects.1]\ncatalog = 'remote'\n", "catalog must be one of xsolla, file, none"),
        ("[projects.1]\ncatalog = 'file'\n", 'catalog = "file" needs catalog_file'),
        ("[projects.1]\ncolour = 'red'\n", "projects.1: unknown keys ['colour']"),
        ("[projects.1]\nname = 5\n", "name must be printable text"),
        ("[projects.1]\nxsolla = 5\n", "projects.1.xsolla: must be a table"),
        ("default_project = 2\n[projects.1]\n", "default_project must be the id of a listed project"),
        ("secrets = 1\n[projects.1]\n", "unknown top-level keys ['secrets']"),
        ("[projects.1\n", "not valid TOML"),
    ],
)
def test_errors_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    """Every malformed file is refused with a message naming the file and the entry."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        Projects.load(path, "xsolla")
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_secret_files_beside_the_projects_file(tmp_path: Path) -> None:
    """A relative `{ file = ... }` secret is read beside the projects file, wherever the process started."""
    (tmp_path / "live.secret").write_text("from-beside\n")
    text = '[projects.1.xsolla]\nwebhook_secrets = [{ file = "live.secret" }, { file = "/abs/s" }, "inline"]\n'
    project = Projects.load(write(tmp_path, text), "xsolla").get(1)
    assert project is not None
    secrets = project.provider["webhook_secrets"]
    assert secrets == [{"file": str(tmp_path / "live.secret")}, {"file": "/abs/s"}, "inline"]
    assert secret_value(secrets[0], "where") == "from-beside"


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing file names the variable and the path."""
    with pytest.raises(ConfigError, match=r"ENTITLEMENTS_PROJECTS_FILE: cannot read .*missing\.toml"):
        Projects.load(tmp_path / "missing.toml", "xsolla")


def test_secret_forms(tmp_path: Path) -> None:
    """A secret is inline text, a file's content or a variable's value, stripped."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    assert secret_value(" inline ", "where") == "inline"
    assert secret_value({"file": str(secret_file)}, "where") == "from-file"
    assert secret_value({"env": "THE_SECRET"}, "where", {"THE_SECRET": "from-env"}) == "from-env"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("  ", "where: the secret is empty"),
        ({"env": "UNSET"}, "where: the variable UNSET is not set"),
        ({"file": "/nonexistent/secret"}, "where: cannot read /nonexistent/secret"),
        ({"vault": "x"}, "where: a secret is text"),
        (5, "where: a secret is text"),
        ({"env": "A", "file": "B"}, "where: a secret is text"),
    ],
)
def test_secret_errors_never_echo(value: object, message: str) -> None:
    """A bad secret is refused with where it was configured, never its content."""
    with pytest.raises(ConfigError) as error:
        secret_value(value, "where", {"SET": "hunter2"})
    assert message in str(error.value)
    assert "hunter2" not in str(error.value)


def test_both_processes_refuse_an_unknown_provider_key(tmp_path: Path) -> None:
    """The service refuses a projects file whose provider table the gateway would refuse, with the same message."""
    path = write(tmp_path, '[projects.1.xsolla]\nwebhook_secrets = ["s"]\nwebhok_secret = "typo"\n')
    with pytest.raises(ConfigError) as gateway_error:
        load_projects(path)
    with pytest.raises(ConfigError) as service_error:
        load_settings({"ENTITLEMENTS_PROJECTS_FILE": str(path), "ENTITLEMENTS_INSECURE_DEV_MODE": "1"})
    assert "projects.1.xsolla: unknown keys ['webhok_secret']" in str(gateway_error.value)
    assert str(service_error.value) == str(gateway_error.value)


def test_the_service_reads_the_projects_file(tmp_path: Path) -> None:
    """The service serves the file's projects, its default project is Xsolla's, and a project id variable beside
    the file is refused."""
    path = write(
        tmp_path, TWO_PROJECTS.replace('catalog_file = "/etc/staging.toml"', 'catalog_file = "live-catalog.toml"')
    )
    (tmp_path / "live-catalog.toml").write_text('[items.vip]\nkind = "time_limited"\nperiod = "30d"\n')
    env = {"ENTITLEMENTS_PROJECTS_FILE": str(path), "LIVE_API_KEY": "k"}
    settings, xsolla = load_settings(env)
    assert settings.projects.ids == (308077, 310000)
    assert xsolla.project_id == 308077
    with pytest.raises(ConfigError, match="ENTITLEMENTS_XSOLLA_PROJECT_ID is set beside ENTITLEMENTS_PROJECTS_FILE"):
        load_settings({**env, "ENTITLEMENTS_XSOLLA_PROJECT_ID": "308077"})
    for variable, value in (("ENTITLEMENTS_SANDBOX_POLICY", "grant"), ("ENTITLEMENTS_CATALOG_FILE", "c.toml")):
        with pytest.raises(ConfigError, match=f"{variable} cannot be used with ENTITLEMENTS_PROJECTS_FILE"):
            load_settings({**env, variable: value})


def test_operator_commands_act_only_on_a_served_project(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every operator command that takes --project, `catalog` included, refuses a malformed or unserved project
    before it touches Redis."""
    for name in [name for name in os.environ if name.startswith(("ENTITLEMENTS_", "REDIS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENTITLEMENTS_XSOLLA_PROJECT_ID", "308077")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")  # never reached
    for command in (
        ["ledger", "player-1", "--project"],
        ["events", "--project"],
        ["catalog", "show", "--project"],
        ["catalog", "refresh", "--project"],
    ):
        tail = ["status"] if command[0] == "events" else []
        with pytest.raises(SystemExit) as parsed:
            main([*command, "-3", *tail])
        assert parsed.value.code == 2
        assert "a project id must be between 1 and" in capsys.readouterr().err
        assert main([*command, "310000", *tail]) == 2
        assert "--project 310000 is not one of the projects of environment" in capsys.readouterr().err

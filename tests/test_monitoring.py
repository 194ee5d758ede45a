"""The monitoring shipped in deploy/: the Grafana dashboard and the Prometheus alert rules use only metrics the two
processes export, the PromQL is valid (promtool), every alert fires on the series it is for and stays quiet on
healthy ones (promtool's unit tests), and every runbook link lands on a section of docs/OPERATIONS.md. Also
tools/ensure_packages.sh, which installs promtool for these tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.app import Service
from server.embedded import EmbeddedRedis
from server.metrics import WATCH_END_REASONS, EmbeddedStoreMetrics, WorkerGroupMetrics
from tests.helpers.gateway import gateway_settings, running_gateway
from tests.helpers.services import ServiceFactory, sample
from tests.helpers.waiting import eventually
from webhook_gateway.metrics import RESULTS

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "entitlements.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
ENSURE_PACKAGES = ROOT / "tools" / "ensure_packages.sh"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: A metric name in PromQL: the service's and the gateway's prefixes, and Prometheus's own `up`.
METRIC_NAME = re.compile(r"\b(?:(?:entitlements|gateway)_[a-z0-9_]+|up)\b(?!\s*\()")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs promtool; fails the test (never skips it) when it is not installed."""
    binary = shutil.which("promtool")
    if binary is None:
        raise AssertionError(
            "promtool not found: install the Debian package prometheus (`tools/ensure_packages.sh prometheus`, "
            "which `make test` runs)"
        )
    argv = [binary, *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603  # argv built here


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def data_panels() -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows only group them), nested rows' panels included."""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in data_panels() for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus would receive it."""
    return expr.replace("$__rate_interval", "5m").replace('"$job"', '".*"').replace('"$instance"', '".*"')


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown document."""
    slugs = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            slugs.add(slug)
    return slugs


def test_the_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts alerts.yml."""
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    """`promtool test rules` passes: each alert fires on its series and stays quiet on healthy ones."""
    result = promtool("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """Each alert has a promtool test that expects it firing and one that expects it quiet."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_every_alert_has_a_summary_a_description_and_a_runbook_section() -> None:
    """Every alert carries summary, description and a runbook_url naming a section of docs/OPERATIONS.md."""
    sections = anchors(OPERATIONS.read_text())
    rules = alert_rules()
    assert len(rules) >= 7
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert annotations["description"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/OPERATIONS.md", rule["alert"]
        assert anchor in sections, f"{rule['alert']}: no section #{anchor} in docs/OPERATIONS.md"


def test_the_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    """The dashboard is valid JSON with unique panel ids, a Prometheus datasource variable, job and instance
    variables, and every panel querying through the variable (no datasource uid written in)."""
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
    ids = [panel["id"] for panel in board["panels"]] + [p["id"] for r in board["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    panels = list(data_panels())
    assert len(panels) >= 30
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    # Every uid in the file is the variable (or Grafana's built-in annotations source).
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text()))
    assert uids <= {"${datasource}", "-- Grafana --", board["uid"]}


def test_every_dashboard_query_filters_by_the_job_and_instance_variables() -> None:
    """Each metric selector of each panel is limited to the chosen jobs and instances."""
    for expr in dashboard_exprs():
        selectors = re.findall(r"\b[a-z_][a-z0-9_]*\{([^}]*)\}", expr)
        assert selectors, expr
        for labels in selectors:
            assert 'job=~"$job"' in labels, expr
            assert 'instance=~"$instance"' in labels, expr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool accepts each panel's query (as a recording rule, Grafana's variables replaced)."""
    exprs = dashboard_exprs()
    rules = [{"record": f"dashboard:panel_query:{index}", "expr": as_promql(e)} for index, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_the_webhook_results_queried_are_the_gateways() -> None:
    """Every `result` value the dashboard and the alerts ask of gateway_webhooks_total is one the gateway counts."""
    texts = [*dashboard_exprs(), *(rule["expr"] for rule in alert_rules())]
    asked = {
        value
        for text in texts
        for labels in re.findall(r"gateway_webhooks_total\{([^}]*)\}", text)
        for match in re.findall(r'result=~?"([^"]*)"', labels)
        for value in match.split("|")
    }
    assert asked, "no result asked for"
    assert asked <= set(RESULTS)


def test_the_watch_end_reasons_queried_are_the_services() -> None:
    """Every `reason` the alerts ask of entitlements_watch_streams_ended_total is one the service counts, and the
    dashboard shows them all (by reason)."""
    asked = {
        value
        for rule in alert_rules()
        for labels in re.findall(r"entitlements_watch_streams_ended_total\{([^}]*)\}", rule["expr"])
        for match in re.findall(r'reason=~?"([^"]*)"', labels)
        for value in match.split("|")
    }
    assert asked == {"fell_behind", "out_of_range"}
    assert asked <= set(WATCH_END_REASONS)
    assert any(
        "sum by (reason)" in expr and "entitlements_watch_streams_ended_total" in expr for expr in dashboard_exprs()
    )


def group_registry() -> CollectorRegistry:
    """The registry a group's parent serves (`server.group.parent.WorkerGroup`, with the embedded store)."""
    registry = CollectorRegistry()
    WorkerGroupMetrics(registry, 2)
    EmbeddedStoreMetrics(registry)
    return registry


def exported_names(exposition: str) -> set[str]:
    """The series names an exposition offers, with the suffixes each metric type adds."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


async def test_every_metric_the_dashboard_and_alerts_use_is_exported(
    service_factory: ServiceFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Scraped from a real service (with its embedded store) and a real gateway, /metrics offers every metric
    name the dashboard and the alert rules query: renaming a metric fails here."""
    service = await service_factory(redis_url=None, data_dir=tmp_path / "var")
    assert service.endpoints is not None
    async with running_gateway(gateway_settings(redis_url=service.endpoints.redis_url)) as gateway:
        # A group parent's own metrics (ENTITLEMENTS_PROCESSES > 1; its workers export the service's).
        exported = {"up"} | exported_names(generate_latest(group_registry()).decode())  # "up": Prometheus's own
        for port in (service.endpoints.metrics_port, gateway.metrics_port):
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                exported |= exported_names(await response.text())
    texts = [*dashboard_exprs(), *(rule["expr"] for rule in alert_rules())]
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert len(used) >= 30
    assert used - exported == set(), "queried but not exported"


async def test_store_up_follows_the_health_of_redis(
    service_factory: ServiceFactory, embedded_server: EmbeddedRedis
) -> None:
    """entitlements_store_up is 1 while the health service says SERVING, 0 while Redis is down, 1 once it is back."""
    service = await service_factory(redis_url=embedded_server.url, health_check_interval_s=0.05)
    assert sample(service, "entitlements_store_up") == 1
    await embedded_server.stop()
    await eventually(lambda: sample(service, "entitlements_store_up") == 0, what="store_up to drop to 0")
    assert await _health(service) == health_pb2.HealthCheckResponse.NOT_SERVING
    await embedded_server.start()
    await eventually(lambda: sample(service, "entitlements_store_up") == 1, what="store_up to come back to 1")
    assert await _health(service) == health_pb2.HealthCheckResponse.SERVING


async def _health(service: Service) -> int:
    """The service's health status, read over gRPC as a load balancer does."""
    assert service.endpoints is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    return int(reply.status)


def _fake_system(tmp_path: Path, *, install_fails_first: bool, installed: str = "") -> dict[str, str]:
    """A PATH whose dpkg-query, apt-get and id are scripts logging their calls to `calls` (dpkg-query reports the
    packages in `installed` as installed; id says root)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    scripts = {
        "dpkg-query": (
            'for arg; do package="$arg"; done\n'
            f'for p in {installed}; do [ "$p" = "$package" ] && {{ printf installed; exit 0; }}; done\n'
            "exit 1"
        ),
        "id": "echo 0",
        "apt-get": (
            f'echo "apt-get $*" >> {log}\n'
            'case "$*" in *update*) touch "$0.updated"; exit 0;; esac\n'
            f'[ "{int(install_fails_first)}" = 1 ] && [ ! -e "$0.updated" ] && '
            '{ echo "E: Unable to locate package"; exit 100; }\n'
            "exit 0"
        ),
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _ensure(env: dict[str, str], *packages: str) -> subprocess.CompletedProcess[str]:
    argv = ["/bin/sh", str(ENSURE_PACKAGES), *packages]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603  # argv built here


def test_ensure_packages_installs_only_the_missing_packages(tmp_path: Path) -> None:
    """ensure_packages.sh asks apt-get for the packages not installed, without recommends, and nothing else."""
    env = _fake_system(tmp_path, install_fails_first=False, installed="prometheus")
    result = _ensure(env, "prometheus", "chromium", "chromium-driver")
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 1
    assert "install -y --no-install-recommends chromium chromium-driver" in calls[0]


def test_ensure_packages_updates_the_lists_only_when_an_install_fails(tmp_path: Path) -> None:
    """A fresh machine (no package lists): the install fails, the lists are updated, the install is retried."""
    env = _fake_system(tmp_path, install_fails_first=True)
    result = _ensure(env, "prometheus")
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [call.split()[-1] for call in calls] == ["prometheus", "update", "prometheus"]


def test_ensure_packages_fails_with_apt_gets_output_when_it_cannot_install(tmp_path: Path) -> None:
    """A package apt-get cannot install: exit status 1, apt-get's output and the package named on stderr."""
    env = _fake_system(tmp_path, install_fails_first=True)
    (tmp_path / "bin" / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package nope'\nexit 100\n")
    result = _ensure(env, "nope")
    assert result.returncode == 1
    assert "E: Unable to locate package nope" in result.stderr
    assert "could not install: nope" in result.stderr


def test_ensure_packages_is_a_silent_no_op_when_everything_is_installed(tmp_path: Path) -> None:
    """With every package installed it calls no apt-get and prints nothing."""
    env = _fake_system(tmp_path, install_fails_first=False, installed="prometheus chromium")
    result = _ensure(env, "prometheus", "chromium")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (tmp_path / "calls").exists()

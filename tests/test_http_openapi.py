"""The HTTP/JSON API does what its OpenAPI document (openapi/entitlements.v1.yaml) says, for any request.

Schemathesis generates requests from the committed document, both valid ones (positive) and ones that break it
(negative), for every operation, with a valid API key and without one, and sends them to the real service: a
`python -m server` process on free ports with its embedded Valkey, following orders at a local Xsolla simulator.
Every answer must be no 5xx, a status code and content type the document names for the operation, and a body
(and for errors, the `google.rpc.Status`) that matches the document's schema; without a key, every answer is 401.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from entitlements.v1 import entitlements_pb2
from server.auth import hash_key
from tests.helpers.services import PROJECT, READER_KEY, WRITER_KEY

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "openapi" / "entitlements.v1.yaml"
SCHEMA = schemathesis.openapi.from_path(DOCUMENT)
OPERATIONS = {
    operation.definition.raw["operationId"]: operation
    for operation in (result.ok() for result in SCHEMA.get_all_operations() if isinstance(result, Ok))
}

#: Examples per operation. Enough to reach every field's edge cases (empty, long, control characters, wrong
#: types) a few times; the whole module stays near a minute on a loaded 2-core machine. GetOrderStatus gets fewer:
#: each accepted stream lasts up to STREAM_WAIT_S, or the service's default max_wait (1 s here) when none is given.
POSITIVE_EXAMPLES = 100
NEGATIVE_EXAMPLES = 50
STREAM_EXAMPLES = 20
UNAUTHENTICATED_EXAMPLES = 8
#: What every answer is checked for.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: A GetOrderStatus stream that follows an order nobody pays lasts its `maxWait`: generated waits are cut to this.
STREAM_WAIT_S = 0.3
DURATION = re.compile(r"^-?[0-9]+(\.[0-9]{1,9})?s$")
#: What an SSE event's `data` holds, by event name: OpenAPI 3.0 cannot say it, the document's description does.
COMPONENTS = yaml.safe_load(DOCUMENT.read_text())["components"]
EVENT_DATA = {
    name: jsonschema_rs.Draft4Validator({"$ref": f"#/components/schemas/{schema}", "components": COMPONENTS})
    for name, schema in (("update", "OrderStatusUpdate"), ("error", "Status"))
}


@dataclass(frozen=True)
class Stack:
    base_url: str
    logs: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for path in sorted(self.logs.glob("*.log"))
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s} s")
        time.sleep(0.1)


def accepts_connections(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    return probe


def answers(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            status = requests.get(url, headers={"Authorization": f"Bearer {READER_KEY}"}, timeout=1).status_code
        except requests.ConnectionError:
            return False
        return status != 503

    return probe


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The simulator and the service as processes, on free ports; stopped at the end of the module."""
    workdir = tmp_path_factory.mktemp("http-openapi")
    logs = workdir / "logs"
    logs.mkdir()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "REDIS_", "GATEWAY_"))}
    sim_port, http_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (logs / "simulator.log").open("wb") as log:
            sim = subprocess.Popen(  # noqa: S603  # argv built here
                [sys.executable, "-m", "xsolla_simulator", "--port", str(sim_port), "--project-id", str(PROJECT)],
                cwd=ROOT,
                env=inherited,
                stdout=log,
                stderr=log,
            )
        processes.append(sim)
        wait_until(accepts_connections(sim_port), sim, "the simulator")
        projects = workdir / "projects.toml"
        projects.write_text(f'[projects.{PROJECT}]\nname = "openapi"\nxsolla.webhook_secrets = ["unused"]\n')
        env = inherited | {
            "ENTITLEMENTS_DATA_DIR": str(workdir / "data"),
            "ENTITLEMENTS_PROJECTS_FILE": str(projects),
            "ENTITLEMENTS_API_KEYS": f"writer:{hash_key(WRITER_KEY)}:read,write;reader:{hash_key(READER_KEY)}:read",
            "ENTITLEMENTS_GRPC_PORT": str(free_port()),
            "ENTITLEMENTS_HTTP_PORT": str(http_port),
            "ENTITLEMENTS_METRICS_PORT": "0",
            "ENTITLEMENTS_CONSOLE_ENABLED": "false",
            "ENTITLEMENTS_LOG_LEVEL": "warning",
            "ENTITLEMENTS_ORDER_MAX_WAIT_S": "1",
            "ENTITLEMENTS_SHUTDOWN_GRACE_S": "1",
            "ENTITLEMENTS_XSOLLA_STORE_API": f"http://127.0.0.1:{sim_port}/api",
            "ENTITLEMENTS_XSOLLA_ADMIN_API": f"http://127.0.0.1:{sim_port}/api",
            "ENTITLEMENTS_XSOLLA_WS_URL": f"ws://127.0.0.1:{sim_port}/connection/websocket",
        }
        with (logs / "service.log").open("wb") as log:
            service = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log, stderr=log)
        processes.append(service)
        base_url = f"http://127.0.0.1:{http_port}"
        wait_until(answers(f"{base_url}/v1/entitlements:check?userId=probe&sku=probe"), service, "the service")
        yield Stack(base_url, logs)
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def short_stream(case: Any) -> None:
    """Cuts a valid `maxWait` of a generated GetOrderStatus request to STREAM_WAIT_S (invalid ones stay: they are
    what the service must refuse)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("maxWait"), str) and DURATION.match(body["maxWait"]):
        seconds = float(body["maxWait"][:-1])
        if 0 < seconds <= 3600:
            body["maxWait"] = f"{min(seconds, STREAM_WAIT_S)}s"


def check_event_data(case: Any, response: Any) -> None:
    """Each event of a GetOrderStatus stream carries the JSON its name says: an OrderStatusUpdate or a Status."""
    if case.operation.definition.raw["operationId"] != "GetOrderStatus" or response.status_code != 200:
        return
    events = [block for block in response.text.split("\n\n") if block.strip() and not block.startswith(":")]
    for block in events:
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields["event"] in EVENT_DATA:
            EVENT_DATA[fields["event"]].validate(json.loads(fields["data"]))
    assert events, "an accepted stream has at least its end"
    assert events[-1].startswith(("event: end", "event: error")), "the last event says how the stream ended"


def run_examples(
    stack: Stack,
    operation_id: str,
    mode: GenerationMode,
    examples: int,
    headers: dict[str, str],
    checks: list[Any],
    also: Callable[[Any, Any], None] | None = None,
    without_key: bool = False,
) -> None:
    """Sends `examples` generated requests of the operation, checking each answer."""
    if operation_id == "GetOrderStatus":
        examples = min(examples, STREAM_EXAMPLES)
    strategy = OPERATIONS[operation_id].as_strategy(generation_mode=mode)
    session = requests.Session()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        # No shrinking: a failure is reported at once, with schemathesis' curl command to reproduce it, instead of
        # after minutes of resending smaller requests to the service.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=strategy)
    def one(case: Any) -> None:
        short_stream(case)
        if without_key:
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        try:
            response = case.call_and_validate(
                base_url=stack.base_url, session=session, headers=headers, checks=checks, timeout=30
            )
        except Exception as exc:
            exc.add_note(stack.log_tail())
            raise
        check_event_data(case, response)
        if also is not None:
            also(case, response)

    try:
        one()
    finally:
        session.close()


def test_document_has_every_rpc() -> None:
    """The document loads, and describes one operation per RPC of the service that has an HTTP mapping (all but the
    client-streaming ones), so the tests below cover them all."""
    service = entitlements_pb2.DESCRIPTOR.services_by_name["EntitlementService"]
    methods = {method.name for method in service.methods if not method.client_streaming}
    assert set(OPERATIONS) == methods


@pytest.mark.parametrize("operation_id", sorted(OPERATIONS))
def test_valid_requests_get_documented_answers(stack: Stack, operation_id: str) -> None:
    """Requests the document allows get a documented status, content type and body, never a 5xx."""
    headers = {"Authorization": f"Bearer {WRITER_KEY}"}
    run_examples(stack, operation_id, GenerationMode.POSITIVE, POSITIVE_EXAMPLES, headers, CHECKS)


@pytest.mark.parametrize("operation_id", sorted(OPERATIONS))
def test_invalid_requests_are_refused_as_documented(stack: Stack, operation_id: str) -> None:
    """Requests that break the document are refused with a documented 4xx and a google.rpc.Status body."""
    headers = {"Authorization": f"Bearer {WRITER_KEY}"}
    run_examples(stack, operation_id, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, headers, CHECKS)


@pytest.mark.parametrize("operation_id", sorted(OPERATIONS))
def test_requests_without_a_key_are_unauthenticated(stack: Stack, operation_id: str) -> None:
    """Without an API key, or with an unknown one, every request, well-formed or not, is 401 UNAUTHENTICATED with
    `WWW-Authenticate: Bearer`: the key is checked before anything else is said, as over gRPC."""

    def unauthenticated(case: Any, response: Any) -> None:
        assert response.status_code == 401, response.text
        assert response.json()["code"] == 16
        assert response.headers["www-authenticate"] == ["Bearer"]

    # Schemathesis sends a made-up Bearer key (an unknown key); the other half of the requests send none.
    for without_key in (False, True):
        run_examples(
            stack, operation_id, GenerationMode.POSITIVE, UNAUTHENTICATED_EXAMPLES, {}, CHECKS, unauthenticated,
            without_key,
        )  # fmt: skip
        run_examples(
            stack, operation_id, GenerationMode.NEGATIVE, UNAUTHENTICATED_EXAMPLES, {}, CHECKS, unauthenticated,
            without_key,
        )  # fmt: skip

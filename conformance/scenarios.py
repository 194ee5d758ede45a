"""Runs one scenario of `scenarios.json` through one client's runner and checks every step.

A scenario is a list of steps. A client step names an op of PROTOCOL.md (`op`, `client`, `args`) and what to
`expect` (`{"ok": true, "result": {...}}` or `{"error": {"code": ..., "message": {"$contains": ...}}}`), and may
`save` fields of its result as variables for later steps. A harness step (`harness`) acts on the world: creates an
order at the simulator, pays it, stops, starts or restarts the service, makes the proxy lose responses. A streaming
step may list harness steps to run `during` it, each once the stream has delivered `after_events` updates, or an
update that matches `after_event`.

Strings in steps may use `${name}`: `user`, `user2` (players of this run alone), `project_a`, `project_b`, and the
variables saved so far. The run's transcript (`Transcript`), with what differs between runs masked, is what the
clients must agree on.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.expect import forward_only, masked, matches, normalize
from conformance.runners import RunnerProcess
from conformance.stack import KEYS, PROJECT_A, PROJECT_B, ConformanceStack
from entitlements.v1 import entitlements_pb2 as pb

SCENARIOS_FILE = Path(__file__).with_name("scenarios.json")
_VARIABLE = re.compile(r"\$\{([a-z_0-9]+)\}")
#: Error codes whose message the service writes: every client must carry it unchanged.
_SERVICE_MESSAGES = frozenset(
    {"INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "ALREADY_EXISTS", "FAILED_PRECONDITION", "NOT_FOUND"}
)
_STREAMING = frozenset({"get_order_status", "follow_order"})


def load_scenarios() -> dict[str, dict[str, Any]]:
    scenarios = json.loads(SCENARIOS_FILE.read_text(encoding="utf-8"))["scenarios"]
    return {scenario["name"]: scenario for scenario in scenarios}


@dataclass
class Transcript:
    """What one client's run of one scenario gave, step by step, masked: compared across clients."""

    steps: list[Any] = field(default_factory=list)


class ScenarioFailure(AssertionError):
    pass


class ScenarioRun:
    def __init__(self, stack: ConformanceStack, runner: RunnerProcess, scenario: dict[str, Any]) -> None:
        self.stack = stack
        self.runner = runner
        self.scenario = scenario
        run = uuid.uuid4().hex[:8]
        self.vars: dict[str, Any] = {
            "user": f"{runner.client}-{scenario['name']}-{run}",
            "user2": f"{runner.client}-{scenario['name']}-{run}-2",
            "project_a": PROJECT_A,
            "project_b": PROJECT_B,
        }
        self.transcript = Transcript()
        self.service_stopped = False

    def _names(self) -> dict[str, str]:
        """Run-specific values to mask in the transcript, longest first (user2 before user)."""
        names = {
            str(value): f"${{{name}}}"
            for name, value in self.vars.items()
            if name not in ("project_a", "project_b") and str(value)
        }
        return dict(sorted(names.items(), key=lambda item: -len(item[0])))

    def substitute(self, value: Any) -> Any:
        """`${name}` replaced by its value, in strings and in every string of lists and objects; an object
        `{"$repeat": n, "of": value}` becomes a list of n copies of value (a batch of 1,001 checks)."""
        if isinstance(value, dict) and "$repeat" in value:
            return [self.substitute(value["of"]) for _ in range(int(value["$repeat"]))]
        if isinstance(value, dict):
            return {key: self.substitute(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.substitute(item) for item in value]
        if isinstance(value, str):
            whole = _VARIABLE.fullmatch(value)
            if whole:
                return self.vars[whole.group(1)]
            return _VARIABLE.sub(lambda m: str(self.vars[m.group(1)]), value)
        return value

    async def run(self) -> Transcript:
        try:
            for index, step in enumerate(self.scenario["steps"]):
                where = f"{self.scenario['name']} step {index} ({step.get('op') or step.get('harness')})"
                if "harness" in step:
                    await self.act(step, where)
                else:
                    await self.client_step(step, where)
        finally:
            if self.service_stopped:
                # A scenario that failed between `stop_service` and `start_service` must not leave the next
                # scenarios without a service.
                assert self.stack.service is not None
                await self.stack.service.start()
        return self.transcript

    def connect_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """A scenario's `connect`: `key` names one of `stack.KEYS` (or null), `endpoint` is `plain` (default),
        `flaky` (through the proxy) or `mtls` (the service that requires client certificates; `tls` then says
        `client_cert` (default) or `no_client_cert`)."""
        assert self.stack.service is not None
        assert self.stack.tls_service is not None
        assert self.stack.proxy is not None
        endpoint = args.get("endpoint", "plain")
        out: dict[str, Any] = {"name": args["name"], "timeout_ms": args.get("timeout_ms", 5000)}
        key = args.get("key")
        out["api_key"] = KEYS[key] if key else None
        for passed in ("project_id", "retry"):
            if passed in args:
                out[passed] = args[passed]
        service = self.stack.tls_service if endpoint == "mtls" else self.stack.service
        out["target"] = self.stack.proxy.target if endpoint == "flaky" else service.target
        out["http_base_url"] = service.http_base_url
        if endpoint == "mtls":
            certs = self.stack.certs
            tls = {"ca_file": str(certs.ca_cert), "server_name": "localhost"}
            if args.get("tls", "client_cert") == "client_cert":
                tls |= {"cert_file": str(certs.client_cert), "key_file": str(certs.client_key)}
            out["tls"] = tls
        return out

    async def client_step(self, step: dict[str, Any], where: str) -> None:
        op = step["op"]
        args = self.substitute(step.get("args", {}))
        if op == "connect":
            args = self.connect_args(args)
        call = asyncio.create_task(self.runner.call(op, step.get("client"), args, timeout_s=step.get("timeout_s", 60)))
        try:
            for action in step.get("during", []):
                await self.runner.wait_events(action.get("after_events", 0), timeout_s=30)
                if "after_event" in action:
                    await self.runner.wait_for(self._seen(action["after_event"]), 30)
                await self.act(action, f"{where} during")
            answer = await call
        finally:
            if not call.done():
                # The runner is still in the middle of this request: its next lines would answer it, not the
                # next one. It is started afresh for the next scenario.
                call.cancel()
                self.runner.broken = True
        actual = normalize(answer)
        expected = normalize(self.substitute(step.get("expect", {"ok": True})))
        problems = matches(expected, actual)
        if op in _STREAMING and answer.get("ok"):
            updates = answer["result"].get("updates", [])
            problems += forward_only(updates)
            if updates != self.runner.events:
                problems.append("$.result.updates differ from the events the runner streamed")
        if problems:
            raise ScenarioFailure(f"{where}: {self.runner.client}:\n  " + "\n  ".join(problems) + f"\nanswer: {answer}")
        for name, path in step.get("save", {}).items():
            value: Any = answer["result"]
            for part in path.split("."):
                value = value[int(part)] if isinstance(value, list) else value[part]
            self.vars[name] = value
        self.transcript.steps.append(self.record(op, actual))

    def _seen(self, expected: Any) -> Callable[[list[dict[str, Any]]], bool]:
        """Whether an event matching `expected` has arrived."""
        wanted = normalize(self.substitute(expected))
        return lambda events: any(not matches(wanted, normalize(event)) for event in events)

    def record(self, op: str, actual: dict[str, Any]) -> Any:
        """The part of an answer all clients must give alike."""
        if not actual.get("ok"):
            error = actual.get("error", {})
            code = error.get("code")
            return {"code": code, "message": error.get("message") if code in _SERVICE_MESSAGES else None}
        result = actual.get("result", {})
        if op in _STREAMING:
            last = (result.get("updates") or [{}])[-1]
            result = {"status": last.get("status"), "granted": bool(last.get("entitlementsGranted"))}
        if op == "cache_stats":
            # How often a cache reopened its stream while the service restarted depends on its backoff's jitter.
            result = {key: value for key, value in result.items() if key != "reopenings"}
        return {"ok": masked(result, self._names())}

    async def act(self, step: dict[str, Any], where: str) -> None:
        stack, action = self.stack, step["harness"]
        assert stack.sim is not None
        assert stack.service is not None
        assert stack.proxy is not None
        args = self.substitute(step)
        if action == "create_order":
            project = int(args.get("project", PROJECT_A))
            order = stack.sim.create_order(args["user"], items=args["items"], project_id=project)
            self.vars[args.get("save", "order")] = str(order.order_id)
            self.vars["token"] = stack.sim.issue_token(args["user"], project_id=project)
        elif action == "issue_token":
            self.vars["token"] = stack.sim.issue_token(args["user"], project_id=int(args.get("project", PROJECT_A)))
        elif action == "set_order_status":
            await stack.sim.set_status(int(args["order"]), args["status"])
        elif action == "sleep":
            await asyncio.sleep(float(args["seconds"]))
        elif action == "restart_service":
            await stack.service.restart()
        elif action == "stop_service":
            self.service_stopped = True
            await stack.service.stop()
        elif action == "start_service":
            await stack.service.start()
            self.service_stopped = False
        elif action == "lose_responses":
            stack.proxy.reset()
            stack.proxy.lose_responses(args["method"], int(args["times"]))
        elif action == "check_proxy":
            self.check_proxy(args, where)
        else:
            raise ScenarioFailure(f"{where}: unknown harness action {action!r}")

    def check_proxy(self, args: dict[str, Any], where: str) -> None:
        """The proxy saw `forwarded` calls of `method`, all with one idempotency key (`same_key`)."""
        assert self.stack.proxy is not None
        method = args["method"]
        requests = [body for name, body in self.stack.proxy.requests if name == method]
        problems = []
        if len(requests) != int(args["forwarded"]):
            problems.append(f"the proxy forwarded {len(requests)} {method} calls, expected {args['forwarded']}")
        if method == "Grant":
            keys = {pb.GrantRequest.FromString(body).idempotency_key for body in requests}
        else:
            keys = {pb.RevokeRequest.FromString(body).idempotency_key for body in requests}
        if args.get("same_key") and (len(keys) != 1 or "" in keys):
            problems.append(f"the {method} attempts carried the idempotency keys {sorted(keys)}, expected one")
        if problems:
            raise ScenarioFailure(f"{where}: {self.runner.client}: " + "; ".join(problems))

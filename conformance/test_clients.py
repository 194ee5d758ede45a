"""Every client runs every scenario of scenarios.json against the real stack, and they all answer alike.

`pytest conformance -k go` runs one client; the agreement tests compare each client's transcript with the Python
client's, the reference, for the scenarios both ran.
"""

from __future__ import annotations

import pytest

from conformance.conftest import Runners
from conformance.runners import CLIENTS
from conformance.scenarios import ScenarioRun, load_scenarios
from conformance.stack import ConformanceStack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]
SCENARIOS = load_scenarios()


def _applies(client: str, scenario: str) -> bool:
    return client not in SCENARIOS[scenario].get("skip_clients", {})


CASES = [
    pytest.param(client, name, id=f"{client}-{name}")
    for client in CLIENTS
    for name in SCENARIOS
    if _applies(client, name)
]


@pytest.mark.parametrize(("client", "scenario"), CASES)
async def test_scenario(stack: ConformanceStack, runners: Runners, client: str, scenario: str) -> None:
    """The client does what the scenario expects at every step."""
    runner = await runners.get(client)
    try:
        transcript = await ScenarioRun(stack, runner, SCENARIOS[scenario]).run()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log_tail(15)}") from None
    runners.transcripts[(client, scenario)] = transcript.steps


AGREEMENT = [
    pytest.param(client, name, id=f"agree-{client}-{name}")
    for client in CLIENTS[1:]
    for name in SCENARIOS
    if _applies(client, name)
]


@pytest.mark.parametrize(("client", "scenario"), AGREEMENT)
async def test_clients_agree(runners: Runners, client: str, scenario: str) -> None:
    """The client's answers equal the Python client's, step by step, once run-specific values are masked."""
    reference = runners.transcripts.get(("python", scenario))
    ours = runners.transcripts.get((client, scenario))
    if reference is None or ours is None:
        pytest.skip(f"{scenario} did not pass for python and {client} in this run")
    assert len(ours) == len(reference)
    for index, (got, want) in enumerate(zip(ours, reference, strict=True)):
        assert got == want, f"{scenario} step {index}: {client} answered {got}, python {want}"

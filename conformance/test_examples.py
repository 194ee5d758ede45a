"""Each client's example game server runs against the real stack: a check, a grant with an idempotency key derived
from the order, and the order followed until its items are granted; run twice, it grants once.

The examples read the same environment (ENTITLEMENTS_TARGET, ENTITLEMENTS_API_KEY, ENTITLEMENTS_PROJECT_ID,
ENTITLEMENTS_INSECURE, PLAYER_ID, ORDER_ID, ORDER_TOKEN, ORDER_MAX_WAIT) and exit 0 when every call answered.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from conformance.runners import ROOT
from conformance.stack import KEYS, PROJECT_A, ConformanceStack
from entitlements import AsyncEntitlementsClient

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

#: How to start each client's example once `make clients` has built it.
EXAMPLES = {
    "go": [str(ROOT / "clients" / "go" / "bin" / "gameserver")],
    "typescript": ["node", str(ROOT / "clients" / "typescript" / "dist-tools" / "examples" / "gameserver.js")],
    "cpp": [str(ROOT / "clients" / "cpp" / "build" / "entitlements_gameserver")],
}


async def _run(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command, env=os.environ | env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT
    )
    async with asyncio.timeout(120):
        output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.parametrize("client", sorted(EXAMPLES))
async def test_example_game_server(stack: ConformanceStack, client: str) -> None:
    """The example checks, grants once across two runs, and follows the order to its grant while the simulator
    takes the payment."""
    assert stack.sim is not None
    assert stack.service is not None
    player = f"example-{client}-{uuid.uuid4().hex[:8]}"
    order = stack.sim.create_order(player, items=[{"sku": "gems", "quantity": 7}], project_id=PROJECT_A)
    env = {
        "ENTITLEMENTS_TARGET": stack.service.target,
        "ENTITLEMENTS_API_KEY": KEYS["writer"],
        "ENTITLEMENTS_PROJECT_ID": str(PROJECT_A),
        "ENTITLEMENTS_INSECURE": "1",
        "PLAYER_ID": player,
        "ORDER_ID": str(order.order_id),
        "ORDER_TOKEN": stack.sim.issue_token(player, project_id=PROJECT_A),
        "ORDER_MAX_WAIT": "60s",
    }
    first = asyncio.create_task(_run(EXAMPLES[client], env))
    await asyncio.sleep(1.5)
    await stack.sim.set_status(order.order_id, "paid")
    code, output = await first
    assert code == 0, output
    code, again = await _run(EXAMPLES[client], env)
    assert code == 0, again
    async with AsyncEntitlementsClient(stack.service.target, api_key=KEYS["reader"]) as reader:
        gold = await reader.check_entitlement(player, "gold_pack", project_id=PROJECT_A)
        gems = await reader.check_entitlement(player, "gems", project_id=PROJECT_A)
    assert gold.entitlement.quantity == 500, (output, again)  # two runs, one grant
    assert gems.active, output  # the order's own line, granted from its webhook while the example followed it

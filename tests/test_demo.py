"""`make demo` (tools/demo.py): one purchase end to end, configured as a deployment is, still tells the truth."""

from __future__ import annotations

import asyncio
import sys

from tests.helpers.gateway import ROOT, command_env


async def test_demo_grants_the_purchase_with_the_catalogs_period() -> None:
    """The demo ends with the gold granted and the pass active for the 30 days the simulator's catalog gives it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.demo",
        cwd=ROOT,
        env=command_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=50)
    output = stdout.decode()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert "PAID      from webhook   items granted" in output
    assert "player-42 holds gold_100: active=True, quantity=1" in output
    assert "player-42 holds vip_pass_30d: active=True" in output
    assert "(expiration_period 30 days): 30 days" in output
    assert "order_paid attempt 1: HTTP 204" in output
    # Configured as in production, nothing warns (no open secret, no project without a catalog).
    assert "warning" not in stderr.decode().lower(), stderr.decode()[-2000:]

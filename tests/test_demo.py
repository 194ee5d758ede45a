"""`make demo` (tools/demo.py): a purchase end to end, and one whose webhook is lost, configured as a deployment is,
still tells the truth."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from tests.helpers.gateway import ROOT, command_env


async def test_demo_grants_both_purchases_the_lost_webhooks_by_reconciliation() -> None:
    """The first purchase grants the gold and the pass for the 30 days the simulator's catalog gives it; the second,
    whose webhook is never delivered, reaches the inventory through reconciliation (the tracker hands it to a sweep
    of Xsolla's orders)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.demo",
        cwd=ROOT,
        env=command_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    communicating = asyncio.ensure_future(process.communicate())
    done, _ = await asyncio.wait({communicating}, timeout=50)
    if not done:
        # Stopped with everything it started (its embedded Valkey), and what it said so far shown.
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = await communicating
        pytest.fail(
            f"the demo did not end within 50 s; its output:\n{stdout.decode()[-3000:]}\n"
            f"its log:\n{stderr.decode()[-3000:]}"
        )
    stdout, stderr = communicating.result()
    output = stdout.decode()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert "PAID      from webhook   items granted" in output
    assert "player-42 holds gold_100: active=True, quantity=1" in output
    assert "player-42 holds vip_pass_30d: active=True" in output
    assert "(expiration_period 30 days): 30 days" in output
    assert "order_paid attempt 1: HTTP 204" in output
    assert "DONE      from reconciliation items granted" in output
    assert "order_paid of order 10000002: 0 deliveries" in output
    assert "player-42 holds gold_100: active=True, quantity=6" in output
    assert "order_paid 10000002: gold_100 +5 by reconciler" in output
    assert "asks the sweeper" in output
    # Configured as in production, nothing warns (no open secret, no project without a catalog).
    assert "warning" not in stderr.decode().lower(), stderr.decode()[-2000:]

"""Runs the simulator on its own, for demos: `python -m xsolla_simulator --port 8900 --webhook-url URL`.

It prints its addresses and serves until interrupted; drive it through the HTTP control API under `/_sim` (more
projects: `POST /_sim/projects`).
The webhook secret is read from `XSOLLA_SIM_WEBHOOK_SECRET` (default "secret") so it stays off the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from xsolla_simulator.projects import WEBHOOK_MODES
from xsolla_simulator.simulator import XsollaSimulator


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xsolla_simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--project-id", type=int, default=12345, help="the simulated project (default 12345)")
    parser.add_argument("--webhook-url", default=None, help="where to send its webhooks (default: nowhere)")
    parser.add_argument(
        "--webhook-mode", choices=WEBHOOK_MODES, default="combined", help="its webhook delivery mode (default combined)"
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies webhook retry waits")
    parser.add_argument("--ping-interval-s", type=float, default=25.0, help="WebSocket ping interval; 0 disables")
    parser.add_argument("--auto-refund", action="store_true", help="cancel orders whose order_paid fails for good")
    return parser.parse_args()


async def _serve(arguments: argparse.Namespace) -> None:
    sim = XsollaSimulator(
        project_id=arguments.project_id,
        webhook_url=arguments.webhook_url,
        webhook_secret=os.environ.get("XSOLLA_SIM_WEBHOOK_SECRET", "secret"),
        webhook_mode=arguments.webhook_mode,
        time_scale=arguments.time_scale,
        ws_ping_interval_s=arguments.ping_interval_s,
        auto_refund=arguments.auto_refund,
        host=arguments.host,
        port=arguments.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
            loop.add_signal_handler(signum, stop.set)
    async with sim:
        print(f"websocket  {sim.ws_url}", flush=True)
        print(f"store api  {sim.store_api_url}", flush=True)
        print(f"control    {sim.control_url}", flush=True)
        await stop.wait()


def main() -> None:
    asyncio.run(_serve(_arguments()))


if __name__ == "__main__":
    main()

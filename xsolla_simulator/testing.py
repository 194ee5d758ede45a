"""Helpers for tests that run against the simulator.

    async with running_simulator(webhook_url=url, time_scale=0.001) as sim:
        ...

or, in a conftest, a factory fixture that stops everything it started:

    @pytest.fixture
    async def simulator_factory() -> AsyncIterator[SimulatorFactory]:
        async with simulator_factory_context() as make:
            yield make
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from xsolla_simulator.simulator import XsollaSimulator

SimulatorFactory = Callable[..., Awaitable[XsollaSimulator]]


@contextlib.asynccontextmanager
async def running_simulator(**kwargs: Any) -> AsyncIterator[XsollaSimulator]:
    """A started `XsollaSimulator(**kwargs)`, stopped on exit."""
    sim = XsollaSimulator(**kwargs)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def simulator_factory_context() -> AsyncIterator[SimulatorFactory]:
    """Yields `make(**kwargs)`, which starts simulators; all of them are stopped on exit, newest first."""
    started: list[XsollaSimulator] = []

    async def make(**kwargs: Any) -> XsollaSimulator:
        sim = XsollaSimulator(**kwargs)
        await sim.start()
        started.append(sim)
        return sim

    try:
        yield make
    finally:
        for sim in reversed(started):
            await sim.stop()

"""One worker of a group of service processes: `python -m server worker --index I --link-fd FD`, started by the
group's parent (`server.group.parent`), never by an operator.

A worker is the whole service (`server.app.Service`) with the settings the parent gave it in its environment (the
ports it holds, the worker's own metrics port, the embedded store's socket as REDIS_URL), listening with
SO_REUSEPORT beside its siblings. Only worker 0 serves the support console (its sessions live in one process's
memory). It tells the parent once it serves, follows what the parent says of the embedded store, and stops
gracefully on SIGTERM or SIGINT, when the parent is gone (the link closes), or when its event consumer stopped on
its own: the parent then starts a fresh one, a new member of the consumer group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import structlog

from core.lifecycle import cancel_and_wait, stop_signals
from server.app import Service
from server.config import Settings
from server.group.link import WorkerEnd

log = structlog.get_logger("server.group.worker")

#: How often a worker checks that its event consumer still runs.
CONSUMER_CHECK_S = 1.0
#: A worker's exit status when its consumer stopped on its own (the parent restarts it).
CONSUMER_LOST = 3


def worker_settings(settings: Settings, index: int, *, parent_store: bool = False) -> Settings:
    """The settings of worker `index`: the ports shared (SO_REUSEPORT), the console on worker 0 only, and whether
    REDIS_URL is the embedded store the parent runs (`parent_store`)."""
    return replace(
        settings,
        processes=1,
        redis_from_group=parent_store,
        grpc_reuse_port=True,
        http=replace(settings.http, reuse_port=True),
        console=replace(settings.console, enabled=settings.console.enabled and index == 0),
    )


async def _consumer_lost(service: Service) -> None:
    """Returns when the service's consumer, once started, no longer runs (a reader ended on an unexpected error)."""
    while True:
        await asyncio.sleep(CONSUMER_CHECK_S)
        if service.consumer is not None and not service.consumer.running:
            return


async def run_worker(
    settings: Settings,
    build: Callable[[Settings], Service],
    *,
    index: int,
    link_fd: int,
    parent_store: bool = False,
) -> int:
    """Runs worker `index` until told to stop; returns its exit status (0, or `CONSUMER_LOST`).

    Args:
        settings: the service's settings, as read from the environment the parent gave.
        build: makes the service from the worker's settings (the composition root chooses its provider).
        index: the worker's index in its group, from 0.
        link_fd: the descriptor of the worker's end of its link to the parent.
        parent_store: REDIS_URL is the embedded store the parent runs (`--parent-store`).
    """
    link = WorkerEnd(link_fd)
    await link.open()
    status = 0
    try:
        async with stop_signals() as stop:
            service = build(worker_settings(settings, index, parent_store=parent_store))
            await service.start()
            await link.ready()
            waits = {
                asyncio.create_task(stop.wait(), name="stop-signal"): "signal",
                asyncio.create_task(link.follow(service.store_change), name="group-link"): "parent_gone",
                asyncio.create_task(_consumer_lost(service), name="consumer-check"): "consumer_lost",
            }
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            await cancel_and_wait(*pending)
            reason = waits[done.pop()]
            if reason == "consumer_lost":
                log.error("consumer_lost", note="the worker stops; the group's parent starts a new one")
                status = CONSUMER_LOST
            else:
                log.info("shutdown_requested", reason=reason, grace_s=service.settings.shutdown_grace_s)
            await service.stop()
    finally:
        await link.close()
    return status

"""The group's port hold (`server.group.ports`) and the processes setting: what may bind beside a held port and what
may not, and `ENTITLEMENTS_PROCESSES` read as the README says."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from server.config import MAX_PROCESSES, Settings
from server.errors import ConfigError, PortInUse
from server.group import hold_port
from server.group.ports import HeldPort


@pytest.fixture
def held() -> Iterator[HeldPort]:
    """A port held for a group on 127.0.0.1, chosen by the kernel."""
    port = hold_port("127.0.0.1", 0, "ENTITLEMENTS_GRPC_PORT")
    yield port
    port.close()


def _socket(*, reuse_port: bool, reuse_address: bool = True) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse_address))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
    return sock


def test_the_groups_workers_bind_and_listen_beside_the_hold(held: HeldPort) -> None:
    """Two sockets with SO_REUSEPORT (as gRPC and aiohttp bind a group's workers) listen on the held port."""
    assert held.port > 0
    workers = [_socket(reuse_port=True) for _ in range(2)]
    try:
        for worker in workers:
            worker.bind(("127.0.0.1", held.port))
            worker.listen()
    finally:
        for worker in workers:
            worker.close()


def test_a_server_without_reuseport_cannot_bind_a_held_port(held: HeldPort) -> None:
    """A single service's socket (SO_REUSEADDR, no SO_REUSEPORT) is refused on the held port."""
    with _socket(reuse_port=False) as single, pytest.raises(OSError, match="in use"):
        single.bind(("127.0.0.1", held.port))


def test_a_second_group_cannot_hold_a_held_port(held: HeldPort) -> None:
    """Another group's parent is refused, naming the setting and the address."""
    with pytest.raises(PortInUse, match=rf"ENTITLEMENTS_GRPC_PORT: 127\.0\.0\.1:{held.port} is in use"):
        hold_port("127.0.0.1", held.port, "ENTITLEMENTS_GRPC_PORT")


def test_a_second_group_cannot_hold_a_port_a_group_listens_on(held: HeldPort) -> None:
    """With the hold closed (as if the parent were gone) but a worker still listening, a new group is refused."""
    with _socket(reuse_port=True) as worker:
        worker.bind(("127.0.0.1", held.port))
        worker.listen()
        held.close()
        with pytest.raises(PortInUse):
            hold_port("127.0.0.1", held.port, "ENTITLEMENTS_GRPC_PORT")


def test_a_released_hold_frees_the_port(held: HeldPort) -> None:
    """Once the group closes its hold, the port is free again for any server."""
    port = held.port
    held.close()
    with _socket(reuse_port=False) as single:
        single.bind(("127.0.0.1", port))


def test_an_unresolvable_host_is_a_configuration_error() -> None:
    """A listen host that does not resolve is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"no-such-host\.invalid"):
        hold_port("no-such-host.invalid", 0, "ENTITLEMENTS_GRPC_PORT")


def test_processes_is_one_by_default_a_number_or_auto() -> None:
    """Unset: 1; a number: that; auto: the cores this process may run on."""
    assert Settings.from_env({}).processes == 1
    assert Settings.from_env({"ENTITLEMENTS_PROCESSES": "3"}).processes == 3
    assert Settings.from_env({"ENTITLEMENTS_PROCESSES": " AUTO "}).processes == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", str(MAX_PROCESSES + 1)])
def test_a_bad_processes_setting_is_refused_naming_it(value: str) -> None:
    """Anything but auto or 1..MAX_PROCESSES is a ConfigError naming the variable and the value."""
    with pytest.raises(
        ConfigError, match=rf"ENTITLEMENTS_PROCESSES must be auto or a number from 1 to 256, not '{value}'"
    ):
        Settings.from_env({"ENTITLEMENTS_PROCESSES": value})

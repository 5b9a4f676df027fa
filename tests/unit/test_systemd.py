"""
systemd's notification protocol (L{inkflow.server.systemd}), against a local
datagram socket standing in for systemd's.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from inkflow.server.systemd import SystemdNotifier, notify, watchdog_period

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX sockets here")


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket where systemd's would be, and its path."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield sock, path


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_notify_sends_one_datagram(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    assert notify("READY=1", {"NOTIFY_SOCKET": path})
    assert received(sock) == ["READY=1"]


def test_notify_reaches_an_abstract_socket() -> None:
    """A leading @ names a socket in the abstract namespace."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0inkflow-test-notify-" + str(id(sock)))
        sock.setblocking(False)
        name = sock.getsockname()
        name = name.decode() if isinstance(name, bytes) else name
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name[1:]})
        assert received(sock) == ["WATCHDOG=1"]


def test_without_systemd_nothing_is_sent(tmp_path: Path) -> None:
    """No $NOTIFY_SOCKET, or one nobody listens on: False, no exception."""
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "relative/path"})


def test_watchdog_period_is_half_of_watchdog_sec() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_period({}, pid=7) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}, pid=7) is None


def test_ready_once_running_then_watchdog_from_the_clock(systemd_socket: tuple[socket.socket, str]) -> None:
    """READY=1 on the reactor's first turn, WATCHDOG=1 every half period, STOPPING=1 on stop, then silence."""
    sock, path = systemd_socket
    clock = Clock()
    notifier = SystemdNotifier(clock, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    notifier.startService()
    assert received(sock) == []  # not before the reactor runs
    clock.advance(0)
    assert received(sock) == ["READY=1\nSTATUS=serving", "WATCHDOG=1"]
    clock.advance(2.0)
    clock.advance(2.0)
    assert received(sock) == ["WATCHDOG=1", "WATCHDOG=1"]
    notifier.stopService()
    assert received(sock) == ["STOPPING=1"]
    clock.advance(10.0)
    assert received(sock) == []


def test_no_watchdog_without_watchdog_usec(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    clock = Clock()
    notifier = SystemdNotifier(clock, {"NOTIFY_SOCKET": path})
    notifier.startService()
    clock.advance(0)
    clock.advance(100)
    assert received(sock) == ["READY=1\nSTATUS=serving"]
    assert clock.getDelayedCalls() == []


def test_not_under_systemd_the_notifier_does_nothing() -> None:
    clock = Clock()
    notifier = SystemdNotifier(clock, {})
    notifier.startService()
    assert clock.getDelayedCalls() == []
    notifier.stopService()

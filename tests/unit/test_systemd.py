"""
systemd's notification protocol (L{inkflow.server.systemd}), against a local
datagram socket standing in for systemd's.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from inkflow.server.systemd import SystemdNotifier, notify, watchdog_period
from tests.unit.helpers import temp_path


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on C{sock}."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


class NotifyTests(TestCase):
    """
    L{notify}, L{watchdog_period} and L{SystemdNotifier}.
    """

    def setUp(self) -> None:
        if not hasattr(socket, "AF_UNIX"):
            self.skipTest("no AF_UNIX sockets here")
        folder = os.path.dirname(temp_path(self))
        self.path = os.path.join(folder, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.sock.close)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def test_notify_sends_one_datagram(self) -> None:
        self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": self.path}))
        self.assertEqual(received(self.sock), ["READY=1"])

    def test_notify_reaches_an_abstract_socket(self) -> None:
        """A leading @ names a socket in the abstract namespace."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(f"\0inkflow-test-notify-{os.getpid()}-{id(sock)}")
            sock.setblocking(False)
            name = sock.getsockname()
            name = name.decode() if isinstance(name, bytes) else name
            self.assertTrue(notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name[1:]}))
            self.assertEqual(received(sock), ["WATCHDOG=1"])

    def test_without_systemd_nothing_is_sent(self) -> None:
        """No $NOTIFY_SOCKET, or one nobody listens on, or not a path: False, no exception."""
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": self.path + "-nobody"}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "relative/path"}))

    def test_watchdog_period_is_half_of_watchdog_sec(self) -> None:
        self.assertEqual(watchdog_period({"WATCHDOG_USEC": "30000000"}, pid=7), 15.0)
        self.assertEqual(watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7), 15.0)
        self.assertIsNone(watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7))
        self.assertIsNone(watchdog_period({}, pid=7))
        self.assertIsNone(watchdog_period({"WATCHDOG_USEC": "soon"}, pid=7))

    def test_ready_once_running_then_watchdog_from_the_clock(self) -> None:
        """READY=1 on the reactor's first turn, WATCHDOG=1 every half period, STOPPING=1 on stop, then silence."""
        clock = Clock()
        notifier = SystemdNotifier(clock, {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": "4000000"})
        notifier.startService()
        self.assertEqual(received(self.sock), [])  # not before the reactor runs
        clock.advance(0)
        self.assertEqual(received(self.sock), ["READY=1\nSTATUS=serving", "WATCHDOG=1"])
        clock.advance(2.0)
        clock.advance(2.0)
        self.assertEqual(received(self.sock), ["WATCHDOG=1", "WATCHDOG=1"])
        notifier.stopService()
        self.assertEqual(received(self.sock), ["STOPPING=1"])
        clock.advance(10.0)
        self.assertEqual(received(self.sock), [])

    def test_no_watchdog_without_watchdog_usec(self) -> None:
        clock = Clock()
        notifier = SystemdNotifier(clock, {"NOTIFY_SOCKET": self.path})
        notifier.startService()
        clock.advance(0)
        clock.advance(100)
        self.assertEqual(received(self.sock), ["READY=1\nSTATUS=serving"])
        self.assertEqual(clock.getDelayedCalls(), [])
        notifier.stopService()

    def test_not_under_systemd_the_notifier_does_nothing(self) -> None:
        clock = Clock()
        notifier = SystemdNotifier(clock, {})
        notifier.startService()
        self.assertEqual(clock.getDelayedCalls(), [])
        notifier.stopService()
        self.assertEqual(received(self.sock), [])

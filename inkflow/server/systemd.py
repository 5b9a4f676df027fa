"""
systemd's notification protocol (sd_notify), in the few lines it takes: with
C{Type=notify} InkFlow says C{READY=1} once it listens, and, with
C{WatchdogSec=}, C{WATCHDOG=1} from its event loop every half period, so a
process whose reactor is stuck is killed and restarted by systemd.

Nothing happens without C{$NOTIFY_SOCKET} (not under systemd, on Windows):
no dependency on libsystemd or a binding.  The protocol: one datagram per
message to the AF_UNIX socket named by C{$NOTIFY_SOCKET} (a leading C{@} is
the abstract namespace); C{$WATCHDOG_USEC} is the period, C{$WATCHDOG_PID},
when set, the process it is meant for.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.application import service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["SystemdNotifier", "notify", "watchdog_period"]

log = Logger()


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{message} (e.g. C{"READY=1"}) to systemd; C{False} when not
    running under it (or it cannot be reached).
    """
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET", "")
    family = getattr(socket, "AF_UNIX", None)
    if not address or family is None or address[0] not in "/@":
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as e:
        log.warn("systemd notification {message!r} not sent: {error}", message=message, error=e.strerror or str(e))
        return False
    return True


def watchdog_period(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """
    Seconds between C{WATCHDOG=1} messages (half of systemd's C{WatchdogSec=}),
    or C{None} when systemd's watchdog is off for this process.
    """
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
        for_pid = int(environ.get("WATCHDOG_PID", "0"))
    except ValueError:
        return None
    if usec <= 0 or (for_pid and for_pid != (pid if pid is not None else os.getpid())):
        return None
    return usec / 2_000_000


class SystemdNotifier(service.Service):
    """
    C{READY=1} on the reactor's first turn (every service started, the ports
    open), C{WATCHDOG=1} from the reactor every half watchdog period,
    C{STOPPING=1} when the stop begins.
    """

    name = "systemd"

    def __init__(self, clock: IReactorTime, environ: Mapping[str, str] | None = None) -> None:
        self.clock = clock
        self.environ = dict(os.environ if environ is None else environ)
        self._ping: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if not self.environ.get("NOTIFY_SOCKET"):
            return
        self.clock.callLater(0, self._ready)

    def _ready(self) -> None:
        if not self.running:
            return
        notify("READY=1\nSTATUS=serving", self.environ)
        period = watchdog_period(self.environ)
        if period is not None:
            self._ping = task.LoopingCall(notify, "WATCHDOG=1", self.environ)
            self._ping.clock = self.clock
            self._ping.start(period, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self._ping = None
        if self.environ.get("NOTIFY_SOCKET"):
            notify("STOPPING=1", self.environ)

"""
Start-up failures as one line: L{guarded} wraps the whole service so that a
port in use, permission denied, or a folder that cannot be made stops
start-up with one line on stderr and exit status 2, never twistd's traceback.

Bad option values never get this far: L{inkflow.settings.load_settings}
refuses them (a bad endpoint string, an unreadable config file) with the same
one line.  What is left fails only when the service starts: twistd opens the
ports in C{privilegedStartService} and starts the rest in C{startService},
both before the reactor runs, both wrapped here.

Under a daemonizing twistd (no C{-n}) the failure is raised as an exception
instead, which twistd reports through its start-up pipe to the parent.

The guard (and the systemd notifier beside it) wrap what C{makeService}
builds, in the plugin and the .tac, not inside it: they belong to the twistd
process, and a C{--workers} worker, which calls C{makeService} too, must not
notify systemd (C{NotifyAccess=main}) nor exit on its own terms.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from inkflow.server.systemd import SystemdNotifier
from inkflow.settings import Settings

__all__ = ["StartupError", "StartupGuard", "describe_failure", "guarded", "posix", "unsupported", "use_twistd_options"]

log = Logger()

#: Set from twistd's own options by the plugin (L{use_twistd_options}); the
#: .tac runs in the foreground (C{twistd -ny}).
_daemon = False
_pidfile: str | None = None


class StartupError(Exception):
    """
    A start-up failure already put into one line (raised under a daemonizing
    twistd, which reports it).
    """


def use_twistd_options(options: Mapping[str, Any]) -> None:
    """
    Remember whether twistd daemonizes and which pid file it writes (from
    twistd's own options, a mapping).
    """
    global _daemon, _pidfile
    _daemon = not options.get("nodaemon")
    _pidfile = options.get("pidfile") or None


def posix() -> bool:
    """
    Whether this system has what C{--workers} needs (inheriting a listening
    socket, POSIX signals).
    """
    return os.name == "posix"


def unsupported(settings: Settings) -> str | None:
    """
    The one line refusing an option this system cannot honour, or C{None}.
    """
    if settings.workers > 1 and not posix():
        return "invalid value for --workers: more than one worker needs a POSIX system (Linux, macOS, BSD)"
    return None


def describe_failure(error: BaseException) -> str | None:
    """
    The one line for a start-up failure, or C{None} when C{error} is not one
    (a defect, which keeps its traceback).
    """
    if isinstance(error, CannotListenError):
        reason = error.socketError
        text = getattr(reason, "strerror", None) or str(reason)
        # A unix socket's "port" is its path, with no interface.
        where = str(error.port) if error.interface is None else f"{error.interface or '*'}:{error.port}"
        return f"cannot listen on {where}: {text}"
    if isinstance(error, OSError) and error.strerror:
        if error.filename is not None:
            return f"{error.strerror}: {error.filename}"
        return error.strerror
    return None


def _fail(line: str) -> None:
    log.critical("Start-up failed: {reason}", reason=line)
    if _daemon:
        raise StartupError(line)
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(f"inkflow: error: {line}\n")
    stderr.flush()
    if _pidfile:
        try:
            with open(_pidfile) as f:
                if f.read().strip() == str(os.getpid()):
                    os.remove(_pidfile)
        except OSError:
            pass
    raise SystemExit(2)


class StartupGuard(service.MultiService):
    """
    The top of InkFlow's services: a start-up failure of any service below is
    one line and exit status 2.
    """

    def _guard(self, start: Callable[[], None]) -> None:
        try:
            start()
        except (CannotListenError, OSError) as e:
            line = describe_failure(e)
            if line is None:
                raise
            _fail(line)

    def privilegedStartService(self) -> None:
        self._guard(super().privilegedStartService)

    def startService(self) -> None:
        self._guard(super().startService)


def guarded(inner: service.IService, clock: IReactorTime | None = None) -> StartupGuard:
    """
    C{inner} under a L{StartupGuard}; with C{clock} (the reactor), and under
    systemd, beside a L{SystemdNotifier} (C{READY=1}, C{WATCHDOG=1}).
    """
    top = StartupGuard()
    service.IService(inner).setServiceParent(top)
    if clock is not None:
        SystemdNotifier(clock).setServiceParent(top)
    return top

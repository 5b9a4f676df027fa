"""
The ``inkflow`` command: operator tools that talk to a running InkFlow.

    inkflow monitor [--url URL] [--interval SECONDS] [--once [--json]]
    inkflow watchdog [options] -- COMMAND [ARG...]

Bad arguments print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit

from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python import usage
from twisted.python.failure import Failure

from inkflow import __version__
from inkflow.paths import HEALTH
from inkflow.settings import parsers
from inkflow.tools import healthcheck, monitor, watchdog

__all__ = ["main"]

_ENFORCEMENT = "Parameter type enforcement failed: "


# The numbers are read by the settings' parsers; only the messages are the tools' own.


def _seconds(option: str, minimum: float = 0.0, allow_equal: bool = False) -> Callable[[str], float]:
    bound = f"at least {minimum:g}" if allow_equal else f"greater than {minimum:g}"
    read = parsers.seconds(minimum)

    def parse(value: str) -> float:
        try:
            number = read(value)
        except ValueError:
            number = None
        if number is None or (number == minimum and not allow_equal):
            raise ValueError(f"--{option} must be a number of seconds {bound}, not {value!r}")
        return number

    parse.coerceDoc = ""  # type: ignore[attr-defined]
    return parse


def _count(option: str, minimum: int) -> Callable[[str], int]:
    read = parsers.int_in(minimum)

    def parse(value: str) -> int:
        try:
            return read(value)
        except ValueError:
            raise ValueError(f"--{option} must be a whole number, at least {minimum}, not {value!r}") from None

    parse.coerceDoc = ""  # type: ignore[attr-defined]
    return parse


def _http_url(option: str) -> Callable[[str], str]:
    """
    An http(s) URL; the server's base URL means its health URL
    (L{healthcheck.health_url}).
    """

    def parse(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--{option} must be an http:// or https:// URL, not {value!r}")
        return healthcheck.health_url(value)

    parse.coerceDoc = ""  # type: ignore[attr-defined]
    return parse


class _Options(usage.Options):
    def opt_version(self) -> None:
        """
        Print InkFlow's version and exit.
        """
        print(f"inkflow {__version__}")
        sys.exit(0)


class MonitorOptions(_Options):
    synopsis = "[--url URL] [--interval SECONDS] [--once [--json]]"
    longdesc = (
        f"Live terminal view of a running InkFlow's {HEALTH}: status, process, connections, queue, "
        "request totals and rates, upstream breakers, cleanup. Keeps polling while the server is down. "
        "--once --json prints one snapshot as JSON and exits 0 (1 if the server cannot be read)."
    )
    optFlags: ClassVar[list[list[Any]]] = [
        ["once", None, "Take one snapshot and exit (1 if the server cannot be read)."],
        ["json", None, "With --once: print the health JSON instead of the dashboard."],
    ]
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "url",
            "u",
            healthcheck.DEFAULT_URL,
            f"Server or health URL to poll (a server URL means its {HEALTH}).",
            _http_url("url"),
        ],
        ["interval", "i", 1.0, "Seconds between polls (each may take min(0.8 x interval, 5s)).", _seconds("interval")],
    ]

    def postOptions(self) -> None:
        if self["json"] and not self["once"]:
            raise usage.UsageError("--json needs --once")


class WatchdogOptions(_Options):
    synopsis = "[options] -- COMMAND [ARG...]"
    longdesc = (
        "Run COMMAND as a child and keep it running: restart it when it exits, with a delay that doubles "
        "from --min-restart-delay up to --max-restart-delay; replace it when --failures health checks "
        "in a row fail (SIGTERM, then SIGKILL after --grace seconds). Health failures are not counted "
        "until the child has answered once or --start-grace seconds have passed. SIGTERM/SIGINT stop the "
        "child the same way, then the watchdog exits 0. Logs go to stderr. "
        "Example: inkflow watchdog -- twistd -n --pidfile= inkflow"
    )
    optFlags: ClassVar[list[list[Any]]] = [
        ["no-health", None, "Do not poll a health URL; only restart the child when it exits."],
    ]
    optParameters: ClassVar[list[list[Any]]] = [
        ["health-url", None, healthcheck.DEFAULT_URL, f"Server or health URL to poll (a server URL means its {HEALTH}); any 200 is healthy.", _http_url("health-url")],
        ["interval", None, 2.0, "Seconds between health checks (each may take min(0.8 x interval, 5s)).", _seconds("interval")],
        ["failures", None, 3, "Failed health checks in a row that mean the child is hung.", _count("failures", 1)],
        ["grace", None, 10.0, "Seconds between SIGTERM and SIGKILL.", _seconds("grace", allow_equal=True)],
        ["start-grace", None, 30.0, "Seconds after a start during which failures of a child that has not answered yet are not counted.", _seconds("start-grace", allow_equal=True)],
        ["min-restart-delay", None, 1.0, "First delay before a restart.", _seconds("min-restart-delay")],
        ["max-restart-delay", None, 60.0, "Largest delay before a restart.", _seconds("max-restart-delay")],
    ]  # fmt: skip

    def parseArgs(self, *command: str) -> None:
        self["command"] = command

    def postOptions(self) -> None:
        command = self["command"]
        if not command:
            raise usage.UsageError("no COMMAND to run (put it after --)")
        if shutil.which(command[0]) is None:
            raise usage.UsageError(f"command not found or not executable: {command[0]}")
        try:
            self["config"] = watchdog.WatchdogConfig(
                command=tuple(command),
                health_url=None if self["no-health"] else self["health-url"],
                interval=self["interval"],
                failures=self["failures"],
                grace=self["grace"],
                start_grace=self["start-grace"],
                min_restart_delay=self["min-restart-delay"],
                max_restart_delay=self["max-restart-delay"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class Options(_Options):
    longdesc = "Operator tools for InkFlow. Run 'inkflow COMMAND --help' for a command's options."
    subCommands: ClassVar[list[list[Any]]] = [
        ["monitor", None, MonitorOptions, f"Live terminal view of {HEALTH}."],
        ["watchdog", None, WatchdogOptions, "Run a command and restart it when it exits or hangs."],
    ]

    def getSynopsis(self) -> str:
        # A subcommand's synopsis starts with this one's.
        return "Usage: inkflow" if self.subCommand else "Usage: inkflow COMMAND [options]"

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("missing command: monitor or watchdog")


def _program(options: Options) -> str:
    return f"inkflow {options.subCommand}" if options.subCommand else "inkflow"


def main(argv: list[str] | None = None) -> int:
    """
    The ``inkflow`` console script.  Returns the exit status.
    """
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # Output piped into something like ``head`` that has stopped reading.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(args: list[str]) -> int:
    options = Options()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        message = str(e).removeprefix(_ENFORCEMENT)
        print(f"{_program(options)}: {message} (see '{_program(options)} --help')", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0

    sub = options.subOptions
    if options.subCommand == "monitor":
        return _run_monitor(sub["url"], sub["interval"], sub["once"], sub["json"])
    return watchdog.main(sub["config"])


def _run_monitor(url: str, interval: float, once: bool, as_json: bool) -> int:
    """
    The monitor on the global reactor; returns the exit status (0 after
    Ctrl-C).
    """
    from twisted.internet import reactor as _reactor

    clock, core = IReactorTime(_reactor), IReactorCore(_reactor)
    timeout = healthcheck.probe_timeout(None if once else interval)
    client = healthcheck.HealthClient(clock, timeout, user_agent="inkflow-monitor")
    status: list[int] = []

    def start() -> None:
        if once:
            d = monitor.run_once(client, url, as_json, sys.stdout, sys.stderr)
        else:
            live = monitor.LiveMonitor(clock, client, url, interval)
            core.addSystemEventTrigger("before", "shutdown", live.stop)
            d = live.start().addCallback(lambda _: 0)
        d.addErrback(failed)
        d.addCallback(status.append)
        d.addCallback(lambda _: stop())

    def failed(reason: Failure) -> int:
        sys.stderr.write(f"inkflow monitor: {reason.getErrorMessage()}\n")
        return 1

    def stop() -> None:
        with contextlib.suppress(ReactorNotRunning):  # already stopping (Ctrl-C)
            core.stop()

    core.callWhenRunning(start)
    core.run()
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())

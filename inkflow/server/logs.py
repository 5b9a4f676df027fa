"""
Where InkFlow's log goes: text or JSON lines, to stdout or to a rotating file
that keeps a bounded number of old files.

twistd's own log file rotates at 1 MB and keeps every old file; InkFlow
replaces it through twistd's supported seam (the C{--logger} factory, set by
the plugin unless the operator gave one) and through the application's
C{ILogObserver} component in the .tac.  SIGUSR1 and SIGHUP rotate the file.

Every process sets its logging up here: the plugin and the .tac call
L{set_up}, a C{--workers} worker calls L{begin_worker_logging}.

C{--log-format json} writes one JSON object per line in the shape of the
Elastic Common Schema's logging format (ecs-logging), which Elasticsearch,
Loki, Datadog and Vector read as it is (L{ecs_line}, docs/operations.md)::

  {"@timestamp": "2026-12-06T10:00:00.123Z", "log.level": "info",
   "log.logger": "inkflow.access", "message": "GET / 200 5120",
   "ecs.version": "8.11.0", "method": "GET", "status": 200, ...}

the event's own fields flat after the five fixed keys; a logged failure adds
C{error.type}, C{error.message} and C{error.stack_trace}.  Twisted's own
keys (C{log_*}, the unrendered format) are never written.  A C{--workers}
worker writes Twisted's JSON events to its parent, which relays them into
its own log (in this shape, with C{worker_pid}).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatTime,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from inkflow.settings import Settings, describe

__all__ = [
    "ROTATED_FILES",
    "ROTATE_BYTES",
    "begin_worker_logging",
    "ecs_line",
    "install_rotation_signals",
    "make_observer",
    "set_up",
    "settings_summary",
    "twistd_observer",
    "use_for_twistd",
]

log = Logger()

#: Size at which the log file rotates.
ROTATE_BYTES = 10 * 1024 * 1024
#: Old log files kept.
ROTATED_FILES = 10

#: The file the current observer writes to, if any (for the signal handlers).
_current_file: LogFile | None = None
#: The stream of InkFlow's text observer while info lines are logged (for L{write_access_line}).
_text_stream: Any = None


def make_observer(
    log_format: str = "text",
    logfile: str | None = None,
    level: str = "info",
    *,
    stream: IO[str] | None = None,
) -> ILogObserver:
    """
    An observer writing C{text} (twistd's usual lines) or C{json} (one JSON
    object per line, every structured field included).

    @param logfile: a path for a rotating file; C{None} or C{"-"} for C{stream}
        (stdout by default).
    """
    global _current_file, _text_stream
    out: Any
    if logfile and logfile != "-":
        _current_file = LogFile.fromFullPath(logfile, rotateLength=ROTATE_BYTES, maxRotatedFiles=ROTATED_FILES)
        out = _current_file
    else:
        _current_file = None
        out = stream or sys.stdout
    observer = ecs_observer(out) if log_format == "json" else textFileLogObserver(out)
    wanted = LogLevel.levelWithName(level)
    _text_stream = out if log_format == "text" and wanted <= LogLevel.info else None
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))])


#: The version of the Elastic Common Schema the JSON lines follow.
ECS_VERSION = "8.11.0"

#: Keys of Twisted's events (beyond C{log_*}) that are its internals, not the event's fields.
_TWISTED_KEYS = frozenset({"format", "message", "isError", "system", "time", "why", "failure", "printed"})

#: The fixed keys of a JSON line; an event field of the same name is written with a trailing C{_}.
_FIXED_KEYS = frozenset({"@timestamp", "log.level", "log.logger", "message", "ecs.version"})


def _iso_utc(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """
    A field value as JSON has it: numbers, strings, booleans, null, lists and
    objects as they are; anything else as its text.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def ecs_line(event: Mapping[str, Any]) -> str:
    """
    One log event as one line of JSON in the ECS logging shape (see the
    module's docstring).
    """
    level = event.get("log_level")
    failure = event.get("log_failure")
    record: dict[str, Any] = {
        "@timestamp": _iso_utc(event.get("log_time") or time.time()),
        "log.level": getattr(level, "name", "info"),
        # Twisted's own log.msg lines have no namespace of their own.
        "log.logger": namespace if (namespace := event.get("log_namespace")) not in (None, "log_legacy") else "twisted",
        "message": formatEvent(dict(event)).rstrip("\n") or "",
        "ecs.version": ECS_VERSION,
    }
    if failure is not None:
        record["error.type"] = getattr(failure.type, "__qualname__", str(failure.type))
        record["error.message"] = str(failure.value)
        record["error.stack_trace"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _TWISTED_KEYS or key.startswith("__"):
            continue
        record[key + "_" if key in _FIXED_KEYS or key in record else key] = _plain(value)
    return json.dumps(record, ensure_ascii=False, default=str)


def ecs_observer(out: IO[str]) -> ILogObserver:
    """
    An observer writing L{ecs_line}s to C{out}, one per event.
    """

    return FileLogObserver(out, lambda event: ecs_line(event) + "\n")


def settings_summary(settings: Settings) -> dict[str, Any]:
    """
    What the start-up line carries: the options that differ from their
    defaults (secrets hidden), not all of them.
    """
    shown, default = describe(settings), describe(Settings.defaults())
    return {name: value for name, value in shown.items() if value != default.get(name)}


class _Clock:
    """
    The text log's timestamp, formatted once a second.
    """

    second = -1
    text = ""


def write_access_line(line: str) -> bool:
    """
    Write an access-log line straight to InkFlow's text log, in the same form
    as its other lines (twisted.logger's path costs a third of a static
    request).  C{False} when InkFlow's text observer is not the one in use
    (JSON, or twistd's own): the caller logs through twisted.logger then.
    """
    stream = _text_stream
    if stream is None:
        return False
    now = time.time()
    second = int(now)
    if second != _Clock.second:
        _Clock.second = second
        _Clock.text = formatTime(now)
    stream.write(f"{_Clock.text} [inkflow.access#info] {line}\n")
    return True


#: What L{twistd_observer} builds; set by the plugin's options (L{use_for_twistd}).
_twistd_config: tuple[str, str | None, str] = ("text", None, "info")

#: The dotted name twistd's C{--logger} imports.
TWISTD_LOGGER = "inkflow.server.logs.twistd_observer"


def use_for_twistd(log_format: str, logfile: str | None, level: str = "info") -> str:
    """
    Remember the log settings for L{twistd_observer}; return the dotted name
    to give twistd as its C{--logger} (twistd wants a name to import, not an
    object).
    """
    global _twistd_config
    _twistd_config = (log_format, logfile, level)
    return TWISTD_LOGGER


def twistd_observer() -> ILogObserver:
    """
    The zero-argument factory twistd calls for C{--logger}.
    """
    return make_observer(*_twistd_config)


def set_up(
    settings: Settings,
    *,
    twistd_options: MutableMapping[str, Any] | None = None,
    application: Componentized | None = None,
) -> None:
    """
    InkFlow's logging under twistd, for the plugin and the .tac alike.

    @param twistd_options: twistd's own options (the plugin's parent): unless
        the operator gave C{--logger}, InkFlow's observer becomes twistd's
        C{--logger}, writing to twistd's C{--logfile} (stdout with C{-n}).
    @param application: the .tac's application, where twistd's options are
        out of reach: with C{--log-format json} or a C{--log-level} other
        than info, InkFlow's observer on stdout becomes its C{ILogObserver}
        component; otherwise twistd's own observer (and C{--logfile}) apply.
    """
    if twistd_options is not None and not twistd_options.get("logger"):
        logfile = twistd_options.get("logfile") or ("-" if twistd_options.get("nodaemon") else "twistd.log")
        twistd_options["logger"] = use_for_twistd(settings.log_format, logfile, settings.log_level)
    if application is not None and (settings.log_format == "json" or settings.log_level != "info"):
        application.setComponent(ILogObserver, make_observer(settings.log_format, level=settings.log_level))


def begin_worker_logging(level: str) -> None:
    """
    A C{--workers} worker's log: JSON lines on stdout, which the parent relays
    into its own log.
    """
    # Twisted's own JSON events (not the ECS lines): the parent reads them back with eventFromJSON.
    wanted = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    observer = FilteringLogObserver(jsonFileLogObserver(sys.stdout, recordSeparator=""), [wanted])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def rotate() -> bool:
    """
    Rotate the log file now; C{False} when logging to a stream.
    """
    if _current_file is None:
        return False
    _current_file.rotate()
    return True


def install_rotation_signals(reactor: IReactorFromThreads) -> None:
    """
    SIGUSR1 and SIGHUP rotate the log file (SIGHUP would otherwise kill twistd
    silently: it installs no handler for it).  Main thread only.

    Where they do not exist (Windows), one line says so: the file still
    rotates by size (L{ROTATE_BYTES}).
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(_rotate_and_log, signal.Signals(signum).name)

    hup, usr1 = getattr(signal, "SIGHUP", None), getattr(signal, "SIGUSR1", None)
    if hup is None or usr1 is None:
        log.info(
            "No SIGHUP or SIGUSR1 on this system: the log file rotates at {size} MB only",
            size=ROTATE_BYTES // (1024 * 1024),
        )
        return
    signal.signal(hup, on_signal)
    if _current_file is not None:
        # Only when InkFlow owns the file; otherwise twistd's own SIGUSR1
        # handler (for its --logfile) stays.
        signal.signal(usr1, on_signal)


def _rotate_and_log(name: str) -> None:
    if rotate():
        log.info("{signal} received: log file rotated", signal=name)
    else:
        log.info("{signal} received: logging to a stream, nothing to rotate", signal=name)

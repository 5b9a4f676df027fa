"""
Where InkFlow's log goes: text or JSON lines, to stdout or to a rotating file
that keeps a bounded number of old files.

twistd's own log file rotates at 1 MB and keeps every old file; InkFlow
replaces it through twistd's supported seam (the C{--logger} factory, set by
the plugin unless the operator gave one) and through the application's
C{ILogObserver} component in the .tac.  SIGUSR1 and SIGHUP rotate the file.

Every process sets its logging up here: the plugin and the .tac call
L{set_up}, a C{--workers} worker calls L{begin_worker_logging}.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import IO, Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatTime,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from inkflow.settings import Settings

__all__ = [
    "ROTATED_FILES",
    "ROTATE_BYTES",
    "begin_worker_logging",
    "install_rotation_signals",
    "make_observer",
    "set_up",
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
    observer = jsonFileLogObserver(out, recordSeparator="") if log_format == "json" else textFileLogObserver(out)
    wanted = LogLevel.levelWithName(level)
    _text_stream = out if log_format == "text" and wanted <= LogLevel.info else None
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))])


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
    observer = make_observer("json", level=level, stream=sys.stdout)
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
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(_rotate_and_log, signal.Signals(signum).name)

    signal.signal(signal.SIGHUP, on_signal)
    if _current_file is not None:
        # Only when InkFlow owns the file; otherwise twistd's own SIGUSR1
        # handler (for its --logfile) stays.
        signal.signal(signal.SIGUSR1, on_signal)


def _rotate_and_log(name: str) -> None:
    if rotate():
        log.info("{signal} received: log file rotated", signal=name)
    else:
        log.info("{signal} received: logging to a stream, nothing to rotate", signal=name)

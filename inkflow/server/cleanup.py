"""
The periodic cleanup: give memory back and remove orphaned upload temp files.

Every run does three independent steps, and each one catches and logs its own
failure, so one broken step never stops the others or the loop:

  1. C{gc.collect()};
  2. C{malloc_trim(0)} (glibc), which hands freed heap pages back to the
     system after a burst of big requests;
  3. removal of InkFlow temp files (C{inkflow-*.part}) in the upload folder
     that are older than C{max_age} and not in use: files left behind by a
     crash or a killed worker.  Nothing else in the folder is ever touched.

No global reactor: time comes from an injected clock (an C{IReactorTime}).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from inkflow.paths import TEMP_PREFIX, TEMP_SUFFIX
from inkflow.snapshot import CleanupSnapshot

__all__ = [
    "DEFAULT_MAX_AGE",
    "MALLOC_TRIM",
    "Cleaner",
    "is_temp_name",
]

log = Logger()

#: A temp file untouched for this long is an orphan.  An upload's file is
#: written while it streams in and then belongs to its request until the
#: request ends, at most C{--request-timeout} (<= 3600 s) later; files in use
#: are also protected by C{active_paths} when the web layer provides it.
DEFAULT_MAX_AGE = 3600.0

_T = TypeVar("_T")


def _no_malloc_trim(pad: int) -> int:
    return 0


def _load_malloc_trim() -> Callable[[int], object]:
    """
    glibc's C{malloc_trim}, or a no-op where there is none (musl, macOS,
    Windows).
    """
    if not sys.platform.startswith("linux"):
        return _no_malloc_trim
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return _no_malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    result: Callable[[int], object] = trim
    return result


#: The default C{malloc_trim}: glibc's, or a no-op.
MALLOC_TRIM: Callable[[int], object] = _load_malloc_trim()


def is_temp_name(name: str) -> bool:
    """
    Whether C{name} (a bare file name) is one of InkFlow's upload temp files.
    """
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX) and len(name) > len(TEMP_PREFIX + TEMP_SUFFIX)


def _iso_utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Cleaner:
    """
    Runs the cleanup steps and keeps their statistics.

    @param upload_dir: the folder uploads are spooled to.
    @param clock: the source of time (the reactor, or a C{Clock} in tests);
        file ages are measured against it, so it must read wall-clock time
        the way C{st_mtime} does (the reactor does).
    @param max_age: seconds since its last change after which a temp file
        is an orphan.
    @param gc_collect: called with no argument; returns how many unreachable
        objects it found.
    @param malloc_trim: called with C{0}.
    @param active_paths: returns the temp files in use right now; they are
        never removed whatever their age.
    """

    def __init__(
        self,
        upload_dir: str,
        clock: IReactorTime,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        gc_collect: Callable[[], int] = gc.collect,
        malloc_trim: Callable[[int], object] = MALLOC_TRIM,
        active_paths: Callable[[], set[str]] | None = None,
    ) -> None:
        self.upload_dir = upload_dir
        self.max_age = max_age
        self._clock: IReactorTime = clock
        self._gc_collect = gc_collect
        self._malloc_trim = malloc_trim
        self._active_paths = active_paths
        self.runs = 0
        self.last_run: float | None = None
        self.temp_files_removed = 0
        self.gc_collected = 0
        self.step_failures = 0

    # --- one run

    def run_once(self) -> None:
        """
        Run every step once; never raises.
        """
        started = self._clock.seconds()
        collected = self._step("gc", self._collect, 0)
        self._step("malloc_trim", self._trim, None)
        removed = self._step("temp_files", self._remove_orphans, 0)
        self.runs += 1
        self.last_run = started
        log.info(
            "cleanup run {runs}: gc collected {gc_collected} objects, removed {temp_files_removed} temp files",
            runs=self.runs,
            gc_collected=collected,
            temp_files_removed=removed,
            upload_dir=self.upload_dir,
            step_failures_total=self.step_failures,
        )

    def _step(self, name: str, step: Callable[[], _T], fallback: _T) -> _T:
        try:
            return step()
        except Exception:
            self.step_failures += 1
            log.failure("cleanup step {step} failed", step=name, level=LogLevel.error)
            return fallback

    def _collect(self) -> int:
        collected = int(self._gc_collect())
        self.gc_collected += collected
        return collected

    def _trim(self) -> None:
        self._malloc_trim(0)

    def _remove_orphans(self) -> int:
        """
        Remove C{inkflow-*.part} regular files directly in the upload folder
        that are older than C{max_age} and not in use.

        @return: how many were removed this time.
        """
        active = self._active_paths() if self._active_paths is not None else set()
        protected = {os.path.realpath(path) for path in active} | {os.path.abspath(path) for path in active}
        cutoff = self._clock.seconds() - self.max_age
        removed = 0
        try:
            entries = list(os.scandir(self.upload_dir))
        except FileNotFoundError:
            return 0  # no upload has happened yet
        for entry in entries:
            if not is_temp_name(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue
                if os.path.abspath(entry.path) in protected or os.path.realpath(entry.path) in protected:
                    continue
                os.remove(entry.path)
            except FileNotFoundError:
                continue  # gone meanwhile (its request finished)
            except OSError as e:
                log.warn("cannot remove temp file {path}: {error}", path=entry.path, error=e.strerror or str(e))
                continue
            removed += 1
            self.temp_files_removed += 1
        return removed

    # --- health

    def snapshot(self) -> CleanupSnapshot:
        """
        The contract's C{cleanup} object for C{/api/health}.
        """
        return CleanupSnapshot(
            runs=self.runs,
            last_run=None if self.last_run is None else _iso_utc(self.last_run),
            temp_files_removed=self.temp_files_removed,
            gc_collected=self.gc_collected,
        )

    # --- the loop

    def _tick(self) -> None:
        # run_once never raises, but a LoopingCall dies on the first exception
        # that escapes, so make sure none does.
        try:
            self.run_once()
        except Exception:
            log.failure("cleanup run failed", level=LogLevel.error)

    def service(self, interval: float) -> Service:
        """
        A service that runs the cleanup at start and then every C{interval}
        seconds, on this cleaner's clock.
        """
        timer = TimerService(interval, self._tick)
        timer.clock = self._clock
        timer.setName("cleanup")
        return timer

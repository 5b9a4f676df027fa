"""
Tests for L{inkflow.server.cleanup}: the periodic memory and temp-file cleanup.
Reactor-free: time is a L{Clock}, files live in a private temp folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from inkflow.server.cleanup import MALLOC_TRIM, Cleaner, is_temp_name

#: The clock's "now": file times are set relative to it.
NOW = 1_750_000_000.0
MAX_AGE = 600.0


class Boom(Exception):
    """
    A step failed.
    """


class CleanerTests(TestCase):
    """
    L{Cleaner}: each step runs, fails alone, and is counted.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="inkflow-cleanup-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.trims: list[int] = []
        self.active: set[str] = set()

    def cleaner(self, **kwargs: object) -> Cleaner:
        options: dict[str, object] = {
            "max_age": MAX_AGE,
            "gc_collect": lambda: 7,
            "malloc_trim": self.trims.append,
            "active_paths": lambda: self.active,
        }
        options.update(kwargs)
        return Cleaner(self.dir, self.clock, **options)  # type: ignore[arg-type]

    def make(self, name: str, age: float) -> str:
        """
        Create a file C{age} seconds old (by the clock) in the upload folder.
        """
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(b"x")
        stamp = self.clock.seconds() - age
        os.utime(path, (stamp, stamp))
        return path

    def test_removes_only_old_orphans_matching_the_pattern(self) -> None:
        """
        Only C{inkflow-*.part} regular files older than max_age go; young
        ones, other names, folders and symlinks stay.
        """
        old = self.make("inkflow-abc123.part", MAX_AGE + 1)
        old2 = self.make("inkflow-zzz.part", 10 * MAX_AGE)
        young = self.make("inkflow-young.part", MAX_AGE - 1)
        others = [
            self.make(name, 10 * MAX_AGE)
            for name in ("notes.txt", "inkflow-abc.tmp", "other-abc.part", "inkflow-.part", "xinkflow-a.part")
        ]
        folder = os.path.join(self.dir, "inkflow-dir.part")
        os.mkdir(folder)
        link = os.path.join(self.dir, "inkflow-link.part")
        os.symlink(others[0], link)
        cleaner = self.cleaner()
        cleaner.run_once()
        self.assertFalse(os.path.exists(old))
        self.assertFalse(os.path.exists(old2))
        for path in [young, *others, folder]:
            self.assertTrue(os.path.exists(path), path)
        self.assertTrue(os.path.islink(link))
        self.assertEqual(cleaner.temp_files_removed, 2)

    def test_keeps_active_files(self) -> None:
        """
        A temp file in use is kept whatever its age, also when named by a
        relative or un-normalised path.
        """
        active = self.make("inkflow-active.part", 10 * MAX_AGE)
        other = self.make("inkflow-orphan.part", 10 * MAX_AGE)
        self.active = {os.path.join(self.dir, ".", "inkflow-active.part")}
        cleaner = self.cleaner()
        cleaner.run_once()
        self.assertTrue(os.path.exists(active))
        self.assertFalse(os.path.exists(other))
        self.active = set()
        self.clock.advance(1)
        cleaner.run_once()
        self.assertFalse(os.path.exists(active))
        self.assertEqual(cleaner.temp_files_removed, 2)

    def test_missing_upload_dir(self) -> None:
        """
        A folder that does not exist yet is nothing to clean, not an error.
        """
        cleaner = Cleaner(
            os.path.join(self.dir, "absent"), self.clock, gc_collect=lambda: 0, malloc_trim=self.trims.append
        )
        cleaner.run_once()
        self.assertEqual(cleaner.snapshot()["temp_files_removed"], 0)
        self.assertEqual(cleaner.step_failures, 0)

    def test_runs_gc_and_malloc_trim(self) -> None:
        """
        Each run calls gc_collect (summing what it found) and malloc_trim(0).
        """
        cleaner = self.cleaner()
        cleaner.run_once()
        cleaner.run_once()
        self.assertEqual(self.trims, [0, 0])
        self.assertEqual(cleaner.gc_collected, 14)

    def test_each_step_survives_its_own_failure(self) -> None:
        """
        A step that raises is logged and counted, and the other steps still
        run; run_once does not raise.
        """
        orphan = self.make("inkflow-orphan.part", 10 * MAX_AGE)

        def gc_boom() -> int:
            raise Boom("gc")

        def trim_boom(pad: int) -> None:
            raise Boom("trim")

        def active_boom() -> set[str]:
            raise Boom("active")

        cleaner = self.cleaner(gc_collect=gc_boom, malloc_trim=trim_boom)
        with capturedLogs() as events:
            cleaner.run_once()
        self.assertFalse(os.path.exists(orphan))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 2)
        self.assertEqual(cleaner.step_failures, 2)
        self.assertEqual(cleaner.runs, 1)
        failed = [e["step"] for e in events if "log_failure" in e]
        self.assertEqual(failed, ["gc", "malloc_trim"])

        kept = self.make("inkflow-kept.part", 10 * MAX_AGE)
        cleaner = self.cleaner(active_paths=active_boom)
        cleaner.run_once()
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertTrue(os.path.exists(kept), "no removal without knowing what is in use")
        self.assertEqual((cleaner.runs, cleaner.gc_collected, self.trims), (1, 7, [0]))

    def test_run_is_logged_with_fields(self) -> None:
        """
        Each run logs one event with structured fields.
        """
        self.make("inkflow-orphan.part", 10 * MAX_AGE)
        cleaner = self.cleaner()
        with capturedLogs() as events:
            cleaner.run_once()
        runs = [e for e in events if "temp_files_removed" in e]
        self.assertEqual(len(runs), 1)
        self.assertEqual(runs[0]["log_level"], LogLevel.info)
        self.assertEqual(
            (runs[0]["runs"], runs[0]["gc_collected"], runs[0]["temp_files_removed"]),
            (1, 7, 1),
        )

    def test_snapshot_shape(self) -> None:
        """
        snapshot() has exactly the contract's cleanup keys; last_run is None
        before the first run, then an ISO-8601 UTC time.
        """
        cleaner = self.cleaner()
        self.assertEqual(
            cleaner.snapshot(),
            {"runs": 0, "last_run": None, "temp_files_removed": 0, "gc_collected": 0},
        )
        self.make("inkflow-orphan.part", 10 * MAX_AGE)
        cleaner.run_once()
        snap = cleaner.snapshot()
        self.assertEqual(list(snap), ["runs", "last_run", "temp_files_removed", "gc_collected"])
        self.assertEqual(
            snap,
            {"runs": 1, "last_run": "2025-06-15T15:06:40Z", "temp_files_removed": 1, "gc_collected": 7},
        )

    def test_service_loops_on_the_clock(self) -> None:
        """
        service(interval) runs at start and then every interval on the
        injected clock, and stops when stopped.
        """
        cleaner = self.cleaner()
        service = cleaner.service(300)
        service.startService()
        self.assertEqual(cleaner.runs, 1)
        self.clock.advance(299)
        self.assertEqual(cleaner.runs, 1)
        self.clock.advance(1)
        self.assertEqual(cleaner.runs, 2)
        self.clock.pump([300, 300])
        self.assertEqual(cleaner.runs, 4)
        self.successResultOf(service.stopService())
        self.clock.advance(900)
        self.assertEqual(cleaner.runs, 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_loop_survives_failing_steps(self) -> None:
        """
        A step that raises on some runs does not stop the loop: later runs
        still happen and still remove orphans.
        """
        calls = [0]

        def flaky_gc() -> int:
            calls[0] += 1
            if calls[0] % 2 == 0:
                raise Boom("every other run")
            return 1

        cleaner = self.cleaner(gc_collect=flaky_gc)
        service = cleaner.service(60)
        service.startService()
        self.clock.advance(60)
        self.clock.advance(60)
        orphan = self.make("inkflow-late.part", 10 * MAX_AGE)
        self.clock.advance(60)
        self.assertEqual(cleaner.runs, 4)
        self.assertEqual(cleaner.gc_collected, 2)
        self.assertFalse(os.path.exists(orphan))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 2)
        self.assertTrue(service.running)
        self.successResultOf(service.stopService())

    def test_loop_survives_run_once_raising(self) -> None:
        """
        Even if run_once itself raised, the LoopingCall keeps going.
        """
        cleaner = self.cleaner()
        ticks = [0]

        def broken() -> None:
            ticks[0] += 1
            raise Boom("whole run")

        cleaner.run_once = broken  # type: ignore[method-assign]
        service = cleaner.service(10)
        service.startService()
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(ticks[0], 3)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 3)
        self.successResultOf(service.stopService())


class TempNameTests(TestCase):
    """
    The temp-file pattern.
    """

    def test_pattern(self) -> None:
        """
        Only C{inkflow-<something>.part} matches.
        """
        self.assertTrue(is_temp_name("inkflow-a1b2.part"))
        for name in ("inkflow-.part", "inkflow-a.parts", "Inkflow-a.part", "a.part", "inkflow-a", ".part"):
            self.assertFalse(is_temp_name(name), name)

    def test_default_malloc_trim_is_callable(self) -> None:
        """
        The default malloc_trim (glibc's or a no-op) can be called with 0 and
        answers 1 (memory released) or 0 (none, or the no-op).
        """
        self.assertIn(MALLOC_TRIM(0), (0, 1))

"""
The stream benchmark's own parts that could spoil a run (L{bench.stream}).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import TestCase

from bench.stream import BENCH_DIR, census


class CensusTests(TestCase):
    """
    C{--gc-trace}'s census signals only a process that runs the tracer.
    """

    def test_a_process_without_the_tracer_is_not_signalled(self) -> None:
        """
        A relay that does not run C{bench/gc_trace} (the bare proxy, nginx)
        gets no C{SIGUSR2}: to a plain Python process it is fatal (the bare
        proxy stopped answering after every first round of a
        C{--gc-trace} run), to nginx a binary upgrade.
        """
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        with tempfile.TemporaryDirectory() as logs:
            self.assertEqual(census(Path(logs), "bare", child.pid, 2000, wait=0.5), {})
        self.assertIsNone(child.poll())

    def test_a_process_with_the_tracer_is_counted(self) -> None:
        """A server started with the tracer answers the census with its count."""
        with tempfile.TemporaryDirectory() as logs:
            env = {
                **os.environ,
                "PYTHONPATH": f"{BENCH_DIR / 'gc_trace'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "BENCH_GC_TRACE": f"{logs}/gc-ink",
            }
            child = subprocess.Popen(
                [sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(30)"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self.addCleanup(child.wait)
            self.addCleanup(child.kill)
            assert child.stdout is not None
            self.assertEqual(child.stdout.readline(), b"up\n")
            found = census(Path(logs), "ink", child.pid, 1)
        self.assertIn("cyclic_left", found)
        self.assertIsNone(child.poll())

"""
The stream benchmark's own parts that could spoil a run (L{bench.stream}).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import TestCase

from bench.stream import census
from tests.unit.helpers import pinned


class CensusTests(TestCase):
    """
    C{--gc-trace}'s census signals only a process that runs the tracer.
    """

    @pinned("the census sends SIGUSR2 to every relay: the bare proxy dies of it, nginx starts a binary upgrade")
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

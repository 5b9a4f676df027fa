"""
Tests for L{inkflow.web.sweep}: many coarse deadlines on one reactor timer.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from inkflow.web.sweep import Sweep, resolution_for


class Entry:
    def __init__(self, sweep: Sweep, name: str, log: list[tuple[str, float]]) -> None:
        self.sweep = sweep
        self.name = name
        self.log = log
        self.again: float | None = None

    def swept(self) -> None:
        self.log.append((self.name, self.sweep.clock.seconds()))
        if self.again is not None:
            due, self.again = self.again, None
            self.sweep.schedule(self, due)


class SweepTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sweep = Sweep(self.clock, 1.0)
        self.log: list[tuple[str, float]] = []

    def entry(self, name: str) -> Entry:
        return Entry(self.sweep, name, self.log)

    def test_many_deadlines_share_one_reactor_timer(self) -> None:
        """
        A thousand entries hold one delayed call between them.
        """
        entries = [self.entry(str(i)) for i in range(1000)]
        for i, e in enumerate(entries):
            self.sweep.schedule(e, 20.0 + i / 500)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.sweep), 1000)

    def test_never_early_at_most_one_slot_late(self) -> None:
        """
        An entry is swept at the end of its deadline's slot: not before the
        deadline, within one resolution after it.
        """
        self.clock.advance(0.3)
        self.sweep.schedule(self.entry("a"), 5.3)
        self.clock.advance(4.9)  # 5.2
        self.assertEqual(self.log, [])
        self.clock.advance(0.8)  # 6.0
        self.assertEqual(self.log, [("a", 6.0)])

    def test_exact_slot_boundary_is_on_time(self) -> None:
        """
        A deadline on a slot's end is met exactly.
        """
        self.sweep.schedule(self.entry("a"), 10.0)
        self.clock.advance(9.999)
        self.assertEqual(self.log, [])
        self.clock.advance(0.001)
        self.assertEqual([name for name, _ in self.log], ["a"])

    def test_earlier_deadline_kept_later_one_moves_earlier(self) -> None:
        """
        Scheduling a later deadline keeps the earlier slot (the entry
        reschedules itself when swept); an earlier one moves it.
        """
        a = self.entry("a")
        self.sweep.schedule(a, 10.0)
        self.sweep.schedule(a, 30.0)
        self.clock.advance(10)
        self.assertEqual(self.log, [("a", 10.0)])
        b = self.entry("b")
        self.sweep.schedule(b, 50.0)
        self.sweep.schedule(b, 12.0)
        self.clock.advance(2)
        self.assertEqual(self.log[-1], ("b", 12.0))
        self.clock.advance(100)
        self.assertEqual(len(self.log), 2)

    def test_cancel_and_the_last_cancel_clears_the_timer(self) -> None:
        """
        A cancelled entry is not swept; with none left no timer remains.
        """
        a, b = self.entry("a"), self.entry("b")
        self.sweep.schedule(a, 5.0)
        self.sweep.schedule(b, 7.0)
        self.sweep.cancel(a)
        self.sweep.cancel(a)  # twice: nothing
        self.clock.advance(5)
        self.assertEqual(self.log, [])
        self.sweep.cancel(b)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.log, [])

    def test_rescheduled_from_its_sweep(self) -> None:
        """
        An entry that schedules itself again while swept (even for a due
        already past) is swept in a later slot, not in a loop.
        """
        a = self.entry("a")
        a.again = 0.0
        self.sweep.schedule(a, 3.0)
        self.clock.advance(3)
        self.assertEqual(self.log, [("a", 3.0)])
        self.clock.advance(1)
        self.assertEqual(self.log, [("a", 3.0), ("a", 4.0)])

    def test_a_failing_entry_does_not_stop_the_others(self) -> None:
        """
        One entry raising is logged; the rest of its slot is still swept.
        """

        class Broken:
            def swept(self) -> None:
                raise RuntimeError("boom")

        self.sweep.schedule(Broken(), 2.0)
        self.sweep.schedule(self.entry("b"), 2.0)
        self.clock.advance(2)
        self.assertEqual(self.log, [("b", 2.0)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_resolution_for_short_deadlines(self) -> None:
        """
        The slot is a tenth of the shortest deadline, at most 1 s.
        """
        self.assertEqual(resolution_for(20.0, 300.0, 600.0), 1.0)
        self.assertAlmostEqual(resolution_for(1.5, 30.0, 20.0), 0.15)
        self.assertEqual(resolution_for(0.0, 30.0), 1.0)

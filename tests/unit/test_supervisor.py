"""
Tests for L{inkflow.supervisor}: restarts with backoff, SIGTERM then SIGKILL,
stopping that waits for the children, on a fake process reactor driven by
hand (L{tests.support.processes.ProcessClock}).
"""

from __future__ import annotations

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from inkflow.supervisor import Child, ChildCommand, RestartBackoff, Supervisor, SupervisorHooks, describe_exit
from tests.support.processes import ProcessClock


class Recorder(SupervisorHooks):
    """
    Every hook call, as a tuple.
    """

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def child_started(self, child: Child) -> None:
        self.events.append(("started", child.slot, child.pid))

    def child_ended(self, child: Child, reason: Failure, how: str, restart_in: float | None) -> None:
        self.events.append(("ended", child.slot, how, restart_in))

    def start_failed(self, slot: int, error: OSError, restart_in: float) -> None:
        self.events.append(("start failed", slot, str(error), restart_in))

    def child_terminating(self, child: Child, reason: str, grace: float) -> None:
        self.events.append(("terminating", child.slot, reason, grace))

    def child_killed(self, child: Child, grace: float) -> None:
        self.events.append(("killed", child.slot, grace))


def command(slot: int) -> ChildCommand:
    return ChildCommand(("/bin/child", str(slot)), {"SLOT": str(slot)}, {0: "w", 1: 1, 2: 2, 3: 7})


class DescribeExitTests(TestCase):
    """
    L{describe_exit}: one short phrase for each way a child can end.
    """

    def test_exit_codes_and_signals(self) -> None:
        """Exit 0, another exit code, a known signal and an unknown one."""
        self.assertEqual(describe_exit(Failure(ProcessDone(0))), "exited with code 0")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(3))), "exited with code 3")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(None, 9))), "was killed by signal 9 (SIGKILL)")
        self.assertEqual(
            describe_exit(Failure(ProcessTerminated(None, 200))), "was killed by signal 200 (unknown signal)"
        )
        self.assertEqual(describe_exit(Failure(RuntimeError("odd"))), "ended: odd")


class RestartBackoffTests(TestCase):
    """
    L{RestartBackoff}: doubling delays, capped, reset after a stable run.
    """

    def test_doubles_up_to_the_maximum(self) -> None:
        """Short runs: 1, 2, 4, 4."""
        backoff = RestartBackoff(1.0, 4.0, stable_after=10.0)
        self.assertEqual([backoff.next_delay(0.5) for _ in range(4)], [1.0, 2.0, 4.0, 4.0])

    def test_a_stable_run_resets_the_delay(self) -> None:
        """A child that stayed up stable_after seconds is restarted after the minimum again."""
        backoff = RestartBackoff(1.0, 60.0, stable_after=10.0)
        self.assertEqual([backoff.next_delay(1) for _ in range(3)], [1.0, 2.0, 4.0])
        self.assertEqual(backoff.next_delay(10.0), 1.0)
        self.assertEqual(backoff.next_delay(1.0), 2.0)

    def test_rejects_nonsense(self) -> None:
        """A zero minimum or a maximum below the minimum is a ValueError."""
        self.assertRaises(ValueError, RestartBackoff, 0.0, 1.0, 1.0)
        self.assertRaises(ValueError, RestartBackoff, 2.0, 1.0, 1.0)


class SupervisorTests(TestCase):
    """
    L{Supervisor} on a L{ProcessClock}.
    """

    def make(self, slots: int = 1, grace: float = 5.0) -> tuple[ProcessClock, Supervisor, Recorder]:
        reactor = ProcessClock()
        hooks = Recorder()
        supervisor = Supervisor(
            reactor,
            command,
            slots=slots,
            grace=grace,
            min_restart_delay=0.5,
            max_restart_delay=2.0,
            stable_after=10.0,
            hooks=hooks,
        )
        return reactor, supervisor, hooks

    def test_starts_one_child_per_slot_with_its_command(self) -> None:
        """Each slot's command is spawned with its argv, env and childFDs; stdin is closed."""
        reactor, supervisor, hooks = self.make(slots=2)
        supervisor.startService()
        self.assertEqual([p.args for p in reactor.spawned], [("/bin/child", "0"), ("/bin/child", "1")])
        first = reactor.spawned[0]
        self.assertEqual(first.executable, "/bin/child")
        self.assertEqual(first.env, {"SLOT": "0"})
        self.assertEqual(first.child_fds, {0: "w", 1: 1, 2: 2, 3: 7})
        self.assertTrue(first.stdin_closed)
        self.assertEqual(sorted(supervisor.children), [0, 1])
        self.assertEqual(hooks.events, [("started", 0, first.pid), ("started", 1, reactor.spawned[1].pid)])

    def test_a_child_that_ends_is_restarted_after_a_doubling_delay(self) -> None:
        """Quick deaths: restarts after 0.5, 1, 2, 2 seconds, and not a moment before."""
        reactor, supervisor, hooks = self.make()
        supervisor.startService()
        delays = []
        for _ in range(4):
            reactor.last.end(code=3)
            (_, _, how, delay) = hooks.events[-1]
            self.assertEqual(how, "exited with code 3")
            delays.append(delay)
            assert isinstance(delay, float)
            count = len(reactor.spawned)
            reactor.advance(delay - 0.01)
            self.assertEqual(len(reactor.spawned), count)
            reactor.advance(0.01)
            self.assertEqual(len(reactor.spawned), count + 1)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 2.0])

    def test_a_stable_run_resets_the_delay(self) -> None:
        """A child that ran 10 seconds or more is restarted after the minimum delay."""
        reactor, supervisor, hooks = self.make()
        supervisor.startService()
        reactor.last.end(code=1)
        reactor.advance(0.5)
        reactor.last.end(code=1)
        self.assertEqual(hooks.events[-1][3], 1.0)
        reactor.advance(1.0)
        reactor.advance(10.0)
        reactor.last.end(signal="KILL")
        self.assertEqual(hooks.events[-1], ("ended", 0, "was killed by signal 9 (SIGKILL)", 0.5))

    def test_slots_back_off_independently(self) -> None:
        """One slot crashing over and over does not delay another slot's restart."""
        reactor, supervisor, hooks = self.make(slots=2)
        supervisor.startService()
        for _ in range(3):
            supervisor.children[0].transport.end(code=1)  # type: ignore[attr-defined]
            reactor.advance(2.0)
        supervisor.children[1].transport.end(code=1)  # type: ignore[attr-defined]
        self.assertEqual(hooks.events[-1], ("ended", 1, "exited with code 1", 0.5))

    def test_terminate_sends_sigterm_then_sigkill_after_the_grace(self) -> None:
        """terminate: SIGTERM now, SIGKILL after the grace period; the end then restarts it."""
        reactor, supervisor, hooks = self.make(grace=5.0)
        supervisor.startService()
        child = supervisor.children[0]
        process = reactor.last
        supervisor.terminate(child, "hung")
        supervisor.terminate(child, "hung again")  # once per child
        self.assertEqual(process.signals, ["TERM"])
        self.assertEqual(child.stop_reason, "hung")
        reactor.advance(4.9)
        self.assertEqual(process.signals, ["TERM"])
        reactor.advance(0.1)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertIn(("killed", 0, 5.0), hooks.events)
        process.end(signal="KILL")
        self.assertEqual(hooks.events[-1][3], 0.5)
        reactor.advance(0.5)
        self.assertEqual(len(reactor.spawned), 2)

    def test_no_sigkill_for_a_child_that_left_in_time(self) -> None:
        """A child that exits within the grace period is never SIGKILLed."""
        reactor, supervisor, _ = self.make(grace=5.0)
        supervisor.startService()
        process = reactor.last
        supervisor.terminate(supervisor.children[0], "hung")
        process.end(code=0)
        reactor.advance(10.0)
        self.assertEqual(process.signals, ["TERM"])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stop_waits_for_every_child(self) -> None:
        """stopService: SIGTERM to each child; its Deferred fires once all have exited; no restart."""
        reactor, supervisor, hooks = self.make(slots=2)
        supervisor.startService()
        first, second = reactor.spawned
        stopped = supervisor.stopService()
        self.assertEqual((first.signals, second.signals), (["TERM"], ["TERM"]))
        first.end(code=0)
        self.assertNoResult(stopped)
        second.end(code=0)
        self.successResultOf(stopped)
        self.assertEqual(hooks.events[-1], ("ended", 1, "exited with code 0", None))
        reactor.advance(100.0)
        self.assertEqual(len(reactor.spawned), 2)

    def test_stop_kills_a_child_that_ignores_sigterm(self) -> None:
        """A child still running after the grace period is SIGKILLed; the stop completes when it dies."""
        reactor, supervisor, _ = self.make(grace=3.0)
        supervisor.startService()
        process = reactor.last
        stopped = supervisor.stopService()
        reactor.advance(3.0)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertNoResult(stopped)
        process.end(signal="KILL")
        self.successResultOf(stopped)

    def test_stop_cancels_a_pending_restart(self) -> None:
        """Stopping between a child's end and its restart: nothing is started again."""
        reactor, supervisor, _ = self.make()
        supervisor.startService()
        reactor.last.end(code=1)
        self.successResultOf(supervisor.stopService())
        reactor.advance(10.0)
        self.assertEqual(len(reactor.spawned), 1)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_a_start_that_fails_is_retried_with_backoff(self) -> None:
        """spawnProcess raising OSError: the hook hears it and the start is tried again after the delay."""
        reactor, supervisor, hooks = self.make()
        reactor.fail_next = OSError("no such file")
        supervisor.startService()
        self.assertEqual(hooks.events, [("start failed", 0, "no such file", 0.5)])
        self.assertEqual(supervisor.children, {})
        reactor.advance(0.5)
        self.assertEqual(len(reactor.spawned), 1)
        self.assertIn(0, supervisor.children)

    def test_signalling_a_child_that_already_exited_is_quiet(self) -> None:
        """A signal racing the child's own exit (ProcessExitedAlready) is not an error."""
        reactor, supervisor, _ = self.make()
        supervisor.startService()
        child = supervisor.children[0]
        reactor.last.pid = None  # gone, its processEnded not yet delivered
        child.signal("TERM")
        self.assertEqual(reactor.last.signals, [])

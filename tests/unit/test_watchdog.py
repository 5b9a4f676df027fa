"""
Tests for L{inkflow.tools.watchdog.Watchdog}: restarts, hang detection with
the start grace, and stopping, on a fake process reactor with a health probe
answered by hand.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from inkflow.tools.healthcheck import HealthCheckFailed
from inkflow.tools.watchdog import Watchdog, WatchdogConfig
from tests.support.processes import ProcessClock


class Probe:
    """
    A health probe whose answers the test gives: each call returns a new
    Deferred, kept in C{calls}.
    """

    def __init__(self) -> None:
        self.calls: list[Deferred[None]] = []

    def __call__(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.calls.append(d)
        return d

    def healthy(self) -> None:
        self.calls[-1].callback(None)

    def fail(self) -> None:
        self.calls[-1].errback(HealthCheckFailed("HTTP 503 Service Unavailable"))


class WatchdogTests(TestCase):
    """
    The watchdog on a L{ProcessClock}; the interval is 1 second.
    """

    def make(self, **overrides: object) -> tuple[ProcessClock, Watchdog, Probe]:
        values: dict[str, object] = {
            "command": ("/bin/child", "--flag"),
            "interval": 1.0,
            "failures": 2,
            "grace": 3.0,
            "start_grace": 5.0,
            "min_restart_delay": 0.5,
            "max_restart_delay": 4.0,
        }
        values.update(overrides)
        config = WatchdogConfig(**values)  # type: ignore[arg-type]
        reactor, probe = ProcessClock(), Probe()
        watchdog = Watchdog(reactor, config, probe, env={"A": "1"})
        watchdog.startService()
        return reactor, watchdog, probe

    def test_starts_the_command_with_its_environment(self) -> None:
        """The child gets the argv, the given environment and the watchdog's stdout and stderr."""
        reactor, _, _ = self.make()
        (child,) = reactor.spawned
        self.assertEqual((child.executable, child.args), ("/bin/child", ("/bin/child", "--flag")))
        self.assertEqual(child.env, {"A": "1"})
        self.assertEqual(child.child_fds, {0: "w", 1: 1, 2: 2})

    def test_a_child_that_exits_is_restarted(self) -> None:
        """Exit 3: a new child after the minimum delay."""
        reactor, _, _ = self.make()
        reactor.last.end(code=3)
        reactor.advance(0.5)
        self.assertEqual(len(reactor.spawned), 2)

    def test_failures_in_a_row_replace_a_hung_child(self) -> None:
        """Once it has answered, two failed checks in a row: SIGTERM, SIGKILL after the grace, then a restart."""
        reactor, _, probe = self.make()
        child = reactor.last
        reactor.advance(1.0)
        probe.healthy()
        reactor.advance(1.0)
        probe.fail()
        self.assertEqual(child.signals, [])
        reactor.advance(1.0)
        probe.fail()
        self.assertEqual(child.signals, ["TERM"])
        reactor.advance(1.0)
        self.assertEqual(len(probe.calls), 3)  # no checks of a child on its way out
        reactor.advance(2.0)
        self.assertEqual(child.signals, ["TERM", "KILL"])
        child.end(signal="KILL")
        reactor.advance(0.5)
        self.assertEqual(len(reactor.spawned), 2)

    def test_a_success_resets_the_failure_count(self) -> None:
        """Fail, answer, fail: never two in a row, so the child stays."""
        reactor, _, probe = self.make()
        for answer in (probe.healthy, probe.fail, probe.healthy, probe.fail):
            reactor.advance(1.0)
            answer()
        self.assertEqual(reactor.last.signals, [])

    def test_failures_during_the_start_grace_are_not_counted(self) -> None:
        """A child that never answered is left alone for start_grace seconds, then replaced."""
        reactor, _, probe = self.make()
        for _ in range(4):
            reactor.advance(1.0)
            probe.fail()
        self.assertEqual(reactor.last.signals, [])
        reactor.advance(1.0)
        probe.fail()
        reactor.advance(1.0)
        probe.fail()
        self.assertEqual(reactor.last.signals, ["TERM"])

    def test_one_check_at_a_time(self) -> None:
        """A check still running when the next tick comes: no second check is started."""
        reactor, _, probe = self.make()
        reactor.advance(1.0)
        reactor.advance(1.0)
        self.assertEqual(len(probe.calls), 1)

    def test_stop_stops_the_child_and_waits(self) -> None:
        """stopService: SIGTERM, the Deferred fires when the child has exited; no restart, no more checks."""
        reactor, watchdog, probe = self.make()
        reactor.advance(1.0)
        stopped = watchdog.stopService()
        self.assertEqual(reactor.last.signals, ["TERM"])
        self.assertNoResult(stopped)
        reactor.last.end(code=0)
        self.successResultOf(stopped)
        reactor.advance(10.0)
        self.assertEqual((len(reactor.spawned), len(probe.calls)), (1, 1))

    def test_stop_between_runs(self) -> None:
        """Stopping while a restart is pending: done at once, nothing is started again."""
        reactor, watchdog, _ = self.make()
        reactor.last.end(code=1)
        self.successResultOf(watchdog.stopService())
        reactor.advance(10.0)
        self.assertEqual(len(reactor.spawned), 1)

    def test_without_a_probe_only_exits_restart(self) -> None:
        """probe=None: no health checks at all."""
        reactor = ProcessClock()
        watchdog = Watchdog(reactor, WatchdogConfig(command=("/bin/x",), health_url=None), None, env={})
        watchdog.startService()
        reactor.advance(100.0)
        self.assertEqual(reactor.last.signals, [])
        self.assertEqual(len(reactor.getDelayedCalls()), 0)


class ConfigTests(TestCase):
    """
    L{WatchdogConfig}: the health URL and the bounds.
    """

    def test_a_base_url_means_its_health_path(self) -> None:
        """--health-url http://host:8000 and http://host:8000/ both poll /api/health."""
        for url in ("http://127.0.0.1:8000", "http://127.0.0.1:8000/"):
            config = WatchdogConfig(command=("x",), health_url=url)
            self.assertEqual(config.health_url, "http://127.0.0.1:8000/api/health")

    def test_probe_timeout(self) -> None:
        """80% of the interval, at most 5 seconds."""
        self.assertEqual(WatchdogConfig(command=("x",), interval=2.0).probe_timeout, 1.6)
        self.assertEqual(WatchdogConfig(command=("x",), interval=60.0).probe_timeout, 5.0)

    def test_bad_values(self) -> None:
        """Each bound is a ValueError."""
        for bad in ({"command": ()}, {"interval": 0}, {"failures": 0}, {"max_restart_delay": 0.1}):
            values: dict[str, object] = {"command": ("x",), **bad}
            self.assertRaises(ValueError, WatchdogConfig, **values)

"""
Tests for L{inkflow.n8n.breaker}: the per-URL circuit breaker.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from inkflow.n8n.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def fail(breaker: CircuitBreaker, now: float, times: int = 1, error: str = "HTTP 503") -> None:
    for _ in range(times):
        assert breaker.begin(now)
        breaker.record_failure(now, error)


class CircuitBreakerTests(TestCase):
    """
    Tests for L{CircuitBreaker}.
    """

    def test_starts_closed(self) -> None:
        """
        A new breaker is closed, admits requests and has zero counters.
        """
        breaker = CircuitBreaker()
        self.assertEqual(
            breaker.snapshot(0.0),
            {
                "state": CLOSED,
                "consecutive_failures": 0,
                "requests_total": 0,
                "failures_total": 0,
                "last_error": None,
            },
        )
        self.assertTrue(breaker.allows(0.0))

    def test_opens_after_threshold(self) -> None:
        """
        The breaker opens after C{failure_threshold} consecutive failures,
        not before, and then refuses requests.
        """
        breaker = CircuitBreaker(failure_threshold=3, cooldown=30.0)
        fail(breaker, 1.0, times=2)
        self.assertEqual(breaker.state(1.0), CLOSED)
        fail(breaker, 2.0)
        self.assertEqual(breaker.state(2.0), OPEN)
        self.assertFalse(breaker.allows(2.0))
        self.assertFalse(breaker.begin(2.0))
        self.assertEqual(breaker.requests_total, 3)

    def test_success_resets_the_run(self) -> None:
        """
        A success in between restarts the count of consecutive failures.
        """
        breaker = CircuitBreaker(failure_threshold=3)
        fail(breaker, 0.0, times=2)
        breaker.begin(0.0)
        breaker.record_success(0.0)
        fail(breaker, 0.0, times=2)
        self.assertEqual(breaker.state(0.0), CLOSED)
        self.assertEqual(breaker.consecutive_failures, 2)
        self.assertEqual(breaker.failures_total, 4)

    def test_half_open_after_cooldown(self) -> None:
        """
        After the cool-down the breaker is half-open and admits exactly one
        probe.
        """
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30.0)
        fail(breaker, 100.0)
        self.assertEqual(breaker.state(129.9), OPEN)
        self.assertEqual(breaker.state(130.0), HALF_OPEN)
        self.assertTrue(breaker.begin(130.0))
        self.assertEqual(breaker.state(131.0), HALF_OPEN)
        self.assertFalse(breaker.allows(131.0))
        self.assertFalse(breaker.begin(131.0))

    def test_probe_success_closes(self) -> None:
        """
        A successful probe closes the breaker and clears the failure run.
        """
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30.0)
        fail(breaker, 0.0)
        self.assertTrue(breaker.begin(30.0))
        breaker.record_success(31.0)
        self.assertEqual(breaker.state(31.0), CLOSED)
        self.assertEqual(breaker.consecutive_failures, 0)
        self.assertTrue(breaker.allows(31.0))

    def test_probe_failure_reopens(self) -> None:
        """
        A failed probe opens the breaker for another full cool-down.
        """
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30.0)
        fail(breaker, 0.0)
        self.assertTrue(breaker.begin(30.0))
        breaker.record_failure(35.0, "timeout")
        self.assertEqual(breaker.state(36.0), OPEN)
        self.assertEqual(breaker.state(64.9), OPEN)
        self.assertEqual(breaker.state(65.0), HALF_OPEN)

    def test_abandoned_probe_frees_the_slot(self) -> None:
        """
        A probe whose caller went away releases the slot without counting.
        """
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30.0)
        fail(breaker, 0.0)
        breaker.begin(30.0)
        breaker.abandon(31.0)
        self.assertEqual(breaker.failures_total, 1)
        self.assertTrue(breaker.allows(31.0))

    def test_counters_and_last_error(self) -> None:
        """
        Totals count every attempt and failure; C{last_error} keeps the last
        failure's description, shortened.
        """
        breaker = CircuitBreaker(failure_threshold=10)
        fail(breaker, 0.0, error="HTTP 503")
        fail(breaker, 0.0, error="x" * 500)
        breaker.begin(0.0)
        breaker.record_success(0.0)
        snapshot = breaker.snapshot(0.0)
        self.assertEqual(snapshot["requests_total"], 3)
        self.assertEqual(snapshot["failures_total"], 2)
        self.assertEqual(snapshot["consecutive_failures"], 0)
        self.assertEqual(snapshot["last_error"], "x" * 120)

    def test_invalid_parameters(self) -> None:
        """
        The threshold must be positive and the cool-down non-negative.
        """
        self.assertRaises(ValueError, CircuitBreaker, failure_threshold=0)
        self.assertRaises(ValueError, CircuitBreaker, cooldown=-1.0)

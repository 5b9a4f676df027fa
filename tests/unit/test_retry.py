"""
Tests for L{inkflow.n8n.retry}: the pure retry and failover policy.
"""

from __future__ import annotations

import email.utils

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from inkflow.n8n.retry import (
    CANCELLED,
    CONNECT,
    DEFAULT_RETRY_ON,
    EMPTY,
    INVALID,
    LOST,
    OK,
    RETRY_ON_CHOICES,
    STATUS,
    TIMEOUT,
    TOO_LARGE,
    Outcome,
    RetryPlan,
    RetryPolicy,
    Step,
    parse_retry_after,
)


def half() -> float:
    return 0.5


def top() -> float:
    return 0.999999


class OutcomeTests(TestCase):
    """
    Tests for L{Outcome}'s classification.
    """

    def test_retry_tokens(self) -> None:
        """
        Connect failures map to C{connect}, timeouts and responses lost after
        sending to C{timeout}, statuses to their code; answers proving the
        workflow ran map to nothing.
        """
        self.assertEqual(Outcome(CONNECT).retry_token, "connect")
        self.assertEqual(Outcome(TIMEOUT).retry_token, "timeout")
        self.assertEqual(Outcome(LOST).retry_token, "timeout")
        self.assertEqual(Outcome(STATUS, status=503).retry_token, "503")
        for kind in (OK, EMPTY, TOO_LARGE, INVALID, CANCELLED):
            self.assertIsNone(Outcome(kind, status=200).retry_token, kind)

    def test_breaker_failures(self) -> None:
        """
        404, 5xx, connect, timeout and lost responses count against the
        breaker; 429, other 4xx and 2xx oddities do not (n8n is up).
        """
        for outcome in (
            Outcome(CONNECT),
            Outcome(TIMEOUT),
            Outcome(LOST),
            Outcome(STATUS, status=404),
            Outcome(STATUS, status=500),
            Outcome(STATUS, status=503),
        ):
            self.assertTrue(outcome.upstream_failed, outcome)
        for outcome in (
            Outcome(STATUS, status=429),
            Outcome(STATUS, status=400),
            Outcome(STATUS, status=401),
            Outcome(OK, status=200),
            Outcome(EMPTY, status=200),
            Outcome(CANCELLED),
        ):
            self.assertFalse(outcome.upstream_failed, outcome)

    def test_label(self) -> None:
        """
        The label is the status code for HTTP statuses and the kind otherwise.
        """
        self.assertEqual(Outcome(STATUS, status=502).label, "502")
        self.assertEqual(Outcome(CONNECT).label, "connect")


class ParseRetryAfterTests(TestCase):
    """
    Tests for L{parse_retry_after}.
    """

    def test_seconds(self) -> None:
        """
        Delta-seconds are read as seconds.
        """
        self.assertEqual(parse_retry_after("7", 1000.0), 7.0)
        self.assertEqual(parse_retry_after(" 0 ", 1000.0), 0.0)

    def test_http_date(self) -> None:
        """
        An HTTP date is turned into the seconds from C{now} until then.
        """
        now = 1_700_000_000.0
        date = email.utils.formatdate(now + 12, usegmt=True)
        self.assertEqual(parse_retry_after(date, now), 12.0)

    def test_past_date(self) -> None:
        """
        A date in the past means no wait.
        """
        now = 1_700_000_000.0
        self.assertEqual(parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now), 0.0)

    def test_garbage(self) -> None:
        """
        Absent, empty, negative or unparseable values give C{None}.
        """
        for value in (None, "", "soon", "-5", "1.5"):
            self.assertIsNone(parse_retry_after(value, 0.0), value)


class RetryPolicyTests(TestCase):
    """
    Tests for L{RetryPolicy}.
    """

    def step(
        self,
        policy: RetryPolicy,
        outcome: Outcome,
        attempt: int = 0,
        now: float = 0.0,
        deadline: float = 100.0,
        available: list[bool] | None = None,
        tried: set[int] | None = None,
    ) -> Step | None:
        return policy.next_step(
            attempt=attempt,
            outcome=outcome,
            now=now,
            deadline=deadline,
            random=half,
            available=available if available is not None else [True] * policy.url_count,
            tried=tried if tried is not None else {attempt % policy.url_count},
        )

    def test_default_retry_on(self) -> None:
        """
        By default connect, 404, 429, 502, 503 and 504 are retried; timeouts,
        lost responses and 500 are not.
        """
        policy = RetryPolicy()
        self.assertEqual(policy.retry_on, frozenset(DEFAULT_RETRY_ON))
        for outcome in (
            Outcome(CONNECT),
            Outcome(STATUS, status=404),
            Outcome(STATUS, status=429),
            Outcome(STATUS, status=502),
            Outcome(STATUS, status=503),
            Outcome(STATUS, status=504),
        ):
            self.assertTrue(policy.should_retry(outcome), outcome)
        for outcome in (
            Outcome(TIMEOUT),
            Outcome(LOST),
            Outcome(STATUS, status=500),
            Outcome(STATUS, status=400),
            Outcome(EMPTY, status=200),
        ):
            self.assertFalse(policy.should_retry(outcome), outcome)

    def test_the_retry_on_vocabulary_is_what_outcomes_name(self) -> None:
        """
        Every failure that can move an attempt on names a C{--retry-on} word,
        and the default words are among them, in the words' order.
        """
        tokens = {
            Outcome(CONNECT).retry_token,
            Outcome(TIMEOUT).retry_token,
            Outcome(LOST).retry_token,
            *(Outcome(STATUS, status=int(w)).retry_token for w in RETRY_ON_CHOICES if w.isdigit()),
        }
        self.assertEqual(tokens, set(RETRY_ON_CHOICES))
        self.assertEqual(DEFAULT_RETRY_ON, tuple(w for w in RETRY_ON_CHOICES if w in DEFAULT_RETRY_ON))

    def test_opt_in_timeout_and_500(self) -> None:
        """
        Adding C{timeout} and C{500} to C{retry_on} makes those retryable.
        """
        policy = RetryPolicy(retry_on=frozenset(DEFAULT_RETRY_ON) | {"timeout", "500"})
        self.assertTrue(policy.should_retry(Outcome(TIMEOUT)))
        self.assertTrue(policy.should_retry(Outcome(LOST)))
        self.assertTrue(policy.should_retry(Outcome(STATUS, status=500)))

    def test_attempts_are_bounded(self) -> None:
        """
        No step is offered once C{retries + 1} attempts have been made.
        """
        policy = RetryPolicy(retries=2)
        self.assertIsNotNone(self.step(policy, Outcome(CONNECT), attempt=0))
        self.assertIsNotNone(self.step(policy, Outcome(CONNECT), attempt=1))
        self.assertIsNone(self.step(policy, Outcome(CONNECT), attempt=2))

    def test_zero_retries(self) -> None:
        """
        With C{retries=0} nothing is ever retried.
        """
        self.assertIsNone(self.step(RetryPolicy(retries=0), Outcome(CONNECT)))

    def test_not_retryable(self) -> None:
        """
        A non-retryable outcome gives no step.
        """
        self.assertIsNone(self.step(RetryPolicy(), Outcome(STATUS, status=500)))

    def test_failover_is_immediate(self) -> None:
        """
        Moving on to a URL not yet tried happens without a wait.
        """
        policy = RetryPolicy(url_count=3, retries=2)
        self.assertEqual(self.step(policy, Outcome(CONNECT), tried={0}), Step(url_index=1, delay=0.0))

    def test_spread_over_urls(self) -> None:
        """
        Attempts go through the URLs in order and wrap around; a URL tried
        again is reached after a backoff.
        """
        policy = RetryPolicy(url_count=2, retries=3, base_delay=1.0)
        self.assertEqual(self.step(policy, Outcome(CONNECT), attempt=0, tried={0}), Step(1, 0.0))
        self.assertEqual(self.step(policy, Outcome(CONNECT), attempt=1, tried={0, 1}), Step(0, 0.5))
        self.assertEqual(self.step(policy, Outcome(CONNECT), attempt=2, tried={0, 1}), Step(1, 1.0))

    def test_single_url_backs_off(self) -> None:
        """
        With one URL every retry waits a growing backoff.
        """
        policy = RetryPolicy(url_count=1, retries=5, base_delay=1.0, max_delay=100.0)
        delays = [self.step(policy, Outcome(CONNECT), attempt=a) for a in range(4)]
        self.assertEqual([s.delay for s in delays if s is not None], [0.5, 1.0, 2.0, 4.0])

    def test_backoff_full_jitter_and_cap(self) -> None:
        """
        The backoff is C{random() * min(cap, base * 2**round)}.
        """
        policy = RetryPolicy(base_delay=0.25, max_delay=2.0)
        self.assertEqual(policy.backoff(0, half), 0.125)
        self.assertEqual(policy.backoff(1, half), 0.25)
        self.assertEqual(policy.backoff(10, half), 1.0)
        self.assertEqual(policy.backoff(1000, half), 1.0)
        self.assertEqual(policy.backoff(0, lambda: 0.0), 0.0)

    @given(round=st.integers(min_value=0, max_value=10_000), draw=st.floats(min_value=0.0, max_value=1.0))
    def test_backoff_bounds(self, round: int, draw: float) -> None:
        """
        Whatever the round and the draw, the backoff stays within
        M{[0, max_delay]}.
        """
        policy = RetryPolicy(base_delay=0.1, max_delay=3.0)
        delay = policy.backoff(round, lambda: draw)
        self.assertGreaterEqual(delay, 0.0)
        self.assertLessEqual(delay, 3.0)

    def test_retry_after_honoured(self) -> None:
        """
        A 429's C{Retry-After} longer than the backoff sets the wait before
        trying the same URL again.
        """
        policy = RetryPolicy(url_count=1, retries=2)
        outcome = Outcome(STATUS, status=429, retry_after="3")
        self.assertEqual(self.step(policy, outcome), Step(0, 3.0))

    def test_retry_after_as_date(self) -> None:
        """
        A 429's C{Retry-After} may be an HTTP date.
        """
        now = 1_700_000_000.0
        policy = RetryPolicy(url_count=1, retries=2)
        outcome = Outcome(STATUS, status=429, retry_after=email.utils.formatdate(now + 4, usegmt=True))
        self.assertEqual(self.step(policy, outcome, now=now, deadline=now + 10), Step(0, 4.0))

    def test_retry_after_beyond_deadline(self) -> None:
        """
        A C{Retry-After} that reaches the deadline ends the retries.
        """
        policy = RetryPolicy(url_count=1, retries=2)
        outcome = Outcome(STATUS, status=429, retry_after="30")
        self.assertIsNone(self.step(policy, outcome, now=0.0, deadline=10.0))

    def test_retry_after_not_awaited_on_failover(self) -> None:
        """
        A 429 from one URL does not delay moving on to another URL.
        """
        policy = RetryPolicy(url_count=2, retries=2)
        outcome = Outcome(STATUS, status=429, retry_after="30")
        self.assertEqual(self.step(policy, outcome, now=0.0, deadline=10.0, tried={0}), Step(1, 0.0))

    def test_backoff_beyond_deadline(self) -> None:
        """
        A backoff that would reach the deadline ends the retries.
        """
        policy = RetryPolicy(url_count=1, retries=2, base_delay=4.0)
        self.assertIsNone(self.step(policy, Outcome(CONNECT), now=8.0, deadline=10.0))
        self.assertEqual(self.step(policy, Outcome(CONNECT), now=7.0, deadline=10.0), Step(0, 2.0))

    def test_skips_unavailable_urls(self) -> None:
        """
        A URL whose breaker refuses is skipped for the next available one.
        """
        policy = RetryPolicy(url_count=3, retries=2)
        self.assertEqual(self.step(policy, Outcome(CONNECT), available=[True, False, True], tried={0}), Step(2, 0.0))
        self.assertEqual(policy.pick_url(0, [False, True, True]), 1)
        self.assertEqual(policy.pick_url(2, [True, True, False]), 0)

    def test_nothing_available(self) -> None:
        """
        When no URL is available there is no URL and no step.
        """
        policy = RetryPolicy(url_count=2, retries=2)
        self.assertIsNone(policy.pick_url(0, [False, False]))
        self.assertIsNone(self.step(policy, Outcome(CONNECT), available=[False, False]))

    def test_invalid_construction(self) -> None:
        """
        A policy needs at least one URL and non-negative retries.
        """
        self.assertRaises(ValueError, RetryPolicy, url_count=0)
        self.assertRaises(ValueError, RetryPolicy, retries=-1)


class RetryPlanTests(TestCase):
    """
    L{RetryPlan}: one message's attempt bookkeeping, pure.
    """

    def plan(self, urls: int = 2, retries: int = 2, deadline: float = 100.0) -> RetryPlan:
        return RetryPolicy(url_count=urls, retries=retries).plan(deadline)

    def test_first_attempt_skips_an_open_breaker(self) -> None:
        """The first attempt goes to the first URL whose breaker admits a request."""
        plan = self.plan()
        self.assertEqual(plan.start([False, True]), 1)
        self.assertIsNone(self.plan().start([False, False]))

    def test_budget_is_the_attempt_timeout_capped_by_the_deadline(self) -> None:
        """An attempt gets its timeout, less near the deadline, none after it; its URL counts as tried."""
        plan = self.plan(deadline=10.0)
        plan.start([True, True])
        self.assertEqual(plan.budget(now=0.0, attempt_timeout=3.0), 3.0)
        self.assertEqual(plan.budget(now=8.5, attempt_timeout=3.0), 1.5)
        self.assertIsNone(plan.budget(now=10.0, attempt_timeout=3.0))
        self.assertEqual(plan.tried, {0})

    def test_failover_then_advance(self) -> None:
        """After a connect failure the next step is the other URL at once; advancing counts the attempt."""
        plan = self.plan()
        plan.start([True, True])
        plan.budget(0.0, 3.0)
        step = plan.next_step(Outcome(CONNECT), 0.0, lambda: 0.5, [True, True])
        assert step is not None
        self.assertEqual((step.url_index, step.delay), (1, 0.0))
        self.assertEqual(plan.advance(step, [True, True]), 1)
        self.assertEqual((plan.attempt, plan.url_index), (1, 1))

    def test_advance_repicks_when_the_breaker_opened_during_the_wait(self) -> None:
        """A step's URL whose breaker opened meanwhile is replaced by one that admits; none left is None."""
        plan = self.plan()
        plan.start([True, True])
        plan.budget(0.0, 3.0)
        step = plan.next_step(Outcome(CONNECT), 0.0, lambda: 0.5, [True, True])
        assert step is not None
        self.assertEqual(plan.advance(step, [True, False]), 0)
        other = self.plan()
        other.start([True, True])
        self.assertIsNone(other.advance(step, [False, False]))

    def test_no_step_once_attempts_are_used_up(self) -> None:
        """With no retries left the plan gives up."""
        plan = self.plan(retries=0)
        plan.start([True, True])
        plan.budget(0.0, 3.0)
        self.assertIsNone(plan.next_step(Outcome(CONNECT), 0.0, lambda: 0.5, [True, True]))

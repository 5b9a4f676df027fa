"""
A circuit breaker per webhook URL: pure, no reactor.  The time is passed in.

closed --(N consecutive failures)--> open --(cool-down)--> half_open
half_open admits exactly one probe: its success closes the breaker, its
failure opens it again for another cool-down.
"""

from __future__ import annotations

from inkflow.snapshot import BreakerSnapshot

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

#: The longest C{last_error} kept.
MAX_ERROR_CHARS = 120


class CircuitBreaker:
    """
    One URL's breaker and its health counters.

    Use: L{allows} to ask without side effects, L{begin} right before an
    attempt, then exactly one of L{record_success}, L{record_failure} or
    L{abandon} when it ends.

    @ivar consecutive_failures: failures since the last success.
    @ivar requests_total: attempts begun.
    @ivar failures_total: attempts that counted as failures.
    @ivar last_error: a short, safe description of the last failure, or
        C{None}.
    """

    def __init__(self, failure_threshold: int = 5, cooldown: float = 30.0) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.consecutive_failures = 0
        self.requests_total = 0
        self.failures_total = 0
        self.last_error: str | None = None
        self._opened_at: float | None = None
        self._probing = False

    def state(self, now: float) -> str:
        """
        C{"closed"}, C{"open"} or C{"half_open"} at time C{now}.
        """
        if self._opened_at is None:
            return CLOSED
        if self._probing or now - self._opened_at >= self.cooldown:
            return HALF_OPEN
        return OPEN

    def allows(self, now: float) -> bool:
        """
        Whether an attempt may begin now (no side effect): always when closed;
        when half-open only if the probe is not taken yet; never when open.
        """
        state = self.state(now)
        if state == CLOSED:
            return True
        return state == HALF_OPEN and not self._probing

    def begin(self, now: float) -> bool:
        """
        Start an attempt: count it, and take the probe slot when half-open.

        @return: C{False} (and nothing counted) if the breaker does not admit
            an attempt now.
        """
        if not self.allows(now):
            return False
        if self.state(now) == HALF_OPEN:
            self._probing = True
        self.requests_total += 1
        return True

    def record_success(self, now: float) -> None:
        """
        An attempt showed the URL works (any answer but 404 or 5xx): close.
        """
        self.consecutive_failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self, now: float, error: str) -> None:
        """
        An attempt failed (connect, timeout, lost response, 404, 5xx).  Opens
        the breaker after C{failure_threshold} failures in a row, or at once
        when the half-open probe failed.

        @param error: a short description safe to show (never a secret).
        """
        self.consecutive_failures += 1
        self.failures_total += 1
        self.last_error = error[:MAX_ERROR_CHARS]
        if self._probing:
            self._probing = False
            self._opened_at = now
        elif self._opened_at is None and self.consecutive_failures >= self.failure_threshold:
            self._opened_at = now

    def abandon(self, now: float) -> None:
        """
        An attempt ended without telling anything about the URL (the caller
        went away): release the probe slot, count nothing.
        """
        self._probing = False

    def snapshot(self, now: float) -> BreakerSnapshot:
        """
        The counters in the health shape (without the URL).
        """
        return BreakerSnapshot(
            state=self.state(now),
            consecutive_failures=self.consecutive_failures,
            requests_total=self.requests_total,
            failures_total=self.failures_total,
            last_error=self.last_error,
        )

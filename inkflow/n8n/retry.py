"""
The retry and failover policy for the n8n call: pure, no reactor, no I/O.

POST is not idempotent, so the policy moves an attempt on only when n8n cannot
have run the workflow (the connection failed before the request was sent) or
said so itself (404 webhook not registered, 429, 502, 503, 504).  C{timeout}
and C{500} can be opted into; they are off by default because n8n finishes a
run even when its caller gave up.

Everything here is a function of (attempt number, outcome, now, random): the
loop in L{inkflow.n8n.client} asks L{RetryPolicy.next_step} what to do after each
failed attempt and does it.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CANCELLED",
    "CONNECT",
    "DEFAULT_RETRY_ON",
    "EMPTY",
    "INVALID",
    "LOST",
    "OK",
    "RETRY_ON_CHOICES",
    "STATUS",
    "TIMEOUT",
    "TOO_LARGE",
    "WORKFLOW_ERROR",
    "Outcome",
    "RetryPlan",
    "RetryPolicy",
    "Step",
    "parse_retry_after",
]

#: The kinds of L{Outcome}.
OK = "ok"  # a 2xx with a usable body
CONNECT = "connect"  # the connection failed before the request was sent
TIMEOUT = "timeout"  # no complete answer within the attempt's time
LOST = "lost"  # the request was sent, then the connection failed: n8n may have run the workflow
STATUS = "status"  # n8n answered with a non-2xx status
EMPTY = "empty"  # a 2xx with an empty body: the workflow failed before its Respond node
TOO_LARGE = "too_large"  # the response body is over the limit
INVALID = "invalid"  # a 2xx that cannot be passed on (e.g. a redirect, undecodable)
WORKFLOW_ERROR = "workflow_error"  # a 2xx stream of error lines only: the workflow ran and failed
CANCELLED = "cancelled"  # the caller went away; not n8n's doing

#: The C{--retry-on} words, in the order C{--help} lists them: the kinds of
#: failure that may move an attempt on (see L{Outcome.retry_token}).
RETRY_ON_CHOICES: tuple[str, ...] = ("connect", "timeout", "404", "429", "500", "502", "503", "504")

#: The words on by default, in that order: the failures after which n8n cannot
#: have run the workflow, or says so itself.
DEFAULT_RETRY_ON: tuple[str, ...] = ("connect", "404", "429", "502", "503", "504")


@dataclass(frozen=True)
class Outcome:
    """
    How one attempt at one webhook URL ended.

    @ivar kind: one of L{OK}, L{CONNECT}, L{TIMEOUT}, L{LOST}, L{STATUS},
        L{EMPTY}, L{TOO_LARGE}, L{INVALID}, L{WORKFLOW_ERROR}, L{CANCELLED}.
    @ivar status: the HTTP status, when n8n answered.
    @ivar retry_after: the raw C{Retry-After} header of the answer, if any.
    @ivar error: a short description safe to show in health and logs: never a
        URL, a header value or a body.
    """

    kind: str
    status: int | None = None
    retry_after: str | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        """
        A short name for metrics and logs: the kind, or the status code for
        L{STATUS} (C{"503"}).
        """
        if self.kind == STATUS and self.status is not None:
            return str(self.status)
        return self.kind

    @property
    def retry_token(self) -> str | None:
        """
        The C{--retry-on} word that would move this outcome on, or C{None} if
        nothing can (a success, or an answer that proves the workflow ran).

        A response lost after the request was sent counts as C{timeout}: in
        both cases n8n may have run the workflow, so both are off by default.
        """
        if self.kind == CONNECT:
            return "connect"
        if self.kind in (TIMEOUT, LOST):
            return "timeout"
        if self.kind == STATUS and self.status is not None:
            return str(self.status)
        return None

    @property
    def upstream_failed(self) -> bool:
        """
        Whether this outcome counts against the URL's circuit breaker: n8n is
        unreachable, not answering, or says the webhook is gone (404) or it is
        broken (5xx).  A 429 or another 4xx means n8n is up.
        """
        if self.kind in (CONNECT, TIMEOUT, LOST):
            return True
        if self.kind == STATUS and self.status is not None:
            return self.status == 404 or self.status >= 500
        return False


@dataclass(frozen=True)
class Step:
    """
    What to do after a failed attempt: wait C{delay} seconds, then try the
    URL at C{url_index}.
    """

    url_index: int
    delay: float


def parse_retry_after(value: str | None, now: float) -> float | None:
    """
    The seconds to wait that a C{Retry-After} header asks for.

    @param value: the header: delta-seconds or an HTTP date.
    @param now: the current POSIX time (for an HTTP date).
    @return: seconds (0 or more), or C{None} when absent or unparseable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates; HTTP dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryPolicy:
    """
    When to try again, where, and after how long.

    @ivar url_count: how many webhook URLs there are, in failover order.
    @ivar retries: extra attempts after the first, spread over the URLs.
    @ivar retry_on: the C{--retry-on} words (see L{Outcome.retry_token}).
    @ivar base_delay: the first backoff ceiling, in seconds.
    @ivar max_delay: the largest backoff ceiling, in seconds.
    """

    url_count: int = 1
    retries: int = 2
    retry_on: frozenset[str] = frozenset(DEFAULT_RETRY_ON)
    base_delay: float = 0.25
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if self.url_count < 1:
            raise ValueError("url_count must be at least 1")
        if self.retries < 0:
            raise ValueError("retries must not be negative")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def should_retry(self, outcome: Outcome) -> bool:
        """
        Whether C{outcome} moves on to another attempt under C{retry_on}
        (ignoring how many attempts and how much time are left).
        """
        token = outcome.retry_token
        return token is not None and token in self.retry_on

    def backoff(self, round: int, random: Callable[[], float]) -> float:
        """
        Capped exponential backoff with full jitter: a uniform draw in
        M{[0, min(max_delay, base_delay * 2 ** round))}.

        @param round: 0 for the first wait before trying a URL again.
        @param random: returns a float in M{[0, 1)}.
        """
        ceiling = min(self.max_delay, self.base_delay * math.pow(2.0, min(round, 62)))
        return max(0.0, min(1.0, random())) * ceiling

    def pick_url(self, attempt: int, available: Sequence[bool]) -> int | None:
        """
        The URL for attempt number C{attempt} (0-based): failover order,
        wrapping around, skipping URLs whose breaker does not admit a request.

        @param available: for each URL, whether its breaker admits a request.
        @return: an index into the URLs, or C{None} if none is available.
        """
        count = len(available)
        if count == 0:
            return None
        start = attempt % count
        for offset in range(count):
            index = (start + offset) % count
            if available[index]:
                return index
        return None

    def next_step(
        self,
        *,
        attempt: int,
        outcome: Outcome,
        now: float,
        deadline: float,
        random: Callable[[], float],
        available: Sequence[bool],
        tried: Collection[int],
    ) -> Step | None:
        """
        Decide what follows a failed attempt.

        Moving to a URL not yet tried for this message is immediate (that is
        failover); trying a URL again waits a backoff, or what a 429's
        C{Retry-After} asks if that is longer.  No step is returned when the
        outcome is not retryable, the attempts are used up, no URL is
        available, or the wait would reach the deadline.

        @param attempt: the 0-based number of the attempt that just ended.
        @param outcome: how it ended.
        @param now: the current time (same clock as C{deadline}).
        @param deadline: when the caller must have its answer.
        @param random: returns a float in M{[0, 1)} (for the jitter).
        @param available: for each URL, whether its breaker admits a request.
        @param tried: the URL indexes already tried for this message.
        """
        if attempt + 1 >= self.max_attempts or not self.should_retry(outcome):
            return None
        following = attempt + 1
        index = self.pick_url(following, available)
        if index is None:
            return None
        delay = 0.0
        if index in tried:
            delay = self.backoff(max(0, following - len(tried)), random)
            if outcome.kind == STATUS and outcome.status == 429:
                asked = parse_retry_after(outcome.retry_after, now)
                if asked is not None:
                    delay = max(delay, asked)
        if now + delay >= deadline:
            return None
        return Step(url_index=index, delay=delay)

    def plan(self, deadline: float) -> RetryPlan:
        """
        The bookkeeping of one message's attempts under this policy.
        """
        return RetryPlan(self, deadline)


@dataclass
class RetryPlan:
    """
    One message's attempts: which number this is, which URLs were tried, and
    where the next attempt goes.  Pure (time and breaker states are passed
    in), so the forwarding loop is a few lines around it.

    @ivar attempt: the 0-based number of the current attempt.
    @ivar url_index: the URL of the current attempt (C{None} before L{start}
        or when none is available).
    """

    policy: RetryPolicy
    deadline: float
    attempt: int = 0
    url_index: int | None = None
    tried: set[int] = field(default_factory=set)

    def start(self, available: Sequence[bool]) -> int | None:
        """
        The URL of the first attempt, or C{None} when no breaker admits one.
        """
        self.url_index = self.policy.pick_url(0, available)
        return self.url_index

    def budget(self, now: float, attempt_timeout: float) -> float | None:
        """
        The seconds the current attempt may take (its URL now counts as
        tried), or C{None} when the deadline has passed.
        """
        remaining = self.deadline - now
        if remaining <= 0 or self.url_index is None:
            return None
        self.tried.add(self.url_index)
        return min(attempt_timeout, remaining)

    def next_step(
        self, outcome: Outcome, now: float, random: Callable[[], float], available: Sequence[bool]
    ) -> Step | None:
        """
        What follows the current attempt's failure (see
        L{RetryPolicy.next_step}); C{None}: give up.
        """
        return self.policy.next_step(
            attempt=self.attempt,
            outcome=outcome,
            now=now,
            deadline=self.deadline,
            random=random,
            available=available,
            tried=self.tried,
        )

    def advance(self, step: Step, available: Sequence[bool]) -> int | None:
        """
        Move to the next attempt after C{step}'s wait: its URL, or another
        one when that URL's breaker opened meanwhile (another request's
        failure); C{None} when none admits a request now.
        """
        self.attempt += 1
        index: int | None = step.url_index
        if not available[step.url_index]:
            index = self.policy.pick_url(self.attempt, available)
        self.url_index = index
        return index

"""
Admission control for chat requests: who may go to n8n now, who waits, who is
told to come back later.

  - L{ChatQueue}: at most C{max_concurrent} chat requests in flight, a bounded
    FIFO of C{queue_size} waiting behind them for at most C{queue_timeout}
    seconds; everything beyond that is a 503 C{busy} with C{Retry-After}.
  - L{rate_key}: a client address's rate-limit bucket (the bucket itself is
    in the shared state: L{inkflow.state.chat.check_rate}).
  - L{client_ip}: the client's address, believing C{X-Forwarded-For} only from
    trusted proxies.

No global reactor: time comes from an injected clock (an C{IReactorTime}),
so the tests drive everything with L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import deque

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from inkflow.errors import ApiError
from inkflow.snapshot import QueueSnapshot
from inkflow.web.client_address import client_ip

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "DRAINING_RETRY_AFTER",
    "WAIT_WINDOW",
    "ChatQueue",
    "Slot",
    "client_ip",
    "rate_key",
]

log = Logger()


#: How many recent queue waits the percentiles are computed over.
WAIT_WINDOW = 1000

#: Retry-After (seconds) while draining: the client should come back once a
#: fresh instance (or another worker) is up.
DRAINING_RETRY_AFTER = 5.0

#: Retry-After (seconds) for a full queue before any request has finished, so
#: there is no service time to estimate from.
DEFAULT_RETRY_AFTER = 5.0

#: Weight of the newest sample in the moving average of slot hold times.
_HOLD_EWMA_WEIGHT = 0.2


class Slot:
    """
    Permission for one chat request to talk to n8n.  Call L{release} when the
    request is done (success, failure or client gone); it is idempotent.

    @ivar waited: seconds this request waited in the queue (0.0 when it was
        admitted at once).
    @ivar started: the clock's time when the slot was granted.
    """

    __slots__ = ("_queue", "_released", "started", "waited")

    def __init__(self, queue: ChatQueue, waited: float, started: float) -> None:
        self._queue = queue
        self._released = False
        self.waited = waited
        self.started = started

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """
        Free the slot and wake the next waiter.  Calling it again does nothing.
        """
        if self._released:
            return
        self._released = True
        self._queue._release(self)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Slot {state} waited={self.waited:.3f}s>"


class _Waiter:
    """
    One request waiting in the queue.
    """

    __slots__ = ("deferred", "enqueued", "timer")

    def __init__(self, deferred: Deferred[Slot], enqueued: float) -> None:
        self.deferred = deferred
        self.enqueued = enqueued
        self.timer: IDelayedCall | None = None


def _percentile(ordered: list[float], p: float) -> float:
    """
    Nearest-rank percentile of an already sorted list (0.0 when empty).
    """
    if not ordered:
        return 0.0
    rank = math.ceil(p / 100.0 * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


class ChatQueue:
    """
    A concurrency gate with a bounded FIFO queue in front of it.

    Counters (see L{snapshot}): C{processed_total} counts released slots
    (requests that went through, whatever their outcome); C{rejected_total}
    counts immediate refusals (queue full, or draining); C{timed_out_total}
    counts waiters that gave up after C{queue_timeout}; C{cancelled_total}
    counts waiters cancelled by their caller (client gone).
    """

    def __init__(
        self,
        max_concurrent: int,
        queue_size: int,
        queue_timeout: float,
        clock: IReactorTime,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        if queue_timeout < 0:
            raise ValueError(f"queue_timeout must be >= 0, got {queue_timeout}")
        self.max_concurrent = max_concurrent
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self._clock: IReactorTime = clock
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._idle_waiters: list[Deferred[None]] = []
        self._draining = False
        self._waits_ms: deque[float] = deque(maxlen=WAIT_WINDOW)
        self._hold_avg: float | None = None
        self.processed_total = 0
        self.rejected_total = 0
        self.timed_out_total = 0
        self.cancelled_total = 0

    # --- state

    @property
    def depth(self) -> int:
        """
        How many requests are waiting.
        """
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        """
        How many slots are held.
        """
        return self._in_flight

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def full(self) -> bool:
        """
        True when a new L{acquire} would be refused (every slot busy and no
        room in the queue), or while draining.  For C{/api/ready}.
        """
        return self._draining or (self._in_flight >= self.max_concurrent and len(self._waiters) >= self.queue_size)

    # --- admission

    def acquire(self) -> Deferred[Slot]:
        """
        Ask for a slot.

        @return: a L{Deferred} that fires with a L{Slot} at once when one is
            free, or later when the request reaches the head of the queue.  It
            fails at once with a 503 C{busy} L{ApiError} (with C{Retry-After})
            when the queue is full or the queue is draining, and later with
            the same when the wait exceeds C{queue_timeout}.  Cancelling it
            while queued (the client went away) removes the waiter at once;
            cancelling it after it fired does nothing, so the holder must then
            release the slot.
        """
        if self._draining:
            self.rejected_total += 1
            return fail(ApiError.retry_later("busy", DRAINING_RETRY_AFTER, "the server is shutting down"))
        now = self._clock.seconds()
        if self._in_flight < self.max_concurrent and not self._waiters:
            return succeed(self._grant(now, 0.0))
        if len(self._waiters) >= self.queue_size:
            self.rejected_total += 1
            return fail(ApiError.retry_later("busy", self.retry_after(), "the chat queue is full"))

        def cancel(d: Deferred[Slot]) -> None:
            self._cancel(waiter)

        waiter = _Waiter(Deferred(cancel), now)
        waiter.timer = self._clock.callLater(self.queue_timeout, self._expire, waiter)
        self._waiters.append(waiter)
        return waiter.deferred

    def retry_after(self) -> float:
        """
        A hint, in seconds, for when a refused request might get through: the
        recent average time a slot is held, times the queue positions ahead
        of a new arrival, spread over the slots; between 1 second and
        C{queue_timeout}.
        """
        ceiling = max(1.0, self.queue_timeout)
        if self._hold_avg is None:
            return min(ceiling, DEFAULT_RETRY_AFTER)
        estimate = self._hold_avg * (len(self._waiters) + 1) / self.max_concurrent
        return min(ceiling, max(1.0, estimate))

    def _grant(self, now: float, waited: float) -> Slot:
        self._in_flight += 1
        self._waits_ms.append(waited * 1000.0)
        return Slot(self, waited, now)

    def _release(self, slot: Slot) -> None:
        now = self._clock.seconds()
        held = max(0.0, now - slot.started)
        if self._hold_avg is None:
            self._hold_avg = held
        else:
            self._hold_avg += _HOLD_EWMA_WEIGHT * (held - self._hold_avg)
        self._in_flight -= 1
        self.processed_total += 1
        self._wake()
        self._check_idle()

    def _wake(self) -> None:
        """
        Hand free slots to the waiters at the head of the queue.
        """
        while self._waiters and self._in_flight < self.max_concurrent:
            waiter = self._waiters.popleft()
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            waiter.timer = None
            now = self._clock.seconds()
            # The callback may release the slot synchronously and re-enter
            # _wake: the counters are already consistent at this point.
            waiter.deferred.callback(self._grant(now, max(0.0, now - waiter.enqueued)))

    def _expire(self, waiter: _Waiter) -> None:
        waiter.timer = None
        try:
            self._waiters.remove(waiter)
        except ValueError:  # already admitted or cancelled
            return
        self.timed_out_total += 1
        waited = self._clock.seconds() - waiter.enqueued
        log.info(
            "chat request gave up after {waited:.1f} s in the queue (depth {depth}, in flight {in_flight})",
            waited=waited,
            depth=len(self._waiters),
            in_flight=self._in_flight,
        )
        waiter.deferred.errback(ApiError.retry_later("busy", self.retry_after(), "timed out waiting in the chat queue"))
        self._check_idle()

    def _cancel(self, waiter: _Waiter) -> None:
        """
        The canceller of a queued waiter's Deferred: leave the queue; the
        Deferred then fails with L{twisted.internet.defer.CancelledError}.
        """
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None
        self.cancelled_total += 1
        self._check_idle()

    # --- draining

    def start_draining(self) -> None:
        """
        Refuse new work (503 C{busy}); what is in flight or already queued
        still completes.
        """
        if not self._draining:
            self._draining = True
            log.info(
                "chat queue draining: {in_flight} in flight, {depth} queued",
                in_flight=self._in_flight,
                depth=len(self._waiters),
            )

    def idle(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires (with L{None}) when nothing is in
            flight or queued: at once if that is already so.  Cancellable.
        """
        if self._is_idle():
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            if d in self._idle_waiters:
                self._idle_waiters.remove(d)

        d: Deferred[None] = Deferred(cancel)
        self._idle_waiters.append(d)
        return d

    def _is_idle(self) -> bool:
        return self._in_flight == 0 and not self._waiters

    def _check_idle(self) -> None:
        if self._idle_waiters and self._is_idle():
            waiting, self._idle_waiters = self._idle_waiters, []
            for d in waiting:
                d.callback(None)

    # --- health

    def snapshot(self) -> QueueSnapshot:
        """
        The contract's C{queue} object for C{/api/health}.
        """
        ordered = sorted(self._waits_ms)
        return QueueSnapshot(
            depth=len(self._waiters),
            max=self.queue_size,
            in_flight=self._in_flight,
            max_concurrent=self.max_concurrent,
            processed_total=self.processed_total,
            rejected_total=self.rejected_total,
            timed_out_total=self.timed_out_total,
            cancelled_total=self.cancelled_total,
            wait_ms_p50=round(_percentile(ordered, 50), 3),
            wait_ms_p95=round(_percentile(ordered, 95), 3),
        )


@functools.lru_cache(maxsize=4096)
def rate_key(client: str) -> str:
    """
    The rate-limit bucket of a client address: an IPv4 address is its own
    bucket, an IPv6 address shares one with its /64 (one subscriber's
    network: a /64 holds 2^64 addresses, each would otherwise get a fresh
    bucket and could evict everyone else's).  Cached: the same clients
    come again and again.
    """
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return client

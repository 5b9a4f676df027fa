"""
L{MemoryState}: the shared state of one process, in memory, driven by an
injected clock (the reactor, or a L{twisted.internet.task.Clock} in tests).

It is the default store (one process), the store the C{--workers} parent
serves to its workers (L{inkflow.state.workers}), and the local half of
L{inkflow.state.fallback.FallbackState}: the keys in flight and the answers
kept (bounded by count and bytes), a token bucket per rate-limit key (bounded,
full buckets forgotten) and the L{inkflow.n8n.executions.ExecutionMap}, the
keys scoped to their owner.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from inkflow.errors import ApiError
from inkflow.n8n.executions import ExecutionMap
from inkflow.state.base import LEAD, Answer, Claim, Outcome, StateConfig, Wake, scoped_key, storable

__all__ = ["MAX_BUCKETS", "MAX_ENTRIES", "MAX_TOTAL_BYTES", "MemoryState", "take_token"]

#: Stored answers at most (the oldest go first).
MAX_ENTRIES = 10_000
#: Bytes of stored answers at most.
MAX_TOTAL_BYTES = 32 * 1024 * 1024
#: Rate-limit buckets at most (the least recently used go first: a fresh, full
#: bucket errs on the side of letting through).
MAX_BUCKETS = 10_000

FLIGHT = "flight"
STREAMING = "streaming"
DONE = "done"


def take_token(tokens: float, stamp: float, now: float, per_minute: int) -> tuple[float, float]:
    """
    The token bucket, one step: a bucket of C{per_minute} tokens refilling at
    C{per_minute / 60} a second had C{tokens} at C{stamp}; take one at C{now}.

    @return: the tokens left and the wait: 0.0 when allowed, else the seconds
        until the next token (nothing taken).  The Redis script is the same
        arithmetic.
    """
    capacity = float(per_minute)
    rate = per_minute / 60.0
    tokens = min(capacity, tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


@dataclass
class _Entry:
    fingerprint: str
    state: str = FLIGHT
    waiters: list[Deferred[Wake]] = field(default_factory=list)
    answer: Answer | None = None
    expires: float = 0.0


class MemoryState:
    """
    The state of one process.

    @ivar on_lead_lost: called with the scoped key when a waiter is woken to
        lead (tests, metrics).
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: StateConfig,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_TOTAL_BYTES,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self._clock = clock
        self.config = config
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_buckets = max_buckets
        self._entries: dict[str, _Entry] = {}
        #: Stored (done) answers only, in the order they were stored.
        self._stored: OrderedDict[str, int] = OrderedDict()
        self.stored_bytes = 0
        self.replayed_total = 0
        self.joined_total = 0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.executions = ExecutionMap(clock, config.execution_ttl)

    @property
    def degraded(self) -> bool:
        return False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stored(self) -> int:
        return len(self._stored)

    # --- idempotency, synchronous (the workers' parent calls these)

    def claim_now(self, owner: str, key: str, fingerprint: str) -> Claim:
        """
        L{idem_claim}, at once.
        """
        self._expire()
        name = scoped_key(owner, key)
        entry = self._entries.get(name)
        if entry is None:
            self._entries[name] = _Entry(fingerprint)
            return Claim("lead")
        if entry.fingerprint != fingerprint:
            return Claim("mismatch")
        if entry.state == DONE:
            assert entry.answer is not None
            self.replayed_total += 1
            return Claim("replay", answer=entry.answer)
        if entry.state == STREAMING:
            return Claim("in_progress")
        waiting: Deferred[Wake] = Deferred(lambda d: self._leave(name, d))
        entry.waiters.append(waiting)
        self.joined_total += 1
        return Claim("wait", waiting=waiting)

    def streaming_now(self, owner: str, key: str) -> None:
        entry = self._entries.get(scoped_key(owner, key))
        if entry is None or entry.state != FLIGHT:
            return
        entry.state = STREAMING
        waiters, entry.waiters = entry.waiters, []
        for d in waiters:
            d.callback(ApiError("in_progress"))

    def finish_now(self, owner: str, key: str, outcome: Outcome) -> None:
        name = scoped_key(owner, key)
        entry = self._entries.get(name)
        if entry is None or entry.state == DONE:
            return
        waiters, entry.waiters = entry.waiters, []
        if entry.state == STREAMING:
            outcome = None
        if storable(outcome, self.config):
            assert isinstance(outcome, Answer)
            entry.state = DONE
            entry.answer = outcome
            entry.expires = self._clock.seconds() + self.config.idempotency_ttl
            self._stored[name] = outcome.size
            self.stored_bytes += outcome.size
            self._bound()
        else:
            del self._entries[name]
        if outcome is None:
            if waiters:
                first, rest = waiters[0], waiters[1:]
                self._entries[name] = _Entry(entry.fingerprint, waiters=rest)
                first.callback(LEAD)
            return
        for d in waiters:
            d.callback(outcome)

    def _leave(self, name: str, d: Deferred[Wake]) -> None:
        entry = self._entries.get(name)
        if entry is not None and d in entry.waiters:
            entry.waiters.remove(d)

    def _drop_stored(self, name: str) -> None:
        size = self._stored.pop(name)
        self.stored_bytes -= size
        del self._entries[name]

    def _expire(self) -> None:
        now = self._clock.seconds()
        while self._stored:
            name = next(iter(self._stored))
            if self._entries[name].expires > now:
                break
            self._drop_stored(name)

    def _bound(self) -> None:
        while self._stored and (len(self._stored) > self.max_entries or self.stored_bytes > self.max_bytes):
            self._drop_stored(next(iter(self._stored)))

    # --- rate limit, synchronous

    def take_now(self, bucket: str) -> float:
        per_minute = self.config.rate_limit
        if not per_minute:
            return 0.0
        now = self._clock.seconds()
        self._sweep(now)
        entry = self._buckets.pop(bucket, None)
        tokens, stamp = (float(per_minute), now) if entry is None else entry
        left, wait = take_token(tokens, stamp, now, per_minute)
        self._buckets[bucket] = (left, now)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return wait

    def _sweep(self, now: float) -> None:
        """
        Forget the buckets, oldest first, that are full again (the same as no
        bucket).
        """
        per_minute = self.config.rate_limit
        while self._buckets:
            bucket = next(iter(self._buckets))
            tokens, stamp = self._buckets[bucket]
            if tokens + (now - stamp) * per_minute / 60.0 < per_minute:
                break
            del self._buckets[bucket]

    @property
    def buckets(self) -> int:
        return len(self._buckets)

    # --- the SharedState interface

    def idem_claim(self, owner: str, key: str, fingerprint: str) -> Deferred[Claim]:
        return _now(self.claim_now, owner, key, fingerprint)

    def idem_streaming(self, owner: str, key: str) -> Deferred[None]:
        return _now(self.streaming_now, owner, key)

    def idem_finish(self, owner: str, key: str, outcome: Outcome) -> Deferred[None]:
        return _now(self.finish_now, owner, key, outcome)

    def rate_take(self, bucket: str) -> Deferred[float]:
        return _now(self.take_now, bucket)

    def execution_remember(self, execution_id: str, url_index: int) -> Deferred[None]:
        return _now(self.executions.remember, execution_id, url_index)

    def execution_lookup(self, execution_id: str) -> Deferred[int | None]:
        return _now(self.executions.lookup, execution_id)

    def close(self) -> Deferred[None]:
        return succeed(None)


def _now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    try:
        return succeed(f(*args))
    except Exception:
        return defer.fail()

"""
L{inkflow.state.memory.MemoryState} on its own: what the contract every
store keeps (test_state_contract) does not pin, the bounds and counters of
the in-memory store, the precise edges of its clock and its token buckets.
Reactor-free: a L{Clock} and hand-fired Deferreds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from inkflow.errors import ApiError
from inkflow.state.base import Answer, StateConfig
from inkflow.state.chat import check_rate
from inkflow.state.memory import MemoryState

OK = Answer(200, b'{"output":"hi"}', ((b"Content-Type", b"application/json"),))


class IdempotencyTests(TestCase):
    """
    The keys of one process: L{MemoryState.claim_now} and
    L{MemoryState.finish_now}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.state = MemoryState(self.clock, StateConfig(idempotency_ttl=600))

    def claim(self, state: MemoryState, key: str = "k", print_: str = "f") -> Any:
        return state.claim_now("owner", key, print_)

    def test_first_leads_then_replays(self) -> None:
        """The first request leads; after its 2xx, the same key replays it (counted)."""
        self.assertEqual(self.claim(self.state).kind, "lead")
        self.state.finish_now("owner", "k", OK)
        claim = self.claim(self.state)
        self.assertEqual((claim.kind, claim.answer), ("replay", OK))
        self.assertEqual(self.state.replayed_total, 1)

    def test_expiry_on_the_clock(self) -> None:
        """The answer is replayed until the ttl, then the key leads again."""
        self.claim(self.state)
        self.state.finish_now("owner", "k", OK)
        self.clock.advance(599.9)
        self.assertEqual(self.claim(self.state).kind, "replay")
        self.clock.advance(0.2)
        self.assertEqual(self.claim(self.state).kind, "lead")

    def test_concurrent_waiters_get_the_same_answer(self) -> None:
        """Two requests during the first wait for it (counted) and get its answer."""
        self.claim(self.state)
        waits = [self.claim(self.state) for _ in range(2)]
        self.assertEqual([w.kind for w in waits], ["wait", "wait"])
        self.assertEqual(self.state.joined_total, 2)
        results: list[Any] = []
        for w in waits:
            assert w.waiting is not None
            w.waiting.addCallback(results.append)
        self.assertEqual(results, [])
        self.state.finish_now("owner", "k", OK)
        self.assertEqual(results, [OK, OK])

    def test_non_2xx_answer_not_stored(self) -> None:
        """Only 2xx answers are stored."""
        self.claim(self.state)
        self.state.finish_now("owner", "k", Answer(404, b"{}"))
        self.assertEqual(self.claim(self.state).kind, "lead")

    def test_bounded_by_count(self) -> None:
        """Over max_entries the oldest stored answers go first."""
        state = MemoryState(self.clock, StateConfig(idempotency_ttl=600), max_entries=3)
        for i in range(5):
            self.claim(state, f"k{i}")
            state.finish_now("owner", f"k{i}", OK)
        self.assertEqual(state.stored, 3)
        self.assertEqual(self.claim(state, "k0").kind, "lead")
        self.assertEqual(self.claim(state, "k4").kind, "replay")

    def test_bounded_by_bytes(self) -> None:
        """Over max_bytes the oldest go; an answer over max_answer_bytes is never stored."""
        big = Answer(200, b"x" * 1000)
        state = MemoryState(self.clock, StateConfig(idempotency_ttl=600, max_answer_bytes=1500), max_bytes=2500)
        for i in range(4):
            self.claim(state, f"k{i}")
            state.finish_now("owner", f"k{i}", big)
        self.assertEqual(state.stored, 2)
        self.assertLessEqual(state.stored_bytes, 2500)
        self.claim(state, "huge")
        state.finish_now("owner", "huge", Answer(200, b"x" * 2000))
        self.assertEqual(self.claim(state, "huge").kind, "lead")

    def test_ttl_zero_never_stores(self) -> None:
        """--idempotency-ttl 0: waiters are still joined, nothing is kept."""
        state = MemoryState(self.clock, StateConfig(idempotency_ttl=0))
        self.claim(state)
        wait = self.claim(state)
        state.finish_now("owner", "k", OK)
        assert wait.waiting is not None
        self.assertEqual(self.successResultOf(wait.waiting), OK)
        self.assertEqual((self.claim(state).kind, len(state)), ("lead", 1))


class RateLimitTests(TestCase):
    """
    The token bucket per client address: L{MemoryState.take_now}, as the
    route's 429 (L{check_rate}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)

    def state(self, per_minute: int, **bounds: int) -> MemoryState:
        return MemoryState(self.clock, StateConfig(rate_limit=per_minute), **bounds)

    def check(self, state: MemoryState, key: str) -> None:
        self.successResultOf(ensureDeferred(check_rate(state, key)))

    def assertLimited(self, state: MemoryState, key: str) -> ApiError:
        d: Deferred[None] = ensureDeferred(check_rate(state, key))
        error = self.failureResultOf(d, ApiError).value
        self.assertEqual((error.status, error.code), (429, "rate_limited"))
        return error

    def test_burst_is_per_minute(self) -> None:
        """A fresh client may send per_minute requests at once; the next is 429."""
        state = self.state(30)
        for _ in range(30):
            self.check(state, "198.51.100.1")
        self.assertLimited(state, "198.51.100.1")

    def test_retry_after_is_time_to_next_token(self) -> None:
        """Retry-After is the whole seconds until the next token: 2 s at 30 per minute, rounded up."""
        state = self.state(30)
        for _ in range(30):
            self.check(state, "a")
        self.assertEqual(self.assertLimited(state, "a").headers["Retry-After"], "2")
        self.clock.advance(0.5)
        # 0.25 tokens now: 1.5 s to go, rounded up
        self.assertEqual(self.assertLimited(state, "a").headers["Retry-After"], "2")
        self.clock.advance(1.0)
        self.assertEqual(self.assertLimited(state, "a").headers["Retry-After"], "1")
        slow = self.state(1)
        self.check(slow, "b")
        self.assertEqual(self.assertLimited(slow, "b").headers["Retry-After"], "60")

    def test_refill(self) -> None:
        """Tokens come back at per_minute / 60 per second, up to per_minute."""
        state = self.state(60)
        for _ in range(60):
            self.check(state, "a")
        self.assertLimited(state, "a")
        self.clock.advance(1.0)
        self.check(state, "a")
        self.assertLimited(state, "a")
        self.clock.advance(3600)
        for _ in range(60):
            self.check(state, "a")
        self.assertLimited(state, "a")

    def test_keys_are_independent(self) -> None:
        """One client's empty bucket does not limit another."""
        state = self.state(2)
        self.check(state, "a")
        self.check(state, "a")
        self.assertLimited(state, "a")
        self.check(state, "b")  # fails if "b" shared "a"'s bucket

    def test_zero_is_off(self) -> None:
        """--rate-limit 0 turns limiting off and keeps no buckets."""
        state = self.state(0)
        for _ in range(1000):
            self.check(state, "a")
        self.assertEqual(state.buckets, 0)

    def test_full_buckets_are_forgotten(self) -> None:
        """
        Buckets that have refilled are dropped, so memory is bounded by the
        clients of the last minute, not all clients ever seen.
        """
        state = self.state(30)
        for i in range(500):
            self.check(state, f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(state.buckets, 500)
        self.clock.advance(1.0)
        for _ in range(5):
            self.check(state, "192.0.2.1")
        self.assertEqual(state.buckets, 501)
        self.clock.advance(2.0)  # one token back in 2 s at 30/min: the 500 are full, 192.0.2.1 is not
        self.check(state, "192.0.2.2")
        self.assertEqual(state.buckets, 2)
        self.clock.advance(120)
        self.check(state, "192.0.2.3")
        self.assertEqual(state.buckets, 1)

    def test_forgotten_bucket_is_full(self) -> None:
        """Forgetting a full bucket changes nothing for its client."""
        state = self.state(3)
        for _ in range(3):
            self.check(state, "a")
        self.clock.advance(60)
        self.check(state, "b")  # sweeps "a"
        self.assertEqual(state.buckets, 1)
        for _ in range(3):
            self.check(state, "a")
        self.assertLimited(state, "a")

    def test_hard_cap_evicts_oldest(self) -> None:
        """Never more than max_buckets buckets: the least recently used goes."""
        state = self.state(1, max_buckets=3)
        for key in ("a", "b", "c"):
            self.check(state, key)
        self.assertLimited(state, "a")  # "a" is now the most recent
        self.check(state, "d")  # evicts "b"
        self.assertEqual(state.buckets, 3)
        self.check(state, "b")  # fresh bucket; evicts "c"
        self.assertLimited(state, "a")
        self.assertEqual(state.buckets, 3)

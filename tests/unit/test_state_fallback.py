"""
L{inkflow.state.fallback.FallbackState} (the shared store, and the process's
own when it cannot answer), L{inkflow.state.build}, and Redis going away and coming back (a real
C{redis-server}, stopped and started again on its port).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Coroutine
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase

from inkflow.errors import ApiError
from inkflow.settings import Settings
from inkflow.state.base import LEAD, Answer, Claim, StateConfig, StateUnavailable, Wake
from inkflow.state.build import build_state
from inkflow.state.fallback import FallbackState, StateCollector
from inkflow.state.memory import MemoryState
from inkflow.state.redis import RedisState, connect, parse_redis_url
from inkflow.state.workers import SOCKET_ENV, ParentStateService
from tests.support.redis_server import RedisServer, redis_server_path
from tests.unit.helpers import temp_path

reactor: Any = _reactor
CONFIG = StateConfig(idempotency_ttl=60.0, rate_limit=2, lease=30.0)
OK = Answer(200, b"{}")


def run(f: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], Deferred[None]]:
    @functools.wraps(f)
    def wrapper(self: Any) -> Deferred[None]:
        return ensureDeferred(f(self))

    return wrapper


class FlakyShared:
    """
    A shared store that answers from its own memory while C{up}, and fails
    with L{StateUnavailable} while not; C{pending} holds its open waits.
    """

    def __init__(self, clock: Clock) -> None:
        self.memory = MemoryState(clock, CONFIG)
        self.up = True
        self.calls = 0
        self.waits: list[Deferred[Wake]] = []

    @property
    def degraded(self) -> bool:
        return not self.up

    def _do(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls += 1
        if not self.up:
            return fail(StateUnavailable("down"))
        return succeed(f(*args))

    def idem_claim(self, owner: str, key: str, fingerprint: str) -> Deferred[Claim]:
        def claim() -> Claim:
            result = self.memory.claim_now(owner, key, fingerprint)
            if result.waiting is not None:
                outer: Deferred[Wake] = Deferred()
                result.waiting.chainDeferred(outer)
                self.waits.append(outer)
                return Claim("wait", waiting=outer)
            return result

        return self._do(claim)

    def idem_streaming(self, owner: str, key: str) -> Deferred[None]:
        return self._do(self.memory.streaming_now, owner, key)

    def idem_finish(self, owner: str, key: str, outcome: Any) -> Deferred[None]:
        return self._do(self.memory.finish_now, owner, key, outcome)

    def rate_take(self, bucket: str) -> Deferred[float]:
        return self._do(self.memory.take_now, bucket)

    def execution_remember(self, execution_id: str, url_index: int) -> Deferred[None]:
        return self._do(self.memory.executions.remember, execution_id, url_index)

    def execution_lookup(self, execution_id: str) -> Deferred[int | None]:
        return self._do(self.memory.executions.lookup, execution_id)

    def close(self) -> Deferred[None]:
        return succeed(None)


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


class FallbackTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.shared = FlakyShared(self.clock)
        self.local = MemoryState(self.clock, CONFIG)
        self.state = FallbackState(self.shared, self.local, self.clock, "redis", retry_after=1.0)
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def test_shared_when_up(self) -> None:
        """While the shared store answers, it decides (and health says shared)."""
        self.assertEqual(result_of(self.state.rate_take("a")), 0.0)
        self.assertEqual(self.shared.memory.buckets, 1)
        self.assertEqual(self.local.buckets, 0)
        self.assertFalse(self.state.degraded)
        self.assertEqual(self.state.snapshot(), {"backend": "redis", "shared": True, "fallbacks_total": 0})

    def test_down_answers_locally_degraded_with_one_log_line(self) -> None:
        """Shared store down: the process's bucket answers, health degraded, one warning for many calls."""
        self.shared.up = False
        for _ in range(2):
            self.assertEqual(result_of(self.state.rate_take("a")), 0.0)
        self.assertGreater(result_of(self.state.rate_take("a")), 0.0)  # the local bucket of 2 is empty
        self.assertTrue(self.state.degraded)
        self.assertEqual(self.state.fallbacks_total, 3)
        warnings = [e for e in self.events if "unreachable" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(self.state.snapshot()["error"], "down")

    def test_a_caller_that_leaves_is_not_an_outage(self) -> None:
        """
        The caller cancels a call the shared store has not answered (its
        client left): the cancellation reaches the caller, the store's own
        call is cancelled, and nothing counts as a fallback.
        """
        from twisted.internet.defer import CancelledError

        cancelled: list[bool] = []

        def cancel(d: Deferred[float]) -> None:
            # As RedisState does: a cancelled call fails with StateUnavailable.
            cancelled.append(True)
            d.errback(StateUnavailable("cancelled"))

        def never(bucket: str) -> Deferred[float]:
            return Deferred(cancel)

        self.shared.rate_take = never  # type: ignore[method-assign]
        d = self.state.rate_take("a")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((cancelled, self.state.degraded, self.state.fallbacks_total), ([True], False, 0))

    def test_left_alone_while_down_then_tried_again(self) -> None:
        """After a failure the shared store is not asked for retry_after seconds; then once, and it is back."""
        self.shared.up = False
        result_of(self.state.rate_take("a"))
        calls = self.shared.calls
        result_of(self.state.rate_take("a"))
        self.assertEqual(self.shared.calls, calls)
        self.shared.up = True
        self.clock.advance(1.0)
        result_of(self.state.rate_take("a"))
        self.assertEqual(self.shared.calls, calls + 1)
        self.assertFalse(self.state.degraded)
        self.assertTrue(any("reachable again" in e.get("log_format", "") for e in self.events))

    def test_a_probe_ends_the_degraded_state_without_traffic(self) -> None:
        """probe(): nothing while shared or within retry_after; after it, one cheap call that can end it."""
        result_of(self.state.probe())
        self.assertEqual(self.shared.calls, 0)
        self.shared.up = False
        result_of(self.state.rate_take("a"))
        result_of(self.state.probe())
        self.assertEqual(self.shared.calls, 1)
        self.shared.up = True
        self.clock.advance(1.0)
        result_of(self.state.probe())
        self.assertFalse(self.state.degraded)

    def test_a_key_led_locally_is_finished_locally(self) -> None:
        """A key claimed while degraded is finished in the process's store, even once the shared one is back."""
        self.shared.up = False
        self.assertEqual(result_of(self.state.idem_claim("o", "k", "fp")).kind, "lead")
        self.shared.up = True
        self.clock.advance(2.0)
        result_of(self.state.idem_finish("o", "k", OK))
        self.assertEqual(self.local.stored, 1)
        self.assertEqual(self.shared.memory.stored, 0)

    def test_a_key_led_in_the_shared_store_is_finished_there(self) -> None:
        """The common case: claimed and finished in the shared store."""
        self.assertEqual(result_of(self.state.idem_claim("o", "k", "fp")).kind, "lead")
        result_of(self.state.idem_finish("o", "k", OK))
        self.assertEqual(self.shared.memory.stored, 1)
        self.assertEqual(result_of(self.state.idem_claim("o", "k", "fp")).kind, "replay")

    def test_a_wait_cut_off_from_the_shared_store_leads_locally(self) -> None:
        """A request waiting on a leader elsewhere when the shared store goes: it claims locally and leads."""
        result_of(self.shared.idem_claim("o", "k", "fp"))  # another process leads
        claim = result_of(self.state.idem_claim("o", "k", "fp"))
        self.assertEqual(claim.kind, "wait")
        self.shared.waits[0].errback(StateUnavailable("connection lost"))
        self.assertEqual(result_of(claim.waiting), LEAD)
        self.assertTrue(self.state.degraded)
        result_of(self.state.idem_finish("o", "k", OK))
        self.assertEqual(self.local.stored, 1)

    def test_a_waiter_woken_to_lead_leads_in_the_shared_store(self) -> None:
        """Woken to lead (the leader left): its finish goes to the shared store."""
        result_of(self.shared.idem_claim("o", "k", "fp"))
        claim = result_of(self.state.idem_claim("o", "k", "fp"))
        self.shared.memory.finish_now("o", "k", None)
        self.assertEqual(result_of(claim.waiting), LEAD)
        result_of(self.state.idem_finish("o", "k", OK))
        self.assertEqual(self.shared.memory.stored, 1)

    def test_executions_are_found_locally_while_down(self) -> None:
        """An execution this process started is found while the shared store is away."""
        result_of(self.state.execution_remember("77", 2))
        self.shared.up = False
        self.assertEqual(result_of(self.state.execution_lookup("77")), 2)
        self.assertEqual(result_of(self.state.execution_lookup("78")), None)

    def test_the_collector_reports_degraded_and_fallbacks(self) -> None:
        """inkflow_state_degraded and inkflow_state_fallbacks_total follow the state."""
        self.shared.up = False
        result_of(self.state.rate_take("a"))
        samples = {s.name: s.value for m in StateCollector(self.state).collect() for s in m.samples}
        self.assertEqual(samples, {"inkflow_state_degraded": 1, "inkflow_state_fallbacks_total": 1})

    def test_mismatch_while_degraded_is_a_mismatch(self) -> None:
        """The local store keeps the same promises: another request under a key is a mismatch."""
        self.shared.up = False
        result_of(self.state.idem_claim("o", "k", "fp"))
        self.assertEqual(result_of(self.state.idem_claim("o", "k", "other")).kind, "mismatch")
        in_progress = ApiError("in_progress")
        self.assertEqual(in_progress.status, 409)


class BuildTests(TestCase):
    def test_one_process_is_memory(self) -> None:
        """No --redis, no parent: the process's memory, nothing else."""
        built = build_state(Settings.defaults(upload_dir=temp_path(self)), Clock(), environ={})
        self.assertEqual(built.backend, "memory")
        self.assertIs(built.state, built.local)
        self.assertIsNone(built.link)

    def test_a_worker_uses_its_parent(self) -> None:
        """A worker (the parent named its socket) uses the parent's store, its memory as the fallback."""
        built = build_state(
            Settings.defaults(upload_dir=temp_path(self)), reactor, environ={SOCKET_ENV: "/nonexistent/state.sock"}
        )
        self.addCleanup(built.state.close)
        self.assertEqual(built.backend, "workers")
        self.assertIsNotNone(built.fallback)
        self.assertIs(built.fallback.shared, built.link)  # type: ignore[union-attr]


class ParentServiceTests(TestCase):
    @run
    async def test_the_workers_reach_the_parent_and_the_socket_goes_with_it(self) -> None:
        """The parent serves its store on a 0600 socket in a 0700 folder, removed on stop."""
        service = ParentStateService(MemoryState(Clock(), CONFIG), reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(os.stat(service.folder).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(service.path).st_mode & 0o777, 0o600)
        built = build_state(Settings.defaults(upload_dir=temp_path(self)), reactor, environ={SOCKET_ENV: service.path})
        assert built.link is not None
        await built.link.when_connected()
        self.assertEqual((await built.state.idem_claim("o", "k", "fp")).kind, "lead")
        self.assertEqual(service.factory.store.__len__(), 1)
        await built.state.close()
        await service.stopService()  # type: ignore[misc]
        self.assertFalse(os.path.exists(service.folder))


class RedisDownTests(TestCase):
    """
    A real redis-server stopped mid-run and started again on its port.
    """

    def setUp(self) -> None:
        binary = redis_server_path()
        if binary is None:
            raise SkipTest("redis-server is not installed and cannot be (scripts/install-system-deps.sh redis)")
        self.server = RedisServer(binary).start()
        self.addCleanup(self.server.close)

    @run
    async def test_redis_down_answers_locally_then_shared_again(self) -> None:
        """Redis stopped: answered within the timeout from the process, degraded; Redis back: shared again."""
        conn = connect(parse_redis_url(self.server.url))
        self.addCleanup(conn.disconnect)
        await conn._connected
        shared = RedisState(conn, reactor, CONFIG, prefix="down:", timeout=0.2)
        state = FallbackState(shared, MemoryState(reactor, CONFIG), reactor, "redis", retry_after=0.2)
        self.assertEqual(await state.rate_take("a"), 0.0)
        self.assertFalse(state.degraded)

        self.server.stop()
        started = reactor.seconds()
        self.assertEqual(await state.rate_take("a"), 0.0)  # the process's own full bucket
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertTrue(state.degraded)
        claim = await state.idem_claim("o", "k", "fp")
        self.assertEqual(claim.kind, "lead")
        await state.idem_finish("o", "k", OK)

        self.server.start()
        for _ in range(150):  # bounded: txredisapi reconnects by itself with a backoff
            await deferLater(reactor, 0.1, lambda: None)
            await state.rate_take("b")
            if not state.degraded:
                break
        self.assertFalse(state.degraded)
        keys = await conn.execute_command("KEYS", "down:rate:*")
        self.assertIn("down:rate:b", keys)

"""
One contract for every shared-state store (L{inkflow.state}): the in-memory
store of one process, the C{--workers} parent's store reached over AMP on a
real UNIX socket, and Redis (a real C{redis-server} on a free loopback port).

Each backend gives the suite two things: C{client()} -- another process's
view of the one store (the same object in memory, another AMP connection,
another Redis connection) -- and C{advance(seconds)} -- time passing for the
store: a L{Clock} for memory and the workers' parent; for Redis, every key's
TTL shortened (C{PTTL}/C{PEXPIRE}, C{DEL} when it runs out) and every
bucket's stamp moved back, so no test waits on the wall clock.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

from inkflow.errors import ApiError
from inkflow.state.base import LEAD, Answer, SharedState, StateConfig, Wake
from inkflow.state.memory import MemoryState
from inkflow.state.redis import RedisState, connect, parse_redis_url
from inkflow.state.workers import StateServerFactory, WorkersState
from tests.support.redis_server import RedisServer, redis_server_path

reactor: Any = _reactor

CONFIG = StateConfig(idempotency_ttl=60.0, rate_limit=3, lease=30.0, execution_ttl=100.0)
OK = Answer(200, b'{"output": "shalom"}', ((b"Content-Type", b"application/json"), (b"X-Session-ID", b"s1")))
#: Past one AMP value (65,535 bytes): travels in several.
BIG = Answer(200, bytes(range(256)) * 400)


def run(f: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], Deferred[None]]:
    @functools.wraps(f)
    def wrapper(self: Any) -> Deferred[None]:
        return ensureDeferred(f(self))

    return wrapper


async def woken(d: Deferred[Wake] | None, timeout: float = 5.0) -> Wake:
    assert d is not None
    d.addTimeout(timeout, reactor)
    return await d


class Backend:
    async def start(self, config: StateConfig) -> None:
        raise NotImplementedError

    async def client(self) -> SharedState:
        raise NotImplementedError

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        pass


class MemoryBackend(Backend):
    async def start(self, config: StateConfig) -> None:
        self.clock = Clock()
        self.store = MemoryState(self.clock, config)

    async def client(self) -> SharedState:
        return self.store

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


class WorkersBackend(Backend):
    """
    The parent's store on a real UNIX socket; each client a worker.
    """

    async def start(self, config: StateConfig) -> None:
        self.clock = Clock()
        self.folder = tempfile.mkdtemp(prefix="inkflow-state-")
        self.path = os.path.join(self.folder, "state.sock")
        self.factory = StateServerFactory(MemoryState(self.clock, config), reactor)
        self.port: IListeningPort = await UNIXServerEndpoint(reactor, self.path, mode=0o600).listen(self.factory)
        self.clients: list[WorkersState] = []

    async def client(self) -> SharedState:
        state = WorkersState(
            UNIXClientEndpoint(reactor, self.path), reactor, worker=str(len(self.clients)), timeout=2.0
        )
        self.clients.append(state)
        await state.when_connected()
        return state

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def stop(self) -> None:
        for state in self.clients:
            await state.close()
        stopped = self.port.stopListening()
        if stopped is not None:
            await stopped
        shutil.rmtree(self.folder, ignore_errors=True)


class RedisBackend(Backend):
    """
    A redis-server of its own for each test (it starts in milliseconds), so
    none outlives its test under either runner.
    """

    async def start(self, config: StateConfig) -> None:
        binary = redis_server_path()
        if binary is None:
            raise SkipTest("redis-server is not installed and cannot be (scripts/install-system-deps.sh redis)")
        self.redis_server = RedisServer(binary).start()
        self.config = config
        self.prefix = f"test:{secrets.token_hex(4)}:"
        self.connections: list[Any] = []
        self.admin = await self._connection()

    async def _connection(self) -> Any:
        conn = connect(parse_redis_url(self.redis_server.url))
        self.connections.append(conn)
        await conn._connected
        return conn

    async def client(self) -> SharedState:
        return RedisState(await self._connection(), reactor, self.config, prefix=self.prefix, timeout=2.0)

    async def advance(self, seconds: float) -> None:
        ms = int(seconds * 1000)
        for key in await self.admin.execute_command("KEYS", self.prefix + "*"):
            if await self.admin.execute_command("TYPE", key) == "hash":
                stamp = await self.admin.execute_command("HGET", key, "stamp")
                if stamp is not None:
                    await self.admin.execute_command("HSET", key, "stamp", repr(float(stamp) - seconds))
            pttl = int(await self.admin.execute_command("PTTL", key))
            if pttl >= 0:
                if pttl <= ms:
                    await self.admin.execute_command("DEL", key)
                else:
                    await self.admin.execute_command("PEXPIRE", key, pttl - ms)

    async def stop(self) -> None:
        for conn in getattr(self, "connections", []):
            await conn.disconnect()
        server = getattr(self, "redis_server", None)
        if server is not None:
            server.close()


class StateContract(TestCase):
    """
    The contract; a subclass per backend sets C{backend} (this class itself
    is removed from the module below, so no runner collects it).
    """

    backend: ClassVar[type[Backend]]
    config: ClassVar[StateConfig] = CONFIG

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        self.store = self.backend()
        self.addCleanup(lambda: ensureDeferred(self.store.stop()))
        return ensureDeferred(self.store.start(self.config))

    # --- idempotency

    @run
    async def test_first_request_leads_and_a_second_waits_for_its_answer(self) -> None:
        """The first claim leads; the same request from another process waits and gets the leader's answer."""
        a, b = await self.store.client(), await self.store.client()
        first = await a.idem_claim("owner", "k1", "fp")
        second = await b.idem_claim("owner", "k1", "fp")
        assert_kind(self, first.kind, "lead")
        assert_kind(self, second.kind, "wait")
        await a.idem_finish("owner", "k1", OK)
        assert_eq(self, await woken(second.waiting), OK)

    @run
    async def test_a_stored_answer_is_replayed_to_its_owner(self) -> None:
        """After the leader's 2xx answer, the key replays it, headers and all, in any process."""
        a, b = await self.store.client(), await self.store.client()
        await a.idem_claim("owner", "k1", "fp")
        await a.idem_finish("owner", "k1", OK)
        replay = await b.idem_claim("owner", "k1", "fp")
        assert_kind(self, replay.kind, "replay")
        assert_eq(self, replay.answer, OK)

    @run
    async def test_another_owner_reusing_a_key_gets_its_own_answer(self) -> None:
        """The same key from another owner is another key: it leads, never sees the first owner's answer."""
        a, b = await self.store.client(), await self.store.client()
        await a.idem_claim("alice", "k1", "fp")
        await a.idem_finish("alice", "k1", OK)
        other = await b.idem_claim("bob", "k1", "fp")
        assert_kind(self, other.kind, "lead")
        assert_eq(self, other.answer, None)

    @run
    async def test_another_request_under_a_known_key_is_a_mismatch(self) -> None:
        """The same owner with another fingerprint under the key: mismatch (422), in flight and stored."""
        a, b = await self.store.client(), await self.store.client()
        await a.idem_claim("owner", "k1", "fp")
        assert_kind(self, (await b.idem_claim("owner", "k1", "other")).kind, "mismatch")
        await a.idem_finish("owner", "k1", OK)
        assert_kind(self, (await b.idem_claim("owner", "k1", "other")).kind, "mismatch")

    @run
    async def test_a_leader_without_an_answer_hands_the_lead_to_one_waiter(self) -> None:
        """A leader that ends with nothing (client gone) wakes one waiter to lead; the others get its answer."""
        a, b, c = await self.store.client(), await self.store.client(), await self.store.client()
        await a.idem_claim("owner", "k1", "fp")
        w1 = await b.idem_claim("owner", "k1", "fp")
        await a.idem_finish("owner", "k1", None)
        assert_eq(self, await woken(w1.waiting), LEAD)
        w2 = await c.idem_claim("owner", "k1", "fp")
        assert_kind(self, w2.kind, "wait")
        await b.idem_finish("owner", "k1", OK)
        assert_eq(self, await woken(w2.waiting), OK)

    @run
    async def test_an_error_goes_to_the_waiters_and_is_not_stored(self) -> None:
        """The leader's error wakes its waiters with the same error; the next request leads again."""
        a, b = await self.store.client(), await self.store.client()
        await a.idem_claim("owner", "k1", "fp")
        waiting = await b.idem_claim("owner", "k1", "fp")
        await a.idem_finish("owner", "k1", ApiError("upstream_error", "n8n said 500"))
        error = await woken(waiting.waiting)
        assert isinstance(error, ApiError)
        assert_eq(self, (error.code, error.status, error.detail), ("upstream_error", 502, "n8n said 500"))
        assert_kind(self, (await b.idem_claim("owner", "k1", "fp")).kind, "lead")

    @run
    async def test_a_streamed_answer_is_in_progress_then_forgotten(self) -> None:
        """While the leader streams: waiters and new requests get in_progress; after it, nothing is replayed."""
        a, b = await self.store.client(), await self.store.client()
        await a.idem_claim("owner", "k1", "fp")
        waiting = await b.idem_claim("owner", "k1", "fp")
        await a.idem_streaming("owner", "k1")
        wake = await woken(waiting.waiting)
        assert isinstance(wake, ApiError)
        assert_eq(self, wake.code, "in_progress")
        assert_kind(self, (await b.idem_claim("owner", "k1", "fp")).kind, "in_progress")
        await a.idem_finish("owner", "k1", OK)
        assert_kind(self, (await b.idem_claim("owner", "k1", "fp")).kind, "lead")

    @run
    async def test_a_stored_answer_expires_after_the_ttl(self) -> None:
        """Replayed just before --idempotency-ttl, forgotten after it."""
        a = await self.store.client()
        await a.idem_claim("owner", "k1", "fp")
        await a.idem_finish("owner", "k1", OK)
        await self.store.advance(CONFIG.idempotency_ttl - 5)
        assert_kind(self, (await a.idem_claim("owner", "k1", "fp")).kind, "replay")
        await self.store.advance(10)
        assert_kind(self, (await a.idem_claim("owner", "k1", "fp")).kind, "lead")

    @run
    async def test_a_large_answer_travels_whole(self) -> None:
        """An answer larger than one AMP value (64 KiB) reaches the waiter and the replay byte for byte."""
        a, b = await self.store.client(), await self.store.client()
        await a.idem_claim("owner", "big", "fp")
        waiting = await b.idem_claim("owner", "big", "fp")
        await a.idem_finish("owner", "big", BIG)
        assert_eq(self, await woken(waiting.waiting), BIG)
        assert_eq(self, (await b.idem_claim("owner", "big", "fp")).answer, BIG)

    @run
    async def test_a_cancelled_wait_is_not_handed_the_lead(self) -> None:
        """A waiter whose client left is out of the queue: the lead goes to the next one."""
        a, b, c = await self.store.client(), await self.store.client(), await self.store.client()
        await a.idem_claim("owner", "k1", "fp")
        gone = await b.idem_claim("owner", "k1", "fp")
        assert gone.waiting is not None
        gone.waiting.addErrback(lambda _: None)
        gone.waiting.cancel()
        staying = await c.idem_claim("owner", "k1", "fp")
        await a.idem_finish("owner", "k1", None)
        assert_eq(self, await woken(staying.waiting), LEAD)

    # --- rate limit

    @run
    async def test_the_bucket_is_shared_and_refills(self) -> None:
        """--rate-limit 3 across processes: 3 tokens, then a wait of 20 s; after 20 s one more."""
        a, b = await self.store.client(), await self.store.client()
        waits = [await a.rate_take("10.0.0.1"), await b.rate_take("10.0.0.1"), await a.rate_take("10.0.0.1")]
        assert_eq(self, waits, [0.0, 0.0, 0.0])
        refused = await b.rate_take("10.0.0.1")
        self.assertTrue(19.5 <= refused <= 20.0, refused)
        assert_eq(self, await a.rate_take("10.0.0.2"), 0.0)
        await self.store.advance(21)
        assert_eq(self, await b.rate_take("10.0.0.1"), 0.0)

    # --- executions

    @run
    async def test_an_execution_is_found_from_another_process_until_it_expires(self) -> None:
        """Remembered in one process, found in another; unused for the TTL, gone."""
        a, b = await self.store.client(), await self.store.client()
        await a.execution_remember("4711", 1)
        assert_eq(self, await b.execution_lookup("4711"), 1)
        assert_eq(self, await b.execution_lookup("4712"), None)
        await self.store.advance(CONFIG.execution_ttl + 1)
        assert_eq(self, await b.execution_lookup("4711"), None)


def assert_eq(case: Any, actual: object, expected: object) -> None:
    case.assertEqual(actual, expected)


def assert_kind(case: Any, actual: str, expected: str) -> None:
    case.assertEqual(actual, expected)


class MemoryStateContractTests(StateContract):
    backend = MemoryBackend


class WorkersStateContractTests(StateContract):
    backend = WorkersBackend


class RedisStateContractTests(StateContract):
    backend = RedisBackend


del StateContract

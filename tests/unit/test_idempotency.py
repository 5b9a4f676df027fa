"""
Tests for L{inkflow.web.idempotency}: the store (clock-driven expiry,
concurrent waiters, bounds) and the chat wrapper.  Reactor-free: a L{Clock}
and hand-fired Deferreds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from inkflow.chat import ChatBody, UploadedFile
from inkflow.errors import ApiError
from inkflow.web.idempotency import Answer, IdempotencyStore, IdempotentChat, fingerprint, parse_key

OK = Answer(200, b'{"output":"hi"}', ((b"Content-Type", b"application/json"),))


class KeyTests(TestCase):
    """
    L{parse_key}: 1-128 of A-Z a-z 0-9 _ - . :
    """

    def test_valid(self) -> None:
        """Absent is None; a valid key is returned as is."""
        self.assertIsNone(parse_key(None))
        self.assertEqual(parse_key([b"a-Z_0.9:x"]), "a-Z_0.9:x")
        self.assertEqual(parse_key([b"k" * 128]), "k" * 128)

    def test_invalid(self) -> None:
        """Empty, too long, other characters, non-ASCII or two keys: 400 invalid_idempotency_key."""
        for values in ([b""], [b"k" * 129], [b"a b"], [b"a/b"], ["מפתח".encode()], [b"a", b"b"]):
            with self.assertRaises(ApiError) as raised:
                parse_key(values)
            self.assertEqual((raised.exception.status, raised.exception.code), (400, "invalid_idempotency_key"))

    def test_fingerprint(self) -> None:
        """The same message is the same fingerprint; another session, text or file is not."""
        a = fingerprint(ChatBody({"chatInput": "hi", "sessionId": "s"}), "chatInput", "sessionId")
        self.assertEqual(a, fingerprint(ChatBody({"chatInput": "hi", "sessionId": "s"}), "chatInput", "sessionId"))
        self.assertNotEqual(a, fingerprint(ChatBody({"chatInput": "ho", "sessionId": "s"}), "chatInput", "sessionId"))
        self.assertNotEqual(a, fingerprint(ChatBody({"chatInput": "hi", "sessionId": "t"}), "chatInput", "sessionId"))
        self.assertEqual(a, fingerprint(ChatBody({"message": "hi", "sessionId": "s"}), "chatInput", "sessionId"))
        other_metadata = ChatBody({"chatInput": "hi", "sessionId": "s", "metadata": {"page": "/b"}})
        self.assertNotEqual(a, fingerprint(other_metadata, "chatInput", "sessionId"))

    def test_fingerprint_covers_the_bytes_of_each_file(self) -> None:
        """The same file name and size with other bytes is another fingerprint; the same bytes the same."""

        def with_file(digest: str) -> str:
            upload = UploadedFile("/nowhere", "a.png", "image/png", 3, sha256=digest)
            return fingerprint(ChatBody({"chatInput": "hi"}, [upload]), "chatInput", "sessionId")

        self.assertEqual(with_file("aa" * 32), with_file("aa" * 32))
        self.assertNotEqual(with_file("aa" * 32), with_file("bb" * 32))


class StoreTests(TestCase):
    """
    L{IdempotencyStore}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = IdempotencyStore(self.clock, ttl=600)

    def test_first_leads_then_replays(self) -> None:
        """The first request leads; after its 2xx, the same key replays it."""
        self.assertEqual(self.store.begin("k", "f").kind, "lead")
        self.store.finish("k", OK)
        begin = self.store.begin("k", "f")
        self.assertEqual((begin.kind, begin.answer), ("replay", OK))
        self.assertEqual(self.store.replayed_total, 1)

    def test_expiry_on_the_clock(self) -> None:
        """The answer is replayed until the ttl, then the key leads again."""
        self.store.begin("k", "f")
        self.store.finish("k", OK)
        self.clock.advance(599.9)
        self.assertEqual(self.store.begin("k", "f").kind, "replay")
        self.clock.advance(0.2)
        self.assertEqual(self.store.begin("k", "f").kind, "lead")

    def test_concurrent_waiters_get_the_same_answer(self) -> None:
        """Two requests during the first wait for it and get its answer."""
        self.store.begin("k", "f")
        waits = [self.store.begin("k", "f") for _ in range(2)]
        self.assertEqual([w.kind for w in waits], ["wait", "wait"])
        results: list[Any] = []
        for w in waits:
            assert w.waiting is not None
            w.waiting.addCallback(results.append)
        self.assertEqual(results, [])
        self.store.finish("k", OK)
        self.assertEqual(results, [OK, OK])

    def test_error_shared_but_not_stored(self) -> None:
        """A leader's error goes to its waiters; the next request leads again."""
        self.store.begin("k", "f")
        wait = self.store.begin("k", "f")
        assert wait.waiting is not None
        error = ApiError("upstream_error")
        self.store.finish("k", error)
        self.assertIs(self.successResultOf(wait.waiting), error)
        self.assertEqual(self.store.begin("k", "f").kind, "lead")

    def test_non_2xx_answer_not_stored(self) -> None:
        """Only 2xx answers are stored."""
        self.store.begin("k", "f")
        self.store.finish("k", Answer(404, b"{}"))
        self.assertEqual(self.store.begin("k", "f").kind, "lead")

    def test_leader_gone_next_waiter_leads(self) -> None:
        """A leader that ends without an answer hands the lead to the first waiter; the others wait on it."""
        self.store.begin("k", "f")
        first, second = self.store.begin("k", "f"), self.store.begin("k", "f")
        assert first.waiting is not None and second.waiting is not None
        self.store.finish("k", None)
        self.assertEqual(self.successResultOf(first.waiting), "lead")
        self.assertNoResult(second.waiting)
        self.store.finish("k", OK)
        self.assertEqual(self.successResultOf(second.waiting), OK)

    def test_cancelled_waiter_leaves(self) -> None:
        """A waiter whose client left is not woken."""
        self.store.begin("k", "f")
        wait = self.store.begin("k", "f")
        assert wait.waiting is not None
        wait.waiting.cancel()
        self.failureResultOf(wait.waiting)
        self.store.finish("k", OK)  # nothing raised: the cancelled Deferred is not fired again

    def test_streaming_is_in_progress_then_forgotten(self) -> None:
        """While the leader streams: 409 for waiters and newcomers; after it, nothing stored."""
        self.store.begin("k", "f")
        wait = self.store.begin("k", "f")
        assert wait.waiting is not None
        self.store.mark_streaming("k")
        self.assertEqual(self.successResultOf(wait.waiting).code, "in_progress")  # type: ignore[union-attr]
        self.assertEqual(self.store.begin("k", "f").kind, "in_progress")
        self.store.finish("k", OK)
        self.assertEqual(self.store.begin("k", "f").kind, "lead")

    def test_mismatch(self) -> None:
        """The same key with another message: 422 idempotency_mismatch, in flight and stored."""
        self.store.begin("k", "f")
        with self.assertRaises(ApiError) as raised:
            self.store.begin("k", "other")
        self.assertEqual((raised.exception.status, raised.exception.code), (422, "idempotency_mismatch"))

    def test_bounded_by_count(self) -> None:
        """Over max_entries the oldest stored answers go first."""
        store = IdempotencyStore(self.clock, ttl=600, max_entries=3)
        for i in range(5):
            store.begin(f"k{i}", "f")
            store.finish(f"k{i}", OK)
        self.assertEqual(store.stored, 3)
        self.assertEqual(store.begin("k0", "f").kind, "lead")
        self.assertEqual(store.begin("k4", "f").kind, "replay")

    def test_bounded_by_bytes(self) -> None:
        """Over max_bytes the oldest go; an answer over max_answer_bytes is never stored."""
        big = Answer(200, b"x" * 1000)
        store = IdempotencyStore(self.clock, ttl=600, max_bytes=2500, max_answer_bytes=1500)
        for i in range(4):
            store.begin(f"k{i}", "f")
            store.finish(f"k{i}", big)
        self.assertEqual(store.stored, 2)
        self.assertLessEqual(store.stored_bytes, 2500)
        store.begin("huge", "f")
        store.finish("huge", Answer(200, b"x" * 2000))
        self.assertEqual(store.begin("huge", "f").kind, "lead")

    def test_ttl_zero_never_stores(self) -> None:
        """--idempotency-ttl 0: waiters are still joined, nothing is kept."""
        store = IdempotencyStore(self.clock, ttl=0)
        store.begin("k", "f")
        wait = store.begin("k", "f")
        store.finish("k", OK)
        assert wait.waiting is not None
        self.assertEqual(self.successResultOf(wait.waiting), OK)
        self.assertEqual((store.begin("k", "f").kind, len(store)), ("lead", 1))


class FakeRequest:
    """
    The part of a request the wrapper touches.
    """

    def __init__(self, key: bytes | None, fields: dict[str, Any] | None = None) -> None:
        self.requestHeaders = Headers()
        if key is not None:
            self.requestHeaders.setRawHeaders(b"Idempotency-Key", [key])
        self.responseHeaders = Headers()
        self.chat_body: ChatBody | None = ChatBody(fields or {"chatInput": "hi", "sessionId": "s"})
        self.code = 200

    def getHeader(self, key: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(key)
        return values[0] if values else None

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def setResponseCode(self, code: int) -> None:
        self.code = code


class WrapperTests(TestCase):
    """
    L{IdempotentChat.run}: three requests with one key (two at once) run the
    route once and get three equal answers.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.chat = IdempotentChat(IdempotencyStore(self.clock, 600), "chatInput", "sessionId")
        self.runs: list[Deferred[bytes]] = []

    async def handler(self, request: Any) -> bytes:
        d: Deferred[bytes] = Deferred()
        self.runs.append(d)
        body = await d
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"X-Session-ID", b"s")
        return body

    def send(self, request: FakeRequest) -> Deferred[bytes | None]:
        async def run() -> bytes | None:
            # As the route does: the key parsed once, the body handed over.
            key = parse_key(request.requestHeaders.getRawHeaders(b"Idempotency-Key"))
            return await self.chat.run(request, key, request.chat_body, lambda: self.handler(request))

        return ensureDeferred(run())

    def test_one_run_three_answers(self) -> None:
        """Two at once and one after: one route run, three equal answers with the same headers."""
        first, second = FakeRequest(b"key-1"), FakeRequest(b"key-1")
        d1, d2 = self.send(first), self.send(second)
        self.assertEqual(len(self.runs), 1)
        self.runs[0].callback(b'{"output":"once"}')
        third = FakeRequest(b"key-1")
        d3 = self.send(third)
        self.assertEqual(len(self.runs), 1)
        answers = [self.successResultOf(d) for d in (d1, d2, d3)]
        self.assertEqual(answers, [b'{"output":"once"}'] * 3)
        for r in (second, third):
            self.assertEqual(r.code, 200)
            self.assertEqual(r.responseHeaders.getRawHeaders(b"X-Session-ID"), [b"s"])
            self.assertEqual(r.responseHeaders.getRawHeaders(b"Idempotent-Replayed"), [b"true"])
        self.assertIsNone(first.responseHeaders.getRawHeaders(b"Idempotent-Replayed"))

    def test_no_key_runs_every_time(self) -> None:
        """Without a key each request runs the route."""
        self.send(FakeRequest(None))
        self.send(FakeRequest(None))
        self.assertEqual(len(self.runs), 2)

    def test_leader_error_shared(self) -> None:
        """The waiter gets the leader's error; a later request runs again."""
        d1, d2 = self.send(FakeRequest(b"k")), self.send(FakeRequest(b"k"))
        self.runs[0].errback(ApiError("upstream_timeout"))
        for d in (d1, d2):
            self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_timeout")
        self.send(FakeRequest(b"k"))
        self.assertEqual(len(self.runs), 2)

    def test_cancelled_leader_hands_over(self) -> None:
        """A leader whose client left: the waiter runs the route itself."""
        d1, d2 = self.send(FakeRequest(b"k")), self.send(FakeRequest(b"k"))
        d1.cancel()
        self.failureResultOf(d1)
        self.assertEqual(len(self.runs), 2)
        self.runs[1].callback(b"{}")
        self.assertEqual(self.successResultOf(d2), b"{}")

    def test_streaming_hook(self) -> None:
        """A leader that marks its key streaming: the second gets 409 in_progress, the one after runs again."""
        d1 = self.send(FakeRequest(b"k"))
        self.chat.store.mark_streaming("k")
        d2 = self.send(FakeRequest(b"k"))
        self.assertEqual(self.failureResultOf(d2, ApiError).value.status, 409)
        self.runs[0].callback(b"streamed")
        self.successResultOf(d1)
        self.send(FakeRequest(b"k"))
        self.assertEqual(len(self.runs), 2)

    def test_invalid_key(self) -> None:
        """A bad key is a 400 and the route never runs."""
        d = self.send(FakeRequest(b"bad key"))
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "invalid_idempotency_key")
        self.assertEqual(self.runs, [])

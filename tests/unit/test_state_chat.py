"""
L{inkflow.state.chat}: the chat route's idempotency, rate limit and
execution map on a L{SharedState} (here one L{MemoryState} on a L{Clock}: the
stores keep one contract, see test_state_contract).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from inkflow.chat import ChatBody
from inkflow.errors import ApiError
from inkflow.state.base import StateConfig
from inkflow.state.chat import SharedIdempotentChat, check_rate, note_execution, owner_of
from inkflow.state.memory import MemoryState
from inkflow.web.idempotency import parse_key
from inkflow.web.stream import Streaming
from tests.unit.helpers import FakeRequest


class Request(FakeRequest):
    def __init__(self, key: bytes | None, client: str = "10.0.0.1", fields: dict[str, Any] | None = None) -> None:
        super().__init__(key, fields)
        self.client = client


class SharedChatTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.state = MemoryState(self.clock, StateConfig(idempotency_ttl=600, rate_limit=2))
        self.chat = SharedIdempotentChat(self.state, "chatInput", "sessionId", client=lambda r: r.client)
        self.runs: list[Deferred[bytes]] = []

    async def handler(self, request: Any) -> bytes:
        d: Deferred[bytes] = Deferred()
        self.runs.append(d)
        body = await d
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"X-Session-ID", b"s")
        return body

    def send(self, request: Request) -> Deferred[bytes | Streaming | None]:
        async def run() -> bytes | Streaming | None:
            # As the route does: the key parsed once, the body handed over.
            key = parse_key(request.requestHeaders.getRawHeaders(b"Idempotency-Key"))
            return await self.chat.run(request, key, request.chat_body, lambda: self.handler(request))

        return ensureDeferred(run())

    def test_one_run_for_one_owner_and_key(self) -> None:
        """Two at once and one after, same owner: one run, three answers, the others marked replayed."""
        d1, d2 = self.send(Request(b"k")), self.send(Request(b"k"))
        self.assertEqual(len(self.runs), 1)
        self.runs[0].callback(b'{"output":"once"}')
        third = Request(b"k")
        d3 = self.send(third)
        self.assertEqual([self.successResultOf(d) for d in (d1, d2, d3)], [b'{"output":"once"}'] * 3)
        self.assertEqual(third.responseHeaders.getRawHeaders(b"Idempotent-Replayed"), [b"true"])
        self.assertEqual(len(self.runs), 1)

    def test_a_replay_carries_the_leaders_status_and_headers(self) -> None:
        """The waiter and the later request get the leader's status and X-Session-ID, marked replayed; the leader is not."""
        first, second = Request(b"key-1"), Request(b"key-1")
        self.send(first), self.send(second)
        self.runs[0].callback(b'{"output":"once"}')
        third = Request(b"key-1")
        self.send(third)
        for r in (second, third):
            self.assertEqual(r.code, 200)
            self.assertEqual(r.responseHeaders.getRawHeaders(b"X-Session-ID"), [b"s"])
            self.assertEqual(r.responseHeaders.getRawHeaders(b"Idempotent-Replayed"), [b"true"])
        self.assertIsNone(first.responseHeaders.getRawHeaders(b"Idempotent-Replayed"))

    def test_no_key_runs_every_time(self) -> None:
        """Without a key each request runs the route."""
        self.send(Request(None))
        self.send(Request(None))
        self.assertEqual(len(self.runs), 2)

    def test_leader_error_shared(self) -> None:
        """The waiter gets the leader's error; a later request runs again."""
        d1, d2 = self.send(Request(b"k")), self.send(Request(b"k"))
        self.runs[0].errback(ApiError("upstream_timeout"))
        for d in (d1, d2):
            self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_timeout")
        self.send(Request(b"k"))
        self.assertEqual(len(self.runs), 2)

    def test_cancelled_leader_hands_over(self) -> None:
        """A leader whose client left: the waiter runs the route itself."""
        d1, d2 = self.send(Request(b"k")), self.send(Request(b"k"))
        d1.cancel()
        self.failureResultOf(d1)
        self.assertEqual(len(self.runs), 2)
        self.runs[1].callback(b"{}")
        self.assertEqual(self.successResultOf(d2), b"{}")

    def test_invalid_key(self) -> None:
        """A bad key is a 400 and the route never runs."""
        d = self.send(Request(b"bad key"))
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "invalid_idempotency_key")
        self.assertEqual(self.runs, [])

    def test_another_client_with_the_key_gets_its_own_answer(self) -> None:
        """Another client (no session, another address) reusing the key runs its own request."""
        d1 = self.send(Request(b"k", fields={"chatInput": "hi"}))
        self.runs[0].callback(b"mine")
        self.successResultOf(d1)
        d2 = self.send(Request(b"k", client="10.9.9.9", fields={"chatInput": "hi"}))
        self.assertEqual(len(self.runs), 2)
        self.runs[1].callback(b"yours")
        self.assertEqual(self.successResultOf(d2), b"yours")

    def test_another_request_under_the_key_is_422(self) -> None:
        """The same owner, another message under the key: 422 idempotency_mismatch, the route not run."""
        self.send(Request(b"k"))
        d = self.send(Request(b"k", fields={"chatInput": "other", "sessionId": "s"}))
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "idempotency_mismatch")
        self.assertEqual(len(self.runs), 1)

    def test_streaming_mark(self) -> None:
        """A leader that streams: a second request gets 409 in_progress; after it, the key runs again."""
        leader = Request(b"k")
        d1 = self.send(leader)
        self.chat.mark_streaming(leader)
        d2 = self.send(Request(b"k"))
        self.assertEqual(self.failureResultOf(d2, ApiError).value.status, 409)
        self.runs[0].callback(b"streamed")
        self.successResultOf(d1)
        self.send(Request(b"k"))
        self.assertEqual(len(self.runs), 2)

    def test_owner_is_the_session_else_the_address(self) -> None:
        """The session id the client sent names the owner; without one, its address."""
        self.assertEqual(owner_of(ChatBody({"sessionId": "s1"}), "sessionId", "10.0.0.1"), "session:s1")
        self.assertEqual(owner_of(ChatBody({"chatInput": "hi"}), "sessionId", "10.0.0.1"), "client:10.0.0.1")

    def test_rate_limit_is_a_429_with_retry_after(self) -> None:
        """--rate-limit 2: two pass, the third is 429 rate_limited with Retry-After 30."""
        for _ in range(2):
            self.successResultOf(ensureDeferred(check_rate(self.state, "10.0.0.1")))
        error = self.failureResultOf(ensureDeferred(check_rate(self.state, "10.0.0.1")), ApiError).value
        self.assertEqual((error.status, error.headers["Retry-After"]), (429, "30"))

    def test_note_execution(self) -> None:
        """An executionStarted answer is remembered with its upstream; any other answer is not."""
        self.assertEqual(note_execution(self.state, {"executionStarted": True, "executionId": "9"}, 1), "9")
        self.assertIsNone(note_execution(self.state, {"output": "hi"}, 0))
        self.assertEqual(self.successResultOf(self.state.execution_lookup("9")), 1)

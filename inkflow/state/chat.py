"""
The chat route's use of the shared state, ready for the call sites:

 - L{SharedIdempotentChat}: the chat route under a client's
   C{Idempotency-Key} (L{inkflow.web.idempotency} tells the rules) on a
   L{SharedState}: replay with C{Idempotent-Replayed: true}, 409
   C{in_progress}, 422 C{idempotency_mismatch}, the leader's error to its
   waiters, the key scoped to its owner (L{owner_of});
 - L{check_rate}: the token bucket as the route's 429;
 - L{note_execution}, L{SharedExecutions}: the execution map fed from an n8n
   answer and read by the WebSocket relay.

Pure: no reactor; the state comes in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred

from inkflow.chat import ChatBody, session_fields
from inkflow.errors import ApiError
from inkflow.n8n.executions import started_execution
from inkflow.state.base import Answer, Outcome, SharedState
from inkflow.web.idempotency import REPLAYED_HEADERS, fingerprint
from inkflow.web.state import request_state
from inkflow.web.stream import Streaming

__all__ = [
    "SharedExecutions",
    "SharedIdempotentChat",
    "check_rate",
    "note_execution",
    "owner_of",
]


def owner_of(body: ChatBody | None, session_key: str, client: str) -> str:
    """
    Whose key it is: the session id the client sent, else its address.
    """
    fields = body.fields if body is not None else {}
    for name in session_fields(session_key):
        value = fields.get(name)
        if isinstance(value, str) and value:
            return f"session:{value}"
    return f"client:{client}"


async def check_rate(state: SharedState, bucket: str) -> None:
    """
    Take one token from C{bucket}.

    @raise ApiError: 429 C{rate_limited} with C{Retry-After}.
    """
    wait = await state.rate_take(bucket)
    if wait > 0:
        raise ApiError.retry_later("rate_limited", wait)


def note_execution(state: SharedState, body: Any, url_index: int) -> str | None:
    """
    Remember the upstream of an C{executionStarted} answer (in the
    background: the answer does not wait for it); return its id.
    """
    execution_id = started_execution(body)
    if execution_id is not None:
        state.execution_remember(execution_id, url_index).addErrback(lambda _: None)
    return execution_id


class SharedIdempotentChat:
    """
    The chat route under a client's C{Idempotency-Key}, on shared state
    (C{run(request, key, body, handler)}), the key scoped to its owner.

    @param client: the client's address for a request (the route's
        C{client_ip} with the trusted proxies, as the rate limit keys it).
    @param fingerprint_of: what makes two requests the same request, from the
        parsed body (default: L{inkflow.web.idempotency.fingerprint}).
    """

    def __init__(
        self,
        state: SharedState,
        input_key: str,
        session_key: str,
        client: Callable[[Any], str],
        fingerprint_of: Callable[[ChatBody | None], str] | None = None,
    ) -> None:
        self.state = state
        self._input_key = input_key
        self._session_key = session_key
        self._client = client
        self._fingerprint_of = fingerprint_of or self._default_fingerprint

    def _default_fingerprint(self, body: ChatBody | None) -> str:
        return fingerprint(body, self._input_key, self._session_key)

    def mark_streaming(self, request: Any) -> Deferred[None] | None:
        """
        The route streams the answer of C{request}: the key's waiters get 409
        C{in_progress}; nothing is stored.  Call it when the first byte goes.
        """
        scope = request_state(request).idempotency_scope
        if scope is None:
            return None
        d = self.state.idem_streaming(*scope)
        return d.addErrback(lambda _: None)

    async def run(
        self,
        request: Any,
        key: str | None,
        body: ChatBody | None,
        handler: Callable[[], Awaitable[bytes | Streaming | None]],
    ) -> bytes | Streaming | None:
        """
        Answer C{request} with C{handler}, at most once per owner and key (a
        stream's key is in progress until the stream ends).

        @param key: the request's C{Idempotency-Key} (L{parse_key}), or C{None}.
        @param body: the request's parsed body (owner and fingerprint).
        @raise ApiError: 409 C{in_progress}, 422 C{idempotency_mismatch}, or
            the leader's error.
        """
        if key is None:
            return await handler()
        owner = owner_of(body, self._session_key, self._client(request))
        claim = await self.state.idem_claim(owner, key, self._fingerprint_of(body))
        if claim.kind == "lead":
            return await self._lead(owner, key, request, handler)
        if claim.kind == "in_progress":
            raise ApiError("in_progress")
        if claim.kind == "mismatch":
            raise ApiError("idempotency_mismatch")
        if claim.kind == "replay":
            assert claim.answer is not None
            return self._send(request, claim.answer)
        assert claim.waiting is not None
        woken = await claim.waiting
        if isinstance(woken, ApiError):
            raise woken
        if isinstance(woken, Answer):
            return self._send(request, woken)
        # The leader ended without an answer: this request leads now.
        return await self._lead(owner, key, request, handler)

    async def _lead(
        self, owner: str, key: str, request: Any, handler: Callable[[], Awaitable[bytes | Streaming | None]]
    ) -> bytes | Streaming | None:
        request_state(request).idempotency_scope = (owner, key)
        outcome: Outcome = None
        streaming: Streaming | None = None
        try:
            body = await handler()
        except ApiError as e:
            outcome = e
            raise
        except BaseException:
            outcome = None  # cancelled or broken: nothing to share
            raise
        else:
            if isinstance(body, Streaming):
                # A streamed answer (the route wrote it itself) is never
                # stored; its key is in progress until the stream ends.
                streaming = body
                return streaming.then(lambda: self._finish(request, owner, key, None))
            headers = tuple(
                (name, value)
                for name in REPLAYED_HEADERS
                for value in (request.responseHeaders.getRawHeaders(name) or [])[:1]
            )
            outcome = Answer(getattr(request, "code", 200), body, headers) if body is not None else None
            return body
        finally:
            if streaming is None:
                self._finish(request, owner, key, outcome)

    def _finish(self, request: Any, owner: str, key: str, outcome: Outcome) -> None:
        request_state(request).idempotency_scope = None
        # Not awaited: the answer goes now; the store's own timeout bounds it.
        self.state.idem_finish(owner, key, outcome).addErrback(lambda _: None)

    @staticmethod
    def _send(request: Any, answer: Answer) -> bytes:
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.setHeader(name, value)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % len(answer.body))
        request.setHeader(b"Idempotent-Replayed", b"true")
        return answer.body


class SharedExecutions:
    """
    The execution map on shared state, for the chat handler (C{note_answer})
    and the WebSocket relay (C{lookup}, a L{Deferred}).
    """

    def __init__(self, state: SharedState) -> None:
        self.state = state

    def note_answer(self, body: Any, url_index: int) -> str | None:
        return note_execution(self.state, body, url_index)

    def lookup(self, execution_id: str) -> Deferred[int | None]:
        return self.state.execution_lookup(execution_id)

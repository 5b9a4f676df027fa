"""
A client's C{Idempotency-Key} on C{POST /api/chat}: one key, one run of the
workflow (per process).

L{IdempotencyStore} is pure (an injected clock, no twisted.web): it knows, per
key, whether a request with it is in flight, streaming, or answered, and keeps
the 2xx answers for C{--idempotency-ttl} seconds, bounded by count and bytes.
L{IdempotentChat} wraps the chat route with it:

 - no key: the route runs as before;
 - a key not seen (or expired): this request leads; it runs the route, and its
   answer (2xx, or an error) goes to every request that waited on the key; a
   2xx answer is stored for replay;
 - a key in flight: wait for the leader's answer and answer the same (its
   status, body, C{Content-Type} and C{X-Session-ID}); if the leader ends
   without an answer (its client left), the next waiter leads;
 - a key whose answer is stored: replay it (header C{Idempotent-Replayed: true});
 - a key whose answer is being streamed: 409 C{in_progress}; once the stream
   ends nothing is stored (a stream is not replayed) and the next request with
   the key is forwarded as usual.

Hook for a streamed answer: when the chat handler commits a stream for a
request that carries a key, it calls C{store.mark_streaming(key)}; the
wrapper then stores nothing when the route returns.  The route parses the
key once (L{parse_key}) and hands it, with the parsed body, to
L{IdempotentChat.run}; the request owns its body (its files are removed when
it ends, answered or replayed).

A request with a known key but another message (another session, action,
text or files) is refused with 422 C{idempotency_mismatch}: a key names one
request, never a different one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from inkflow.chat import ChatBody, message_fields, session_fields
from inkflow.errors import ApiError

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_ENTRIES",
    "MAX_TOTAL_BYTES",
    "Answer",
    "IdempotencyStore",
    "IdempotentChat",
    "fingerprint",
    "parse_key",
]

#: A client's key: 1-128 of A-Z a-z 0-9 _ - . :
KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Stored answers at most (the oldest go first).
MAX_ENTRIES = 10_000
#: Bytes of stored answers at most.
MAX_TOTAL_BYTES = 32 * 1024 * 1024
#: A larger answer is shared with the requests waiting on it, never stored.
MAX_ANSWER_BYTES = 1024 * 1024
#: Response headers a replay carries over.
REPLAYED_HEADERS = (b"Content-Type", b"X-Session-ID")

FLIGHT = "flight"
STREAMING = "streaming"
DONE = "done"


def parse_key(values: Sequence[bytes] | None) -> str | None:
    """
    The request's C{Idempotency-Key}, checked.

    @param values: the raw header values (C{None} when absent).
    @raise ApiError: 400 C{invalid_idempotency_key} for a key that is not
        1-128 of C{A-Za-z0-9_-.:}, or for more than one key.
    """
    if not values:
        return None
    if len(values) > 1:
        raise ApiError("invalid_idempotency_key", "send one Idempotency-Key")
    try:
        text = values[0].decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not KEY.match(text):
        raise ApiError("invalid_idempotency_key", "1-128 of A-Z a-z 0-9 _ - . :")
    return text


def fingerprint(body: ChatBody | None, input_key: str, session_key: str) -> str:
    """
    What makes two requests the same request: the session the client sent
    (none when it sent none), the action, the message, the metadata and each
    file's name, size and SHA-256 (computed while it was spooled): the same
    name and size with other bytes is another request.
    """
    fields = body.fields if body is not None else {}

    def first(names: tuple[str, ...]) -> Any:
        for name in names:
            if fields.get(name) is not None:
                return fields[name]
        return None

    value = {
        "action": fields.get("action"),
        "session": first(session_fields(session_key)),
        "message": first(message_fields(input_key)),
        "metadata": fields.get("metadata"),
        "files": [(f.filename, f.size, f.sha256) for f in body.files] if body is not None else [],
    }
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Answer:
    """
    A whole chat answer, as sent: status, body, and the headers a replay keeps.
    """

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(n) + len(v) for n, v in self.headers) + 64


#: What a leader ends with: its answer, its error, or nothing (cancelled,
#: streamed).
Outcome = Answer | ApiError | None

#: What wakes a waiter when the leader ended without an answer: it leads now.
LEAD = "lead"

#: What a waiter is woken with.
Wake = Answer | ApiError | str


@dataclass
class _Entry:
    fingerprint: str
    state: str = FLIGHT
    waiters: list[defer.Deferred[Wake]] = field(default_factory=list)
    answer: Answer | None = None
    expires: float = 0.0


@dataclass(frozen=True)
class Begin:
    """
    What L{IdempotencyStore.begin} decided.

    @ivar kind: C{"lead"} (run the request, then L{IdempotencyStore.finish}),
        C{"wait"} (await C{waiting}), C{"replay"} (send C{answer}),
        C{"in_progress"} (the answer is being streamed).
    """

    kind: str
    answer: Answer | None = None
    waiting: defer.Deferred[Wake] | None = None


class IdempotencyStore:
    """
    Keys in flight and answers kept, per process.

    @param clock: anything with C{seconds()} (the reactor, a C{Clock}).
    @param ttl: seconds a stored answer is replayed (0: never stored).
    """

    def __init__(
        self,
        clock: IReactorTime,
        ttl: float,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_TOTAL_BYTES,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_answer_bytes = max_answer_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: Stored (done) answers only, in the order they were stored.
        self._stored: OrderedDict[str, int] = OrderedDict()
        self.stored_bytes = 0
        self.replayed_total = 0
        self.joined_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stored(self) -> int:
        return len(self._stored)

    def begin(self, key: str, print_: str) -> Begin:
        """
        A request with C{key} (and fingerprint C{print_}) arrives.

        @raise ApiError: 422 C{idempotency_mismatch} when the key is known
            with another fingerprint.
        """
        self._expire()
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(print_)
            return Begin("lead")
        if entry.fingerprint != print_:
            raise ApiError("idempotency_mismatch")
        if entry.state == DONE:
            assert entry.answer is not None
            self.replayed_total += 1
            return Begin("replay", answer=entry.answer)
        if entry.state == STREAMING:
            return Begin("in_progress")
        waiting: defer.Deferred[Wake] = defer.Deferred(lambda d: self._leave(key, d))
        entry.waiters.append(waiting)
        self.joined_total += 1
        return Begin("wait", waiting=waiting)

    def mark_streaming(self, key: str) -> None:
        """
        The leader of C{key} streams its answer: waiters, now and until it
        ends, get 409 C{in_progress}.
        """
        entry = self._entries.get(key)
        if entry is None or entry.state != FLIGHT:
            return
        entry.state = STREAMING
        waiters, entry.waiters = entry.waiters, []
        for d in waiters:
            d.callback(ApiError("in_progress"))

    def finish(self, key: str, outcome: Outcome) -> None:
        """
        The leader of C{key} is done: C{outcome} is its answer (stored when
        2xx and not streamed), its error, or C{None} (no answer: the next
        waiter leads).
        """
        entry = self._entries.get(key)
        if entry is None or entry.state == DONE:
            return
        streamed = entry.state == STREAMING
        waiters, entry.waiters = entry.waiters, []
        if streamed:
            outcome = None
        store = (
            isinstance(outcome, Answer)
            and 200 <= outcome.status < 300
            and self.ttl > 0
            and outcome.size <= self.max_answer_bytes
        )
        if store:
            assert isinstance(outcome, Answer)
            entry.state = DONE
            entry.answer = outcome
            entry.expires = self._clock.seconds() + self.ttl
            self._stored[key] = outcome.size
            self.stored_bytes += outcome.size
            self._bound()
        else:
            del self._entries[key]
        if outcome is None:
            # Wake one waiter to lead; the others wait on it.
            if waiters:
                first, rest = waiters[0], waiters[1:]
                self._entries[key] = _Entry(entry.fingerprint, waiters=rest)
                first.callback(LEAD)
            return
        for d in waiters:
            d.callback(outcome)

    def _leave(self, key: str, d: defer.Deferred[Wake]) -> None:
        entry = self._entries.get(key)
        if entry is not None and d in entry.waiters:
            entry.waiters.remove(d)

    def _drop_stored(self, key: str) -> None:
        size = self._stored.pop(key)
        self.stored_bytes -= size
        del self._entries[key]

    def _expire(self) -> None:
        now = self._clock.seconds()
        # Stored in order with one ttl: the oldest expire first.
        while self._stored:
            key = next(iter(self._stored))
            if self._entries[key].expires > now:
                break
            self._drop_stored(key)

    def _bound(self) -> None:
        while self._stored and (len(self._stored) > self.max_entries or self.stored_bytes > self.max_bytes):
            self._drop_stored(next(iter(self._stored)))


class _Request(Protocol):
    """
    What the wrapper reads and sets on a request (an L{InkFlowRequest}).
    """

    def getHeader(self, key: bytes) -> bytes | None: ...

    def setHeader(self, name: bytes, value: bytes) -> None: ...

    def setResponseCode(self, code: int) -> None: ...

    @property
    def code(self) -> int: ...

    @property
    def responseHeaders(self) -> Any: ...

    @property
    def requestHeaders(self) -> Any: ...


class IdempotentChat:
    """
    The chat route under a client's C{Idempotency-Key}.

    @param store: the keys of this process.
    @param input_key: C{--chat-input-key}, for the fingerprint.
    @param session_key: C{--chat-session-key}, for the fingerprint.
    """

    def __init__(self, store: IdempotencyStore, input_key: str, session_key: str) -> None:
        self.store = store
        self._input_key = input_key
        self._session_key = session_key

    async def run(
        self, request: _Request, key: str | None, body: ChatBody | None, handler: Callable[[], Awaitable[bytes | None]]
    ) -> bytes | None:
        """
        Answer C{request} with C{handler}, at most once per key.

        @param key: the request's C{Idempotency-Key} (L{parse_key}), or C{None}.
        @param body: the request's parsed body, for the fingerprint.
        @raise ApiError: 409 C{in_progress}, 422 C{idempotency_mismatch}, or
            the leader's error.
        """
        if key is None:
            return await handler()
        begin = self.store.begin(key, fingerprint(body, self._input_key, self._session_key))
        if begin.kind == "lead":
            return await self._lead(key, request, handler)
        if begin.kind == "in_progress":
            raise ApiError("in_progress")
        if begin.kind == "replay":
            assert begin.answer is not None
            return self._send(request, begin.answer)
        assert begin.waiting is not None
        woken = await begin.waiting
        if isinstance(woken, ApiError):
            raise woken
        if isinstance(woken, Answer):
            return self._send(request, woken)
        # The leader ended without an answer: this request leads now.
        return await self._lead(key, request, handler)

    async def _lead(self, key: str, request: _Request, handler: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        outcome: Outcome = None
        try:
            body = await handler()
        except ApiError as e:
            outcome = e
            raise
        except BaseException:
            outcome = None  # cancelled or broken: nothing to share
            raise
        else:
            headers = tuple(
                (name, value)
                for name in REPLAYED_HEADERS
                for value in (request.responseHeaders.getRawHeaders(name) or [])[:1]
            )
            # A streamed answer (the route wrote it itself) is never stored.
            outcome = Answer(request.code, body, headers) if body is not None else None
            return body
        finally:
            self.store.finish(key, outcome)

    @staticmethod
    def _send(request: _Request, answer: Answer) -> bytes:
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.setHeader(name, value)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % len(answer.body))
        request.setHeader(b"Idempotent-Replayed", b"true")
        return answer.body

"""
One chat message's answer: L{ChatHandler.answer} takes a parsed message,
waits for a place in the queue, asks n8n (or the demo responder), and returns
either a JSON answer (L{JsonAnswer}) or a stream (L{StreamAnswer}); the route
writes it with C{answer.write(request)}.

The commit point of a stream is here (L{StreamAnswer.write}): the headers go
out, the C{Idempotency-Key} is marked as streaming (a stream is never
replayed), the chat latency is its time to first byte; the queue slot is held
until the stream ends.  From there the stream relays on its own
(L{inkflow.web.stream.Streaming}).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from inkflow.chat import ChatBody, ChatMessage, forwarded_headers, parse_chat
from inkflow.errors import ApiError
from inkflow.n8n.demo import DemoResponder
from inkflow.n8n.stream import StreamStart
from inkflow.snapshot import UpstreamSnapshot
from inkflow.web.admission import ChatQueue
from inkflow.web.responses import JSON_TYPE, bytes_response, json_response
from inkflow.web.stream import StreamAnswers, Streaming

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = [
    "ChatForwarder",
    "ChatHandler",
    "ChatObserver",
    "ChatRun",
    "ExecutionNotes",
    "JsonAnswer",
    "StreamAnswer",
    "StreamMarks",
]

log = Logger()


class ChatForwarder(Protocol):
    """
    What the chat handler needs from the n8n forwarder (L{inkflow.n8n.client.Forwarder}).
    """

    def forward(self, message: ChatMessage, deadline: float, *, stream: bool = False) -> Awaitable[Any]: ...

    def upstreams(self) -> list[UpstreamSnapshot]: ...


class ExecutionNotes(Protocol):
    """
    Where an C{executionStarted} answer's upstream is remembered (the
    shared state's execution map: L{inkflow.state.chat.SharedExecutions}).
    """

    def note_answer(self, body: Any, url_index: int) -> str | None: ...


class StreamMarks(Protocol):
    """
    Told when a request under an C{Idempotency-Key} commits to a stream
    (L{inkflow.state.chat.SharedIdempotentChat.mark_streaming}).
    """

    def mark_streaming(self, request: Any) -> object: ...


class ChatObserver(Protocol):
    """
    What the chat handler reports (L{inkflow.server.metrics.Metrics}).
    """

    def observe_chat(self, seconds: float, status: int) -> None: ...

    def observe_queue_wait(self, seconds: float) -> None: ...


@dataclass
class ChatRun:
    """
    One chat request's bookkeeping: when it started, its status, and whether
    its latency was observed already (a stream's, at its first byte).
    """

    started: float
    request_id: str
    status: int = 500
    observed: bool = False


@dataclass(frozen=True)
class JsonAnswer:
    """
    A whole answer, as JSON: n8n's bytes as they came (C{raw}), or a value.
    """

    session_id: str
    value: Any
    raw: bytes | None
    run: ChatRun

    def write(self, request: IRequest) -> bytes:
        request.setHeader(b"X-Session-ID", self.session_id.encode())
        if self.raw is not None:
            # n8n's JSON as it came (checked when decoded): nothing to add.
            written = bytes_response(request, self.raw, JSON_TYPE)
        else:
            try:
                written = json_response(request, self.value)
            except ValueError:
                # NaN, an infinity or nesting too deep: never sent as "JSON".
                raise ApiError("upstream_error", "the answer is not valid JSON") from None
        self.run.status = 200
        return written


@dataclass(frozen=True)
class StreamAnswer:
    """
    A streamed answer: n8n's stream to relay (C{start}), or a JSON answer to
    write as begin / item / end lines (C{value}).

    @ivar release: gives the queue slot back (once the stream has ended).
    """

    session_id: str
    key: str | None
    run: ChatRun
    handler: ChatHandler
    start: StreamStart | None = None
    value: Any = None
    release: Callable[[], None] | None = None

    def write(self, request: IRequest) -> Streaming | None:
        """
        Commit: write the synthesized lines (the route then finishes the
        request), or start relaying n8n's stream (L{Streaming}: the slot is
        given back when it ends).
        """
        handler = self.handler
        streaming: Streaming | None = None
        try:
            # The commit point: from here on, no retry and no failover.
            request.setHeader(b"X-Session-ID", self.session_id.encode())
            self.run.status = 200
            if self.key is not None:
                # A streamed answer is not replayed (409 in_progress meanwhile).
                handler.idempotency.mark_streaming(request)
            if self.start is None:
                handler.streams.synthesized(request, self.value, self.run.started)
                return None
            if handler.metrics is not None:
                # The chat latency of a stream is its time to first byte.
                handler.metrics.observe_chat(handler.clock.seconds() - self.run.started, 200)
                self.run.observed = True
            streaming = handler.streams.relay(request, self.start, self.run.started)
            if self.release is not None:
                streaming.then(self.release)
            return streaming
        finally:
            if streaming is None and self.release is not None:
                self.release()


ChatAnswer = JsonAnswer | StreamAnswer


class ChatHandler:
    """
    Answers chat messages.

    @param forwarder: forwards chat to n8n; C{None} means demo mode (the
        C{demo} responder answers).
    @param queue: the concurrency gate and bounded queue for chat.
    @param streams: writes streamed answers.
    @param executions: remembers which webhook URL started an execution.
    @param idempotency: the keys in flight (a stream marks its key).
    @param metrics: told each chat's latency and queue wait.
    """

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        *,
        forwarder: ChatForwarder | None,
        demo: DemoResponder,
        queue: ChatQueue,
        streams: StreamAnswers,
        executions: ExecutionNotes,
        idempotency: StreamMarks,
        metrics: ChatObserver | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.forwarder = forwarder
        self.demo = demo
        self.queue = queue
        self.streams = streams
        self.executions = executions
        self.idempotency = idempotency
        self.metrics = metrics
        self._debug = settings.log_level == "debug"

    def message(self, body: ChatBody, run: ChatRun, key: str | None, request: IRequest) -> ChatMessage:
        """
        The chat message of a request's body (its key and forwarded headers
        with it).

        @raise ApiError: 400 for a message that breaks the contract.
        """
        s = self.settings
        return parse_chat(
            body,
            request_id=run.request_id,
            max_chars=s.max_message_chars,
            max_files=s.max_files,
            input_key=s.chat_input_key,
            session_key=s.chat_session_key,
        ).with_client(key, forwarded_headers(request.requestHeaders.getRawHeaders, s.forward_header))

    @contextmanager
    def observed(self, run: ChatRun) -> Iterator[ChatRun]:
        """
        Around one chat request: its latency and status observed once, a
        refusal logged.
        """
        try:
            yield run
        except ApiError as e:
            run.status = e.status
            log.info(
                "Chat {request_id} refused: {status} {code}", status=e.status, code=e.code, request_id=run.request_id
            )
            raise
        finally:
            if self.metrics is not None and not run.observed:
                self.metrics.observe_chat(self.clock.seconds() - run.started, run.status)

    async def answer(self, message: ChatMessage, wants_stream: bool, run: ChatRun) -> ChatAnswer:
        """
        Ask n8n (or the demo responder) for C{message}'s answer, in its turn.

        @param wants_stream: the client asked for a stream.
        @raise ApiError: the queue or n8n refused.
        """
        deadline = self.clock.seconds() + self.settings.request_timeout
        slot = await self.queue.acquire()
        if self.metrics is not None:
            self.metrics.observe_queue_wait(slot.waited)
        held = False
        try:
            raw: bytes | None = None
            if self.forwarder is None:
                value: Any = self.demo.answer(message)
            else:
                result = await (
                    self.forwarder.forward(message, deadline, stream=True)
                    if wants_stream
                    else self.forwarder.forward(message, deadline)
                )
                if isinstance(result, StreamStart):
                    # The slot is held until the stream ends.
                    held = True
                    return StreamAnswer(
                        message.session_id, message.idempotency_key, run, self, start=result, release=slot.release
                    )
                value, raw = result.body, result.raw
                self.executions.note_answer(value, result.url_index)
        finally:
            if not held:
                slot.release()
        if message.session_generated and isinstance(value, dict) and "sessionId" not in value:
            value = {**value, "sessionId": message.session_id}
            raw = None
        if self._debug:
            # Debug: the access line (with its X-Request-ID) records every
            # answer; at info this line cost 5 % of a proxied chat, and
            # even a dropped debug event costs 1.5 %.
            log.debug(
                "Chat {request_id} answered ({files} files)",
                request_id=message.request_id,
                session_id=message.session_id,
                files=len(message.files),
                mode=self.settings.mode,
            )
        if wants_stream:
            return StreamAnswer(message.session_id, message.idempotency_key, run, self, value=value)
        return JsonAnswer(message.session_id, value, raw, run)

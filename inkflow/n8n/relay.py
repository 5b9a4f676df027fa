"""
n8n's streamed answers, the Twisted part: reading the opening of a 2xx body
(L{open_body}), and relaying a committed stream to the client
(L{StreamRelay}), with backpressure both ways, deadlines, caps and the error
line.  The pure rules are in L{inkflow.n8n.stream}.

The life of a streamed answer::

    n8n's response ──deliverBody──▶ StreamBody ──lines──▶ StreamRelay ──write──▶ the client's request
                      (opening: first line read under the attempt deadline)
                                    ◀──pause/resume/stop── (the relay is the request's producer)

Before its first line the body belongs to the Forwarder (retries and
failover are still possible); once the first line is a stream line the body
is handed to the route, which commits (writes the first bytes) and relays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.iweb import IResponse
from zope.interface import implementer

from inkflow.n8n.response import BodyTooLarge, drop_connection
from inkflow.n8n.stream import (
    CAUSES,
    CLIENT_LEFT,
    COMPLETE,
    DRAIN,
    ERROR_TEXT,
    IDLE_TIMEOUT,
    KEEPALIVE_LINE,
    MAX_LINE_BYTES,
    MAX_STREAM_BYTES,
    STREAM_HEADERS,
    STREAM_TIMEOUT,
    TOO_LARGE,
    UPSTREAM_DROPPED,
    LineSplitter,
    LineTooLong,
    StreamRegistry,
    error_line,
    is_keepalive,
    is_stream_line,
)

__all__ = [
    "CAUSES",
    "KEEPALIVE_AFTER",
    "STREAM_HEADERS",
    "StreamBody",
    "StreamRegistry",
    "StreamRelay",
    "open_body",
]

log = Logger()

#: Seconds without a line from n8n after which a keepalive line is written.
KEEPALIVE_AFTER = 20.0


class _Sink(TypingProtocol):
    def lines(self, lines: list[bytes]) -> None: ...

    def data_arrived(self) -> None: ...

    def ended(self, cause: str) -> None: ...


class StreamBody(Protocol):
    """
    n8n's 2xx response body, from its first byte.

    Opening: the bytes are collected until the first complete non-blank
    line.  If it is a stream line, the body is a stream: C{opened} fires with
    this protocol, the transport is paused until a sink is attached
    (L{attach}), and from then on complete lines go to the sink.  Otherwise
    the whole body is collected (at most C{max_body} bytes) and C{opened}
    fires with it.
    """

    def __init__(self, opened: Deferred[Any], max_body: int, max_line: int = MAX_LINE_BYTES) -> None:
        self.opened: Deferred[Any] | None = opened
        self.max_body = max_body
        self.state = "opening"  # then "collect" (not a stream) or "stream", then "done"
        self.size = 0
        self.chunks: list[bytes] = []
        self.splitter = LineSplitter(max_line)
        self.sink: _Sink | None = None
        self._pending: list[bytes] = []
        self._end: str | None = None
        self._paused = False

    # -- from the response

    def dataReceived(self, data: bytes) -> None:
        if self.state == "stream":
            try:
                lines = self.splitter.feed(data)
            except LineTooLong:
                self._finish_stream(TOO_LARGE)
                return
            sink = self.sink
            if sink is None:
                self._pending.extend(lines)
            else:
                sink.data_arrived()
                if lines:
                    sink.lines(lines)
            return
        if self.opened is None:
            return  # done, or given up
        self.size += len(data)
        if self.size > self.max_body:
            opened, self.opened = self.opened, None
            self.state = "done"
            self.chunks = []
            self.abort()
            opened.errback(BodyTooLarge())
            return
        self.chunks.append(data)
        if self.state == "opening" and b"\n" in data:
            self._opening_line()

    def _opening_line(self) -> None:
        body = b"".join(self.chunks)
        *complete, _ = body.split(b"\n")
        for line in complete:
            if not line.strip() or is_keepalive(line):
                continue
            if not is_stream_line(line):
                self.state = "collect"
                self.chunks = [body]
                return
            self.state = "stream"
            self.chunks = []
            try:
                self._pending = self.splitter.feed(body)
            except LineTooLong:
                self._pending = []
                self.state = "collect"
                self.chunks = [body]
                return
            self.pause()
            opened, self.opened = self.opened, None
            assert opened is not None
            opened.callback(self)
            return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.state == "stream":
            complete = bool(reason.check(ResponseDone))
            tail = self.splitter.finish()
            # A last line without its newline is passed on only when the body
            # ended properly; a cut one is dropped.
            if tail is not None and complete:
                if self.sink is None:
                    self._pending.append(tail)
                else:
                    self.sink.lines([tail])
            self._finish_stream(COMPLETE if complete else UPSTREAM_DROPPED)
            return
        if self.opened is None:
            return
        opened, self.opened = self.opened, None
        self.state = "done"
        if reason.check(ResponseDone, PotentialDataLoss):
            opened.callback(b"".join(self.chunks))
        else:
            opened.errback(reason)
        self.chunks = []

    def _finish_stream(self, cause: str) -> None:
        sink = self.sink
        self.state = "done"
        if cause != COMPLETE:
            self.abort()
        if sink is None:
            self._end = cause
        else:
            sink.ended(cause)

    # -- to the relay

    def attach(self, sink: _Sink) -> None:
        """
        Start handing lines to C{sink}: those read so far at once, then each
        as it arrives, and the end.
        """
        self.sink = sink
        pending, self._pending = self._pending, []
        if pending:
            sink.lines(pending)
        if self._end is not None:
            sink.ended(self._end)
            return
        self.resume()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and self.state != "done":
            self._paused = True
            cast(Any, self.transport).pauseProducing()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            cast(Any, self.transport).resumeProducing()

    def abort(self) -> None:
        """
        Drop n8n's connection (it never goes back to the pool).
        """
        self.state = "done"
        drop_connection(self.transport)


def open_body(response: IResponse, max_body: int, max_line: int = MAX_LINE_BYTES) -> Deferred[Any]:
    """
    Read the opening of a 2xx body: fires with a L{StreamBody} when its first
    line is a stream line, else with the whole body (C{bytes}, at most
    C{max_body}).  Cancelling drops the connection.

    @raise BodyTooLarge: (as a failure) a non-stream body over C{max_body}.
    """

    def cancel(d: Deferred[Any]) -> None:
        protocol.opened = None
        protocol.abort()

    opened: Deferred[Any] = Deferred(cancel)
    protocol = StreamBody(opened, max_body, max_line)
    cast(Any, response).deliverBody(protocol)
    return opened


class _Request(TypingProtocol):
    def write(self, data: bytes) -> None: ...

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


#: Called once when a stream ends: (cause, bytes written, seconds).
EndObserver = Callable[[str, int, float], None]


@implementer(IPushProducer)
class StreamRelay:
    """
    Relays a committed stream to the client: each complete line as it
    arrives, unchanged.

    It is the request's streaming producer: when the client reads slowly the
    channel pauses it, and it pauses n8n's side (memory stays at one
    unfinished line plus the transports' buffers).  One timer per stream
    checks the deadlines: C{stream_timeout} from the commit, C{idle_timeout}
    without a byte from n8n (not counted while the client holds it paused),
    and a keepalive line after C{keepalive} seconds without a line.

    A stream that does not end well (n8n drops it, a cap, a deadline, drain)
    gets one error line and a clean end; n8n's connection is dropped.  When
    the client leaves, n8n's connection is dropped at once.

    @ivar done: fires with the cause when the stream has ended (the route
        then finishes the request); cancelling it is the client leaving.
    """

    def __init__(
        self,
        request: _Request,
        body: StreamBody,
        clock: IReactorTime,
        *,
        idle_timeout: float,
        stream_timeout: float,
        keepalive: float = KEEPALIVE_AFTER,
        max_bytes: int = MAX_STREAM_BYTES,
        registry: StreamRegistry | None = None,
        on_end: EndObserver | None = None,
        request_id: str | None = None,
    ) -> None:
        self.request = request
        self.body = body
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.stream_timeout = stream_timeout
        self.keepalive = keepalive
        self.max_bytes = max_bytes
        self.registry = registry
        self.on_end = on_end
        self.request_id = request_id
        self.sent = 0
        self.cause: str | None = None
        self.paused = False
        self.done: Deferred[str] = Deferred(self._cancelled)
        self._timer: IDelayedCall | None = None
        self._started = self._last_byte = self._last_line = 0.0

    # -- lifetime

    def start(self) -> Deferred[str]:
        """
        Commit: write the lines read so far and relay the rest.
        """
        now = self.clock.seconds()
        self._started = self._last_byte = self._last_line = now
        if self.registry is not None:
            self.registry.add(self)
        self.request.registerProducer(self, True)
        self._schedule()
        self.body.attach(self)
        return self.done

    def stop(self, cause: str = DRAIN) -> None:
        """
        End the stream now with an error line (drain).
        """
        self._end(cause)

    def _cancelled(self, d: Deferred[str]) -> None:
        self._end(CLIENT_LEFT, fire=False)

    def _end(self, cause: str, fire: bool = True) -> None:
        if self.cause is not None:
            return
        self.cause = cause
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if cause != COMPLETE:
            self.body.abort()
        with contextlib.suppress(Exception):  # the channel may be gone already
            self.request.unregisterProducer()
        if cause not in (COMPLETE, CLIENT_LEFT):
            text = ERROR_TEXT.get(cause, ERROR_TEXT[UPSTREAM_DROPPED])
            self._write(error_line(text, self.clock.seconds()))
        seconds = self.clock.seconds() - self._started
        if self.registry is not None:
            self.registry.ended(self, cause)
        # A complete stream has its access log line; the others say why here.
        log_method = log.debug if cause == COMPLETE else log.info if cause == CLIENT_LEFT else log.warn
        log_method(
            "Stream {request_id} ended: {cause} after {seconds} s, {bytes} bytes",
            request_id=self.request_id,
            cause=cause,
            seconds=round(seconds, 3),
            bytes=self.sent,
        )
        if self.on_end is not None:
            try:
                self.on_end(cause, self.sent, seconds)
            except Exception:
                log.failure("Stream end observer failed")
        if fire:
            self.done.callback(cause)

    def _write(self, data: bytes) -> None:
        self.sent += len(data)
        self.request.write(data)

    # -- from the body (the sink)

    def lines(self, lines: list[bytes]) -> None:
        if self.cause is not None:
            return
        data = b"\n".join(lines) + b"\n"
        if self.sent + len(data) > self.max_bytes:
            self._end(TOO_LARGE)
            return
        self._last_line = self._last_byte = self.clock.seconds()
        self._write(data)

    def data_arrived(self) -> None:
        self._last_byte = self.clock.seconds()

    def ended(self, cause: str) -> None:
        self._end(cause)

    # -- the request's producer

    def pauseProducing(self) -> None:
        if self.cause is None and not self.paused:
            self.paused = True
            self.body.pause()

    def resumeProducing(self) -> None:
        if self.cause is None and self.paused:
            self.paused = False
            self._last_byte = self.clock.seconds()
            self.body.resume()
            self._schedule()

    def stopProducing(self) -> None:
        self._end(CLIENT_LEFT)

    # -- deadlines

    def _next_due(self) -> float:
        due = self._started + self.stream_timeout
        if not self.paused:
            due = min(due, self._last_byte + self.idle_timeout, self._last_line + self.keepalive)
        return due

    def _schedule(self) -> None:
        due = self._next_due()
        delay = max(0.0, due - self.clock.seconds())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.cause is not None:
            return
        now = self.clock.seconds()
        if now >= self._started + self.stream_timeout:
            self._end(STREAM_TIMEOUT)
            return
        if not self.paused:
            if now >= self._last_byte + self.idle_timeout:
                self._end(IDLE_TIMEOUT)
                return
            if now >= self._last_line + self.keepalive:
                self._last_line = now
                self._write(KEEPALIVE_LINE)
        self._schedule()

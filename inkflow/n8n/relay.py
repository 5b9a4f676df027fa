"""
n8n's streamed answers, the Twisted part of n8n's side: reading the
opening of a 2xx body (L{open_body}) and handing its lines on
(L{StreamBody}).  The pure rules are in L{inkflow.n8n.stream}; the client's
side (the relay, the headers, the registry) in L{inkflow.web.stream}.

The life of a streamed answer::

    n8n's response ──deliverBody──▶ StreamBody ──lines──▶ StreamRelay (inkflow.web.stream) ──▶ the client
                      (opening: first line read under the attempt deadline)
                                    ◀──pause/resume/stop── (the relay is the request's producer)

Before its first line the body belongs to the Forwarder (retries and
failover are still possible); once the first line is a stream line the body
is handed to the chat handler, which commits (writes the first bytes) and relays.
"""

from __future__ import annotations

from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.iweb import IResponse

from inkflow.n8n.response import BodyTooLarge, drop_connection
from inkflow.n8n.stream import (
    COMPLETE,
    MAX_LINE_BYTES,
    TOO_LARGE,
    UPSTREAM_DROPPED,
    LineSplitter,
    LineTooLong,
    is_keepalive,
    is_stream_line,
)

__all__ = ["StreamBody", "open_body"]

log = Logger()


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
            self.detach()
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

    def detach(self) -> None:
        """
        Hand nothing more to the sink.  The sink (the relay) refers to this
        body too: letting go of it when the stream ends leaves no reference
        cycle, so both are freed at once, not by a later pass of the garbage
        collector (at 2,000 streams a burst such passes stopped the server
        for most of a second).
        """
        self.sink = None
        self._pending = []

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

"""
A streamed answer read whole for a JSON client (a client without
C{Accept: text/plain} of a streaming workflow).

The attempt's deadline (C{--attempt-timeout}) bounds the wait for n8n's
first line only (L{inkflow.n8n.relay.open_body}); once it is in the answer is
alive, and the rest is bounded as a relayed stream is: C{--stream-idle-timeout}
without a byte from n8n, C{--stream-timeout} for the whole stream.  The items
are joined by L{inkflow.n8n.stream.Bridge}; what is held is the joined text,
at most C{max_bytes} of n8n's lines.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed

from inkflow.n8n.relay import StreamBody
from inkflow.n8n.response import AttemptTimedOut, BodyTooLarge
from inkflow.n8n.stream import COMPLETE, TOO_LARGE, Bridge, BridgeResult

__all__ = ["StreamDeadline", "join_stream"]


class StreamDeadline(AttemptTimedOut):
    """
    A stream read for a JSON client went quiet for C{--stream-idle-timeout}
    or ran past C{--stream-timeout}: a timeout like the attempt's.
    """


class _Joiner:
    """
    The sink of a L{StreamBody}: feeds each line to a L{Bridge}, checks the
    two deadlines with one timer.
    """

    def __init__(
        self, body: StreamBody, clock: IReactorTime, idle_timeout: float, stream_timeout: float, max_bytes: int
    ) -> None:
        self.body = body
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.stream_timeout = stream_timeout
        self.max_bytes = max_bytes
        self.bridge = Bridge()
        self.size = 0
        self.done: Deferred[BridgeResult] = Deferred(self._cancelled)
        self._timer: IDelayedCall | None = None
        self._started = self._last_byte = 0.0

    def start(self) -> Deferred[BridgeResult]:
        self._started = self._last_byte = self.clock.seconds()
        self._schedule()
        self.body.attach(self)  # may hand over every line, and the end, at once
        return self.done

    # -- the sink

    def lines(self, lines: list[bytes]) -> None:
        if self.done.called:
            return
        self._last_byte = self.clock.seconds()
        for line in lines:
            self.size += len(line) + 1
            if self.size > self.max_bytes:
                self._fail(BodyTooLarge())
                return
            self.bridge.feed(line)

    def data_arrived(self) -> None:
        self._last_byte = self.clock.seconds()

    def ended(self, cause: str) -> None:
        if self.done.called:
            return
        self._stop_timer()
        if cause == COMPLETE:
            self.done.callback(self.bridge.result())
        elif cause == TOO_LARGE:  # (the body has dropped n8n's connection already)
            self._fail(BodyTooLarge(), abort=False)
        else:  # n8n dropped the stream
            self._fail(ResponseFailed([Failure(ConnectionError("n8n dropped the stream"))]), abort=False)

    # -- deadlines

    def _schedule(self) -> None:
        due = min(self._started + self.stream_timeout, self._last_byte + self.idle_timeout)
        self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.done.called:
            return
        now = self.clock.seconds()
        if now >= self._started + self.stream_timeout:
            self._fail(StreamDeadline("stream_timeout"))
        elif now >= self._last_byte + self.idle_timeout:
            self._fail(StreamDeadline("idle_timeout"))
        else:
            self._schedule()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _fail(self, error: Exception, abort: bool = True) -> None:
        self._stop_timer()
        if abort:
            self.body.abort()
        if not self.done.called:
            self.done.errback(Failure(error))

    def _cancelled(self, d: Deferred[BridgeResult]) -> None:
        # The caller went away: drop n8n's connection (Deferred then fails with CancelledError).
        self._stop_timer()
        self.body.abort()


def join_stream(
    body: StreamBody, clock: IReactorTime, *, idle_timeout: float, stream_timeout: float, max_bytes: int
) -> Deferred[BridgeResult]:
    """
    Read the rest of a stream whose first line is in (C{body}, paused) and
    join it for a JSON client.

    @return: fires with the joined answer when n8n ends the body; fails with
        L{StreamDeadline} (C{idle_timeout} seconds without a byte, or
        C{stream_timeout} seconds in all, counted from now),
        L{BodyTooLarge} (over C{max_bytes} of lines, or a line over the line
        cap) or C{ResponseFailed} (n8n dropped the stream); n8n's connection
        is dropped then.  Cancelling drops it too.
    """
    return _Joiner(body, clock, idle_timeout, stream_timeout, max_bytes).start()

"""
The streamed answer, the client's side: what a client asks for
(L{wants_stream}), the response headers (L{STREAM_HEADERS}), the relay that
writes n8n's lines to the client (L{StreamRelay}, the request's producer,
typed on C{IConsumer}), the registry of streams being relayed (for health,
metrics and drain), and L{StreamAnswers}, which answers one streaming client.

n8n's side (the body reader, the NDJSON rules) is in L{inkflow.n8n.relay}
and L{inkflow.n8n.stream}::

    n8n's response ──deliverBody──▶ StreamBody ──lines──▶ StreamRelay ──write──▶ the client's request
                     (inkflow.n8n.relay)                  (this module)
                                    ◀──pause/resume/stop── (the relay is the request's producer)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from inkflow.n8n.stream import (
    CAUSES,
    CLIENT_LEFT,
    COMPLETE,
    DRAIN,
    ERROR_TEXT,
    IDLE_TIMEOUT,
    KEEPALIVE_LINE,
    MAX_STREAM_BYTES,
    STREAM_TIMEOUT,
    TOO_LARGE,
    UPSTREAM_DROPPED,
    StreamStart,
    error_line,
    synthesize,
)
from inkflow.snapshot import StreamsSnapshot
from inkflow.web.state import request_state
from inkflow.web.sweep import Sweep, resolution_for

__all__ = [
    "KEEPALIVE_AFTER",
    "STREAM_HEADERS",
    "StreamAnswers",
    "StreamRegistry",
    "StreamRelay",
    "Streaming",
    "UpstreamBody",
    "wants_stream",
]

log = Logger()

#: Seconds without a line from n8n after which a keepalive line is written.
KEEPALIVE_AFTER = 20.0

#: The headers of a streamed answer (besides X-Request-ID, X-Session-ID, CORS).
STREAM_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Content-Type", b"application/x-ndjson; charset=utf-8"),
    (b"Cache-Control", b"no-store"),
    (b"X-Accel-Buffering", b"no"),
)


def wants_stream(accept: bytes | str | None) -> bool:
    """
    Whether a client's C{Accept} asks for a stream: it names C{text/plain}
    (what @n8n/chat sends with C{enableStreaming}) or C{application/x-ndjson}
    (with a non-zero quality).
    """
    if not accept:
        return False
    text = accept.decode("latin-1") if isinstance(accept, bytes) else accept
    for item in text.lower().split(","):
        media, _, params = item.partition(";")
        if media.strip() not in ("text/plain", "application/x-ndjson"):
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 1.0
        if quality > 0:
            return True
    return False


class UpstreamBody(Protocol):
    """
    What the relay needs of n8n's live body (L{inkflow.n8n.relay.StreamBody}).
    """

    def attach(self, sink: Any) -> None: ...

    def detach(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def abort(self) -> None: ...


class _Stoppable(Protocol):
    def stop(self, cause: str) -> None: ...


class StreamRegistry:
    """
    The streams being relayed: for health, metrics and drain.
    """

    def __init__(self) -> None:
        self.active: set[_Stoppable] = set()
        self.total = 0
        self.endings: dict[str, int] = dict.fromkeys(CAUSES, 0)

    @property
    def in_flight(self) -> int:
        return len(self.active)

    def add(self, relay: _Stoppable) -> None:
        self.active.add(relay)
        self.total += 1

    def ended(self, relay: _Stoppable, cause: str) -> None:
        self.active.discard(relay)
        self.endings[cause] = self.endings.get(cause, 0) + 1

    def stop_all(self, cause: str = DRAIN) -> int:
        """
        End every stream with an error line and a clean end; return how many.
        """
        relays = list(self.active)
        for relay in relays:
            relay.stop(cause)
        return len(relays)

    def snapshot(self) -> StreamsSnapshot:
        return {"in_flight": self.in_flight, "total": self.total, "endings": dict(self.endings)}


#: Called once when a stream ends: (cause, bytes written, seconds).
EndObserver = Callable[[str, int, float], None]


@implementer(IPushProducer)
class StreamRelay:
    """
    Relays a committed stream to the client: each complete line as it
    arrives, unchanged.

    It is the request's streaming producer: when the client reads slowly the
    channel pauses it, and it pauses n8n's side (memory stays at one
    unfinished line plus the transports' buffers).  One entry in a
    L{Sweep} (shared by the streams of one L{StreamAnswers}; at most a tenth
    of the shortest deadline late, at most 1 s) checks the deadlines: C{stream_timeout} from the commit, C{idle_timeout}
    without a byte from n8n (not counted while the client holds it paused),
    and a keepalive line after C{keepalive} seconds without a line.

    A stream that does not end well (n8n drops it, a cap, a deadline, drain)
    gets one error line and a clean end; n8n's connection is dropped.  When
    the client leaves, n8n's connection is dropped at once.

    L{start} returns a Deferred that fires with the cause when the stream
    has ended (the route then finishes the request); cancelling it is the
    client leaving.
    """

    def __init__(
        self,
        request: IConsumer,
        body: UpstreamBody,
        clock: IReactorTime,
        *,
        idle_timeout: float,
        stream_timeout: float,
        keepalive: float = KEEPALIVE_AFTER,
        max_bytes: int = MAX_STREAM_BYTES,
        registry: StreamRegistry | None = None,
        on_end: EndObserver | None = None,
        request_id: str | None = None,
        sweep: Sweep | None = None,
        log_complete: bool = True,
    ) -> None:
        self.request = request
        self.log_complete = log_complete
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
        self._done: Deferred[str] | None = Deferred(self._cancelled)
        if sweep is None:
            sweep = Sweep(clock, resolution_for(idle_timeout, stream_timeout, keepalive))
        self.sweep = sweep
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
        done = self._done
        assert done is not None, "a relay starts once"
        self.body.attach(self)
        return done

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
        self.sweep.cancel(self)
        self.body.detach()
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
        # A complete stream has its access log line; the others say why here
        # (a complete one's debug line is not even built below debug).
        if cause != COMPLETE or self.log_complete:
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
        # The Deferred's canceller is this relay's method: letting go of it
        # leaves no cycle between the two once the stream has ended.
        done, self._done = self._done, None
        if fire and done is not None:
            done.callback(cause)

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
        self.sweep.schedule(self, self._next_due())

    def swept(self) -> None:
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


@dataclass(frozen=True)
class Streaming:
    """
    A committed stream, relaying on its own: the chat route's coroutines
    have returned (they held their frames and Deferreds for the stream's
    whole life: 7 MB of RSS at 2,000 open streams), and what each had to do
    at the stream's end is added to C{ended} (L{then}).

    @ivar ended: fires with how the stream ended (a cause of
        L{inkflow.n8n.stream}); cancelling it is the client leaving.
    """

    ended: Deferred[str]

    def then(self, action: Callable[[], None]) -> Streaming:
        """
        Run C{action} when the stream has ended, however it ended (a failing
        action is logged; the others still run).
        """

        def run(result: str | Failure) -> str | Failure:
            try:
                action()
            except Exception:
                log.failure("An action at a stream's end failed")
            return result

        self.ended.addBoth(run)
        return self


class StreamAnswers:
    """
    Answers streaming clients.

    @param observe_start: called with the seconds from the request's start
        to its first byte (time to first byte).
    @param observe_end: called with (cause, bytes, seconds) when a relayed
        stream ends.
    @param log_complete: log a complete stream's end (a debug line; the
        composition root passes whether the log level is debug).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        idle_timeout: float,
        stream_timeout: float,
        max_bytes: int = MAX_STREAM_BYTES,
        registry: StreamRegistry | None = None,
        observe_start: Callable[[float], None] | None = None,
        observe_end: Callable[[str, int, float], None] | None = None,
        log_complete: bool = True,
    ) -> None:
        self.clock = clock
        self.log_complete = log_complete
        self.idle_timeout = idle_timeout
        self.stream_timeout = stream_timeout
        self.max_bytes = max_bytes
        self.registry = registry if registry is not None else StreamRegistry()
        self._observe_start = observe_start
        self._observe_end = observe_end
        self.sweep = Sweep(clock, resolution_for(idle_timeout, stream_timeout, KEEPALIVE_AFTER))

    def _headers(self, request: IRequest, started: float) -> None:
        request.setResponseCode(200)
        for name, value in STREAM_HEADERS:
            request.setHeader(name, value)
        if self._observe_start is not None:
            self._observe_start(self.clock.seconds() - started)

    def relay(self, request: IRequest, start: StreamStart, started: float) -> Streaming:
        """
        Commit and relay n8n's stream, which then goes on by itself.
        """
        self._headers(request, started)
        state = request_state(request)
        relay = StreamRelay(
            cast(IConsumer, request),
            start.body,
            self.clock,
            idle_timeout=self.idle_timeout,
            stream_timeout=self.stream_timeout,
            max_bytes=self.max_bytes,
            registry=self.registry,
            on_end=self._observe_end,
            request_id=state.request_id,
            sweep=self.sweep,
            log_complete=self.log_complete,
        )

        def ended(cause: str | Failure) -> str | Failure:
            # For the access log line, written when the request finishes.
            state.stream_seconds = self.clock.seconds() - started
            if cause == UPSTREAM_DROPPED:
                start.dropped("n8n dropped the stream")
            return cause

        return Streaming(relay.start().addBoth(ended))

    def synthesized(self, request: IRequest, answer: Any, started: float) -> None:
        """
        Answer a JSON answer as begin / item / end lines.
        """
        self._headers(request, started)
        body = synthesize(answer, self.clock.seconds())
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)

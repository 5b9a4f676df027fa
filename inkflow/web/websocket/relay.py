"""
The two sides of one C{/chat} relay (the browser's socket and n8n's), and
the registry of open relays.

 - Each data fragment goes on as it arrives, as one frame (no whole-message
   reassembly); the message cap (C{--websocket-max-message}) is enforced by
   counting each side's current message: over it, both sides close with
   1009.
 - Backpressure both ways, control frames included: while either side's
   send buffer is full, neither side is read (a client that does not read
   its pongs stops being read; a browser that does not read n8n's answer
   stops n8n's socket being read, and the other way round).
 - Idleness (C{--websocket-idle-timeout}) is measured on the browser's
   data frames only: n8n's heartbeat does not keep an abandoned socket.
 - Close codes are passed on (L{passed_on_code}); drain closes with 1001.
 - One "opened" line and one access line per session (address, request id,
   duration, bytes each way, close code).
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from inkflow.snapshot import WebSocketsSnapshot
from inkflow.web.websocket.wire import GOING_AWAY, INTERNAL, NORMAL, TOO_BIG, Wire, passed_on_code

__all__ = ["ChatSockets", "Relay"]

log = Logger()
access = Logger(namespace="inkflow.access")

#: Fragments from n8n held while the browser's side is being opened.
MAX_EARLY_CHUNKS = 64


class _Side:
    """
    The L{WireHandler} of one side of a relay.
    """

    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.wire: Wire | None = None
        #: Bytes of the message being received from this side so far.
        self.pending = 0

    def chunk(self, wire: Wire, data: str | bytes | bytearray, fin: bool) -> None:
        self.wire = wire
        self.relay.chunk(self, data, fin)

    def lost(self, wire: Wire) -> None:
        self.wire = wire
        self.relay.lost(self)


@implementer(IPushProducer)
class _SendBuffer:
    """
    Registered on one side's transport: told when its send buffer fills up
    and drains.
    """

    def __init__(self, relay: Relay, side: _Side) -> None:
        self._relay = relay
        self._side = side

    def pauseProducing(self) -> None:
        self._relay.send_buffer(self._side, full=True)

    def resumeProducing(self) -> None:
        self._relay.send_buffer(self._side, full=False)

    def stopProducing(self) -> None:
        pass


class Relay:
    """
    One browser socket and its n8n socket.

    @param address: the browser's address (for the log lines).
    @param request_id: the upgrade request's id (for the log lines).
    """

    def __init__(
        self,
        sockets: ChatSockets,
        clock: IReactorTime,
        idle_timeout: float,
        max_message: int,
        *,
        address: str = "",
        request_id: str | None = None,
        access_log: bool = True,
    ) -> None:
        self.sockets = sockets
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_message = max_message
        self.address = address
        self.request_id = request_id
        self.access_log = access_log
        self.browser = _Side(self, "browser")
        self.upstream = _Side(self, "upstream")
        self.browser_open = False
        self.closed = False
        self.close_code: int | None = None
        self.opened_at = clock.seconds()
        self._early: list[tuple[str | bytes | bytearray, bool]] = []
        self._idle: IDelayedCall | None = None
        self._full: set[str] = set()
        self._logged = False

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.browser else self.browser

    def producer_for(self, side: _Side) -> IPushProducer:
        """
        The push producer to register on C{side}'s transport.
        """
        return _SendBuffer(self, side)

    # -- life cycle -----------------------------------------------------------

    def browser_opened(self, wire: Wire, upstream: Wire | None = None) -> None:
        """
        The browser's side is open (and n8n's, C{upstream}, since before).
        """
        self.browser.wire = wire
        if upstream is not None:
            self.upstream.wire = upstream
        self.browser_open = True
        self.opened_at = self.clock.seconds()
        self.sockets.opened(self)
        log.info(
            "/chat WebSocket opened for {address} ({open} open)",
            address=self.address,
            request_id=self.request_id,
            open=self.sockets.open,
        )
        self._touch()
        early, self._early = self._early, []
        for data, fin in early:
            wire.send_chunk(data, fin)
        if self.upstream.wire is not None and not self._full:
            self.upstream.wire.resume_reading()

    def chunk(self, side: _Side, data: str | bytes | bytearray, fin: bool) -> None:
        if self.closed:
            return
        side.pending += len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if side.pending > self.max_message:
            self.close(TOO_BIG, "message too big")
            return
        if fin:
            side.pending = 0
        if side is self.browser:
            self._touch()
        target = self.other(side)
        if target is self.browser and not self.browser_open:
            if len(self._early) >= MAX_EARLY_CHUNKS:
                self.close(INTERNAL, "too many early messages")
                return
            self._early.append((data, fin))
            if side.wire is not None:
                side.wire.pause_reading()
            return
        if target.wire is not None:
            target.wire.send_chunk(data, fin)

    def send_buffer(self, side: _Side, full: bool) -> None:
        """
        C{side}'s send buffer filled up (or drained): stop (or go on)
        reading both sides.
        """
        was = bool(self._full)
        if full:
            self._full.add(side.name)
        else:
            self._full.discard(side.name)
        if was == bool(self._full) or self.closed:
            return
        for s in (self.browser, self.upstream):
            if s.wire is not None:
                if self._full:
                    s.wire.pause_reading()
                elif s is self.browser or self.browser_open:
                    s.wire.resume_reading()

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        elif not self.closed:
            self._idle = self.clock.callLater(self.idle_timeout, self._idle_over)

    def _idle_over(self) -> None:
        self._idle = None
        log.info("Closing an idle /chat WebSocket", address=self.address, request_id=self.request_id)
        self.close(NORMAL, "idle")

    def _stop_timer(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def lost(self, side: _Side) -> None:
        """
        One side is gone: close the other with the code it got.
        """
        first = not self.closed
        self.closed = True
        self._stop_timer()
        if first and not self.browser_open:
            return  # n8n's socket of an upgrade that never completed
        if first:
            code = passed_on_code(side.wire.close_code if side.wire is not None else None)
            if side is self.browser and (side.wire is None or side.wire.close_code is None):
                code = NORMAL  # the browser went away: nothing went wrong here
            self.close_code = code
            log.info(
                "/chat WebSocket closed by the {side} ({code})",
                side=side.name,
                code=code,
                address=self.address,
                request_id=self.request_id,
            )
            other = self.other(side).wire
            if other is not None:
                other.close(code)
        if side is self.browser:
            self.sockets.gone(self)
            self._access_line()

    def close(self, code: int, reason: str = "") -> None:
        """
        Close both sides with C{code}.
        """
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._stop_timer()
        for side in (self.browser, self.upstream):
            if side.wire is not None:
                side.wire.close(code, reason)

    def _access_line(self) -> None:
        if self._logged or not self.browser_open:
            return
        self._logged = True
        if not self.access_log:
            return
        wire = self.browser.wire
        duration = self.clock.seconds() - self.opened_at
        bytes_in = wire.bytes_in if wire is not None else 0
        bytes_out = wire.bytes_out if wire is not None else 0
        access.info(
            "WEBSOCKET /chat {address} {close_code} {duration:.3f}s in {bytes_in} out {bytes_out} {request_id}",
            address=self.address,
            request_id=self.request_id or "-",
            duration=duration,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            close_code=self.close_code,
        )


class ChatSockets:
    """
    The open relays of this process: counted for health and metrics, closed
    with 1001 on drain.
    """

    def __init__(self) -> None:
        self.relays: set[Relay] = set()
        self.opened_total = 0

    @property
    def open(self) -> int:
        return len(self.relays)

    def opened(self, relay: Relay) -> None:
        self.relays.add(relay)
        self.opened_total += 1

    def gone(self, relay: Relay) -> None:
        self.relays.discard(relay)

    def close_all(self, code: int = GOING_AWAY) -> None:
        for relay in list(self.relays):
            relay.close(code, "server shutting down")

    def snapshot(self) -> WebSocketsSnapshot:
        return {"open": self.open, "opened_total": self.opened_total}

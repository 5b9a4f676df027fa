"""
Frame-level WebSocket helpers: a byte protocol over a wsproto connection
that hands on each data fragment as it arrives (no message reassembly),
answers pings and closes, and counts bytes; plus the pure helpers of the
upgrade (is it one, where it goes, which close code to pass on).

Only public APIs: wsproto, and Twisted's L{IProtocol} / L{ITransport}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IPushProducer, ITransport
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as ByteProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from wsproto import Connection, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = [
    "GOING_AWAY",
    "INTERNAL",
    "NORMAL",
    "TOO_BIG",
    "UpstreamRefused",
    "Wire",
    "WireFactory",
    "WireHandler",
    "is_websocket_upgrade",
    "passed_on_code",
    "upstream_socket_url",
]

log = Logger()

#: Close codes (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
NO_STATUS = 1005
ABNORMAL = 1006
TOO_BIG = 1009
INTERNAL = 1011
TLS_FAILED = 1015


def is_websocket_upgrade(request: object) -> bool:
    """
    Whether a request asks for a WebSocket (C{Upgrade: websocket}).
    """
    values = request.requestHeaders.getRawHeaders(b"Upgrade") or []  # type: ignore[attr-defined]
    return any(b"websocket" in v.lower() for v in values)


def upstream_socket_url(webhook: str, query: bytes) -> str:
    """
    n8n's C{/chat} WebSocket for a webhook URL: its origin, C{ws}/C{wss}
    for C{http}/C{https}, the browser's query string unchanged.
    """
    parts = urlsplit(webhook)
    scheme = "wss" if parts.scheme == "https" else "ws"
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never credentials
    return urlunsplit((scheme, netloc, "/chat", query.decode("ascii", "replace"), ""))


def passed_on_code(code: int | None) -> int:
    """
    The close code to give the other side when a peer's socket ended with
    C{code} (C{None}: the connection dropped without a close frame).

    A close frame without a status (1005) is a normal end (n8n's response
    nodes end that way): 1000.  A drop without any close frame (1006, or
    a TLS failure) is 1011.  Codes a peer may not send are 1000.
    """
    if code is None or code in (ABNORMAL, TLS_FAILED):
        return INTERNAL
    if code == NO_STATUS or not (1000 <= code < 5000) or code in (1004, 1005, 1006, 1015):
        return NORMAL
    return code


class UpstreamRefused(Exception):
    """
    The WebSocket handshake was answered with an HTTP status instead.
    """

    def __init__(self, status: int) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status = status


class WireHandler(Protocol):
    """
    What a L{Wire} tells its owner.
    """

    def chunk(self, wire: Wire, data: str | bytes | bytearray, fin: bool) -> None:
        """
        A piece of a data message (C{str} for text): C{fin} on its last.
        """

    def lost(self, wire: Wire) -> None:
        """
        The connection is gone (C{wire.close_code}: the peer's close code).
        """


class Wire(ByteProtocol):
    """
    One WebSocket connection at the frame level.

    @ivar close_code: the code of the peer's close frame (1005 for one
        without a status), C{None} if none came.
    @ivar bytes_in: bytes read from the peer (frames and handshake).
    @ivar bytes_out: bytes written to the peer.
    @ivar handshake: client side only: fires with this wire when the server
        accepts, fails with L{UpstreamRefused} or the connection's loss.
    """

    def __init__(self, conn: Connection | WSConnection, handler: WireHandler, greeting: bytes = b"") -> None:
        self.conn = conn
        self.handler = handler
        self.greeting = greeting
        self.close_code: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.handshake: defer.Deferred[Wire] | None = None
        if isinstance(conn, WSConnection) and conn.state == ConnectionState.CONNECTING:
            self.handshake = defer.Deferred(lambda _: self._abort())

    # -- from the peer --------------------------------------------------------

    def connectionMade(self) -> None:
        if self.greeting:
            self._write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.conn.state == ConnectionState.CLOSED:
            return  # the close is done; what follows it is dropped
        try:
            self.conn.receive_data(data)
            for event in self.conn.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    if event.data or event.message_finished:
                        self.handler.chunk(self, event.data, event.message_finished)
                elif isinstance(event, Ping):
                    self._send(event.response())
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    if self.conn.state != ConnectionState.CLOSED:
                        self._send(event.response())
                    self._lose()
                    return
                elif isinstance(event, AcceptConnection):
                    self._handshake_done(None)
                elif isinstance(event, RejectConnection):
                    self._handshake_done(UpstreamRefused(event.status_code))
                    self._lose()
                    return
                elif isinstance(event, RejectData):
                    pass
                if self.transport is None or self.conn.state == ConnectionState.CLOSED:
                    return
        except (LocalProtocolError, RemoteProtocolError) as e:
            log.info("WebSocket protocol error: {error}", error=str(e))
            self._handshake_done(UpstreamRefused(0))
            self._abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._handshake_done(reason)
        self.handler.lost(self)

    def _handshake_done(self, error: Failure | Exception | None) -> None:
        d, self.handshake = self.handshake, None
        if d is None or d.called:
            return
        if error is None:
            d.callback(self)
        else:
            d.errback(error)

    # -- to the peer ----------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.transport is not None and self.conn.state == ConnectionState.OPEN

    def send_chunk(self, data: str | bytes | bytearray, fin: bool) -> None:
        """
        Send a piece of a data message as one frame (C{fin} on its last).
        """
        if not self.is_open:
            return
        message = (
            TextMessage(data, message_finished=fin)
            if isinstance(data, str)
            else BytesMessage(data, message_finished=fin)
        )
        self._send(message)

    def close(self, code: int, reason: str = "") -> None:
        """
        Send a close frame with C{code} (if the socket is still open) and
        close the connection once what is buffered is written.
        """
        if self.transport is None:
            return
        if self.conn.state == ConnectionState.OPEN:
            self._send(CloseConnection(code, reason))
        self._lose()

    def pause_reading(self) -> None:
        """
        Stop reading from the peer (TCP and TLS transports alike are push
        producers, though TLS's does not declare it).
        """
        if self.transport is not None:
            cast(IPushProducer, self.transport).pauseProducing()

    def resume_reading(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).resumeProducing()

    def _send(self, event: Event) -> None:
        try:
            data = self.conn.send(event)
        except LocalProtocolError:
            return  # closing already
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.bytes_out += len(data)
            self.transport.write(data)

    def _lose(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _abort(self) -> None:
        transport: ITransport | None = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()


class WireFactory(Factory):
    """
    The relay's own client factory: one L{Wire}, and no "Starting factory" /
    "Stopping factory" lines for every upstream socket.
    """

    noisy = False

    def __init__(self, build: Callable[[], Wire]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> Wire:
        wire = self._build()
        wire.factory = self
        return wire

"""
Every private part of Twisted (and treq) that InkFlow touches, in one place.

Twisted is pinned exactly (C{setup.py}), but an upgrade may rename or drop
any of these.  Each hook has its own test in
C{tests/unit/test_twisted_hooks.py}, so an upgrade breaks a named test
instead of InkFlow, silently.  Nothing else in InkFlow names a private part
of Twisted.

The hooks, and why InkFlow needs them.

Web (the server side, twisted.web):

 - L{request_line}: the method and target of the request whose head is
   being read (C{HTTPChannel._command}, C{_path}), to choose a body sink in
   C{Request.gotLength}, before C{Request.method}/C{uri} are set;
 - L{request_version}: its HTTP version (C{HTTPChannel._version}), for the
   strict framing checks (C{Host} on HTTP/1.1);
 - L{is_disconnected}: whether the client has gone (C{Request._disconnected});
 - L{waiting_for_transport}: whether the transport has asked the channel to
   stop producing (C{HTTPChannel._waitingForTransport}): the client is not
   reading its answers;
 - L{hold_input}: C{LineReceiver.paused}, which stops the line parser
   between two pipelined requests (their bytes stay in its buffer) until
   the answer before them has left the send buffer;
 - L{BAD_REQUEST_METHOD}: the name of twisted.web's bare-400 answer
   (C{HTTPChannel._respondToBadRequestAndDisconnect}), which InkFlow's
   channel overrides to answer the contract's JSON instead, and
   L{respond_bad_request}, the one way InkFlow's channel calls it (for the
   framing checks Twisted does not make);
 - L{take_over_connection}: C{HTTPChannel._protocolUpgradeForWebsockets},
   which gives a channel's connection to a WebSocket after its upgrade
   (the C{/chat} relay); the channel's own C{connectionLost} is kept;
 - L{FINISH_BODY_METHOD}: C{HTTPChannel._finishRequestBody}, where a body's
   last byte arrives (checked only by the test: the channel's body deadline
   is cleared in the public C{allContentReceived} it calls).

Client (the n8n side, twisted.web.client):

 - L{quiet_pool}: the pool's connection factory class
   (C{HTTPConnectionPool._factory}, a C{_HTTP11ClientFactory}), replaced by
   a subclass that does not log "Starting factory" / "Stopping factory": two
   lines per n8n connection, which under many concurrent streams cost more
   than the streams' own logging.  (The n8n client sends through the pool's
   public C{Agent}, never through a treq C{HTTPClient}'s private C{_agent}.)
   Its connections' protocol leaves no reference cycle behind: it lets go
   of a finished answer's chunked decoder (C{HTTPClientParser.bodyDecoder},
   whose C{finishCallback} is the parser's method) in
   C{HTTP11ClientProtocol._disconnectParser}, and of a lost connection's
   connector (C{tcp.Client.connector}, whose C{transport} stays set) and
   of what the endpoint's C{_WrappingFactory} keeps (C{_connector},
   C{_onConnection}).  Freed by reference counting, not by the garbage
   collector: at 2,000 streams a burst their cycles were tens of thousands
   of objects, and the generation-1 pass that found them stopped the
   server for most of a second.

Reason phrases come from the public C{twisted.web.http.RESPONSES}, with the
standard library's list for the codes Twisted lacks (429, 431).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, cast

from twisted.internet.endpoints import _WrappingFactory
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = [
    "BAD_REQUEST_METHOD",
    "FINISH_BODY_METHOD",
    "UPGRADE_METHOD",
    "hold_input",
    "is_disconnected",
    "quiet_pool",
    "reason_phrase",
    "request_line",
    "request_version",
    "respond_bad_request",
    "take_over_connection",
    "waiting_for_transport",
]

BAD_REQUEST_METHOD = "_respondToBadRequestAndDisconnect"
FINISH_BODY_METHOD = "_finishRequestBody"

_STDLIB_PHRASES = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


# -- web: the server side (twisted.web.http, twisted.web.server) ---------------


def request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes]:
    """
    The method and raw target of the request whose head the channel is
    reading (valid from the request line until C{allContentReceived}).
    """
    return getattr(channel, "_command", b"GET"), getattr(channel, "_path", b"/")


def request_version(channel: http.HTTPChannel) -> bytes:
    """
    The HTTP version of the request whose head the channel is reading.
    """
    return getattr(channel, "_version", b"HTTP/1.1")


def is_disconnected(request: Any) -> bool:
    """
    Whether the request's connection has been lost.
    """
    return bool(getattr(request, "_disconnected", False))


def waiting_for_transport(channel: http.HTTPChannel) -> bool:
    """
    Whether the transport's send buffer is full (it paused the channel).
    """
    return bool(getattr(channel, "_waitingForTransport", False))


def hold_input(channel: http.HTTPChannel, hold: bool) -> None:
    """
    Stop (or let go on) the line parser between requests; what the client
    already sent stays buffered, unparsed.  Resuming does not parse by
    itself: feed C{dataReceived(b"")} after.
    """
    channel.paused = hold


def respond_bad_request(channel: http.HTTPChannel) -> None:
    """
    Answer the request whose head the channel is reading as malformed and
    close: twisted.web's own bad-request path, which InkFlow's channel
    overrides (L{BAD_REQUEST_METHOD}) to send the contract's JSON 400.
    """
    getattr(channel, BAD_REQUEST_METHOD)()


def reason_phrase(status: int) -> bytes:
    """
    The reason phrase for C{status}: Twisted's, else the standard library's,
    else C{b"Error"} / C{b"OK"}.
    """
    phrase = http.RESPONSES.get(status) or _STDLIB_PHRASES.get(status)
    if phrase:
        return phrase
    return b"OK" if 200 <= status < 300 else b"Error"


# -- web: the WebSocket upgrade --------------------------------------------------

#: C{HTTPChannel._protocolUpgradeForWebsockets}: what Twisted's own
#: C{WebSocketResource} uses to hand a channel's connection to a protocol.
UPGRADE_METHOD = "_protocolUpgradeForWebsockets"


def take_over_connection(channel: http.HTTPChannel, protocol: IProtocol) -> None:
    """
    Hand the channel's connection to C{protocol} (a WebSocket after its
    upgrade): the bytes the client sends go to C{protocol.dataReceived},
    its C{makeConnection} gets the channel's transport, and when the
    connection ends C{protocol.connectionLost} runs and then the channel's
    own (so its bookkeeping -- connection count, deadlines, drain -- still
    sees the connection end).
    """
    channel_lost = channel.connectionLost
    getattr(channel, UPGRADE_METHOD)(protocol)

    def lost(reason: Failure = connectionDone) -> None:
        try:
            protocol.connectionLost(reason)
        finally:
            channel_lost(reason)

    channel.connectionLost = lost  # type: ignore[method-assign]


# --- client section (the n8n side)


class _ClientProtocol(HTTP11ClientProtocol):
    """
    twisted.web's client protocol, leaving no reference cycle behind.
    """

    def _disconnectParser(self, reason: Failure) -> None:
        parser = self._parser
        super()._disconnectParser(reason)
        if parser is not None:
            # Its decoder's finishCallback is the parser's own method.
            parser.bodyDecoder = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        transport = self.transport
        super().connectionLost(reason)
        # A TCP client transport and its connector refer to each other, and
        # the connector keeps it after the connection is lost.
        connector = getattr(transport, "connector", None)
        if connector is not None and getattr(connector, "transport", None) is transport:
            connector.transport = None
        # The endpoint's factory keeps its connector (whose factory it is)
        # and its fired Deferred (whose canceller is the factory's method
        # and whose result is this protocol); neither is used once the
        # connection is lost.
        factory = getattr(connector, "factory", None)
        if isinstance(factory, _WrappingFactory):
            wrapping = cast(Any, factory)
            wrapping._connector = None
            wrapping._onConnection = None


class _QuietFactory(_HTTP11ClientFactory):
    """
    twisted.web's connection factory for the agent's pool, without its
    "Starting factory" / "Stopping factory" log lines, building
    L{_ClientProtocol}s.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _ClientProtocol(self._quiescentCallback)


def quiet_pool(pool: HTTPConnectionPool) -> HTTPConnectionPool:
    """
    Make C{pool} open its connections with a factory that does not log a
    line per connection; returns C{pool}.
    """
    pool._factory = _QuietFactory
    return pool

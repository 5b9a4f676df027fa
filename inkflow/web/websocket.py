"""
The C{GET /chat} WebSocket relay, for the Chat Trigger's "Using Response
Nodes" mode: the @n8n/chat widget opens C{<origin of webhookUrl>/chat?...}
(InkFlow's origin) and InkFlow relays it to C{/chat} on the origin of the
webhook URL of the n8n instance that started the execution (C{ws}/C{wss} from
C{http}/C{https}, the query string passed on).

Built on Twisted's own L{twisted.web.websocket} (wsproto underneath).  The
upstream is connected I{before} the browser's upgrade is accepted, so a
refusal is an honest HTTP answer (JSON error) rather than a socket that opens
and closes at once:

 - not an upgrade: 426 C{websocket_required}; an upgrade to any other path:
   404 C{not_found} (see L{is_websocket_upgrade});
 - a present C{Origin} that is neither the request's own (its C{Host}) nor
   in C{--cors-origin}: 403 C{forbidden_origin};
 - draining: 503 C{busy}; demo or static-only mode: 404;
 - an C{executionId} not started through this process while the webhooks
   have more than one origin: 404 C{unknown_execution};
 - n8n refuses or cannot be reached: 502 C{upstream_error}.

Once both sides are open: text (and binary) messages both ways, n8n's
C{n8n|heartbeat} / C{n8n|heartbeat-ack} / C{n8n|continue} included, with
backpressure (a side whose socket is full pauses reading the other), a
per-message cap (C{--websocket-max-message}, by default room for the
widget's files, which it sends inside the message as data URLs: close 1009), an idle timeout
(C{--websocket-idle-timeout}: no message either way), and close codes passed
on.  On drain every relay closes with 1001.  A WebSocket keeps its HTTP
connection, so it counts against C{--max-connections}.

Private Twisted hooks used here and nowhere else (Twisted is pinned):
C{_WebSocketWireProtocol} and C{_handleEvent} (to cap a message while it is
being reassembled, and to read the peer's close code) and
C{HTTPChannel._protocolUpgradeForWebsockets} (what L{WebSocketResource}
itself uses to take the connection over).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from hyperlink import URL
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._websocket_impl import _handleEvent, _WebSocketWireProtocol
from twisted.web.client import URI
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.websocket import WebSocketClientEndpoint, WebSocketProtocol, WebSocketTransport
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, TextMessage
from wsproto.events import Request as WSRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError
from zope.interface import implementer

from inkflow.errors import ApiError
from inkflow.snapshot import WebSocketsSnapshot
from inkflow.web.responses import error_response

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = ["ChatSocketResource", "ChatSockets", "is_websocket_upgrade", "upstream_socket_url"]

log = Logger()

#: Close codes (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
TOO_BIG = 1009
INTERNAL = 1011
#: Seconds to connect to n8n's WebSocket at most.
CONNECT_TIMEOUT = 10.0
#: Messages from n8n held while the browser's side is being opened.
MAX_EARLY_MESSAGES = 64


def is_websocket_upgrade(request: Any) -> bool:
    """
    Whether a request asks for a WebSocket (C{Upgrade: websocket}).
    """
    values = request.requestHeaders.getRawHeaders(b"Upgrade") or []
    return any(b"websocket" in v.lower() for v in values)


def upstream_socket_url(webhook: str, query: bytes) -> str:
    """
    n8n's C{/chat} WebSocket for a webhook URL: its origin, C{ws}/C{wss}
    for C{http}/C{https}, the browser's query string.
    """
    parts = urlsplit(webhook)
    scheme = "wss" if parts.scheme == "https" else "ws"
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never credentials
    return urlunsplit((scheme, netloc, "/chat", query.decode("ascii", "replace"), ""))


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower()


def origin_allowed(origin: bytes | None, host: bytes | None, allowed: frozenset[str]) -> bool:
    """
    The Origin check of C{/api/chat}: absent, the request's own (same host
    and port as C{Host}), or listed in C{--cors-origin}.
    """
    if not origin:
        return True
    text = origin.decode("latin-1").strip().rstrip("/").lower()
    if text in allowed:
        return True
    parts = urlsplit(text)
    return bool(host) and parts.netloc == (host or b"").decode("latin-1").strip().lower()


class _Wire(_WebSocketWireProtocol[Any]):
    """
    Twisted's wire protocol with a per-message cap, and the peer's close
    code kept (Twisted answers a close itself and does not tell).
    """

    max_message: int = 1024 * 1024
    close_code: int | None = None
    _pending: int = 0

    def dataReceived(self, data: bytes) -> None:
        self._wsconn.receive_data(data)
        for event in self._wsconn.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                chunk = event.data
                self._pending += len(chunk.encode("utf-8")) if isinstance(chunk, str) else len(chunk)
                if self._pending > self.max_message:
                    close(self, TOO_BIG, "message too big")
                    return
                if event.message_finished:
                    self._pending = 0
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
            _handleEvent(event, cast(Any, self))

    def connectionLost(self, reason: Failure) -> None:
        # Twisted leaves the handshake's Deferred waiting when the server
        # drops the connection before answering it (n8n does, past its
        # per-address upgrade limit): fail it.
        done = getattr(self, "_done", None)
        super().connectionLost(reason)
        if done is not None and not done.called:
            done.errback(reason)


def close(wire: Any, code: int, reason: str = "") -> None:
    """
    Close a side with C{code} if it is still open, else just drop it.
    """
    transport = getattr(wire, "transport", None)
    if transport is None:
        return
    if wire._wsconn.state == ConnectionState.OPEN:
        try:
            wire.loseConnection(code, reason)
            return
        except Exception:
            log.failure("Closing a WebSocket failed")
    transport.loseConnection()


@implementer(IPushProducer)
class _PauseReading:
    """
    A push producer for one side's socket that pauses reading the other
    side: backpressure across the relay.
    """

    def __init__(self, other: Callable[[], ITransport | None]) -> None:
        self._other = other

    def pauseProducing(self) -> None:
        t = self._other()
        if t is not None:
            cast(IPushProducer, t).pauseProducing()

    def resumeProducing(self) -> None:
        t = self._other()
        if t is not None:
            cast(IPushProducer, t).resumeProducing()

    def stopProducing(self) -> None:
        pass


class _Side:
    """
    The L{WebSocketProtocol} of one side of a relay.
    """

    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.wire: Any = None

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.wire = transport

    def negotiationFinished(self) -> None:
        pass

    def pongReceived(self, payload: bytes) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        self.relay.message(self, message)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self.relay.message(self, bytes(data))

    def connectionLost(self, reason: Failure) -> None:
        self.relay.lost(self)


class Relay:
    """
    One browser socket and its n8n socket.
    """

    def __init__(self, sockets: ChatSockets, clock: IReactorTime, idle_timeout: float) -> None:
        self.sockets = sockets
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.browser = _Side(self, "browser")
        self.upstream = _Side(self, "upstream")
        self.browser_open = False
        self.closed = False
        self._early: list[str | bytes] = []
        self._idle: IDelayedCall | None = None

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.browser else self.browser

    def browser_opened(self) -> None:
        self.browser_open = True
        self.sockets.opened(self)
        log.info("/chat WebSocket opened ({open} open)", open=self.sockets.open)
        self._touch()
        early, self._early = self._early, []
        for message in early:
            self._send(self.browser, message)

    def message(self, side: _Side, message: str | bytes) -> None:
        if self.closed:
            return
        self._touch()
        target = self.other(side)
        if target is self.browser and not self.browser_open:
            if len(self._early) >= MAX_EARLY_MESSAGES:
                self.close(INTERNAL, "too many early messages")
                return
            self._early.append(message)
            return
        self._send(target, message)

    def _send(self, side: _Side, message: str | bytes) -> None:
        if side.wire is None or side.wire.transport is None:
            return
        if isinstance(message, str):
            side.wire.sendTextMessage(message)
        else:
            side.wire.sendBytesMessage(message)

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        elif not self.closed:
            self._idle = self.clock.callLater(self.idle_timeout, self._idle_over)

    def _idle_over(self) -> None:
        self._idle = None
        log.info("Closing an idle /chat WebSocket")
        self.close(NORMAL, "idle")

    def lost(self, side: _Side) -> None:
        """
        One side is gone: close the other with the code it got (or 1011
        when n8n's socket dropped without a close).
        """
        code = getattr(side.wire, "close_code", None)
        first = not self.closed
        self.closed = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if first:
            if code is None or code in (1005, 1006, 1015) or not 1000 <= code < 5000:
                code = NORMAL if side is self.browser else INTERNAL
            log.info("/chat WebSocket closed by the {side} ({code})", side=side.name, code=code)
            close(self.other(side).wire, code)
        if side is self.browser:
            self.sockets.gone(self)

    def close(self, code: int, reason: str = "") -> None:
        """
        Close both sides with C{code}.
        """
        if self.closed:
            return
        self.closed = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        close(self.browser.wire, code, reason)
        close(self.upstream.wire, code, reason)


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


async def connect_upstream(reactor: Any, url: str, side: WebSocketProtocol, max_message: int) -> Any:
    """
    Open n8n's WebSocket at C{url} for C{side}; return its wire protocol.

    Like L{WebSocketClientEndpoint.connect}, but with the capped wire
    protocol and a C{Host} header that keeps the port.
    """
    endpoint = WebSocketClientEndpoint.new(reactor, url, connectTimeout=int(CONNECT_TIMEOUT))
    target = endpoint.endpointFactory.endpointForURI(URI.fromBytes(url.encode("utf-8")))
    parsed = URL.fromText(url)
    host = parsed.host if parsed.port in (None, 80, 443) else f"{parsed.host}:{parsed.port}"
    path = str(parsed.replace(scheme="", host="", port=None))

    def bootstrap(wsc: Any, transport: ITransport) -> None:
        transport.write(wsc.send(WSRequest(host=host, target=path)))

    def build() -> _Wire:
        wire = _Wire(WSConnection(ConnectionType.CLIENT), bootstrap, side)
        wire.max_message = max_message
        return wire

    wire: _Wire = await target.connect(cast(Any, Factory.forProtocol)(build))
    await wire._done
    return wire


class ExecutionLookup(Protocol):
    """
    Which upstream started an execution (its index, or C{None}), as the
    shared state answers it (L{inkflow.state.chat.SharedExecutions}).
    """

    def lookup(self, execution_id: str) -> defer.Deferred[int | None]: ...


class ChatSocketResource(Resource):
    """
    C{/chat}: the WebSocket relay (see the module docstring).

    @param executions: which upstream started which execution.
    @param sockets: the open relays.
    @param draining: whether the server is draining.
    @param connect: opens the upstream socket (L{connect_upstream}; a fake
        in tests).
    """

    isLeaf = True

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        executions: ExecutionLookup,
        sockets: ChatSockets,
        draining: Callable[[], bool],
        connect: Callable[..., Any] = connect_upstream,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.executions = executions
        self.sockets = sockets
        self.draining = draining
        self.connect = connect
        self._allowed = frozenset(settings.cors_origin)
        self._origins = {_origin_of(u) for u in settings.webhook}

    def render(self, request: Any) -> Any:
        try:
            return self._render(request)
        except ApiError as e:
            return error_response(request, e)

    def _render(self, request: Any) -> Any:
        if request.path != b"/chat":
            raise ApiError("not_found", "WebSockets are served at /chat only")
        if not is_websocket_upgrade(request):
            if request.method not in (b"GET", b"HEAD"):
                raise ApiError("method_not_allowed", headers={"Allow": "GET"})
            raise ApiError("websocket_required", headers={"Upgrade": "websocket"})
        if request.method != b"GET":
            raise ApiError("method_not_allowed", headers={"Allow": "GET"})
        if not origin_allowed(request.getHeader(b"Origin"), request.getHeader(b"Host"), self._allowed):
            raise ApiError("forbidden_origin")
        if self.settings.mode == "static-only":
            raise ApiError("chat_disabled")
        if self.settings.mode != "proxy":
            raise ApiError("not_found", "no n8n is configured")
        if self.draining():
            raise ApiError.retry_later("busy", 5, "the server is shutting down")
        # The execution map may be shared (the workers' parent, Redis): its
        # answer can come later.
        d: defer.Deferred[int] = self._upstream(request)
        d.addCallback(self._open, request)
        d.addErrback(self._failed_early, request)
        return NOT_DONE_YET

    def _open(self, index: int, request: Any) -> None:
        handshake = H11Handshake(ConnectionType.SERVER)
        headers = [(name, value) for name, values in request.requestHeaders.getAllRawHeaders() for value in values]
        try:
            handshake.initiate_upgrade_connection(headers, request.uri)
        except RemoteProtocolError:
            raise ApiError("bad_request", "not a valid WebSocket handshake") from None
        query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
        url = upstream_socket_url(self.settings.webhook[index], query)
        relay = Relay(self.sockets, self.reactor, self.settings.websocket_idle_timeout)
        d = defer.ensureDeferred(self.connect(self.reactor, url, relay.upstream, self.settings.websocket_message_limit))
        d.addTimeout(CONNECT_TIMEOUT + 1, self.reactor)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(
            lambda wire: self._accept(request, handshake, relay, wire),
            lambda failure: self._refused(request, failure, index),
        )

    def _upstream(self, request: Any) -> defer.Deferred[int]:
        execution = (request.args.get(b"executionId") or [b""])[0].decode("utf-8", "replace")
        found = self.executions.lookup(execution) if execution else defer.succeed(None)
        return found.addCallback(self._known)

    def _known(self, index: int | None) -> int:
        if index is not None:
            return index
        if len(self._origins) == 1:
            return 0
        raise ApiError("unknown_execution", "this execution was not started through this server")

    def _failed_early(self, failure: Failure, request: Any) -> None:
        if request.finished or request._disconnected:
            return
        if isinstance(failure.value, ApiError):
            body = error_response(request, failure.value)
        else:
            log.failure("The WebSocket upgrade failed", failure=failure)
            body = error_response(request, ApiError("internal_error"))
        request.write(body)
        request.finish()

    def _refused(self, request: Any, failure: Failure, index: int) -> None:
        if failure.check(defer.CancelledError) and (request.finished or request._disconnected):
            return
        log.warn(
            "n8n's /chat WebSocket at upstream {url_index} could not be opened: {error}",
            url_index=index,
            error=failure.getErrorMessage() or repr(failure.value),
        )
        if request.finished or request._disconnected:
            return
        request.write(error_response(request, ApiError("upstream_error", "n8n's chat socket could not be opened")))
        request.finish()

    def _accept(self, request: Any, handshake: H11Handshake, relay: Relay, upstream: Any) -> None:
        channel = request.channel
        if channel is None or request._disconnected or channel.transport is None:
            close(upstream, GOING_AWAY)
            return
        to_send = handshake.send(AcceptConnection())
        connection = handshake.connection
        assert connection is not None
        wire = _Wire(connection, lambda *_: None, relay.browser)
        wire.max_message = self.settings.websocket_message_limit
        transport = channel.transport
        channel._protocolUpgradeForWebsockets(wire)

        # The channel's own bookkeeping (connection count, drain) must still
        # see the connection end: the upgrade replaced its connectionLost.
        def lost(reason: Failure) -> None:
            try:
                wire.connectionLost(reason)
            finally:
                type(channel).connectionLost(channel, reason)

        channel.connectionLost = lost
        transport.write(to_send)
        # Backpressure: the browser's socket full pauses reading n8n, and
        # n8n's socket full pauses reading the browser.
        request.registerProducer(_PauseReading(lambda: getattr(upstream, "transport", None)), True)
        upstream.attachProducer(_PauseReading(lambda: transport))
        relay.browser_opened()

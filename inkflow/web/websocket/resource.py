"""
C{GET /chat}: the upgrade.  The upstream (n8n's C{/chat} on the origin of
the webhook that started the execution) is connected I{before} the
browser's upgrade is accepted, so a refusal is an honest HTTP answer (the
contract's JSON error) rather than a socket that opens and closes at once:

 - not an upgrade: 426 C{websocket_required}; an upgrade to any other path:
   404 C{not_found}; another method: 405;
 - not HTTP/1.1, not exactly one valid C{Sec-WebSocket-Key}, or anything
   else h11 or wsproto refuses in the request: 400 C{bad_request};
 - the Origin rule of L{inkflow.web.origin} (the chat's): 403
   C{forbidden_origin};
 - demo or static-only mode: 404; draining: 503 C{busy};
 - over the rate limit (an upgrade takes a token like a chat): 429;
 - an C{executionId} not started through this server while the webhooks
   have more than one origin: 404 C{unknown_execution};

The rate limit and the execution map are the shared state's (the workers'
parent or Redis may answer later): both are asked once the request itself
has passed, and the answer (or its refusal) is written when they answer.
 - n8n refuses or cannot be reached: 502 C{upstream_error}.

The query (n8n 2.41's C{token} included) is passed to n8n unchanged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from hyperlink import URL
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.websocket import WebSocketClientEndpoint
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection
from wsproto.events import Request as WSRequest
from wsproto.handshake import H11Handshake

from inkflow.errors import ApiError
from inkflow.web import twisted_hooks
from inkflow.web.admission import rate_key
from inkflow.web.client_address import request_client
from inkflow.web.origin import judge_origin
from inkflow.web.responses import error_response
from inkflow.web.state import request_state
from inkflow.web.websocket.relay import ChatSockets, Relay
from inkflow.web.websocket.wire import (
    GOING_AWAY,
    Wire,
    WireFactory,
    WireHandler,
    is_websocket_upgrade,
    upstream_socket_url,
)

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = ["ChatSocketResource", "ExecutionLookup", "connect_upstream"]

log = Logger()

#: Seconds to connect to n8n's WebSocket at most.
CONNECT_TIMEOUT = 10.0

Connect = Callable[[Any, str, WireHandler], "Awaitable[Wire] | defer.Deferred[Wire]"]


async def connect_upstream(reactor: Any, url: str, handler: WireHandler) -> Wire:
    """
    Open n8n's WebSocket at C{url} (a C{Host} header that keeps the port);
    return its L{Wire} once n8n accepted.

    @raise UpstreamRefused: n8n answered the handshake with an HTTP status.
    """
    endpoint = WebSocketClientEndpoint.new(reactor, url, connectTimeout=int(CONNECT_TIMEOUT))
    target = endpoint.endpointFactory.endpointForURI(URI.fromBytes(url.encode("utf-8")))
    parsed = URL.fromText(url)
    host = parsed.host if parsed.port in (None, 80, 443) else f"{parsed.host}:{parsed.port}"
    path = str(parsed.replace(scheme="", host="", port=None))

    def build() -> Wire:
        conn = WSConnection(ConnectionType.CLIENT)
        return Wire(conn, handler, bytes(conn.send(WSRequest(host=host, target=path))))

    wire: Wire = await target.connect(WireFactory(build))
    handshake = wire.handshake
    if handshake is None:  # lost before anything was read
        raise ConnectionError("n8n's socket closed during the handshake")
    return await handshake


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower()


def _valid_key(values: list[bytes] | None) -> bool:
    """
    Exactly one C{Sec-WebSocket-Key}: 16 bytes in base64 (RFC 6455 4.2.1).
    """
    if not values or len(values) != 1 or b"," in values[0]:
        return False
    key = values[0].strip()
    try:
        return len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def _token_taken(wait: float) -> None:
    """
    @raise ApiError: 429 C{rate_limited} when the rate limit refused the token.
    """
    if wait > 0:
        raise ApiError.retry_later("rate_limited", wait)


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
    @param rate_take: the chat's rate limit, which upgrades count against
        (L{inkflow.state.base.SharedState.rate_take}: 0.0 when allowed, else
        the seconds to wait).
    """

    isLeaf = True

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        executions: ExecutionLookup,
        sockets: ChatSockets,
        draining: Callable[[], bool],
        connect: Connect = connect_upstream,
        rate_take: Callable[[str], defer.Deferred[float]] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.executions = executions
        self.sockets = sockets
        self.draining = draining
        self.connect = connect
        self.rate_take = rate_take
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
        if request.clientproto != b"HTTP/1.1":
            raise ApiError("bad_request", "a WebSocket upgrade needs HTTP/1.1")
        headers = request.requestHeaders
        verdict = judge_origin(
            request.getHeader(b"Origin"),
            request.getHeader(b"Sec-Fetch-Site"),
            request.getHeader(b"Host"),
            request.isSecure(),
            self._allowed,
        )
        if not verdict.allowed:
            raise ApiError("forbidden_origin", verdict.value)
        if self.settings.mode == "static-only":
            raise ApiError("chat_disabled")
        if self.settings.mode != "proxy":
            raise ApiError("not_found", "no n8n is configured")
        if self.draining():
            raise ApiError.retry_later("busy", 5, "the server is shutting down")
        address = self._client(request)
        if not _valid_key(headers.getRawHeaders(b"Sec-WebSocket-Key")):
            raise ApiError("bad_request", "exactly one valid Sec-WebSocket-Key is needed")
        handshake = H11Handshake(ConnectionType.SERVER)
        raw = [(name, value) for name, values in headers.getAllRawHeaders() for value in values]
        try:
            handshake.initiate_upgrade_connection(raw, request.uri)
        except Exception:  # h11's and wsproto's protocol errors alike: the request is bad
            raise ApiError("bad_request", "not a valid WebSocket handshake") from None
        # The shared state's answers (at once in one process, later from the
        # workers' parent or Redis): a token, then which upstream.
        taken = self.rate_take(rate_key(address)) if self.rate_take is not None else defer.succeed(0.0)
        d = taken.addCallback(_token_taken).addCallback(lambda _: self._upstream(request))
        d.addCallback(self._open, request, handshake, address)
        d.addErrback(self._failed_early, request)
        return NOT_DONE_YET

    def _open(self, index: int, request: Any, handshake: H11Handshake, address: str) -> None:
        if request.finished or twisted_hooks.is_disconnected(request):
            return
        query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
        url = upstream_socket_url(self.settings.webhook[index], query)
        relay = Relay(
            self.sockets,
            self.reactor,
            self.settings.websocket_idle_timeout,
            self.settings.websocket_message_limit,
            address=address,
            request_id=request_state(request).request_id,
            access_log=self.settings.access_log,
        )
        d: defer.Deferred[Wire] = defer.ensureDeferred(self.connect(self.reactor, url, relay.upstream))  # type: ignore[arg-type]
        d.addTimeout(CONNECT_TIMEOUT + 1, self.reactor)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(
            lambda wire: self._accept(request, handshake, relay, wire),
            lambda failure: self._refused(request, failure, index),
        )
        d.addErrback(lambda failure: log.failure("The /chat WebSocket could not be set up", failure))

    def _failed_early(self, failure: Failure, request: Any) -> None:
        if request.finished or twisted_hooks.is_disconnected(request):
            return
        if isinstance(failure.value, ApiError):
            body = error_response(request, failure.value)
        else:
            log.failure("The WebSocket upgrade failed", failure=failure)
            body = error_response(request, ApiError("internal_error"))
        request.write(body)
        request.finish()

    def _client(self, request: Any) -> str:
        return request_client(request, self.settings.trusted_proxy)

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

    def _refused(self, request: Any, failure: Failure, index: int) -> None:
        gone = request.finished or twisted_hooks.is_disconnected(request)
        if failure.check(defer.CancelledError) and gone:
            return
        log.warn(
            "n8n's /chat WebSocket at upstream {url_index} could not be opened: {error}",
            url_index=index,
            error=failure.getErrorMessage() or repr(failure.value),
        )
        if gone:
            return
        request.write(error_response(request, ApiError("upstream_error", "n8n's chat socket could not be opened")))
        request.finish()

    def _accept(self, request: Any, handshake: H11Handshake, relay: Relay, upstream: Wire) -> None:
        channel = request.channel
        if channel is None or twisted_hooks.is_disconnected(request) or channel.transport is None:
            upstream.close(GOING_AWAY)
            return
        accept = bytes(handshake.send(AcceptConnection()))
        connection = handshake.connection
        assert connection is not None
        wire = Wire(connection, relay.browser, greeting=accept)
        twisted_hooks.take_over_connection(channel, wire)
        # Backpressure: either side's send buffer full stops reading both.
        request.registerProducer(relay.producer_for(relay.browser), True)
        if upstream.transport is not None:
            upstream.transport.registerProducer(relay.producer_for(relay.upstream), True)  # type: ignore[attr-defined]
        relay.browser_opened(wire, upstream)

"""
InkFlow's twisted.web edge: the request, channel and site classes.

What Twisted does not do by itself, and InkFlow needs (see TWISTED_NOTES.md):

 - B{bodies are streamed}, never parsed in memory: each body goes to a
   L{BodySink} chosen when the headers are in; a body over the limits is
   refused from C{Content-Length} before any body byte is read (and no
   C{100 Continue} is sent), or while streaming otherwise;
 - B{deadlines}: the request head must arrive within C{--header-timeout}, the
   body at a minimum rate, and an idle keep-alive connection is closed after
   C{--idle-timeout}.  An expired request is answered 408 before the close;
 - B{a connection limit that answers}: a connection over C{--max-connections}
   gets C{503 busy} with C{Retry-After} and C{Connection: close}, except for
   C{/api/health} and C{/api/ready};
 - B{drain}: the site knows its connections, can close the idle ones, make the
   busy ones close after their response and wait until all are gone;
 - B{security headers} on every response, and a request id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from inkflow.chat import ChatBody
from inkflow.errors import ApiError, json_bytes
from inkflow.web.bodies import BodySink

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = ["SECURITY_HEADERS", "InkFlowChannel", "InkFlowRequest", "InkFlowSite", "raw_error_response"]

log = Logger()

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Content-Security-Policy", CSP.encode()),
    (b"Referrer-Policy", b"strict-origin-when-cross-origin"),
    (b"X-Frame-Options", b"DENY"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
)

JSON_TYPE = b"application/json; charset=utf-8"

#: Routes answered even on a connection over the limit (operators must see an
#: overloaded server).
ALWAYS_ANSWERED = (b"/api/health", b"/api/ready")

#: Slowest accepted request body, in bytes per second, once the head is in.
MIN_BODY_RATE = 64 * 1024
#: How long a refused upload may keep sending (its bytes are discarded) before
#: the connection is cut.  Reading them lets the client see the answer instead
#: of a reset.
LINGER_SECONDS = 5.0
#: The head deadline, and the linger, of a connection over the limit.
OVER_LIMIT_TIMEOUT = 1.0


def raw_error_response(error: ApiError, request_id: str | None) -> bytes:
    """
    A complete HTTP/1.1 error response with C{Connection: close}, for answers
    given before (or instead of) the normal request processing.
    """
    body = json_bytes(error.body(request_id))
    reason = HTTPStatus(error.status).phrase.encode() if error.status in HTTPStatus._value2member_map_ else b"Error"
    lines = [b"HTTP/1.1 %d %s" % (error.status, reason)]
    lines.extend(name + b": " + value for name, value in SECURITY_HEADERS)
    lines.append(b"Content-Type: " + JSON_TYPE)
    lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Cache-Control: no-store")
    lines.append(b"Connection: close")
    if request_id:
        lines.append(b"X-Request-ID: " + request_id.encode())
    for name, value in error.headers.items():
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class InkFlowRequest(server.Request):
    """
    A request whose body goes to a L{BodySink} as it streams in.

    After the body is complete, exactly one of C{chat_body} (the parsed body,
    whose files the route must clean up) and C{body_error} is set, unless the
    route takes no body.
    """

    channel: InkFlowChannel
    site: InkFlowSite

    def __init__(self, channel: InkFlowChannel, *args: Any, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        self.request_id = uuid.uuid4().hex
        self.chat_body: ChatBody | None = None
        self.body_error: ApiError | None = None
        self._sink: BodySink | None = None
        self._refused = False

    # -- body ---------------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        """
        The head is in.  Decide where the body goes, or refuse it now.
        """
        # The body never goes into self.content: sinks take it.
        self.content = _NullContent()
        channel = self.channel
        method = getattr(channel, "_command", b"GET")
        path = getattr(channel, "_path", b"/").split(b"?", 1)[0]
        try:
            if channel.over_limit and path not in ALWAYS_ANSWERED:
                channel.site.connections_rejected += 1
                raise ApiError.retry_later("busy", 5, "too many connections")
            self._sink = channel.site.sink_for(method, path, self.requestHeaders, length)
        except ApiError as e:
            self._refuse(e, linger=OVER_LIMIT_TIMEOUT if channel.over_limit else LINGER_SECONDS)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused or self._sink is None:
            return
        try:
            self._sink.write(data)
        except ApiError as e:
            self._sink = None
            self._refuse(e)
        except Exception:
            log.failure("Body sink failed", request_id=self.request_id)
            sink, self._sink = self._sink, None
            sink.discard()
            self._refuse(ApiError("bad_request", "the body could not be read"))

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            # The answer is out; the body was read to let the client see it.
            self.channel.loseConnection()
            return
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                self.chat_body = sink.close()
            except ApiError as e:
                self.body_error = e
            except Exception:
                log.failure("Body sink failed at close", request_id=self.request_id)
                sink.discard()
                self.body_error = ApiError("bad_request", "the body could not be read")
        super().requestReceived(command, path, version)

    def _refuse(self, error: ApiError, linger: float = LINGER_SECONDS) -> None:
        """
        Answer C{error} at once, before the body, and close the connection
        once the client stops sending (or after a short linger).
        """
        self._refused = True
        # No "100 Continue" for a refused body.
        self.requestHeaders.removeHeader(b"Expect")
        self.channel.refuse(raw_error_response(error, self.request_id), linger=linger)
        # Debug: under a flood there is one per connection (counted in health
        # and /metrics as connections rejected).
        log.debug(
            "Refused request before its body: {status} {code}",
            status=error.status,
            code=error.code,
            request_id=self.request_id,
        )

    def connectionLost(self, reason: Failure) -> None:
        self.release_body()
        super().connectionLost(reason)

    def upload_paths(self) -> list[str]:
        """
        The temp files this request holds: those its sink is writing, and
        those of its parsed body until the route releases them.
        """
        paths: list[str] = []
        temp_paths = getattr(self._sink, "temp_paths", None)
        if temp_paths is not None:
            paths.extend(temp_paths())
        if self.chat_body is not None:
            paths.extend(f.path for f in self.chat_body.files)
        return paths

    def release_body(self) -> None:
        """
        Drop the sink and any spooled files (idempotent).
        """
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.discard()
        if self.chat_body is not None:
            body, self.chat_body = self.chat_body, None
            body.cleanup()

    # -- response -------------------------------------------------------------

    def process(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.responseHeaders.setRawHeaders(name, [value])
        self.responseHeaders.setRawHeaders(b"X-Request-ID", [self.request_id.encode()])
        if self.channel.over_limit:
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            self.channel.persistent = False
        self.site = self.channel.site
        if not self._utf8_target():
            # Klein would answer an HTML 400 and log a traceback.
            self._answer(ApiError("bad_request", "the URL or Host is not valid UTF-8"))
            return
        if self.path == b"*":
            # "OPTIONS *" asks about the server; twisted.web answers anything
            # else with a bare 405.
            if self.method == b"OPTIONS":
                self.setHeader(b"Allow", b"GET, HEAD, POST, OPTIONS")
                self.setHeader(b"Content-Length", b"0")
                self.finish()
            else:
                self._answer(ApiError("method_not_allowed", "only OPTIONS applies to *", headers={"Allow": "OPTIONS"}))
            return
        super().process()

    def _utf8_target(self) -> bool:
        try:
            unquote_to_bytes(self.path).decode("utf-8")
            (self.requestHeaders.getRawHeaders(b"Host") or [b""])[0].decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    # The one place responses with a computed body are prepared: each sets the
    # status and headers and returns the bytes to write (none for HEAD).

    def bytes_response(self, body: bytes, content_type: bytes, status: int = 200) -> bytes:
        self.setResponseCode(status)
        self.setHeader(b"Content-Type", content_type)
        self.setHeader(b"Cache-Control", b"no-store")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        return b"" if self.method == b"HEAD" else body

    def json_response(self, value: object, status: int = 200) -> bytes:
        return self.bytes_response(json_bytes(value), JSON_TYPE, status)

    def error_response(self, error: ApiError) -> bytes:
        """
        The contract's JSON error, with the error's own headers (C{Retry-After},
        C{Allow}); the connection closes after a 408, a 413 or an internal error.
        """
        for name, value in error.headers.items():
            self.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        if error.status in (408, 413) or error.code == "internal_error":
            self.setHeader(b"Connection", b"close")
        return self.json_response(error.body(self.request_id), error.status)

    def _answer(self, error: ApiError) -> None:
        """
        Answer C{error} outside Klein.
        """
        self.write(self.error_response(error))
        self.finish()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # twisted.web's own "Server: TwistedWeb/<version>" tells too much.
            self.responseHeaders.setRawHeaders(b"Server", [b"InkFlow"])
            if self.channel.site.draining or not self.channel.persistent:
                # Say so when the connection ends after this response: a proxy
                # must not send another request on it.
                self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                self.channel.persistent = False
        super().write(data)

    def processingFailed(self, reason: Failure) -> None:
        """
        Anything unexpected: log it, answer a generic JSON 500, never a traceback.
        """
        log.failure("Unhandled error", failure=reason, request_id=self.request_id)
        if self.finished or self._disconnected:
            return
        self._answer(ApiError("internal_error"))


class _NullContent:
    """
    Stands in for C{Request.content}: bodies go to sinks, never here.
    """

    def write(self, data: bytes) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


class InkFlowChannel(http.HTTPChannel):
    """
    An HTTP channel with InkFlow's deadlines, connection limit and drain hooks.

    States: C{idle} (between requests: C{--idle-timeout}), C{head} (a request
    has started: its head must be in within C{--header-timeout}), C{body}
    (the body must keep a minimum rate), C{busy} (the request is being
    answered: no deadline here, the route has its own).
    """

    site: InkFlowSite
    over_limit = False
    refused = False
    _dropping = False

    def __init__(self) -> None:
        super().__init__()
        self.state = "head"
        self._deadline: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self.clock: IReactorTime | None = None

    # -- lifetime -----------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        self.clock = site.clock
        site.channels.add(self)
        # Only admitted connections count: one already answered 503 (and
        # closing) must not keep a newcomer out.
        self.over_limit = site.admitted >= site.settings.max_connections
        if not self.over_limit:
            site.admitted += 1
        # A connection over the limit gets one short chance to say what it
        # wants: under a flood of slow clients it must not hold its file
        # descriptor for the whole header timeout.
        self._arm(
            min(site.settings.header_timeout, OVER_LIMIT_TIMEOUT) if self.over_limit else site.settings.header_timeout
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel(self._deadline)
        self._cancel(self._abort_call)
        self._deadline = self._abort_call = None
        try:
            super().connectionLost(reason)
        finally:
            self.site.channel_gone(self)

    # -- deadlines ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._dropping:
            return  # answered already; read and dropped until we close
        if self.state == "idle" and data:
            self.state = "head"
            self._arm(self.site.settings.header_timeout)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._dropping:
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._dropping:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.refused:
            return
        self.state = "body"
        length = self.length if self.length else self.site.settings.max_body_size
        self._arm(self.site.settings.header_timeout + min(length, self.site.settings.max_body_size) / MIN_BODY_RATE)

    def allContentReceived(self) -> None:
        if not self.refused:
            self.state = "busy"
            self._cancel(self._deadline)
            self._deadline = None
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        closing = not self.persistent  # then twisted.web closes the connection itself
        super().requestDone(request)
        if closing:
            return
        if self.site.draining and not self.requests:
            self.loseConnection()
            return
        if not self.requests and self.transport is not None and not self.refused:
            self.state = "idle"
            self._arm(self.site.settings.idle_timeout)

    def _arm(self, seconds: float) -> None:
        if self.clock is None:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(seconds)
        else:
            self._deadline = self.clock.callLater(seconds, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self.state == "idle":
            log.debug("Closing idle keep-alive connection")
            self.loseConnection()
            return
        if self.state in ("head", "body"):
            request_id = getattr(self.requests[-1], "request_id", None) if self.requests else None
            if self.over_limit:
                # Cut for the connection limit, not for slowness: the contract's
                # answer over the limit is 503 busy.
                self.site.connections_rejected += 1
                error = ApiError.retry_later("busy", 5, "too many connections")
            else:
                self.site.timeouts_total += 1
                log.info("Request {state} not received in time; answering 408", state=self.state)
                error = ApiError("request_timeout")
            self.refuse(raw_error_response(error, request_id), linger=OVER_LIMIT_TIMEOUT, drop_input=True)

    # -- refusing and closing -------------------------------------------------

    def refuse(self, response: bytes, linger: float = LINGER_SECONDS, drop_input: bool = False) -> None:
        """
        Write C{response} (a complete HTTP response) and close the connection
        once the client stops sending, or after C{linger} seconds.

        @param drop_input: ignore everything the client sends from now on (for
            a request whose head is not complete).  Otherwise the body is still
            parsed, its bytes discarded by the request, and the connection is
            closed as soon as the body is complete: reading it lets the client
            see the answer instead of a reset.
        """
        if self.refused or self.transport is None:
            return
        self.refused = True
        self._dropping = drop_input
        self.state = "refused"
        self.persistent = False
        self._cancel(self._deadline)
        self._deadline = None
        self.transport.write(response)
        if self.clock is not None:
            self._abort_call = self.clock.callLater(linger, self._linger_over)

    def _linger_over(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.loseConnection()
            if self.clock is not None:
                self._abort_call = self.clock.callLater(LINGER_SECONDS, self.forceAbortClient)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        twisted.web's answer to a request it cannot parse (bad framing, bad
        headers) is a bare 400; InkFlow's is the contract's JSON.
        """
        if self.refused or self.transport is None:
            return
        request_id = getattr(self.requests[-1], "request_id", None) if self.requests else None
        self.refuse(
            raw_error_response(ApiError("bad_request", "the request is malformed"), request_id),
            linger=1.0,
            drop_input=True,
        )

    def close_when_idle(self) -> None:
        """
        For drain: close now if no request is open, else after its response.
        """
        self.persistent = False
        if not self.requests and self.transport is not None:
            self.loseConnection()

    def abort(self) -> None:
        if self.transport is not None:
            self.forceAbortClient()

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()


class InkFlowSite(server.Site):
    """
    The site: settings, clock, connection registry, and the choice of body
    sink per route.
    """

    requestFactory = InkFlowRequest
    protocol = InkFlowChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        settings: Settings,
        clock: IReactorTime,
        sink_for: Callable[[bytes, bytes, http.Headers, int | None], BodySink | None],
        on_request: Callable[[InkFlowRequest], None] | None = None,
    ) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=None)
        self.displayTracebacks = False
        self.settings = settings
        self.clock = clock
        self.sink_for = sink_for
        self.on_request = on_request
        self.channels: set[InkFlowChannel] = set()
        #: Open connections within --max-connections (the others are being refused).
        self.admitted = 0
        self.connections_rejected = 0
        self.timeouts_total = 0
        self.draining = False
        self._all_gone: list[defer.Deferred[None]] = []

    def log(self, request: http.Request) -> None:
        if self.on_request is not None:
            self.on_request(request)  # type: ignore[arg-type]

    def channel_gone(self, channel: InkFlowChannel) -> None:
        if channel in self.channels and not channel.over_limit:
            self.admitted -= 1
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._all_gone = self._all_gone, []
            for d in waiting:
                d.callback(None)

    def active_upload_paths(self) -> set[str]:
        """
        Every temp file an open request still holds.
        """
        return {path for channel in self.channels for request in channel.requests for path in request.upload_paths()}

    def drain(self) -> defer.Deferred[None]:
        """
        Close idle connections, let busy ones finish their response and close;
        fires when every connection is gone.
        """
        self.draining = True
        for channel in list(self.channels):
            channel.close_when_idle()
        if not self.channels:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._all_gone.append(d)
        return d

    def abort_all(self) -> None:
        for channel in list(self.channels):
            channel.abort()

"""
InkFlow's request: bodies streamed into sinks, early refusals, security
headers, the request id (all kept in its L{RequestState}).

What Twisted does not do by itself, and InkFlow needs (the private parts in L{twisted_hooks}):
each body goes to a L{BodySink} chosen when the headers are in; a body over
the limits is refused from C{Content-Length} before any body byte is read
(and no C{100 Continue} is sent), or while streaming otherwise; such a
refusal carries the CORS headers of the route it never reaches
(L{inkflow.web.channel.InkFlowChannel.refusal}).  A connection over a
limit still gets its health checks and the chat's CORS preflight answered
(L{always_answered}).

The request owns its body: whatever answers it (a route, an early 400 or
404, the WebSocket resource, an idempotent replay) or if the client leaves,
its spooled files are removed when it ends.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest

from inkflow.chat import new_request_id
from inkflow.errors import ApiError
from inkflow.paths import CHAT, HEALTH, READY
from inkflow.web import twisted_hooks
from inkflow.web.bodies import BodySink
from inkflow.web.responses import HSTS, SECURITY_HEADERS, error_response, set_headers
from inkflow.web.state import RequestState, attach_state

if TYPE_CHECKING:
    from inkflow.web.channel import InkFlowChannel
    from inkflow.web.site import InkFlowSite

__all__ = [
    "ALWAYS_ANSWERED",
    "LINGER_SECONDS",
    "OVER_LIMIT_TIMEOUT",
    "CorsChooser",
    "HeadCheck",
    "InkFlowRequest",
    "SinkChooser",
    "always_answered",
    "routing_line",
]

log = Logger()

#: Routes answered even on a connection over the limit (operators must see an
#: overloaded server).
ALWAYS_ANSWERED = (HEALTH.encode(), READY.encode())
#: The chat's CORS preflight: answered over the limit too (L{always_answered}).
_PREFLIGHT = (b"OPTIONS", CHAT.encode())

#: How long a refused upload may keep sending (its bytes are discarded) before
#: the connection is cut.  Reading them lets the client see the answer instead
#: of a reset.
LINGER_SECONDS = 5.0
#: The head deadline, and the linger, of a connection over the limit.
OVER_LIMIT_TIMEOUT = 1.0

#: Chooses a body sink from a request's head: (method, path, headers, length).
SinkChooser = Callable[[bytes, bytes, http.Headers, "int | None"], "BodySink | None"]
#: Admits a request from its head (request, method, decoded path), or raises ApiError.
HeadCheck = Callable[[IRequest, bytes, bytes], None]
#: The CORS headers of any answer to a request, from its head (method, decoded
#: path, headers, secure): the route's own and a refusal given before it.
CorsChooser = Callable[[bytes, bytes, http.Headers, bool], dict[str, str]]


def routing_line(channel: http.HTTPChannel) -> tuple[bytes, bytes]:
    """
    The method and path, as routing sees it (percent-decoded, so
    C{/api/%63hat} is C{/api/chat}), of the request whose head or body the
    channel is reading.
    """
    method, target = twisted_hooks.request_line(channel)
    return method, unquote_to_bytes(target.split(b"?", 1)[0])


def always_answered(method: bytes, path: bytes) -> bool:
    """
    Whether a request is answered even on a connection over a limit (which
    then closes): health and readiness, and the chat's CORS preflight (a
    browser fails a preflight that is not a 2xx, CORS headers or not: the
    embed's POST would never be sent to read its 503).
    """
    return path in ALWAYS_ANSWERED or (method, path) == _PREFLIGHT


class InkFlowRequest(server.Request):
    """
    A request whose body goes to a L{BodySink} as it streams in.

    After the body is complete, exactly one of its state's C{body} and
    C{body_error} is set, unless the route takes no body; the body's files
    are removed when the request ends (L{finish}, L{connectionLost}).
    """

    channel: InkFlowChannel
    site: InkFlowSite

    def __init__(self, channel: InkFlowChannel, *args: Any, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        self._state = RequestState(new_request_id())
        attach_state(self, self._state)
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
        # /api/%63hat gets the same sink and limits as /api/chat.
        method, path = routing_line(channel)
        always = always_answered(method, path)
        try:
            if channel.over_limit and not always:
                channel.site.connections.connections_rejected += 1
                raise ApiError.retry_later("busy", 5, "too many connections")
            channel.check_address(self.requestHeaders.getRawHeaders("X-Forwarded-For"), always)
            if channel.site.admit_head is not None:
                channel.site.admit_head(self, method, path)
                self._state.admitted = True
            self._sink = channel.site.sink_for(method, path, self.requestHeaders, length)
            self._state.body_limit = self._sink.limit if self._sink is not None else None
        except ApiError as e:
            over = channel.over_limit or channel.over_address
            self._refuse(e, linger=OVER_LIMIT_TIMEOUT if over else LINGER_SECONDS)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused or self._sink is None:
            return
        try:
            self._sink.write(data)
        except ApiError as e:
            self._sink = None
            self._refuse(e)
        except Exception:
            log.failure("Body sink failed", request_id=self._state.request_id)
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
                self._state.body = sink.close()
            except ApiError as e:
                self._state.body_error = e
            except Exception:
                log.failure("Body sink failed at close", request_id=self._state.request_id)
                sink.discard()
                self._state.body_error = ApiError("bad_request", "the body could not be read")
        super().requestReceived(command, path, version)

    def refuse_late(self, error: ApiError) -> None:
        """
        A head check that answered after the head (the shared rate limit):
        refuse the body still coming, as a 413 found while streaming is.  A
        body already in is left to the route, which answers the same error.
        """
        if self._refused or self._sink is None or self._state.body is not None:
            return
        sink, self._sink = self._sink, None
        sink.discard()
        self._state.rate_decision = None
        self._refuse(error)

    def _refuse(self, error: ApiError, linger: float = LINGER_SECONDS) -> None:
        """
        Answer C{error} at once, before the body, and close the connection
        once the client stops sending (or after a short linger).
        """
        self._refused = True
        # No "100 Continue" for a refused body.
        self.requestHeaders.removeHeader(b"Expect")
        self.channel.refuse(self.channel.refusal(error), linger=linger)
        # Debug: under a flood there is one per connection (counted in health
        # and /metrics as connections rejected).
        log.debug(
            "Refused request before its body: {status} {code}",
            status=error.status,
            code=error.code,
            request_id=self._state.request_id,
        )

    def connectionLost(self, reason: Failure) -> None:
        self.release_body()
        super().connectionLost(reason)

    def finish(self) -> None:
        # The one place a body is let go of when its request is answered,
        # whatever answered it (a route, an early 400 or 404, the WebSocket
        # resource, a replay); connectionLost does it for a client that left.
        try:
            super().finish()
        finally:
            self.release_body()

    def upload_paths(self) -> list[str]:
        """
        The temp files this request holds: those its sink is writing, and
        those of its parsed body until the route releases them.
        """
        paths: list[str] = []
        temp_paths = getattr(self._sink, "temp_paths", None)
        if temp_paths is not None:
            paths.extend(temp_paths())
        if self._state.body is not None:
            paths.extend(f.path for f in self._state.body.files)
        return paths

    def release_body(self) -> None:
        """
        Drop the sink and any spooled files (idempotent).
        """
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.discard()
        if self._state.body is not None:
            body, self._state.body = self._state.body, None
            body.cleanup()

    # -- response -------------------------------------------------------------

    def process(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.responseHeaders.setRawHeaders(name, [value])
        if self.isSecure():
            self.responseHeaders.setRawHeaders(b"Strict-Transport-Security", [HSTS])
        self.responseHeaders.setRawHeaders(b"X-Request-ID", [self._state.request_id.encode()])
        if self.channel.over_limit or self.channel.over_address:
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

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        super().setResponseCode(code, message if message is not None else twisted_hooks.reason_phrase(code))

    def _answer(self, error: ApiError) -> None:
        """
        Answer C{error} outside Klein (with the CORS headers of the route it
        did not reach).
        """
        cors = self.site.cors_headers(self.method, unquote_to_bytes(self.path), self.requestHeaders, self.isSecure())
        set_headers(self, cors)
        self.write(error_response(self, error))
        self.finish()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # twisted.web's own "Server: TwistedWeb/<version>" tells too much.
            self.responseHeaders.setRawHeaders(b"Server", [b"InkFlow"])
            if self.channel.site.connections.draining or not self.channel.persistent:
                # Say so when the connection ends after this response: a proxy
                # must not send another request on it.
                self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                self.channel.persistent = False
        super().write(data)

    def processingFailed(self, reason: Failure) -> None:
        """
        Anything unexpected: log it, answer a generic JSON 500, never a traceback.
        """
        log.failure("Unhandled error", failure=reason, request_id=self._state.request_id)
        if self.finished or twisted_hooks.is_disconnected(self):
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


def log_safe(text: str) -> str:
    """
    C{text} fit for one log line: control characters (C0, DEL, C1) and line
    or paragraph separators escaped, so a client cannot forge log lines or
    send escape sequences to a terminal.  Other text, Hebrew included, kept.
    """
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _UNSAFE else ch for ch in text
    )


_UNSAFE = frozenset({"Cc", "Zl", "Zp"})

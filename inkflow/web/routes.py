"""
InkFlow's routes: a Klein app bound to an instance, every collaborator
passed in by the composition root (L{inkflow.server.service.makeService}).
Errors become the contract's JSON through Klein's error handlers and the free
functions of L{inkflow.web.responses}, so every route works with any
C{IRequest}; the route tests drive the real L{inkflow.web.site.InkFlowSite}
over an in-memory transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from klein import Klein
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from inkflow.chat import ChatBody
from inkflow.errors import ApiError
from inkflow.health import HealthReporter
from inkflow.paths import CHAT
from inkflow.web import twisted_hooks
from inkflow.web.admission import rate_key
from inkflow.web.bodies import BodySink, DiscardSink, JsonSink
from inkflow.web.client_address import request_client
from inkflow.web.handler import ChatHandler, ChatRun
from inkflow.web.idempotency import parse_key
from inkflow.web.origin import check_origin, cors_headers
from inkflow.web.page import PageFiles
from inkflow.web.request import InkFlowRequest
from inkflow.web.responses import (
    SECURITY_HEADERS,
    bytes_response,
    error_response,
    json_response,
    request_id,
    set_headers,
)
from inkflow.web.state import request_state
from inkflow.web.stream import Streaming, wants_stream
from inkflow.web.websocket import is_websocket_upgrade

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = ["AdminResource", "ChatIdempotency", "InkFlowApp", "MetricsPage", "ServerView", "ready_response"]

log = Logger()

#: Bytes allowed for a request body on routes that take none.
NO_BODY_LIMIT = 64 * 1024
#: The chat's path, and its methods whose answers carry CORS headers.
_CHAT_PATH = CHAT.encode()
_CORS_METHODS = (b"POST", b"OPTIONS")


class MetricsPage(Protocol):
    """
    What C{/metrics} serves (L{inkflow.server.metrics.Metrics}).
    """

    content_type: bytes

    def render(self) -> bytes: ...


class ChatIdempotency(Protocol):
    """
    The chat route under a client's C{Idempotency-Key}
    (L{inkflow.state.chat.SharedIdempotentChat}).
    """

    def run(
        self,
        request: Any,
        key: str | None,
        body: ChatBody | None,
        handler: Callable[[], Awaitable[bytes | Streaming | None]],
    ) -> Awaitable[bytes | Streaming | None]: ...


#: Takes one token from a client's bucket: 0.0 when allowed, else the seconds
#: until the next token (L{inkflow.state.base.SharedState.rate_take}).
RateTake = Callable[[str], defer.Deferred[float]]


class ServerView(Protocol):
    """
    The whole server, seen from one of its C{--workers} (the parent merges
    every worker's figures: L{inkflow.state.workers.WorkersState}).
    """

    def scrape(self) -> defer.Deferred[bytes]: ...

    def server_health(self) -> defer.Deferred[dict[str, Any]]: ...


class _StaticFirst(Resource):
    """
    Answers GET and HEAD for files of the static folder, and C{POST
    /api/chat} (the hot route: L{InkFlowApp.direct_chat}), without Klein's
    routing; hands everything else (the rest of the API, unknown paths,
    other methods) to Klein.
    """

    isLeaf = True

    def __init__(
        self,
        static: PageFiles,
        routes: IResource,
        websocket: IResource | None = None,
        chat: Callable[[IRequest], int] | None = None,
    ) -> None:
        super().__init__()
        self.static = static
        self.routes = routes
        self.websocket = websocket
        self.chat = chat

    def render(self, request: IRequest) -> bytes | int:
        if self.websocket is not None and (request.path == b"/chat" or is_websocket_upgrade(request)):
            # The WebSocket relay, outside Klein (an upgrade is not a route).
            return cast(bytes, self.websocket.render(request))
        method = request.method
        if method == b"POST":
            if self.chat is not None and request.path == b"/api/chat":
                return self.chat(request)
        elif method in (b"GET", b"HEAD"):
            path = request.path
            if not _is_api(path) and path != b"/metrics":
                body = self.static.render(request, path)
                if body is not None:
                    return body
        return cast(bytes, self.routes.render(request))


def ready_response(request: IRequest, reporter: HealthReporter) -> bytes:
    """
    C{/api/ready}'s answer: 200 ready, or 503 with the reason.
    """
    ok, reason = reporter.readiness()
    if ok:
        return json_response(request, {"ready": True})
    return json_response(request, {"ready": False, "reason": reason}, 503)


class AdminResource(Resource):
    """
    The admin endpoint: C{/api/health} (full), C{/api/ready}, C{/metrics}.
    """

    isLeaf = True

    def __init__(self, app: InkFlowApp) -> None:
        super().__init__()
        self._app = app

    def render(self, request: IRequest) -> bytes | int:
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        if request.method not in (b"GET", b"HEAD"):
            return error_response(request, ApiError("method_not_allowed", headers={"Allow": "GET, HEAD"}))
        if request.path == b"/api/health":
            return _later(request, self._app.full_health(request))
        if request.path == b"/api/ready":
            return ready_response(request, self._app.reporter)
        if request.path == b"/metrics" and self._app.metrics is not None:
            return _later(request, self._app.metrics_page(request))
        return error_response(request, ApiError("not_found"))


def _later(request: IRequest, answer: defer.Deferred[bytes]) -> bytes | int:
    """
    A plain resource's answer that may come later (the whole server's
    figures are asked of the workers' parent).
    """
    if answer.called:
        result: list[bytes] = []
        answer.addCallback(result.append)
        if result:
            return result[0]

    def write(body: bytes) -> None:
        if not twisted_hooks.is_disconnected(request):
            request.write(body)
            request.finish()

    answer.addCallback(write).addErrback(lambda f: log.failure("Admin answer failed", failure=f))
    return server.NOT_DONE_YET


def _allowed_on_error(reason: Failure) -> float:
    # The request went away (its route was cancelled while it waited): the
    # cancellation goes on.
    if reason.check(defer.CancelledError):
        reason.raiseException()
    # The state answers from this process when the shared one fails; anything
    # else is a defect, and chat goes on without the limit rather than a 500.
    log.failure("The rate limit could not be checked", failure=reason)
    return 0.0


def _until_ended(answer: bytes | Streaming | None) -> bytes | defer.Deferred[bytes | None] | None:
    """
    The route's answer as the body to write, a stream's as a wait for its
    end (cancelling that wait ends the stream: the client left).
    """
    if isinstance(answer, Streaming):
        ended: defer.Deferred[bytes | None] = answer.ended.addCallback(lambda _: None)
        return ended
    return answer


def _rate_verdict(wait: float) -> None:
    """
    @raise ApiError: 429 C{rate_limited} when the token was refused
        (answered from the head or by the route: with the CORS headers
        either way, L{InkFlowApp.cors_for}).
    """
    if wait > 0:
        raise ApiError.retry_later("rate_limited", wait)


def _is_api(path: bytes) -> bool:
    return path == b"/api" or path.startswith(b"/api/")


class InkFlowApp:
    """
    The HTTP routes, and the choice of a request's fate from its head
    (L{admit_head}, L{sink_for}, L{cors_for}, handed to the site).

    @param chat: answers chat messages.
    @param idempotency: the chat route under a client's C{Idempotency-Key}.
    @param rate_take: the per-client chat rate limit (the shared state's
        token bucket).
    @param reporter: health and readiness.
    @param static: the page's files, in the owner's names.
    @param chat_socket: the C{/chat} WebSocket resource (C{None}: none).
    @param metrics: what C{/metrics} serves (C{None}: not served).
    @param server_view: under C{--workers}, the whole server's metrics and
        health (C{None}: this process is the server).
    """

    app = Klein()

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        *,
        chat: ChatHandler,
        idempotency: ChatIdempotency,
        rate_take: RateTake,
        reporter: HealthReporter,
        static: PageFiles,
        chat_socket: IResource | None = None,
        metrics: MetricsPage | None = None,
        server_view: ServerView | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.chat_handler = chat
        self.idempotency = idempotency
        self.rate_take = rate_take
        self.reporter = reporter
        self.static = static
        self.chat_socket = chat_socket
        self.metrics = metrics
        self.server_view = server_view
        self._json_limit = settings.max_message_chars * 6 + 64 * 1024
        self._cors = set(settings.cors_origin)
        self._allow_headers = ", ".join(("Content-Type", "Idempotency-Key", *settings.cors_allow_header)).encode()

    def resource(self) -> IResource:
        """
        The site's root: static GET/HEAD answered straight from the in-memory
        file cache (the page is the hot path), everything else through Klein.
        """
        return _StaticFirst(self.static, self.app.resource(), self.chat_socket, self.direct_chat)

    def admin_resource(self) -> IResource:
        """
        The C{--admin-listen} endpoint's root: the full health, readiness and
        C{/metrics}, for operators only.
        """
        return AdminResource(self)

    # -- heads and bodies -------------------------------------------------------

    def admit_head(self, request: IRequest, method: bytes, path: bytes) -> None:
        """
        Whether a request may send its body, decided from its head alone
        (before any body byte, like a 413): for chat, the Origin check and
        the rate limit.

        The rate limit's token is taken from the head.  When the state
        answers at once (one process, or a shared state that is away) the
        429 is raised here; when the answer comes from the workers' parent or
        Redis, the body is read meanwhile (no added wait), the decision is
        kept on the request (C{rate_decision}) and a 429 refuses the body
        still coming (L{InkFlowRequest.refuse_late}) or, once the body is in,
        is answered by the route before anything goes to n8n.

        @raise ApiError: 403 C{forbidden_origin}, 429 C{rate_limited}.
        """
        if path != b"/api/chat" or method != b"POST" or self.settings.static_only:
            return
        headers = request.requestHeaders
        check_origin(
            headers.getRawHeaders(b"Origin"),
            headers.getRawHeaders(b"Sec-Fetch-Site"),
            (headers.getRawHeaders(b"Host") or [None])[0],
            request.isSecure(),
            self._cors,
        )
        decision = self.rate_take(rate_key(self._client(request))).addErrback(_allowed_on_error)
        answered: list[float] = []

        def note(wait: float) -> float:
            answered.append(wait)
            return wait

        decision.addCallback(note)
        if answered:
            _rate_verdict(answered[0])
            return
        request_state(request).rate_decision = decision

        def decided(wait: float) -> float:
            if wait > 0 and isinstance(request, InkFlowRequest):
                request.refuse_late(ApiError.retry_later("rate_limited", wait))
            return wait

        decision.addCallback(decided)

    def sink_for(self, method: bytes, path: bytes, headers: http.Headers, length: int | None) -> BodySink | None:
        """
        Where a request's body goes, decided from its head alone.

        @raise ApiError: the body is refused before it is read (413 from
            C{Content-Length}, 415 for a content type chat does not take, 404
            when chat is off).
        """
        if path != b"/api/chat" or method != b"POST":
            if length is not None and length > NO_BODY_LIMIT:
                raise ApiError("too_large", "this route takes no request body")
            return DiscardSink(NO_BODY_LIMIT)
        if self.settings.static_only:
            raise ApiError("chat_disabled")
        if length is not None and length > self.settings.max_body_size:
            raise ApiError("too_large", f"the body may have at most {self.settings.max_body_size} bytes")
        raw_type = (headers.getRawHeaders(b"Content-Type") or [b""])[0]
        media = raw_type.split(b";", 1)[0].strip().lower()
        if media == b"application/json":
            if length is not None and length > self._json_limit:
                raise ApiError("too_large", f"a JSON body may have at most {self._json_limit} bytes")
            return JsonSink(self._json_limit)
        if media == b"multipart/form-data":
            from inkflow.web.uploads import MultipartSink

            # Each file's SHA-256 is read only by an Idempotency-Key's
            # fingerprint: computed while spooling when the request has one.
            return MultipartSink(self.settings, raw_type, hash_files=headers.hasHeader(b"Idempotency-Key"))
        raise ApiError("unsupported_type", "send application/json or multipart/form-data")

    # -- responses ------------------------------------------------------------

    def cors_for(self, method: bytes, path: bytes, headers: http.Headers, secure: bool) -> dict[str, str]:
        """
        The CORS headers of any answer to a request with this head: the
        route's own, and a refusal the site gives before the route runs
        (from the head, while the body streams, at a deadline, over a
        connection limit).  Chat's (C{POST} and C{OPTIONS} C{/api/chat}) by
        the one Origin rule (L{cors_headers}); none on any other path.

        @param path: percent-decoded, as routing sees it.
        """
        if not self._cors or path != _CHAT_PATH or method not in _CORS_METHODS:
            return {}
        origin = headers.getRawHeaders(b"Origin")
        if not origin:
            return {}
        fetch_site, host = headers.getRawHeaders(b"Sec-Fetch-Site"), headers.getRawHeaders(b"Host")
        return cors_headers(
            origin[0], fetch_site[0] if fetch_site else None, host[0] if host else None, secure, self._cors
        )

    def _cors_headers(self, request: IRequest) -> bool:
        """
        Set the chat route's CORS headers on its answer; whether the
        request's origin is a listed one.
        """
        headers = self.cors_for(request.method, _CHAT_PATH, request.requestHeaders, request.isSecure())
        set_headers(request, headers)
        return "Access-Control-Allow-Origin" in headers

    @app.handle_errors(ApiError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, cast(ApiError, failure.value))

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(set(getattr(failure.value, "valid_methods", None) or []))
        error = ApiError("method_not_allowed", headers={"Allow": ", ".join(allowed)})
        return error_response(request, error)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        # Static files never get here: the root resource answers them first.
        if not _is_api(request.path) and request.method not in (b"GET", b"HEAD"):
            error = ApiError("method_not_allowed", headers={"Allow": "GET, HEAD"})
            return error_response(request, error)
        return error_response(request, ApiError("not_found"))

    @app.handle_errors(RequestRedirect)
    def no_redirects(self, request: IRequest, failure: Failure) -> bytes:
        # werkzeug redirects /api//health to /api/health; InkFlow's paths
        # have one spelling, anything else is not found.
        return error_response(request, ApiError("not_found"))

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(defer.CancelledError):
            return b""  # the client went away; nobody reads this
        log.failure("Unhandled error", failure=failure, request_id=request_id(request))
        return error_response(request, ApiError("internal_error"))

    # -- health ---------------------------------------------------------------

    def full_health(self, request: IRequest) -> defer.Deferred[bytes]:
        """
        The full health snapshot; under C{--workers}, with the whole
        server's C{server} section (C{totals} and one section per worker).
        """
        snapshot: dict[str, Any] = dict(self.reporter.health())
        if self.server_view is None:
            return defer.succeed(json_response(request, snapshot))

        def add(server: dict[str, Any]) -> bytes:
            snapshot["server"] = server
            return json_response(request, snapshot)

        def failed(reason: Failure) -> bytes:
            snapshot["server"] = {"error": reason.getErrorMessage() or "the workers' parent did not answer"}
            return json_response(request, snapshot)

        return self.server_view.server_health().addCallbacks(add, failed)

    def metrics_page(self, request: IRequest) -> defer.Deferred[bytes]:
        """
        C{/metrics}: this process's; under C{--workers}, the whole server's
        (this worker's own when the parent does not answer).
        """
        assert self.metrics is not None
        page = self.metrics

        def send(text: bytes) -> bytes:
            return bytes_response(request, text, page.content_type)

        if self.server_view is None:
            return defer.succeed(send(page.render()))
        return self.server_view.scrape().addErrback(lambda _: page.render()).addCallback(send)

    @app.route("/api/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes | defer.Deferred[bytes]:
        if self.settings.admin_listen:
            # The full snapshot is on the admin endpoint only.
            return json_response(request, {"status": self.reporter.health()["status"]})
        return self.full_health(request)

    @app.route("/api/ready", methods=["GET", "HEAD"])
    def ready(self, request: IRequest) -> bytes:
        return ready_response(request, self.reporter)

    @app.route("/metrics", methods=["GET", "HEAD"])
    def prometheus(self, request: IRequest) -> defer.Deferred[bytes]:
        if self.metrics is None or self.settings.admin_listen:
            raise NotFound()
        return self.metrics_page(request)

    # -- chat -----------------------------------------------------------------

    @app.route("/api/chat", methods=["OPTIONS"])
    def chat_preflight(self, request: IRequest) -> bytes:
        if self._cors_headers(request):
            request.setHeader(b"Access-Control-Allow-Methods", b"POST, OPTIONS")
            request.setHeader(b"Access-Control-Allow-Headers", self._allow_headers)
            request.setHeader(b"Access-Control-Max-Age", b"600")
        request.setHeader(b"Allow", b"POST, OPTIONS")
        request.setResponseCode(204)
        return b""

    @app.route("/api/chat", methods=["POST"])
    def chat(self, request: IRequest) -> defer.Deferred[bytes | None]:
        d = self._answer(request)
        # A client that leaves stops its work: a queued request leaves the
        # queue, an attempt in flight is cancelled, a stream is ended.
        cast(Any, request).notifyFinish().addErrback(lambda _: d.cancel())
        return d

    def _answer(self, request: IRequest) -> defer.Deferred[bytes | None]:
        """
        The chat's answer: fires with the body to write, or C{None} once the
        answer is written (a stream's, when the stream has ended).
        """
        self._cors_headers(request)
        return defer.Deferred.fromCoroutine(self._chat(request)).addCallback(_until_ended)

    def direct_chat(self, request: IRequest) -> int:
        """
        C{POST /api/chat} as Klein would answer it, without its router (a
        werkzeug map bound per request, a component lookup): the route's
        answer written and the request finished, a failure through the
        same error handlers (L{api_error}, else L{unexpected}), nothing
        written once the request is finished (the client left).
        """
        finished = False
        # Asked for first: the answer may finish the request at once.
        finishing = cast(Any, request).notifyFinish()
        # Klein's bookkeeping: the matched segments move to prepath.
        request.prepath.extend(request.postpath[:2])
        request.postpath = request.postpath[2:]
        d = defer.maybeDeferred(self._answer, request)

        def gone(result: object) -> None:
            nonlocal finished
            finished = True
            if isinstance(result, Failure):
                # The client left: its work stops (the queue, an attempt in
                # flight, a stream).
                d.cancel()

        finishing.addBoth(gone)

        def failed(failure: Failure) -> bytes | None:
            if finished:
                if not failure.check(defer.CancelledError):
                    log.failure("Unhandled error processing a finished request", failure=failure)
                return None
            try:
                if failure.check(ApiError):
                    return self.api_error(request, failure)
                return self.unexpected(request, failure)
            except Exception:
                cast(Any, request).processingFailed(Failure())
                return None

        def write(body: bytes | None) -> None:
            if finished:
                return
            if isinstance(body, bytes):
                request.write(body)
            request.finish()

        d.addErrback(failed).addCallback(write).addErrback(
            lambda failure: log.failure("Unhandled error writing a response", failure=failure)
        )
        return server.NOT_DONE_YET

    async def _chat(self, request: IRequest) -> bytes | Streaming | None:
        # (--static-only never gets here: sink_for refuses the request from
        # its head; the head check ran before the body.)
        state = request_state(request)
        if state.rate_decision is not None:
            # The head's rate check, when the shared state answered later.
            decision, state.rate_decision = state.rate_decision, None
            _rate_verdict(await decision)
        key = parse_key(request.requestHeaders.getRawHeaders(b"Idempotency-Key"))
        stream = wants_stream(request.getHeader(b"Accept"))
        handler = self.chat_handler

        async def answer() -> bytes | Streaming | None:
            with handler.observed(ChatRun(self.clock.seconds(), state.request_id)) as run:
                message = handler.message(state.take_body(), run, key, request)
                return (await handler.answer(message, stream, run)).write(request)

        return await self.idempotency.run(cast(Any, request), key, state.body, answer)

    def _client(self, request: IRequest) -> str:
        return request_client(request, self.settings.trusted_proxy)

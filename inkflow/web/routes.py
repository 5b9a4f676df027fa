"""
InkFlow's routes: a Klein app bound to an instance, its collaborators passed
in.  Errors become the contract's JSON through Klein's error handlers and
the free functions of L{inkflow.web.responses}, so every route works with any
C{IRequest} (and is unit-tested through C{treq.testing.StubTreq}).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from klein import Klein
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from inkflow.chat import ChatBody, ChatMessage, forwarded_headers, parse_chat
from inkflow.errors import ApiError
from inkflow.n8n.demo import DemoResponder
from inkflow.n8n.executions import ExecutionMap
from inkflow.n8n.stream import StreamStart, wants_stream
from inkflow.server.health import HealthInputs, ProcessMetrics, SiteStats, build_health, readiness
from inkflow.server.metrics import CONTENT_TYPE, Metrics
from inkflow.settings import origin_url
from inkflow.snapshot import CleanupSnapshot, Health, UpstreamSnapshot
from inkflow.web.admission import ChatQueue, RateLimiter, rate_key
from inkflow.web.bodies import BodySink, DiscardSink, JsonSink
from inkflow.web.client_address import UNIX, client_ip
from inkflow.web.idempotency import IdempotencyStore, IdempotentChat, parse_key
from inkflow.web.origin import check_origin
from inkflow.web.page import PageFiles
from inkflow.web.request import received_body, release_body
from inkflow.web.responses import (
    JSON_TYPE,
    SECURITY_HEADERS,
    bytes_response,
    error_response,
    json_response,
    request_id,
)
from inkflow.web.staticfiles import StaticFiles
from inkflow.web.streaming import StreamAnswers
from inkflow.web.websocket import ChatSocketResource, ChatSockets, is_websocket_upgrade

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = ["ChatForwarder", "InkFlowApp"]

log = Logger()

#: Bytes allowed for a request body on routes that take none.
NO_BODY_LIMIT = 64 * 1024


class ChatForwarder(Protocol):
    """
    What the chat route needs from the n8n forwarder (L{inkflow.n8n.client.Forwarder}).
    """

    def forward(self, message: ChatMessage, deadline: float, *, stream: bool = False) -> Awaitable[Any]: ...

    def upstreams(self) -> list[UpstreamSnapshot]: ...


class Stats(Protocol):
    def snapshot(self) -> CleanupSnapshot: ...


class _StaticFirst(Resource):
    """
    Answers GET and HEAD for files of the static folder without Klein's
    routing; hands everything else (the API, unknown paths, other methods)
    to Klein.
    """

    isLeaf = True

    def __init__(self, static: PageFiles, routes: IResource, websocket: IResource | None = None) -> None:
        super().__init__()
        self.static = static
        self.routes = routes
        self.websocket = websocket

    def render(self, request: IRequest) -> bytes | int:
        if self.websocket is not None and (request.path == b"/chat" or is_websocket_upgrade(request)):
            # The WebSocket relay, outside Klein (an upgrade is not a route).
            return cast(bytes, self.websocket.render(request))
        if request.method in (b"GET", b"HEAD"):
            path = request.path
            if not _is_api(path) and path != b"/metrics":
                body = self.static.render(request, path)
                if body is not None:
                    return body
        return cast(bytes, self.routes.render(request))


class _Admin(Resource):
    """
    The admin endpoint: C{/api/health} (full), C{/api/ready}, C{/metrics}.
    """

    isLeaf = True

    def __init__(self, app: InkFlowApp) -> None:
        super().__init__()
        self._app = app

    def render(self, request: IRequest) -> bytes:
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        if request.method not in (b"GET", b"HEAD"):
            return error_response(request, ApiError("method_not_allowed", headers={"Allow": "GET, HEAD"}))
        if request.path == b"/api/health":
            return json_response(request, self._app.health_snapshot())
        if request.path == b"/api/ready":
            return self._app._ready_response(request)
        if request.path == b"/metrics" and self._app.metrics is not None:
            return bytes_response(request, self._app.metrics.render(), CONTENT_TYPE)
        return error_response(request, ApiError("not_found"))


def _is_api(path: bytes) -> bool:
    return path == b"/api" or path.startswith(b"/api/")


class InkFlowApp:
    """
    The HTTP routes.

    @param forwarder: forwards chat to n8n; C{None} means demo mode.
    @param queue: the concurrency gate and bounded queue for chat.
    @param rate_limiter: per-client chat rate limit.
    @param cleanup: the cleanup loop's stats, for health.
    @param site_stats: returns the site's connection figures and whether it drains.
    """

    app = Klein()

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        *,
        forwarder: ChatForwarder | None,
        queue: ChatQueue,
        rate_limiter: RateLimiter,
        process_metrics: ProcessMetrics,
        site_stats: Callable[[], SiteStats],
        cleanup: Stats | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.forwarder = forwarder
        self.demo = DemoResponder()
        self.queue = queue
        self.rate_limiter = rate_limiter
        self.process_metrics = process_metrics
        self.site_stats = site_stats
        self.cleanup = cleanup
        self.metrics = metrics
        self.static = StaticFiles(settings.static_dir)
        self.started = clock.seconds()
        self._json_limit = settings.max_message_chars * 6 + 64 * 1024
        self._debug = settings.log_level == "debug"
        self._cors = set(settings.cors_origin)
        self.streams = StreamAnswers(
            clock,
            idle_timeout=settings.stream_idle_timeout,
            stream_timeout=settings.stream_timeout,
            observe_start=metrics.observe_stream_start if metrics is not None else None,
            observe_end=metrics.observe_stream_end if metrics is not None else None,
        )
        self._allow_headers = ", ".join(("Content-Type", "Idempotency-Key", *settings.cors_allow_header)).encode()
        self.executions = ExecutionMap(clock)
        self.chat_sockets = ChatSockets()
        self.idempotency = IdempotentChat(
            IdempotencyStore(clock, settings.idempotency_ttl), settings.chat_input_key, settings.chat_session_key
        )

    def resource(self) -> IResource:
        """
        The site's root: static GET/HEAD answered straight from the in-memory
        file cache (the page is the hot path), everything else through Klein.
        """
        websocket = ChatSocketResource(
            self.settings, self.clock, self.executions, self.chat_sockets, draining=lambda: self.site_stats().draining
        )
        return _StaticFirst(PageFiles.from_settings(self.static, self.settings), self.app.resource(), websocket)

    def admin_resource(self) -> IResource:
        """
        The C{--admin-listen} endpoint's root: the full health, readiness and
        C{/metrics}, for operators only.
        """
        return _Admin(self)

    # -- heads and bodies -------------------------------------------------------

    def admit_head(self, request: IRequest, method: bytes, path: bytes) -> None:
        """
        Whether a request may send its body, decided from its head alone
        (before any body byte, like a 413): for chat, the Origin check and
        the rate limit.

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
        try:
            self.rate_limiter.check(rate_key(self._client(request)))
        except ApiError as e:
            # Refused before any route: an allow-listed page (the embed) must still read it.
            e.headers.update(self._cors_for(request.getHeader(b"Origin")))
            raise

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

            return MultipartSink(self.settings, raw_type)
        raise ApiError("unsupported_type", "send application/json or multipart/form-data")

    # -- responses ------------------------------------------------------------

    def _cors_for(self, origin: bytes | None) -> dict[str, str]:
        """
        The CORS headers of an answer to C{origin} (none when it is not allow-listed).
        """
        if not origin or origin.decode("latin-1").lower().rstrip("/") not in self._cors:
            return {}
        return {
            "Access-Control-Allow-Origin": origin.decode("latin-1"),
            "Access-Control-Expose-Headers": "X-Request-ID, X-Session-ID, Retry-After",
            "Vary": "Origin",
        }

    def _cors_headers(self, request: IRequest) -> bool:
        """
        Add CORS headers when the request's origin is allowed.
        """
        origin = request.getHeader(b"Origin")
        if not origin or not self._cors:
            return False
        request.setHeader(b"Vary", b"Origin")
        if origin.decode("latin-1").lower().rstrip("/") not in self._cors:
            return False
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Expose-Headers", b"X-Request-ID, X-Session-ID, Retry-After")
        return True

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

    def _connections_full(self, active: int) -> bool:
        return active >= self.settings.max_connections

    def health_snapshot(self) -> Health:
        """
        The full health snapshot: upstreams shown by index and
        C{scheme://host:port} only (in n8n the webhook path is the secret);
        C{degraded} while every connection place is taken.
        """
        site = self.site_stats()
        upstreams = self.forwarder.upstreams() if self.forwarder is not None else []
        snapshot = build_health(
            HealthInputs(
                settings=self.settings,
                uptime_s=self.clock.seconds() - self.started,
                site=self.site_stats(),
                queue=self.queue.snapshot(),
                upstreams=[{**u, "index": i, "url": origin_url(u["url"])} for i, u in enumerate(upstreams)],
                process=self.process_metrics.read(),
                cleanup=self.cleanup.snapshot() if self.cleanup is not None else None,
                websockets=self.chat_sockets.snapshot(),
                streams=self.streams.registry.snapshot(),
            )
        )
        if snapshot["status"] == "ok" and self._connections_full(site.connections_active):
            snapshot["status"] = "degraded"
        return snapshot

    def _readiness(self) -> tuple[bool, str | None]:
        site = self.site_stats()
        ok, reason = readiness(
            draining=site.draining,
            queue_full=self.queue.full,
            upstreams=self.forwarder.upstreams() if self.forwarder is not None else [],
        )
        if ok and self._connections_full(site.connections_active):
            return False, "connections_full"
        return ok, reason

    def _ready_response(self, request: IRequest) -> bytes:
        ok, reason = self._readiness()
        if ok:
            return json_response(request, {"ready": True})
        return json_response(request, {"ready": False, "reason": reason}, 503)

    @app.route("/api/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        if self.settings.admin_listen:
            # The full snapshot is on the admin endpoint only.
            return json_response(request, {"status": self.health_snapshot()["status"]})
        return json_response(request, self.health_snapshot())

    @app.route("/api/ready", methods=["GET", "HEAD"])
    def ready(self, request: IRequest) -> bytes:
        return self._ready_response(request)

    @app.route("/metrics", methods=["GET", "HEAD"])
    def prometheus(self, request: IRequest) -> bytes:
        if self.metrics is None or self.settings.admin_listen:
            raise NotFound()
        return bytes_response(request, self.metrics.render(), CONTENT_TYPE)

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
        self._cors_headers(request)
        d = defer.Deferred.fromCoroutine(self.idempotency.run(request, self._chat))
        # A client that leaves stops its work: a queued request leaves the
        # queue, an attempt in flight is cancelled.
        cast(Any, request).notifyFinish().addErrback(lambda _: d.cancel())
        return d

    async def _chat(self, request: IRequest) -> bytes | None:
        started = self.clock.seconds()
        status = 500
        observed = False
        body: ChatBody | None = None
        try:
            # (--static-only never gets here: sink_for refuses the request from its head.)
            if not getattr(request, "head_admitted", False):
                # A request from elsewhere than InkFlow's site (tests).
                self.admit_head(request, request.method, request.path)
            body = received_body(request, self.sink_for)
            message = parse_chat(
                body,
                request_id=request_id(request),
                max_chars=self.settings.max_message_chars,
                max_files=self.settings.max_files,
                input_key=self.settings.chat_input_key,
                session_key=self.settings.chat_session_key,
            ).with_client(
                parse_key(request.requestHeaders.getRawHeaders(b"Idempotency-Key")),
                forwarded_headers(request.requestHeaders.getRawHeaders, self.settings.forward_header),
            )
            deadline = self.clock.seconds() + self.settings.request_timeout
            stream = wants_stream(request.getHeader(b"Accept"))
            slot = await self.queue.acquire()
            if self.metrics is not None:
                self.metrics.observe_queue_wait(slot.waited)
            try:
                raw: bytes | None = None
                if self.forwarder is None:
                    answer: Any = self.demo.answer(message)
                else:
                    result = await (
                        self.forwarder.forward(message, deadline, stream=True)
                        if stream
                        else self.forwarder.forward(message, deadline)
                    )
                    if isinstance(result, StreamStart):
                        # The commit point: the slot is held until the stream ends.
                        request.setHeader(b"X-Session-ID", message.session_id.encode())
                        status = 200
                        if self.metrics is not None:
                            # The chat latency of a stream is its time to first byte.
                            self.metrics.observe_chat(self.clock.seconds() - started, status)
                            observed = True
                        if message.idempotency_key is not None:
                            # A streamed answer is not replayed (409 in_progress meanwhile).
                            self.idempotency.store.mark_streaming(message.idempotency_key)
                        await self.streams.relay(request, result, started)
                        return None
                    answer = result.body
                    raw = result.raw
                    self.executions.note_answer(answer, result.url_index)
            finally:
                slot.release()
            request.setHeader(b"X-Session-ID", message.session_id.encode())
            if message.session_generated and isinstance(answer, dict) and "sessionId" not in answer:
                answer = {**answer, "sessionId": message.session_id}
                raw = None
            if self._debug:
                # Debug: the access line (with its X-Request-ID) records every
                # answer; at info this line cost 5 % of a proxied chat, and
                # even a dropped debug event costs 1.5 %.
                log.debug(
                    "Chat {request_id} answered ({files} files)",
                    request_id=message.request_id,
                    session_id=message.session_id,
                    files=len(message.files),
                    mode=self.settings.mode,
                )
            if stream:
                status = 200
                if message.idempotency_key is not None:
                    self.idempotency.store.mark_streaming(message.idempotency_key)
                self.streams.synthesized(request, answer, started)
                return None
            if raw is not None:
                # n8n's JSON as it came (checked when decoded): nothing to add.
                status = 200
                return bytes_response(request, raw, JSON_TYPE)
            try:
                written = json_response(request, answer)
            except ValueError:
                # NaN, an infinity or nesting too deep: never sent as "JSON".
                raise ApiError("upstream_error", "the answer is not valid JSON") from None
            status = 200
            return written
        except ApiError as e:
            status = e.status
            log.info(
                "Chat {request_id} refused: {status} {code}",
                status=e.status,
                code=e.code,
                request_id=request_id(request),
            )
            raise
        finally:
            release_body(request, body)
            if self.metrics is not None and not observed:
                self.metrics.observe_chat(self.clock.seconds() - started, status)

    def _client(self, request: IRequest) -> str:
        peer = request.getClientAddress()
        host = UNIX if isinstance(peer, UNIXAddress) else (getattr(peer, "host", None) or "unknown")
        return client_ip(host, request.requestHeaders.getRawHeaders("X-Forwarded-For"), self.settings.trusted_proxy)

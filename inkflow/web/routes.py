"""
InkFlow's routes: a Klein app bound to an instance, its collaborators passed
in.  Errors become the contract's JSON in one place (L{InkFlowApp._error}).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from klein import Klein
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from inkflow.chat import ChatMessage, parse_chat
from inkflow.errors import ApiError
from inkflow.n8n.demo import DemoResponder
from inkflow.n8n.stream import StreamStart, wants_stream
from inkflow.server.health import HealthInputs, ProcessMetrics, build_health, readiness
from inkflow.server.metrics import CONTENT_TYPE, Metrics
from inkflow.web.admission import ChatQueue, RateLimiter, client_ip
from inkflow.web.bodies import BodySink, DiscardSink, JsonSink
from inkflow.web.site import InkFlowRequest
from inkflow.web.staticfiles import StaticFiles
from inkflow.web.streaming import StreamAnswers

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

    def upstreams(self) -> list[dict[str, Any]]: ...


class Stats(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


class _StaticFirst(Resource):
    """
    Answers GET and HEAD for files of the static folder without Klein's
    routing; hands everything else (the API, unknown paths, other methods)
    to Klein.
    """

    isLeaf = True

    def __init__(self, static: StaticFiles, routes: IResource) -> None:
        super().__init__()
        self.static = static
        self.routes = routes

    def render(self, request: IRequest) -> bytes:
        if request.method in (b"GET", b"HEAD"):
            path = request.path
            if not _is_api(path) and path != b"/metrics":
                body = self.static.render(request, path)
                if body is not None:
                    return body
        return cast(bytes, self.routes.render(request))


def _is_api(path: bytes) -> bool:
    return path == b"/api" or path.startswith(b"/api/")


def _inkflow(request: IRequest) -> InkFlowRequest:
    """
    Klein hands routes an C{IRequest}; InkFlow's site makes L{InkFlowRequest}s.
    """
    return cast(InkFlowRequest, request)


class InkFlowApp:
    """
    The HTTP routes.

    @param forwarder: forwards chat to n8n; C{None} means demo mode.
    @param queue: the concurrency gate and bounded queue for chat.
    @param rate_limiter: per-client chat rate limit.
    @param cleanup: the cleanup loop's stats, for health.
    @param site_stats: returns C{(active connections, rejected total, draining)}.
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
        site_stats: Callable[[], tuple[int, int, bool]],
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
        self._cors = set(settings.cors_origin)
        self.streams = StreamAnswers(
            clock,
            idle_timeout=settings.stream_idle_timeout,
            stream_timeout=settings.stream_timeout,
            observe_start=metrics.observe_stream_start if metrics is not None else None,
            observe_end=metrics.observe_stream_end if metrics is not None else None,
        )

    def resource(self) -> IResource:
        """
        The site's root: static GET/HEAD answered straight from the in-memory
        file cache (the page is the hot path), everything else through Klein.
        """
        return _StaticFirst(self.static, self.app.resource())

    # -- bodies ---------------------------------------------------------------

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

    def _cors_headers(self, request: InkFlowRequest) -> bool:
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
        return _inkflow(request).error_response(failure.value)  # type: ignore[arg-type]

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(set(getattr(failure.value, "valid_methods", None) or []))
        error = ApiError("method_not_allowed", headers={"Allow": ", ".join(allowed)})
        return _inkflow(request).error_response(error)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        # Static files never get here: the root resource answers them first.
        req = _inkflow(request)
        if not _is_api(req.path) and req.method not in (b"GET", b"HEAD"):
            error = ApiError("method_not_allowed", headers={"Allow": "GET, HEAD"})
            return req.error_response(error)
        return req.error_response(ApiError("not_found"))

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(defer.CancelledError):
            return b""  # the client went away; nobody reads this
        log.failure("Unhandled error", failure=failure, request_id=_inkflow(request).request_id)
        return _inkflow(request).error_response(ApiError("internal_error"))

    # -- health ---------------------------------------------------------------

    def health_snapshot(self) -> dict[str, Any]:
        active, rejected, draining = self.site_stats()
        return build_health(
            HealthInputs(
                settings=self.settings,
                uptime_s=self.clock.seconds() - self.started,
                draining=draining,
                connections_active=active,
                connections_rejected=rejected,
                queue=self.queue.snapshot(),
                upstreams=self.forwarder.upstreams() if self.forwarder is not None else [],
                process=self.process_metrics.read(),
                cleanup=self.cleanup.snapshot() if self.cleanup is not None else {},
                streams=self.streams.registry.snapshot(),
            )
        )

    @app.route("/api/health", methods=["GET", "HEAD"])
    def health(self, request: InkFlowRequest) -> bytes:
        return request.json_response(self.health_snapshot())

    @app.route("/api/ready", methods=["GET", "HEAD"])
    def ready(self, request: InkFlowRequest) -> bytes:
        _, _, draining = self.site_stats()
        ok, reason = readiness(
            draining=draining,
            queue_full=self.queue.full,
            upstreams=self.forwarder.upstreams() if self.forwarder is not None else [],
        )
        if ok:
            return request.json_response({"ready": True})
        return request.json_response({"ready": False, "reason": reason}, 503)

    @app.route("/metrics", methods=["GET", "HEAD"])
    def prometheus(self, request: InkFlowRequest) -> bytes:
        if self.metrics is None:
            raise NotFound()
        return request.bytes_response(self.metrics.render(), CONTENT_TYPE)

    # -- chat -----------------------------------------------------------------

    @app.route("/api/chat", methods=["OPTIONS"])
    def chat_preflight(self, request: InkFlowRequest) -> bytes:
        if self._cors_headers(request):
            request.setHeader(b"Access-Control-Allow-Methods", b"POST, OPTIONS")
            request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type")
            request.setHeader(b"Access-Control-Max-Age", b"600")
        request.setHeader(b"Allow", b"POST, OPTIONS")
        request.setResponseCode(204)
        return b""

    @app.route("/api/chat", methods=["POST"])
    def chat(self, request: InkFlowRequest) -> defer.Deferred[bytes | None]:
        self._cors_headers(request)
        d = defer.Deferred.fromCoroutine(self._chat(request))
        # A client that leaves stops its work: a queued request leaves the
        # queue, an attempt in flight is cancelled.
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return d

    async def _chat(self, request: InkFlowRequest) -> bytes | None:
        started = self.clock.seconds()
        status = 500
        observed = False
        try:
            # (--static-only never gets here: sink_for refuses the request from its head.)
            if request.body_error is not None:
                raise request.body_error
            body = request.chat_body
            if body is None:
                raise ApiError("bad_request", "the request has no body")
            self.rate_limiter.check(self._client(request))
            message = parse_chat(
                body,
                request_id=request.request_id,
                max_chars=self.settings.max_message_chars,
                max_files=self.settings.max_files,
            )
            deadline = self.clock.seconds() + self.settings.request_timeout
            stream = wants_stream(request.getHeader(b"Accept"))
            slot = await self.queue.acquire()
            if self.metrics is not None:
                self.metrics.observe_queue_wait(slot.waited)
            try:
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
                        await self.streams.relay(request, result, started)
                        return None
                    answer = result.body
            finally:
                slot.release()
            request.setHeader(b"X-Session-ID", message.session_id.encode())
            if message.session_generated and isinstance(answer, dict) and "sessionId" not in answer:
                answer = {**answer, "sessionId": message.session_id}
            log.info(
                "Chat {request_id} answered ({files} files)",
                request_id=message.request_id,
                session_id=message.session_id,
                files=len(message.files),
                mode=self.settings.mode,
            )
            status = 200
            if stream:
                self.streams.synthesized(request, answer, started)
                return None
            return request.json_response(answer)
        except ApiError as e:
            status = e.status
            log.info(
                "Chat {request_id} refused: {status} {code}",
                status=e.status,
                code=e.code,
                request_id=request.request_id,
            )
            raise
        finally:
            request.release_body()
            if self.metrics is not None and not observed:
                self.metrics.observe_chat(self.clock.seconds() - started, status)

    def _client(self, request: InkFlowRequest) -> str:
        peer = request.getClientAddress()
        host = getattr(peer, "host", None) or "unknown"
        return client_ip(host, request.requestHeaders.getRawHeaders("X-Forwarded-For"), self.settings.trusted_proxy)

"""
The one place InkFlow is assembled: L{makeService}.

The twistd plugin and C{inkflow.tac} both call it.  It builds every
collaborator (connection registry, queue, rate limiter, forwarder, stream
registry, idempotency store, chat sockets, health reporter, metrics, chat
handler, routes, site), each from those built before it, and a
C{MultiService} of:

 - the core service (L{InkFlowService}): drains the connections, the
   WebSockets, the streams, the queue and the n8n pool on shutdown;
 - the HTTP server on the C{--listen} endpoint (and the admin one on
   C{--admin-listen}, when set);
 - the cleanup loop.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable
from typing import Any

from twisted.application import service, strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorCore, IReactorProcess, IReactorSocket, IReactorTime
from twisted.logger import Logger
from twisted.web import server

from inkflow import __version__
from inkflow.health import HealthReporter
from inkflow.n8n.demo import DemoResponder
from inkflow.server.cleanup import Cleaner
from inkflow.server.health import ProcessMetrics
from inkflow.server.logs import install_rotation_signals, settings_summary, write_access_line
from inkflow.server.metrics import Metrics
from inkflow.server.workers import WorkerSupervisor, adopted_endpoint
from inkflow.settings import Settings
from inkflow.state.build import Built, build_state, state_config
from inkflow.state.chat import SharedExecutions, SharedIdempotentChat
from inkflow.state.fallback import StateCollector
from inkflow.state.memory import MemoryState
from inkflow.state.workers import SOCKET_ENV, ParentStateService
from inkflow.web.admission import ChatQueue
from inkflow.web.client_address import request_client
from inkflow.web.connections import Connections
from inkflow.web.handler import ChatHandler
from inkflow.web.page import PageFiles
from inkflow.web.request import InkFlowRequest, log_safe
from inkflow.web.routes import InkFlowApp
from inkflow.web.site import InkFlowSite
from inkflow.web.state import request_state
from inkflow.web.staticfiles import StaticFiles
from inkflow.web.stream import StreamAnswers, StreamRegistry
from inkflow.web.uploads import upload_dir_problem
from inkflow.web.websocket import ChatSocketResource, ChatSockets

__all__ = ["InkFlowService", "makeService"]

log = Logger()

#: CPython's garbage collector thresholds for a serving process (the default
#: is 700, 10, 10).  Almost nothing a busy InkFlow allocates is cyclic
#: garbage, yet with the defaults every few thousand allocations start a
#: collection, and each full one walks the whole heap: 0.1-2.3 s pauses were
#: measured while 2,000 streams ramped up.  Measured in one run
#: (bench/stream.py, 1,000 streams, worst of 2 rounds): item lag p99 643 ms
#: and /api/health p99 689 ms with the defaults, 109 ms and 113 ms with these
#: and the freeze below, for less RSS growth (28 MB, not 32 MB).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """
    Once the reactor runs: move everything made at start-up out of the
    collector's sight (it lives as long as the process), and collect less
    often.  Process-wide, so only a serving process calls it (from the
    reactor's start, never at import).

    Under load every young collection finds the objects of the requests in
    flight alive and promotes them, so full collections come often, and each
    walked the ~75,000 start-up objects again (40 ms a time, about a tenth
    of a proxied chat's CPU).  Frozen objects are never collected (nothing
    built at start-up is garbage); what requests allocate still is.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: Seconds the streams ended by drain get to flush their error line and end.
STREAM_END_GRACE = 2.0


class InkFlowService(service.MultiService):
    """
    The core: on start, makes the upload folder; on stop, drains.  Its child
    is the HTTP server, so the order of a stop is its own:

     1. C{/api/ready} turns 503 and every response says C{Connection: close};
        for C{--shutdown-delay} seconds new connections are still served, so
        a load balancer sees the instance leave before its port closes;
     2. the port closes, the queue takes no new work, idle connections close,
        busy ones finish their response and close, for up to
        C{--drain-timeout}; whatever is left is cut;
     3. the n8n connection pool is closed.
    """

    name = "inkflow"

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorTime,
        connections: Connections,
        queue: ChatQueue,
        *,
        static: StaticFiles,
        chat_sockets: ChatSockets,
        streams: StreamRegistry,
        pool: Any = None,
        state: Built | None = None,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.connections = connections
        self.queue = queue
        self.static = static
        self.chat_sockets = chat_sockets
        self.streams = streams
        self.pool = pool
        self.state = state
        super().__init__()

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.settings.upload_dir, mode=0o700, exist_ok=True)
        problem = upload_dir_problem(self.settings.upload_dir)
        if problem is not None and problem[0] == "refuse":
            log.error(
                "The upload folder {upload_dir} is not safe: {problem}; uploads are refused until it is "
                "(chmod 700, or choose another --upload-dir)",
                upload_dir=self.settings.upload_dir,
                problem=problem[1],
            )
        elif problem is not None:
            log.warn(
                "The upload folder {upload_dir}: {problem}", upload_dir=self.settings.upload_dir, problem=problem[1]
            )
        if self.settings.mode == "demo":
            log.warn(
                "No --webhook configured: chat is answered by the built-in demo responder (mode: demo)",
            )
        log.info(
            "InkFlow {version} starting in {mode} mode, listening on {listen}",
            version=__version__,
            mode=self.settings.mode,
            listen=self.settings.listen,
            settings=settings_summary(self.settings),  # the options that differ from their defaults
        )
        if not self.static.exists():
            log.warn("The page is missing: no index.html in {static_dir}", static_dir=self.settings.static_dir)

    async def _drain(self) -> None:
        clock = self.reactor
        self.connections.draining = True
        if self.settings.shutdown_delay > 0:
            log.info(
                "Stopping: not ready; still serving for {delay}s before closing the port",
                delay=self.settings.shutdown_delay,
            )
            await task.deferLater(clock, self.settings.shutdown_delay, lambda: None)
        await super().stopService()  # the port closes
        self.queue.start_draining()
        log.info(
            "Draining: {connections} connections open, up to {timeout}s",
            connections=len(self.connections.channels),
            timeout=self.settings.drain_timeout,
        )
        self.chat_sockets.close_all(1001)  # /chat WebSockets: "going away"
        gone = self.connections.drain()
        if self.connections.channels:
            try:
                await gone.addTimeout(self.settings.drain_timeout, clock)
            except defer.TimeoutError:
                # Streams end with an error line and a clean end, never a reset.
                if self.streams.stop_all("drain"):
                    with contextlib.suppress(defer.TimeoutError):
                        await self.connections.drain().addTimeout(STREAM_END_GRACE, clock)
                if self.connections.channels:
                    log.warn(
                        "Drain timeout reached: cutting {connections} connections",
                        connections=len(self.connections.channels),
                    )
                    self.connections.abort_all()
        if self.pool is not None:
            await self.pool.closeCachedConnections()
        if self.state is not None:
            await self.state.state.close()
            if self.state.link is not None and self.state.backend == "redis":
                await self.state.link.close()  # (under --workers, the state's link is this one)
        log.info("Drained; stopping")

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._drain())


class _StopLastFirst(service.MultiService):
    """
    The C{--workers} parent: its children stop one after another, the last
    started first, so the workers drain while the parent still serves their
    shared state (a C{MultiService} stops them all at once).
    """

    async def _stop(self) -> None:
        service.Service.stopService(self)
        for child in reversed(list(self)):
            await defer.maybeDeferred(child.stopService)

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())


def _request_logger(settings: Settings, metrics: Metrics) -> Callable[[InkFlowRequest], None]:
    """
    Called once per finished request: counts it, and writes the access log
    line unless C{--access-log false}.
    """
    access = Logger(namespace="inkflow.access")
    write_line = settings.access_log

    def log_request(request: InkFlowRequest) -> None:
        metrics.observe_request(request.path, request.code)
        if not write_line:
            return
        method = request.method.decode("latin-1")
        uri = request.uri[:300].decode("latin-1")
        line = log_safe(f"{method} {uri} {request.code} {request.sentLength}")
        state = request_state(request)
        streamed = state.stream_seconds
        if streamed is not None:
            line += f" stream {streamed:.3f}s"
        if write_access_line(line):
            return
        access.info(
            line.replace("{", "{{").replace("}", "}}"),
            method=method,
            uri=uri,
            status=request.code,
            bytes=request.sentLength,
            request_id=state.request_id,
        )

    return log_request


def makeService(
    settings: Settings,
    reactor: Any = None,  # IReactorCore, IReactorTime, IReactorTCP, ... (Python has no intersection type)
    *,
    install_signals: bool = True,
    worker_fd: int | None = None,
    state_socket: str | None = None,
    worker_slot: str = "",
) -> service.MultiService:
    """
    Build the whole InkFlow service from its settings.

    @param reactor: the reactor (also the clock); the global one when C{None}
        (only here, at the edge).
    @param install_signals: install the SIGHUP/SIGUSR1 log rotation handlers
        (off in tests).
    @param worker_fd: in a worker process (C{--workers N}), the inherited
        listening socket to serve instead of opening C{--listen}.
    @param state_socket: in a worker, the parent's state socket (the shared
        state, the whole server's metrics and health).
    @param worker_slot: in a worker, its slot (the label of its metrics).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    assert IReactorTime.providedBy(reactor) and IReactorCore.providedBy(reactor)

    if settings.workers > 1 and worker_fd is None:
        # The parent of --workers N: it opens the socket and supervises the
        # workers, each of which calls makeService with worker_fd.
        # The parent holds the shared state and serves it to the workers over
        # AMP (it also merges their metrics and health, under --redis too).
        parent = _StopLastFirst()
        parent_state = ParentStateService(MemoryState(reactor, state_config(settings)), reactor)
        parent_state.setServiceParent(parent)  # before the workers: their command names its socket
        WorkerSupervisor(settings, IReactorProcess(reactor), state_socket=lambda: parent_state.path).setServiceParent(
            parent
        )
        if install_signals:
            reactor.callWhenRunning(install_rotation_signals, reactor)
        reactor.callWhenRunning(tune_gc)
        return parent

    # Built in order, each from those before it: no callback looks up a
    # name bound later.
    connections = Connections()
    queue = ChatQueue(settings.max_concurrent, settings.queue_size, settings.queue_timeout, reactor)
    cleaner = Cleaner(settings.upload_dir, reactor, active_paths=connections.active_upload_paths)
    metrics = Metrics()
    forwarder = None
    pool = None
    if settings.mode == "proxy":
        from inkflow.n8n.client import Forwarder, make_agent

        agent, pool = make_agent(reactor, settings)
        forwarder = Forwarder(settings, agent, reactor, observer=metrics.observe_attempt)
    stream_registry = StreamRegistry()
    streams = StreamAnswers(
        reactor,
        idle_timeout=settings.stream_idle_timeout,
        stream_timeout=settings.stream_timeout,
        registry=stream_registry,
        observe_start=metrics.observe_stream_start,
        observe_end=metrics.observe_stream_end,
        log_complete=settings.log_level == "debug",
    )
    chat_sockets = ChatSockets()
    # The state the processes share (one process: memory; --workers: the
    # parent's over AMP; --redis: Redis), with this process's own as the
    # fallback.  A worker's link is handed its health once the reporter exists.
    built = build_state(
        settings,
        reactor,
        environ={SOCKET_ENV: state_socket} if state_socket else {},
        worker=worker_slot,
        metrics_text=metrics.render,
    )
    fallback = built.fallback

    def state_section() -> dict[str, Any]:
        if fallback is None:
            return {"backend": built.backend, "shared": True, "fallbacks_total": 0}
        fallback.probe()  # an idle process leaves the degraded state
        return fallback.snapshot()

    if fallback is not None:
        metrics.registry.register(StateCollector(fallback))
    executions = SharedExecutions(built.state)

    idempotency = SharedIdempotentChat(
        built.state,
        settings.chat_input_key,
        settings.chat_session_key,
        lambda request: request_client(request, settings.trusted_proxy),
    )
    reporter = HealthReporter(
        settings,
        reactor,
        site=connections.stats,
        queue=queue,
        process=ProcessMetrics().read,
        upstreams=forwarder.upstreams if forwarder is not None else None,
        cleanup=cleaner.snapshot,
        websockets=chat_sockets.snapshot,
        streams=stream_registry.snapshot,
        state=state_section,
    )
    metrics.read_health(reporter.health)
    if built.link is not None:
        built.link.read_health(reporter.health)
    chat = ChatHandler(
        settings,
        reactor,
        forwarder=forwarder,
        demo=DemoResponder(),
        queue=queue,
        streams=streams,
        executions=executions,
        idempotency=idempotency,
        metrics=metrics,
    )
    static = StaticFiles(settings.static_dir)
    app = InkFlowApp(
        settings,
        reactor,
        chat=chat,
        idempotency=idempotency,
        rate_take=built.state.rate_take,
        reporter=reporter,
        static=PageFiles.from_settings(static, settings),
        chat_socket=ChatSocketResource(
            settings,
            reactor,
            executions,
            chat_sockets,
            draining=lambda: connections.draining,
            rate_take=built.state.rate_take,
        ),
        metrics=metrics,
        server_view=built.link,
    )
    site = InkFlowSite(
        app.resource(),
        settings,
        reactor,
        app.sink_for,
        _request_logger(settings, metrics),
        admit_head=app.admit_head,
        connections=connections,
        cors_for=app.cors_for,
    )

    top = service.MultiService()
    core = InkFlowService(
        settings,
        reactor,
        connections,
        queue,
        static=static,
        chat_sockets=chat_sockets,
        streams=stream_registry,
        pool=pool,
        state=built,
    )
    core.setServiceParent(top)
    cleaner.service(settings.cleanup_interval).setServiceParent(top)
    http_service: service.Service
    if worker_fd is None:
        http_service = strports.service(settings.listen, site, reactor=reactor)
    else:
        http_service = StreamServerEndpointService(adopted_endpoint(IReactorSocket(reactor), worker_fd), site)
    http_service.setName("http")
    http_service.setServiceParent(core)
    if settings.admin_listen:
        # /metrics and the full health, for operators only (--admin-listen).
        admin_site = server.Site(app.admin_resource(), timeout=settings.idle_timeout)
        admin_site.displayTracebacks = False
        admin = strports.service(settings.admin_listen, admin_site, reactor=reactor)
        admin.setName("admin")
        admin.setServiceParent(core)
    if install_signals:
        reactor.callWhenRunning(install_rotation_signals, reactor)
    reactor.callWhenRunning(tune_gc)
    return top

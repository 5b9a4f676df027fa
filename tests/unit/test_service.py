"""
Tests for L{inkflow.server.service.makeService}, the one assembly point, on a
C{MemoryReactorClock} (nothing listens for real).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from inkflow.server.service import InkFlowService, makeService
from inkflow.server.workers import WorkerSupervisor
from inkflow.settings import Settings
from inkflow.state.workers import ParentStateService
from inkflow.web.admission import ChatQueue
from inkflow.web.connections import Connections
from inkflow.web.staticfiles import StaticFiles
from tests.support.processes import ProcessClock
from tests.support.site_treq import SiteTreq
from tests.unit.helpers import temp_path


def health(http: Any) -> Any:
    """
    GET /api/health from the HTTP service's own site, in memory.
    """
    client = SiteTreq(http.factory)
    response = client.get("http://inkflow.test/api/health")
    result: list[Any] = []
    response.addCallback(client.json_content).addCallback(result.append)
    return result[0]


class MakeServiceTests(TestCase):
    """
    What makeService builds from the settings.
    """

    def settings(self, **overrides: object) -> Settings:
        return Settings.defaults(upload_dir=temp_path(self), **overrides)

    def test_listens_on_the_configured_endpoint(self) -> None:
        """The HTTP service listens where --listen says, and stops cleanly with nothing in flight."""
        reactor = MemoryReactorClock()
        top = makeService(self.settings(listen="tcp:8123:interface=127.0.0.1"), reactor, install_signals=False)
        top.startService()
        (port, _factory, _backlog, interface) = reactor.tcpServers[0]
        self.assertEqual((port, interface), (8123, "127.0.0.1"))
        self.successResultOf(top.stopService())

    def test_shutdown_delay_keeps_listening_not_ready(self) -> None:
        """With --shutdown-delay, a stop first turns readiness off and keeps the port open for the delay."""
        reactor = MemoryReactorClock()
        top = makeService(self.settings(shutdown_delay=3.0), reactor, install_signals=False)
        top.startService()
        core = IServiceCollection(top).getServiceNamed("inkflow")
        http = IServiceCollection(core).getServiceNamed("http")
        stopped = top.stopService()
        self.assertTrue(core.connections.draining)
        self.assertEqual(health(http)["status"], "draining")
        reactor.advance(2.9)
        self.assertTrue(http.running)
        self.assertNoResult(stopped)
        reactor.advance(0.2)
        self.assertFalse(http.running)
        self.successResultOf(stopped)

    def test_has_the_cleanup_loop_and_core(self) -> None:
        """The service holds the core, the cleanup loop and the HTTP server, by name, and nothing else."""
        top = makeService(self.settings(), MemoryReactorClock(), install_signals=False)
        self.assertEqual(sorted(s.name for s in IServiceCollection(top)), ["cleanup", "inkflow"])
        core = IServiceCollection(top).getServiceNamed("inkflow")
        self.assertIsInstance(core, InkFlowService)
        self.assertEqual([s.name for s in IServiceCollection(core)], ["http"])

    def test_workers_make_a_supervisor(self) -> None:
        """With --workers 2 the service is the shared state's server, then the worker supervisor."""
        top = makeService(self.settings(workers=2), ProcessClock(), install_signals=False)
        state, supervisor = list(top)
        self.assertIsInstance(state, ParentStateService)
        self.assertIsInstance(supervisor, WorkerSupervisor)
        assert isinstance(supervisor, WorkerSupervisor)
        self.assertIsNotNone(supervisor.state_socket)

    def test_the_workers_parent_stops_the_state_after_the_workers(self) -> None:
        """The parent's state is served until every worker has drained: its stop waits for the supervisor's."""
        from twisted.application.service import Service
        from twisted.internet.defer import Deferred

        from inkflow.server.service import _StopLastFirst

        calls: list[str] = []
        drained: Deferred[None] = Deferred()

        class State(Service):
            def stopService(self) -> None:
                calls.append("state")

        class Workers(Service):
            def stopService(self) -> Deferred[None]:
                calls.append("workers")
                return drained

        parent = _StopLastFirst()
        State().setServiceParent(parent)
        Workers().setServiceParent(parent)
        parent.startService()
        stopped = parent.stopService()
        self.assertEqual(calls, ["workers"])
        drained.callback(None)
        self.assertEqual(calls, ["workers", "state"])
        self.successResultOf(stopped)

    def test_one_process_keeps_its_state_in_memory(self) -> None:
        """One process: health's state section says memory, shared, and the status stays ok."""
        reactor = MemoryReactorClock()
        top = makeService(self.settings(), reactor, install_signals=False)
        core = IServiceCollection(top).getServiceNamed("inkflow")
        snapshot = health(IServiceCollection(core).getServiceNamed("http"))
        self.assertEqual(snapshot["state"], {"backend": "memory", "shared": True, "fallbacks_total": 0})
        self.assertEqual(snapshot["status"], "ok")

    def test_proxy_mode_reports_upstreams(self) -> None:
        """With webhooks, health lists each upstream (redacted) and mode is proxy."""
        reactor = MemoryReactorClock()
        top = makeService(self.settings(webhook=("http://127.0.0.1:9/webhook/a?t=1",)), reactor, install_signals=False)
        core = IServiceCollection(top).getServiceNamed("inkflow")
        snapshot = health(IServiceCollection(core).getServiceNamed("http"))
        self.assertEqual(snapshot["mode"], "proxy")
        self.assertEqual(snapshot["upstreams"][0]["url"], "http://127.0.0.1:9")
        self.assertEqual(snapshot["upstreams"][0]["index"], 0)
        self.assertEqual(snapshot["upstreams"][0]["state"], "closed")

    def test_admin_listener_is_its_own_port(self) -> None:
        """With --admin-listen, a second port serves the admin resource."""
        reactor = MemoryReactorClock()
        top = makeService(
            self.settings(listen="tcp:8123:interface=127.0.0.1", admin_listen="tcp:9123:interface=127.0.0.1"),
            reactor,
            install_signals=False,
        )
        top.startService()
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [8123, 9123])
        self.successResultOf(top.stopService())


class _Busy:
    """
    A connection that stays open until told, as a streaming one does.
    """

    over_limit = False

    def __init__(self, connections: Connections) -> None:
        self.requests: list[Any] = []
        self.connections = connections
        self.aborted = False

    def close_when_idle(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True
        self.connections.gone(self)


class _Sockets:
    def __init__(self) -> None:
        self.closed: list[int] = []

    def close_all(self, code: int) -> None:
        self.closed.append(code)


class _Streams:
    def __init__(self) -> None:
        self.stopped: list[str] = []

    def stop_all(self, cause: str = "drain") -> int:
        self.stopped.append(cause)
        return 1


class DrainTests(TestCase):
    """
    Drain is handed what it stops: the connection registry, the chat
    sockets and the stream registry.
    """

    def test_drain_closes_sockets_ends_streams_then_cuts(self) -> None:
        """Sockets get 1001 at once; after --drain-timeout streams end with their error line; then the rest is cut."""
        reactor = MemoryReactorClock()
        settings = Settings.defaults(upload_dir=temp_path(self), drain_timeout=3.0)
        connections = Connections()
        busy = _Busy(connections)
        connections.opened(busy, settings.max_connections)
        sockets, streams = _Sockets(), _Streams()
        core = InkFlowService(
            settings,
            reactor,
            connections,
            ChatQueue(1, 1, 1.0, reactor),
            static=StaticFiles(settings.static_dir),
            chat_sockets=sockets,  # type: ignore[arg-type]
            streams=streams,  # type: ignore[arg-type]
        )
        core.startService()
        stopped = core.stopService()
        self.assertEqual((sockets.closed, streams.stopped, connections.draining), ([1001], [], True))
        reactor.advance(3.0)
        self.assertEqual(streams.stopped, ["drain"])
        self.assertNoResult(stopped)
        reactor.advance(2.0)  # the streams' grace
        self.assertTrue(busy.aborted)
        self.successResultOf(stopped)


class UploadFolderCheckTests(TestCase):
    """
    The start-up check of --upload-dir states the rule the uploads enforce.
    """

    def start_with_mode(self, mode: int) -> list[LogLevel]:
        folder = temp_path(self)
        os.makedirs(folder)
        os.chmod(folder, mode)
        top = makeService(Settings.defaults(upload_dir=folder), MemoryReactorClock(), install_signals=False)
        with capturedLogs() as events:
            top.startService()
        self.successResultOf(top.stopService())
        return [e["log_level"] for e in events if "upload folder" in e.get("log_format", "")]

    def test_private_folder_is_quiet(self) -> None:
        """Mode 0700: nothing said."""
        self.assertEqual(self.start_with_mode(0o700), [])

    def test_readable_by_others_is_a_warning(self) -> None:
        """Mode 0755: a warning (uploads still work there)."""
        self.assertEqual(self.start_with_mode(0o755), [LogLevel.warn])

    def test_world_writable_is_an_error(self) -> None:
        """Mode 0777: an error (the uploads refuse that folder)."""
        self.assertEqual(self.start_with_mode(0o777), [LogLevel.error])


class GarbageCollectorTests(TestCase):
    """
    The serving process tunes the garbage collector once its reactor runs, never at build time.
    """

    def test_tuned_when_the_reactor_runs(self) -> None:
        """makeService leaves gc alone; the reactor's start freezes start-up objects and raises the thresholds."""

        from inkflow.server import service as service_module

        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        reactor = MemoryReactorClock()
        makeService(Settings.defaults(upload_dir=temp_path(self)), reactor, install_signals=False)
        self.assertEqual(gc.get_threshold(), before)
        reactor.run()  # MemoryReactor runs its when-running hooks
        self.assertEqual(gc.get_threshold(), service_module.GC_THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), 0)

"""
Tests for L{inkflow.server.workers}, the parent's side of C{--workers N}: the
settings' trip to the workers, and the supervisor on a fake process reactor.
"""

from __future__ import annotations

import json
from typing import cast

from twisted.logger import ILogObserver, LogEvent, LogLevel, eventAsJSON, globalLogPublisher
from twisted.trial.unittest import TestCase

from inkflow.server.workers import (
    SETTINGS_ENV,
    SLOT_ENV,
    STATE_SOCKET_ENV,
    WORKER_FD,
    WorkerSupervisor,
    _WorkerProtocol,
    settings_from_env,
    settings_to_env,
)
from inkflow.settings import ConfigError, Settings
from tests.support.processes import ProcessClock
from tests.unit.helpers import temp_path


class SettingsTripTests(TestCase):
    """
    L{settings_to_env} / L{settings_from_env}: what the parent sends is what
    the worker loads, through start-up's validation.
    """

    def test_defaults_survive(self) -> None:
        """The defaults come back equal."""
        settings = Settings.defaults(upload_dir=temp_path(self))
        self.assertEqual(settings_from_env(settings_to_env(settings)), settings)

    def test_every_kind_of_value_survives(self) -> None:
        """Lists, header pairs with commas, flags, floats and an emptied list with a default come back equal."""
        settings = Settings.defaults(
            upload_dir=temp_path(self),
            listen="tcp:8123:interface=127.0.0.1",
            workers=3,
            webhook=("http://127.0.0.1:5678/webhook/a", "http://127.0.0.1:5679/webhook/b"),
            webhook_header=(("Authorization", "Bearer a,b"), ("X-Extra", "1")),
            static_only=True,
            drain_timeout=2.5,
            retry_on=(),
            max_files=0,
            allowed_types=(),
        )
        self.assertEqual(settings_from_env(settings_to_env(settings)), settings)

    def test_a_bad_value_is_refused(self) -> None:
        """A value start-up would refuse is refused in the worker too, naming the option."""
        raw = json.loads(settings_to_env(Settings.defaults(upload_dir=temp_path(self))))
        raw["max-files"] = -1
        with self.assertRaises(ConfigError) as caught:
            settings_from_env(json.dumps(raw))
        self.assertIn("--max-files", str(caught.exception))


class WorkerSupervisorTests(TestCase):
    """
    L{WorkerSupervisor} on a L{ProcessClock}.
    """

    def make(self, workers: int = 2) -> tuple[ProcessClock, WorkerSupervisor, Settings]:
        settings = Settings.defaults(
            upload_dir=temp_path(self), workers=workers, listen="tcp:8123:interface=127.0.0.1", drain_timeout=10.0
        )
        reactor = ProcessClock()
        supervisor = WorkerSupervisor(
            settings, reactor, python="/usr/bin/python3", state_socket=lambda: "/run/inkflow-state/state.sock"
        )
        supervisor.privilegedStartService()
        supervisor.startService()
        return reactor, supervisor, settings

    def test_listens_once_and_never_accepts(self) -> None:
        """One TCP listen where --listen says; the parent takes its port out of the reader set."""
        reactor, _, _ = self.make()
        ((port, _factory, _backlog, interface),) = reactor.tcpServers
        self.assertEqual((port, interface), (8123, "127.0.0.1"))
        self.assertNotIn(reactor.listening[0], reactor.readers)

    def test_starts_each_worker_with_the_socket_and_the_settings(self) -> None:
        """N workers: python -m inkflow.server.worker, the socket as fd 3; settings, slot and state socket in the environment."""
        reactor, _, settings = self.make(workers=2)
        self.assertEqual(len(reactor.spawned), 2)
        for process in reactor.spawned:
            self.assertEqual(process.args, ("/usr/bin/python3", "-m", "inkflow.server.worker"))
            self.assertEqual(process.child_fds, {0: "w", 1: "r", 2: "r", WORKER_FD: 77})
            assert process.env is not None
            self.assertEqual(settings_from_env(process.env[SETTINGS_ENV]), settings)
            self.assertEqual(process.env[STATE_SOCKET_ENV], "/run/inkflow-state/state.sock")
        self.assertEqual([p.env[SLOT_ENV] for p in reactor.spawned if p.env is not None], ["0", "1"])

    def test_a_dead_worker_is_replaced(self) -> None:
        """A worker killed by a signal is started again after 0.5 s."""
        reactor, _, _ = self.make(workers=1)
        reactor.last.end(signal="KILL")
        reactor.advance(0.5)
        self.assertEqual(len(reactor.spawned), 2)

    def test_stop_drains_then_kills_then_closes_the_socket(self) -> None:
        """SIGTERM to each; SIGKILL after --drain-timeout + 5 s; the socket closes once all have exited."""
        reactor, supervisor, _ = self.make(workers=2)
        first, second = reactor.spawned
        stopped = supervisor.stopService()
        self.assertEqual((first.signals, second.signals), (["TERM"], ["TERM"]))
        first.end(code=0)
        reactor.advance(15.0)
        self.assertEqual(second.signals, ["TERM", "KILL"])
        self.assertFalse(reactor.listening[0].closed)
        self.assertNoResult(stopped)
        second.end(signal="KILL")
        self.successResultOf(stopped)
        self.assertTrue(reactor.listening[0].closed)

    def test_a_unix_endpoint_is_refused(self) -> None:
        """Workers share a TCP port: any other endpoint is a ValueError at start."""
        settings = Settings.defaults(upload_dir=temp_path(self))
        supervisor = WorkerSupervisor(settings.replace(listen="unix:/tmp/x.sock"), ProcessClock())
        self.assertRaises(ValueError, supervisor.privilegedStartService)


class RelayTests(TestCase):
    """
    L{_WorkerProtocol}: a worker's JSON log lines become the parent's events.
    """

    def test_json_lines_are_relayed_with_the_worker_pid(self) -> None:
        """A JSON event split over two reads is published once, tagged with the worker's pid."""
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        protocol = _WorkerProtocol()
        protocol.pid = 4321
        event = {
            "log_format": "hello {who}",
            "who": "x",
            "log_namespace": "inkflow.test",
            "log_level": LogLevel.info,
            "log_time": 1.0,
        }
        line = eventAsJSON(event).encode()  # as a worker's JSON observer writes it
        protocol.outReceived(line[:10])
        protocol.outReceived(line[10:] + b"\n")
        relayed = [e for e in events if e.get("log_namespace") == "inkflow.test"]
        self.assertEqual(len(relayed), 1)
        self.assertEqual(relayed[0]["worker_pid"], 4321)
        self.assertEqual(relayed[0]["who"], "x")

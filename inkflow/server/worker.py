"""
C{--workers N}: several processes serving one listening socket.

The parent (the twistd process) opens the socket once and starts N worker
processes (C{python -m inkflow.server.worker}), each handed the socket as file
descriptor 3 and adopting it with C{reactor.adoptStreamPort}, each with its own
reactor, queue and connection limit.  The parent:

 - restarts a worker that dies, with a doubling delay;
 - relays the workers' log events (JSON lines on their stdout) into its own
   log, tagged with C{worker_pid}, so rotation and the log format stay the
   parent's;
 - on SIGTERM/SIGINT forwards SIGTERM to every worker (each drains its own
   in-flight requests) and waits for them, SIGKILLing stragglers after
   C{--drain-timeout} plus a margin.

Each worker answers C{/api/health} with its own pid: limits and counters there
are per worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogBeginner, globalLogPublisher
from twisted.python.failure import Failure

from inkflow.settings import Settings

__all__ = ["WorkerSupervisor", "listening_socket", "main"]

log = Logger()

SETTINGS_ENV = "INKFLOW_WORKER_SETTINGS"
WORKER_FD = 3
MIN_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
#: A worker up this long has its restart delay reset.
STABLE_AFTER = 10.0
#: Beyond the drain timeout, how long to wait before SIGKILL.
KILL_MARGIN = 5.0


def listening_socket(listen: str) -> socket.socket:
    """
    Open the socket a C{tcp:PORT[:interface=ADDR][:backlog=N]} endpoint names.

    @raise ValueError: for any other kind of endpoint (workers share a TCP port).
    """
    from twisted.internet.endpoints import _parseServer

    kind, args, kwargs = _parseServer(listen, None)
    if kind != "TCP":
        raise ValueError(f"--workers > 1 needs a tcp: endpoint, not {listen!r}")
    port = int(args[0])
    interface = kwargs.get("interface", "")
    backlog = int(kwargs.get("backlog", 50))
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((interface, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def settings_to_env(settings: Settings) -> str:
    return json.dumps(dataclasses.asdict(settings))


def settings_from_env(text: str) -> Settings:
    values = json.loads(text)
    for f in dataclasses.fields(Settings):
        value = values[f.name]
        if isinstance(value, list):
            values[f.name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return Settings(**values)


class _WorkerProtocol(ProcessProtocol):
    """
    One worker: relays its log lines, reports its end to the supervisor.
    """

    def __init__(self, supervisor: WorkerSupervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.pid: int | None = None
        self.started = 0.0
        self._out = b""
        self._err = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            self._relay(line)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            if line.strip():
                log.warn("worker {worker_pid}: {line}", worker_pid=self.pid, line=line.decode("utf-8", "replace"))

    def _relay(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = eventFromJSON(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            log.info("worker {worker_pid}: {line}", worker_pid=self.pid, line=line.decode("utf-8", "replace"))
            return
        event["worker_pid"] = self.pid
        level = event.get("log_level")
        event["log_system"] = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')} worker {self.pid}"
        globalLogPublisher(event)

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(service.Service):
    """
    Starts, watches and stops the worker processes.

    @param reactor: provides C{spawnProcess} and time.
    @param python: the interpreter that runs the workers.
    """

    name = "workers"

    def __init__(self, settings: Settings, reactor: Any, python: str = sys.executable) -> None:
        self.settings = settings
        self.reactor = reactor
        self.python = python
        self.sock: socket.socket | None = None
        self.workers: dict[int, _WorkerProtocol] = {}
        self._delays: dict[int, float] = {}
        self._pending: dict[int, Any] = {}
        self.restarts = 0

    def privilegedStartService(self) -> None:
        # Bind while twistd may still be privileged (a port under 1024).
        self.sock = listening_socket(self.settings.listen)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self.sock is None:
            self.sock = listening_socket(self.settings.listen)
        port = self.sock.getsockname()[1]
        log.info(
            "InkFlow listening on {port} with {workers} workers",
            port=port,
            workers=self.settings.workers,
        )
        for slot in range(self.settings.workers):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._pending.pop(slot, None)
        if not self.running or self.sock is None:
            return
        env = dict(os.environ)
        env[SETTINGS_ENV] = settings_to_env(self.settings)
        env["PYTHONUNBUFFERED"] = "1"
        protocol = _WorkerProtocol(self, slot)
        protocol.started = self.reactor.seconds()
        self.reactor.spawnProcess(
            protocol,
            self.python,
            [self.python, "-m", "inkflow.server.worker"],
            env=env,
            childFDs={0: "w", 1: "r", 2: "r", WORKER_FD: self.sock.fileno()},
        )
        self.workers[slot] = protocol
        log.info("Worker {slot} started: pid {worker_pid}", slot=slot, worker_pid=protocol.pid)

    def worker_ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        if self.workers.get(protocol.slot) is protocol:
            del self.workers[protocol.slot]
        if not self.running:
            log.info("Worker {worker_pid} stopped ({reason})", worker_pid=protocol.pid, reason=_describe(reason))
            return
        lived = self.reactor.seconds() - protocol.started
        delay = self._delays.get(protocol.slot, MIN_RESTART_DELAY)
        if lived >= STABLE_AFTER:
            delay = MIN_RESTART_DELAY
        self._delays[protocol.slot] = min(MAX_RESTART_DELAY, delay * 2)
        self.restarts += 1
        log.warn(
            "Worker {worker_pid} ended ({reason}) after {lived:.1f}s; restarting in {delay:.1f}s",
            worker_pid=protocol.pid,
            reason=_describe(reason),
            lived=lived,
            delay=delay,
        )
        self._pending[protocol.slot] = self.reactor.callLater(delay, self._spawn, protocol.slot)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, signal.SIGTERM)

        def kill_all() -> None:
            for worker in workers:
                _signal(worker, signal.SIGKILL)

        kill = self.reactor.callLater(self.settings.drain_timeout + KILL_MARGIN, kill_all)
        log.info("Stopping {count} workers (each drains its in-flight requests)", count=len(workers))

        def done(_: object) -> None:
            if kill.active():
                kill.cancel()
            if self.sock is not None:
                self.sock.close()
                self.sock = None

        d = defer.gatherResults([w.ended for w in workers], consumeErrors=True)
        d.addBoth(done)
        return d  # type: ignore[return-value]


def _signal(worker: _WorkerProtocol, signum: int) -> None:
    try:
        if worker.transport is not None:
            worker.transport.signalProcess(signal.Signals(signum).name.removeprefix("SIG"))
    except (error.ProcessExitedAlready, OSError):
        pass


def _describe(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, error.ProcessTerminated):
        if value.signal is not None:
            return f"signal {signal.Signals(value.signal).name}"
        return f"exit status {value.exitCode}"
    return "exit status 0"


class _AdoptedPort(service.Service):
    """
    Serves a site on a listening socket inherited from the parent.
    """

    def __init__(self, reactor: Any, fd: int, factory: Any) -> None:
        self.reactor = reactor
        self.fd = fd
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        probe = socket.socket(fileno=self.fd)
        family = probe.family
        probe.detach()
        self.port = self.reactor.adoptStreamPort(self.fd, family, self.factory)
        os.close(self.fd)  # the port holds its own duplicate

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


def adopted_port(reactor: Any, factory: Any, fd: int = WORKER_FD) -> service.Service:
    return _AdoptedPort(reactor, fd, factory)


def main() -> None:  # pragma: no cover - runs in a worker process
    """
    A worker: settings from the parent, the socket on fd 3, JSON log lines on
    stdout for the parent to relay.
    """
    from twisted.internet import reactor

    from inkflow.server.logs import make_observer
    from inkflow.server.service import makeService

    settings = settings_from_env(os.environ.pop(SETTINGS_ENV))
    observer = make_observer("json", level=settings.log_level, stream=sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    top = makeService(settings, reactor, worker_fd=WORKER_FD)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    main()

"""
C{--workers N}, the parent's side: one listening socket, N worker processes
serving it, supervised.

The parent (the twistd process) listens on C{--listen} (a C{tcp:} endpoint)
once and never accepts on it; it starts N workers (C{python -m
inkflow.server.worker}, see L{inkflow.server.worker}), each handed the socket
as file descriptor 3 and its settings in the environment, each with its own
reactor, queue and connection limit.  The parent:

 - restarts a worker that dies (L{inkflow.supervisor.Supervisor}: after
   0.5 s, doubling up to 30 s, back to 0.5 s after a worker that stayed up
   10 s);
 - relays the workers' log events (JSON lines on their stdout) into its own
   log, tagged with C{worker_pid}, so rotation and the log format stay the
   parent's;
 - on SIGTERM/SIGINT sends SIGTERM to every worker (each drains its own
   in-flight requests) and waits for them, SIGKILLing stragglers after
   C{--drain-timeout} plus a margin.

This module never imports L{inkflow.server.service} (which imports it); the
worker's entry point does.  The parent also serves the shared state
(L{inkflow.state.workers.ParentStateService}): each worker gets its socket in
C{INKFLOW_STATE_SOCKET} and its slot in L{SLOT_ENV}, and reaches it over AMP
for the idempotency keys, the rate limit, the execution map and the whole
server's C{/metrics} and C{/api/health}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IReactorFDSet, IReactorProcess, IReactorSocket, IReadDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from inkflow.page import page_config
from inkflow.settings import OPTIONS, Settings, load_settings
from inkflow.state.workers import SOCKET_ENV
from inkflow.supervisor import Child, ChildCommand, ChildProtocol, Supervisor, SupervisorHooks

__all__ = [
    "SETTINGS_ENV",
    "SLOT_ENV",
    "STATE_SOCKET_ENV",
    "WORKER_FD",
    "WorkerSupervisor",
    "adopted_endpoint",
    "settings_from_env",
    "settings_to_env",
]

log = Logger()

SETTINGS_ENV = "INKFLOW_WORKER_SETTINGS"
#: The environment variable giving a worker its slot (the label of its metrics).
SLOT_ENV = "INKFLOW_WORKER_SLOT"
#: The environment variable naming the parent's state socket.
STATE_SOCKET_ENV = SOCKET_ENV
WORKER_FD = 3
MIN_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
#: A worker up this long has its restart delay reset.
STABLE_AFTER = 10.0
#: Beyond the drain timeout, how long to wait before SIGKILL.
KILL_MARGIN = 5.0


# --- settings, parent to worker

#: The [page] table's place among the raw options (no option has brackets in its name).
PAGE_KEY = "[page]"


def settings_to_env(settings: Settings) -> str:
    """
    The settings as the raw option values a worker loads them from
    (L{settings_from_env}): every option as a flag would give it, so the worker
    parses and validates them exactly as start-up did.
    """
    raw: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(settings, option.attr)
        if option.repeatable:
            items = [f"{item[0]}: {item[1]}" if isinstance(item, tuple) else item for item in value]
            # Empty: [] means "not given" (the default); [""] means "given, and empty".
            raw[option.name] = items or ([""] if option.default_value() else [])
        else:
            raw[option.name] = value
    raw[PAGE_KEY] = settings.page.public()
    return json.dumps(raw)


def settings_from_env(text: str) -> Settings:
    """
    Load a worker's settings from L{settings_to_env}'s text, through the same
    parsing and validation as start-up.

    @raise inkflow.settings.ConfigError: a value does not pass.
    """
    flags = json.loads(text)
    page = page_config(flags.pop(PAGE_KEY, None))
    return load_settings(flags=flags, environ={}, overrides={"page": page})


# --- the socket


class _NeverAccepts(Factory):
    """
    The parent's factory on the workers' socket: the parent stops reading
    from it at once, so it never gets a connection.
    """

    protocol = Protocol

    def logPrefix(self) -> str:
        return "InkFlow workers' socket"


def _listen_for_workers(reactor: IReactorProcess, listen: str) -> IListeningPort:
    """
    Listen on C{listen} (a TCP endpoint) and stop accepting: the workers do.

    @raise ValueError: for any other kind of endpoint.
    """
    endpoint = serverFromString(reactor, listen)
    if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        raise ValueError(f"--workers > 1 needs a tcp: endpoint, not {listen!r}")
    result: list[IListeningPort | Failure] = []
    endpoint.listen(_NeverAccepts()).addBoth(result.append)  # synchronous for TCP
    (port,) = result
    if isinstance(port, Failure):
        port.raiseException()
    assert not isinstance(port, Failure)
    IReactorFDSet(reactor).removeReader(IReadDescriptor(port))
    return port


def adopted_endpoint(reactor: IReactorSocket, fd: int = WORKER_FD) -> AdoptedStreamServerEndpoint:
    """
    The endpoint a worker serves: the listening socket inherited as C{fd}.
    """
    probe = socket.socket(fileno=fd)
    family = probe.family
    probe.detach()
    return AdoptedStreamServerEndpoint(reactor, fd, family)


# --- the workers


class _WorkerProtocol(ChildProtocol):
    """
    One worker's output: JSON log events on stdout, relayed into the parent's
    log; anything on stderr, logged as a warning.
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self._out = b""
        self._err = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

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


class WorkerSupervisor(service.Service, SupervisorHooks):
    """
    Opens the socket, starts, watches and stops the worker processes.

    @param reactor: starts the workers; must also provide time, TCP and the
        reader set (every real reactor does).
    @param python: the interpreter that runs the workers.
    @param state_socket: the path of the parent's state socket (asked when a
        worker is started: the state service listens first).
    """

    name = "workers"

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorProcess,
        python: str = sys.executable,
        state_socket: Callable[[], str] | None = None,
    ) -> None:
        if settings_from_env(settings_to_env(settings)) != settings:
            raise RuntimeError("the settings do not survive the trip to the workers")
        self.settings = settings
        self.reactor = reactor
        self.python = python
        self.state_socket = state_socket
        self.port: IListeningPort | None = None
        self._supervisor = Supervisor(
            reactor,
            self._command,
            slots=settings.workers,
            grace=settings.drain_timeout + KILL_MARGIN,
            min_restart_delay=MIN_RESTART_DELAY,
            max_restart_delay=MAX_RESTART_DELAY,
            stable_after=STABLE_AFTER,
            hooks=self,
            protocol=lambda slot: _WorkerProtocol(),
        )

    def privilegedStartService(self) -> None:
        # Bind while twistd may still be privileged (a port under 1024).
        self.port = _listen_for_workers(self.reactor, self.settings.listen)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.port = _listen_for_workers(self.reactor, self.settings.listen)
        log.info(
            "InkFlow listening on {port} with {workers} workers",
            port=getattr(self.port.getHost(), "port", None),
            workers=self.settings.workers,
        )
        self._supervisor.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        log.info("Stopping {count} workers (each drains its in-flight requests)", count=len(self._supervisor.children))
        stopped = self._supervisor.stopService()

        def close(_: object) -> Deferred[None] | None:
            port, self.port = self.port, None
            return port.stopListening() if port is not None else None

        return stopped.addCallback(close)

    def _command(self, slot: int) -> ChildCommand:
        assert self.port is not None
        env = dict(os.environ)
        env[SETTINGS_ENV] = settings_to_env(self.settings)
        env["PYTHONUNBUFFERED"] = "1"
        env[SLOT_ENV] = str(slot)
        env.pop(STATE_SOCKET_ENV, None)
        if self.state_socket is not None and self.state_socket():
            env[STATE_SOCKET_ENV] = self.state_socket()
        return ChildCommand(
            (self.python, "-m", "inkflow.server.worker"),
            env,
            {0: "w", 1: "r", 2: "r", WORKER_FD: IReadDescriptor(self.port).fileno()},
        )

    # --- what the supervisor tells

    def child_started(self, child: Child) -> None:
        log.info("Worker {slot} started: pid {worker_pid}", slot=child.slot, worker_pid=child.pid)

    def start_failed(self, slot: int, error: OSError, restart_in: float) -> None:
        log.error(
            "Worker {slot} could not be started ({error}); trying again in {delay:.1f}s",
            slot=slot,
            error=str(error),
            delay=restart_in,
        )

    def child_ended(self, child: Child, reason: Failure, how: str, restart_in: float | None) -> None:
        if restart_in is None:
            log.info("Worker {worker_pid} stopped ({reason})", worker_pid=child.pid, reason=how)
            return
        log.warn(
            "Worker {worker_pid} {reason} after {lived:.1f}s; restarting in {delay:.1f}s",
            worker_pid=child.pid,
            reason=how,
            lived=child.lived,
            delay=restart_in,
        )

    def child_killed(self, child: Child, grace: float) -> None:
        log.warn(
            "Worker {worker_pid} still running {grace:g}s after SIGTERM; sending SIGKILL",
            worker_pid=child.pid,
            grace=grace,
        )

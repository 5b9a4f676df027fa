"""
``inkflow watchdog``: run a command, restart it when it exits or hangs.

The supervisor is a small L{twisted.application.service.Service} built on
C{reactor.spawnProcess}.  It is not a L{twisted.runner.procmon.ProcessMonitor}
because that one does not fit a hang watchdog:

  - its C{stopService} does not wait for the child to exit, so when the
    watchdog itself is told to stop, the reactor is gone before the
    SIGKILL-after-grace could be sent;
  - it reports why a child ended (exit code or signal) only to a private method;
  - it restarts at once any child that lived longer than a second, so a child
    crashing every few seconds is restarted in a hot loop.

What this one does:

  - starts COMMAND with the watchdog's environment, stdin closed, stdout and
    stderr shared with the watchdog;
  - when the child exits, for whatever reason, logs the exit code or signal and
    starts it again after a delay that doubles from C{min_restart_delay} up to
    C{max_restart_delay}, and falls back to C{min_restart_delay} once a child
    has stayed up for C{stable_after} seconds;
  - polls the health URL every C{interval} seconds (each poll bounded by
    C{min(0.8 * interval, 5)} seconds); after C{failures} failed polls in a row it
    sends SIGTERM, then SIGKILL after C{grace} seconds, and the exit handling
    above restarts it.  Failures are not counted until the child has answered
    once or C{start_grace} seconds have passed since it was started;
  - on SIGTERM / SIGINT stops the child the same way (SIGTERM, SIGKILL after
    C{grace}) and exits 0.

Nothing here imports the global reactor except L{main}.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionRefusedError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.error import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

__all__ = [
    "DEFAULT_HEALTH_URL",
    "HTTPHealthProbe",
    "HealthCheckFailed",
    "RestartBackoff",
    "Watchdog",
    "WatchdogConfig",
    "describe_exit",
    "main",
]

DEFAULT_HEALTH_URL = "http://127.0.0.1:8000/api/health"
MAX_PROBE_TIMEOUT = 5.0
PROBE_SHARE = 0.8

log = Logger(namespace="inkflow.tools.watchdog")


# --- the few reactor and transport methods the watchdog uses.  Twisted's own
# --- interfaces are zope Interfaces, which mypy cannot check without a plugin.


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class ChildTransport(Protocol):
    pid: int | None

    def signalProcess(self, signalID: str | int) -> None: ...

    def closeStdin(self) -> None: ...


class WatchdogReactor(Protocol):
    """
    What L{Watchdog} needs from a reactor: time, delayed calls and processes.
    """

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall: ...

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> ChildTransport: ...


HealthProbe = Callable[[], "Deferred[None]"]
"""
One health check: a Deferred that fires with None when the child is healthy and
fails (with a L{HealthCheckFailed} or any other error) when it is not.
"""


@dataclass(frozen=True)
class WatchdogConfig:
    """
    What to run and how to watch it.  Times are in seconds.

    @ivar command: the child's argv; C{command[0]} is looked up on C{PATH}.
    @ivar health_url: polled with GET; any 200 is healthy.  None: no health
        checks, only restarts on exit.
    """

    command: tuple[str, ...]
    health_url: str | None = DEFAULT_HEALTH_URL
    interval: float = 2.0
    failures: int = 3
    grace: float = 10.0
    start_grace: float = 30.0
    min_restart_delay: float = 1.0
    max_restart_delay: float = 60.0
    stable_after: float = 10.0

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("no command to run")
        if self.interval <= 0:
            raise ValueError("interval must be greater than 0")
        if self.failures < 1:
            raise ValueError("failures must be at least 1")
        if self.grace < 0 or self.start_grace < 0 or self.stable_after < 0:
            raise ValueError("grace periods must not be negative")
        if self.min_restart_delay <= 0:
            raise ValueError("min-restart-delay must be greater than 0")
        if self.max_restart_delay < self.min_restart_delay:
            raise ValueError("max-restart-delay must not be less than min-restart-delay")

    @property
    def probe_timeout(self) -> float:
        """
        How long one health check may take: 80% of the interval, at most 5
        seconds.  Shorter than the interval, so that a hung child fails one check
        per interval rather than one every other interval.
        """
        return min(self.interval * PROBE_SHARE, MAX_PROBE_TIMEOUT)


class RestartBackoff:
    """
    The delay before each restart: doubling from C{minimum} up to C{maximum},
    back to C{minimum} after a child that stayed up C{stable_after} seconds.
    """

    def __init__(self, minimum: float, maximum: float, stable_after: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.stable_after = stable_after
        self._next = minimum

    def next_delay(self, uptime: float) -> float:
        """
        The delay before restarting a child that ran for C{uptime} seconds.
        """
        if uptime >= self.stable_after:
            self._next = self.minimum
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


def describe_exit(reason: Failure) -> str:
    """
    How a child ended, for the log: its exit code or the signal that killed it.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = "unknown signal"
            return f"was killed by signal {value.signal} ({name})"
        return f"exited with code {value.exitCode}"
    return f"ended: {value}"


class HealthCheckFailed(Exception):
    """
    The health URL answered, but not with 200.
    """


def describe_probe_failure(reason: Failure, timeout: float) -> str:
    """
    One short line saying why a health check failed.
    """
    if reason.check(DeferredTimeoutError, CancelledError):
        return f"no answer within {timeout:g}s"
    if reason.check(ConnectingCancelledError):
        return f"could not connect within {timeout:g}s"
    if reason.check(ConnectionRefusedError):
        return "connection refused"
    if reason.check(HealthCheckFailed, ConnectError):
        return str(reason.value)
    inner = getattr(reason.value, "reasons", None)  # twisted.web's ResponseFailed and friends
    if isinstance(inner, list) and inner and isinstance(inner[0], Failure):
        return describe_probe_failure(inner[0], timeout)
    text = str(reason.value).strip().splitlines()
    return f"{type(reason.value).__name__}: {text[0] if text else ''}".rstrip(": ")


class HTTPHealthProbe:
    """
    GET the health URL with a whole-exchange timeout; a 200 is healthy.

    A fresh connection per check (no pool of kept-alive connections), so a
    restarted child is never asked over a connection to its predecessor.
    """

    def __init__(self, reactor: Any, url: str, timeout: float) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool
        from twisted.web.iweb import IAgent

        self._clock = cast(IReactorTime, reactor)
        self._url = url
        self._timeout = timeout
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, connectTimeout=timeout, pool=pool)
        self._client = HTTPClient(cast("IAgent", agent))

    def __call__(self) -> Deferred[None]:
        headers: dict[bytes | str, list[bytes | str]] = {"User-Agent": ["inkflow-watchdog"]}
        d = self._client.get(self._url, headers=headers)

        def check(response: Any) -> Deferred[None]:
            code = int(response.code)
            body: Deferred[bytes] = response.content()

            def judge(_: bytes) -> None:
                if code != 200:
                    raise HealthCheckFailed(f"HTTP {code}")

            return body.addCallback(judge)

        result: Deferred[None] = d.addCallback(check)
        result.addTimeout(self._timeout, self._clock)
        return result


class _ChildProtocol(ProcessProtocol):
    """
    Tells the watchdog when its child has ended.
    """

    def __init__(self, ended: Callable[[_ChildProtocol, Failure], None]) -> None:
        self._ended = ended

    def processEnded(self, reason: Failure) -> None:
        self._ended(self, reason)


class _Child:
    """
    One run of the command.
    """

    def __init__(self, protocol: _ChildProtocol, transport: ChildTransport, started: float) -> None:
        self.protocol = protocol
        self.transport = transport
        self.pid = transport.pid
        self.started = started
        self.answered = False
        self.failures = 0
        self.stop_reason: str | None = None
        self.kill_call: DelayedCall | None = None

    def signal(self, name: str) -> None:
        with contextlib.suppress(ProcessExitedAlready):  # its end is on its way
            self.transport.signalProcess(name)


class Watchdog(Service):
    """
    Runs one command, restarts it when it exits, replaces it when it hangs.

    @param reactor: time, delayed calls and C{spawnProcess}.
    @param probe: one health check; None turns health checking off.
    @param env: the child's environment (default: the watchdog's own).
    """

    def __init__(
        self,
        reactor: WatchdogReactor,
        config: WatchdogConfig,
        probe: HealthProbe | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._probe = probe
        self._env = dict(os.environ if env is None else env)
        self._backoff = RestartBackoff(config.min_restart_delay, config.max_restart_delay, config.stable_after)
        self._child: _Child | None = None
        self._restart_call: DelayedCall | None = None
        self._poll: LoopingCall | None = None
        self._probing: Deferred[None] | None = None
        self._stopping = False
        self._stopped: list[Deferred[None]] = []
        self.starts = 0

    @property
    def child_pid(self) -> int | None:
        """
        The running child's pid, or None between runs.
        """
        return self._child.pid if self._child is not None else None

    # --- service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        log.info(
            "watchdog started (pid {pid}): health {health_url}, every {interval}s, "
            "{failures} failures in a row replace the child",
            pid=os.getpid(),
            health_url=self._config.health_url or "off",
            interval=self._config.interval,
            failures=self._config.failures,
        )
        self._spawn()
        if self._probe is not None:
            self._poll = LoopingCall(self._check_health)
            self._poll.clock = cast(IReactorTime, self._reactor)
            self._poll.start(self._config.interval, now=False).addErrback(self._poll_died)

    def stopService(self) -> Deferred[None]:
        """
        Stop the child (SIGTERM, SIGKILL after the grace period); the Deferred
        fires once it has exited.
        """
        super().stopService()
        self._stopping = True
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._probing is not None:
            self._probing.cancel()
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        if self._child is None:
            log.info("watchdog stopped; no child running")
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._stopped.append(done)
        self._terminate(self._child, "the watchdog is stopping")
        return done

    # --- the child

    def _spawn(self) -> None:
        self._restart_call = None
        if self._stopping:
            return
        command = list(self._config.command)
        protocol = _ChildProtocol(self._child_ended)
        now = self._reactor.seconds()
        try:
            transport = self._reactor.spawnProcess(
                protocol, command[0], command, env=self._env, childFDs={0: "w", 1: 1, 2: 2}
            )
        except OSError as e:
            log.error("could not start {command}: {error}", command=shlex.join(command), error=str(e))
            self._schedule_restart(0.0, f"start failed: {e}")
            return
        # Known as the current child before stdin closes: only then can it be seen to end.
        self._child = _Child(protocol, transport, now)
        transport.closeStdin()
        self.starts += 1
        log.info(
            "started child pid {pid}: {command}",
            pid=transport.pid,
            command=shlex.join(command),
            start=self.starts,
        )

    def _child_ended(self, protocol: _ChildProtocol, reason: Failure) -> None:
        child = self._child
        if child is None or child.protocol is not protocol:
            return
        self._child = None
        if child.kill_call is not None and child.kill_call.active():
            child.kill_call.cancel()
        uptime = self._reactor.seconds() - child.started
        how = describe_exit(reason)
        log.info(
            "child pid {pid} {how} after {uptime:.1f}s",
            pid=child.pid,
            how=how,
            uptime=uptime,
            exit_code=getattr(reason.value, "exitCode", None),
            signal=getattr(reason.value, "signal", None),
        )
        if self._stopping:
            log.info("watchdog stopped")
            waiting, self._stopped = self._stopped, []
            for d in waiting:
                d.callback(None)
            return
        ended = f"child pid {child.pid} {how}"
        why = f"{child.stop_reason}; {ended}" if child.stop_reason else ended
        self._schedule_restart(uptime, why)

    def _schedule_restart(self, uptime: float, why: str) -> None:
        delay = self._backoff.next_delay(uptime)
        log.warn("restarting the child in {delay:g}s ({reason})", delay=delay, reason=why)
        self._restart_call = self._reactor.callLater(delay, self._spawn)

    def _terminate(self, child: _Child, reason: str) -> None:
        """
        SIGTERM now, SIGKILL after the grace period if it is still there.
        """
        if child.stop_reason is not None and child.kill_call is not None:
            return  # already on its way out
        child.stop_reason = reason
        log.warn(
            "sending SIGTERM to child pid {pid} ({reason}); SIGKILL in {grace:g}s if it is still running",
            pid=child.pid,
            reason=reason,
            grace=self._config.grace,
        )
        child.signal("TERM")
        child.kill_call = self._reactor.callLater(self._config.grace, self._kill, child)

    def _kill(self, child: _Child) -> None:
        if self._child is not child:
            return
        log.warn(
            "child pid {pid} still running {grace:g}s after SIGTERM; sending SIGKILL",
            pid=child.pid,
            grace=self._config.grace,
        )
        child.signal("KILL")

    # --- health

    def _check_health(self) -> None:
        child = self._child
        if self._probe is None or child is None or self._stopping or child.stop_reason is not None:
            return
        if self._probing is not None:
            return  # the previous check has not finished yet
        try:
            d = self._probe()
        except Exception:
            d = Deferred()
            d.errback()
        self._probing = d
        d.addCallbacks(self._healthy, self._unhealthy, callbackArgs=(child,), errbackArgs=(child,))
        d.addErrback(lambda f: log.failure("health check handling failed", f))

    def _healthy(self, _: None, child: _Child) -> None:
        self._probing = None
        if child is not self._child or child.stop_reason is not None:
            return
        if not child.answered:
            child.answered = True
            log.info(
                "child pid {pid} answers health checks ({after:.1f}s after start)",
                pid=child.pid,
                after=self._reactor.seconds() - child.started,
            )
        elif child.failures:
            log.info("child pid {pid} answers health checks again", pid=child.pid)
        child.failures = 0

    def _unhealthy(self, reason: Failure, child: _Child) -> None:
        self._probing = None
        if child is not self._child or child.stop_reason is not None or self._stopping:
            return
        started_ago = self._reactor.seconds() - child.started
        if not child.answered and started_ago < self._config.start_grace:
            return  # still starting up
        child.failures += 1
        why = describe_probe_failure(reason, self._config.probe_timeout)
        log.warn(
            "health check of child pid {pid} failed ({count}/{limit}): {error}",
            pid=child.pid,
            count=child.failures,
            limit=self._config.failures,
            error=why,
        )
        if child.failures >= self._config.failures:
            self._terminate(child, f"{child.failures} health checks failed in a row, last: {why}")

    def _poll_died(self, reason: Failure) -> None:
        log.failure("the health check loop died", reason)


def main(config: WatchdogConfig, stderr: IO[str] | None = None) -> int:
    """
    Run the watchdog on the global reactor until SIGTERM / SIGINT.

    Logs go to C{stderr} as text.  Returns the exit status (0).
    """
    from twisted.internet import reactor as _reactor

    reactor = cast(Any, _reactor)
    text = cast(ILogObserver, textFileLogObserver(stderr if stderr is not None else sys.stderr))
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    levels.setLogLevelForNamespace("twisted.web.client", LogLevel.warn)  # "Starting factory" on every check
    observer = FilteringLogObserver(text, [cast(ILogFilterPredicate, levels)])
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observer)], redirectStandardIO=False)
    probe = HTTPHealthProbe(reactor, config.health_url, config.probe_timeout) if config.health_url else None
    watchdog = Watchdog(cast(WatchdogReactor, reactor), config, probe)
    stopping: list[int] = []

    def on_signal(number: int, frame: object) -> None:
        reactor.callFromThread(stop_on_signal, number)

    def stop_on_signal(number: int) -> None:
        name = signal.Signals(number).name
        if stopping:
            log.warn("received {signal} again; still stopping the child", signal=name)
            return
        stopping.append(number)
        log.info("received {signal}; stopping", signal=name)
        reactor.stop()

    def start() -> None:
        # After the reactor's own handlers (which also reap children) are in.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        watchdog.startService()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", watchdog.stopService)
    reactor.run()
    return 0

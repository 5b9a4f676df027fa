"""
``inkflow watchdog``: run a command, restart it when it exits or hangs.

The restarts, SIGTERM-then-SIGKILL and the exit descriptions are
L{inkflow.supervisor.Supervisor}'s (one slot; why it is not
L{twisted.runner.procmon.ProcessMonitor} is said there); the health checks are
L{inkflow.tools.healthcheck}'s.  What this module adds:

  - starts COMMAND with the watchdog's environment, stdin closed, stdout and
    stderr shared with the watchdog;
  - when the child exits, for whatever reason, logs the exit code or signal and
    starts it again after a delay that doubles from C{min_restart_delay} up to
    C{max_restart_delay}, and falls back to C{min_restart_delay} once a child
    has stayed up for C{stable_after} seconds;
  - polls the health URL every C{interval} seconds (each poll bounded by
    L{inkflow.tools.healthcheck.probe_timeout}); after C{failures} failed polls
    in a row it sends SIGTERM, then SIGKILL after C{grace} seconds, and the
    exit handling above restarts it.  Failures are not counted until the child
    has answered once or C{start_grace} seconds have passed since it was
    started;
  - on SIGTERM / SIGINT stops the child the same way (SIGTERM, SIGKILL after
    C{grace}) and exits 0.

Nothing here imports the global reactor except L{main}.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorProcess, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from inkflow.supervisor import Child, ChildCommand, Supervisor, SupervisorHooks
from inkflow.tools.healthcheck import (
    DEFAULT_URL,
    HealthAnswer,
    HealthCheckFailed,
    HealthClient,
    describe_failure,
    health_url,
    probe_timeout,
)

__all__ = ["DEFAULT_HEALTH_URL", "HealthProbe", "Watchdog", "WatchdogConfig", "http_probe", "main"]

DEFAULT_HEALTH_URL = DEFAULT_URL

log = Logger(namespace="inkflow.tools.watchdog")

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
    @ivar health_url: polled with GET; any 200 is healthy.  The server's base
        URL means its C{/api/health}.  None: no health checks, only restarts
        on exit.
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
        if self.health_url is not None:
            object.__setattr__(self, "health_url", health_url(self.health_url))

    @property
    def probe_timeout(self) -> float:
        """
        How long one health check may take (L{healthcheck.probe_timeout}).
        """
        return probe_timeout(self.interval)


def http_probe(client: HealthClient, url: str) -> HealthProbe:
    """
    A health check that GETs C{url}: any 200 is healthy.
    """

    def healthy(answer: HealthAnswer) -> None:
        if answer.code != 200:
            raise HealthCheckFailed(answer.status_line())

    return lambda: client.get(url).addCallback(healthy)


class _Health:
    """
    The health state of one child.
    """

    def __init__(self) -> None:
        self.answered = False
        self.failures = 0


class Watchdog(Service, SupervisorHooks):
    """
    Runs one command, restarts it when it exits, replaces it when it hangs.

    @param reactor: starts the child; also the clock.
    @param probe: one health check; None turns health checking off.
    @param env: the child's environment (default: the watchdog's own).
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        config: WatchdogConfig,
        probe: HealthProbe | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._clock = IReactorTime(reactor)
        self._config = config
        self._probe = probe
        command = ChildCommand(tuple(config.command), dict(os.environ if env is None else env), {0: "w", 1: 1, 2: 2})
        self._supervisor = Supervisor(
            reactor,
            lambda slot: command,
            grace=config.grace,
            min_restart_delay=config.min_restart_delay,
            max_restart_delay=config.max_restart_delay,
            stable_after=config.stable_after,
            hooks=self,
            stop_reason="the watchdog is stopping",
        )
        self._health: dict[int, _Health] = {}
        self._poll: LoopingCall | None = None
        self._probing: Deferred[None] | None = None

    @property
    def _child(self) -> Child | None:
        return self._supervisor.children.get(0)

    # --- service

    def startService(self) -> None:
        super().startService()
        log.info(
            "watchdog started (pid {pid}): health {health_url}, every {interval}s, "
            "{failures} failures in a row replace the child",
            pid=os.getpid(),
            health_url=self._config.health_url or "off",
            interval=self._config.interval,
            failures=self._config.failures,
        )
        self._supervisor.startService()
        if self._probe is not None:
            self._poll = LoopingCall(self._check_health)
            self._poll.clock = self._clock
            self._poll.start(self._config.interval, now=False).addErrback(self._poll_died)

    def stopService(self) -> Deferred[None]:
        """
        Stop the child (SIGTERM, SIGKILL after the grace period); the Deferred
        fires once it has exited.
        """
        super().stopService()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._probing is not None:
            self._probing.cancel()
        if self._child is None:
            log.info("watchdog stopped; no child running")
            self._supervisor.stopService()
            return succeed(None)
        stopped = self._supervisor.stopService()
        return stopped.addCallback(lambda _: log.info("watchdog stopped"))

    # --- what the supervisor tells

    def child_started(self, child: Child) -> None:
        self._health[child.run] = _Health()
        log.info(
            "started child pid {pid}: {command}",
            pid=child.pid,
            command=shlex.join(self._config.command),
            start=child.run,
        )

    def start_failed(self, slot: int, error: OSError, restart_in: float) -> None:
        log.error("could not start {command}: {error}", command=shlex.join(self._config.command), error=str(error))
        self._restarting(restart_in, f"start failed: {error}")

    def child_ended(self, child: Child, reason: Failure, how: str, restart_in: float | None) -> None:
        self._health.pop(child.run, None)
        log.info(
            "child pid {pid} {how} after {uptime:.1f}s",
            pid=child.pid,
            how=how,
            uptime=child.lived,
            exit_code=getattr(reason.value, "exitCode", None),
            signal=getattr(reason.value, "signal", None),
        )
        if restart_in is not None:
            ended = f"child pid {child.pid} {how}"
            self._restarting(restart_in, f"{child.stop_reason}; {ended}" if child.stop_reason else ended)

    def child_terminating(self, child: Child, reason: str, grace: float) -> None:
        log.warn(
            "sending SIGTERM to child pid {pid} ({reason}); SIGKILL in {grace:g}s if it is still running",
            pid=child.pid,
            reason=reason,
            grace=grace,
        )

    def child_killed(self, child: Child, grace: float) -> None:
        log.warn("child pid {pid} still running {grace:g}s after SIGTERM; sending SIGKILL", pid=child.pid, grace=grace)

    def _restarting(self, delay: float, why: str) -> None:
        log.warn("restarting the child in {delay:g}s ({reason})", delay=delay, reason=why)

    # --- health

    def _check_health(self) -> None:
        child = self._child
        if self._probe is None or child is None or not self.running or child.stop_reason is not None:
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

    def _current(self, child: Child) -> _Health | None:
        if child is not self._child or child.stop_reason is not None or not self.running:
            return None
        return self._health.get(child.run)

    def _healthy(self, _: None, child: Child) -> None:
        self._probing = None
        health = self._current(child)
        if health is None:
            return
        if not health.answered:
            health.answered = True
            log.info(
                "child pid {pid} answers health checks ({after:.1f}s after start)",
                pid=child.pid,
                after=self._clock.seconds() - child.started,
            )
        elif health.failures:
            log.info("child pid {pid} answers health checks again", pid=child.pid)
        health.failures = 0

    def _unhealthy(self, reason: Failure, child: Child) -> None:
        self._probing = None
        health = self._current(child)
        if health is None:
            return
        started_ago = self._clock.seconds() - child.started
        if not health.answered and started_ago < self._config.start_grace:
            return  # still starting up
        health.failures += 1
        why = describe_failure(reason, self._config.probe_timeout)
        log.warn(
            "health check of child pid {pid} failed ({count}/{limit}): {error}",
            pid=child.pid,
            count=health.failures,
            limit=self._config.failures,
            error=why,
        )
        if health.failures >= self._config.failures:
            self._supervisor.terminate(child, f"{health.failures} health checks failed in a row, last: {why}")

    def _poll_died(self, reason: Failure) -> None:
        log.failure("the health check loop died", reason)


def main(config: WatchdogConfig, stderr: IO[str] | None = None) -> int:
    """
    Run the watchdog on the global reactor until SIGTERM / SIGINT.

    Logs go to C{stderr} as text.  Returns the exit status (0).
    """
    from twisted.internet import reactor as _reactor

    reactor = IReactorProcess(_reactor)
    core = IReactorCore(_reactor)
    threads = IReactorFromThreads(_reactor)
    text = textFileLogObserver(stderr if stderr is not None else sys.stderr)
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    levels.setLogLevelForNamespace("twisted.web.client", LogLevel.warn)  # "Starting factory" on every check
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(text, [levels])], redirectStandardIO=False)
    probe = None
    if config.health_url:
        client = HealthClient(IReactorTime(_reactor), config.probe_timeout, user_agent="inkflow-watchdog")
        probe = http_probe(client, config.health_url)
    watchdog = Watchdog(reactor, config, probe)
    stopping: list[int] = []

    def on_signal(number: int, frame: object) -> None:
        threads.callFromThread(stop_on_signal, number)

    def stop_on_signal(number: int) -> None:
        name = signal.Signals(number).name
        if stopping:
            log.warn("received {signal} again; still stopping the child", signal=name)
            return
        stopping.append(number)
        log.info("received {signal}; stopping", signal=name)
        core.stop()

    def start() -> None:
        # After the reactor's own handlers (which also reap children) are in.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        watchdog.startService()

    core.callWhenRunning(start)
    core.addSystemEventTrigger("before", "shutdown", watchdog.stopService)
    core.run()
    return 0

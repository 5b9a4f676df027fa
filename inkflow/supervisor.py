"""
Supervision of child processes, shared by C{--workers N} (the twistd parent
and its workers) and C{inkflow watchdog} (one command, replaced when it hangs).

L{Supervisor} keeps one child running per slot:

 - a child that ends is started again after a delay (L{RestartBackoff}):
   doubling from C{min_restart_delay} up to C{max_restart_delay}, back to the
   minimum once a child has stayed up C{stable_after} seconds;
 - L{Supervisor.terminate} sends SIGTERM, then SIGKILL after C{grace}
   seconds if the child is still there;
 - L{Supervisor.stopService} terminates every child the same way and returns
   a Deferred that fires once all of them have exited;
 - how a child ended (exit code, or the signal that killed it) is described
   in one place, L{describe_exit}.

It is hand-written rather than L{twisted.runner.procmon.ProcessMonitor}
because that one cannot do what both users need: it spawns with no
C{childFDs} (the workers inherit the listening socket as fd 3, the watchdog's
child shares its stdout and stderr), its C{stopService} does not wait for the
children to exit (the reactor would stop before the SIGKILL after the grace
period), it reports how a child ended only to a private method, and it
restarts at once any child that lived longer than a second (a child crashing
every few seconds is restarted in a hot loop).

What the users say about their children (log lines, relaying a child's
output) goes through L{SupervisorHooks} and the L{ChildProtocol} they give;
this module logs nothing itself.  Nothing here imports the global reactor,
nor anything from C{inkflow.server} or C{inkflow.tools}.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = [
    "Child",
    "ChildCommand",
    "ChildProtocol",
    "RestartBackoff",
    "Supervisor",
    "SupervisorHooks",
    "describe_exit",
]


def describe_exit(reason: Failure) -> str:
    """
    How a child ended, for the log: C{"exited with code 3"}, C{"was killed by
    signal 9 (SIGKILL)"}.
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


class RestartBackoff:
    """
    The delay before each restart of one slot: doubling from C{minimum} up to
    C{maximum}, back to C{minimum} after a child that stayed up
    C{stable_after} seconds.  Pure: the uptime is given.
    """

    def __init__(self, minimum: float, maximum: float, stable_after: float) -> None:
        if minimum <= 0 or maximum < minimum or stable_after < 0:
            raise ValueError("need 0 < minimum <= maximum and stable_after >= 0")
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


@dataclass(frozen=True)
class ChildCommand:
    """
    What to start in one slot.

    @ivar argv: the child's argv; C{argv[0]} is the executable.
    @ivar child_fds: as for C{spawnProcess}; the child's stdin is closed right
        after it starts, so fd 0 should be C{"w"}.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    child_fds: Mapping[int, int | str] = field(default_factory=lambda: {0: "w", 1: 1, 2: 2})


class ChildProtocol(ProcessProtocol):
    """
    The process protocol of one child; subclass it to read the child's output
    (call this C{processEnded} from an override).
    """

    _on_end: Callable[[ChildProtocol, Failure], None] | None = None

    def processEnded(self, reason: Failure) -> None:
        if self._on_end is not None:
            self._on_end(self, reason)


class Child:
    """
    One run of one slot.

    @ivar stop_reason: why it was told to stop (L{Supervisor.terminate}), or
        None.
    @ivar lived: once it has ended, how many seconds it ran.
    """

    def __init__(
        self, slot: int, run: int, protocol: ChildProtocol, transport: IProcessTransport, started: float
    ) -> None:
        self.slot = slot
        self.run = run
        self.protocol = protocol
        self.transport = transport
        self.pid: int | None = transport.pid
        self.started = started
        self.stop_reason: str | None = None
        self.lived: float | None = None
        self.kill_call: IDelayedCall | None = None
        self.ended: Deferred[None] = Deferred()

    def signal(self, name: str) -> None:
        """
        Send C{"TERM"}, C{"KILL"}, ...; a child that has just exited is not an
        error (its end is on its way).
        """
        with contextlib.suppress(ProcessExitedAlready, OSError):
            self.transport.signalProcess(name)


class SupervisorHooks:
    """
    What a supervisor's user hears about its children; every method does
    nothing here.  C{restart_in} is the delay before the next start, None
    when none follows (the supervisor is stopping).
    """

    def child_started(self, child: Child) -> None:
        pass

    def child_ended(self, child: Child, reason: Failure, how: str, restart_in: float | None) -> None:
        pass

    def start_failed(self, slot: int, error: OSError, restart_in: float) -> None:
        pass

    def child_terminating(self, child: Child, reason: str, grace: float) -> None:
        pass

    def child_killed(self, child: Child, grace: float) -> None:
        pass


class Supervisor(Service):
    """
    Keeps one child running in each of C{slots} slots; see the module
    docstring.

    @param reactor: starts the children, and is the clock: it must provide
        L{IReactorTime} too, as every real reactor does.
    @param command: what to start in a slot.
    @param protocol: a new L{ChildProtocol} for each start of a slot.
    @param grace: seconds between SIGTERM and SIGKILL.
    @param stop_reason: what L{SupervisorHooks.child_terminating} hears when
        the supervisor stops.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        command: Callable[[int], ChildCommand],
        *,
        slots: int = 1,
        grace: float,
        min_restart_delay: float,
        max_restart_delay: float,
        stable_after: float,
        hooks: SupervisorHooks | None = None,
        protocol: Callable[[int], ChildProtocol] = lambda slot: ChildProtocol(),
        stop_reason: str = "stopping",
    ) -> None:
        if grace < 0:
            raise ValueError("grace must not be negative")
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._command = command
        self._slots = slots
        self._grace = grace
        self._protocol = protocol
        self._hooks = hooks if hooks is not None else SupervisorHooks()
        self._backoff = {s: RestartBackoff(min_restart_delay, max_restart_delay, stable_after) for s in range(slots)}
        self._restarts: dict[int, IDelayedCall] = {}
        self._runs = 0
        self._stop_reason = stop_reason
        #: The running child of each slot.
        self.children: dict[int, Child] = {}

    # --- service

    def startService(self) -> None:
        super().startService()
        for slot in range(self._slots):
            self._start(slot)

    def stopService(self) -> Deferred[None]:
        """
        No more restarts; every child gets SIGTERM, then SIGKILL after the
        grace period.  Fires once every child has exited.
        """
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        children = list(self.children.values())
        for child in children:
            self.terminate(child, self._stop_reason)
        if not children:
            return succeed(None)
        done = gatherResults([child.ended for child in children])
        return done.addCallback(lambda _: None)

    # --- one child

    def terminate(self, child: Child, reason: str) -> None:
        """
        SIGTERM now, SIGKILL after the grace period if it is still running.
        Once per child: a second call changes nothing.
        """
        if child.stop_reason is not None or self.children.get(child.slot) is not child:
            return
        child.stop_reason = reason
        self._hooks.child_terminating(child, reason, self._grace)
        child.signal("TERM")
        child.kill_call = self._clock.callLater(self._grace, self._kill, child)

    def _kill(self, child: Child) -> None:
        if self.children.get(child.slot) is not child:
            return
        self._hooks.child_killed(child, self._grace)
        child.signal("KILL")

    def _start(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        if not self.running:
            return
        command = self._command(slot)
        protocol = self._protocol(slot)
        protocol._on_end = self._ended
        started = self._clock.seconds()
        try:
            transport = self._reactor.spawnProcess(
                protocol,
                command.argv[0],
                command.argv,
                env=dict(command.env),
                childFDs=dict(command.child_fds),
            )
        except OSError as e:
            delay = self._backoff[slot].next_delay(0.0)
            self._hooks.start_failed(slot, e, delay)
            self._restarts[slot] = self._clock.callLater(delay, self._start, slot)
            return
        self._runs += 1
        child = Child(slot, self._runs, protocol, transport, started)
        # Known as the slot's child before its stdin closes: only then can it be seen to end.
        self.children[slot] = child
        transport.closeStdin()
        self._hooks.child_started(child)

    def _ended(self, protocol: ChildProtocol, reason: Failure) -> None:
        child = next((c for c in self.children.values() if c.protocol is protocol), None)
        if child is None:
            return
        del self.children[child.slot]
        if child.kill_call is not None and child.kill_call.active():
            child.kill_call.cancel()
        child.lived = self._clock.seconds() - child.started
        restart_in: float | None = None
        if self.running:
            restart_in = self._backoff[child.slot].next_delay(child.lived)
            self._restarts[child.slot] = self._clock.callLater(restart_in, self._start, child.slot)
        self._hooks.child_ended(child, reason, describe_exit(reason), restart_in)
        child.ended.callback(None)

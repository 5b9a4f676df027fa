"""
A fake process reactor for supervision tests: a L{MemoryReactorClock} that also provides
L{IReactorProcess}, records every C{spawnProcess} call, and lets the test end a
child by hand (C{FakeProcess.end}).  No process is ever started.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import AnyStr

from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProcessProtocol,
    IProcessTransport,
    IProtocolFactory,
    IReactorProcess,
    IReadDescriptor,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

SIGNAL_NUMBERS = {"TERM": 15, "KILL": 9, "INT": 2}


@implementer(IProcessTransport)
@dataclass(eq=False)
class FakeProcess:
    """
    One spawned child: what it was started with, and the signals it got.
    """

    protocol: IProcessProtocol
    executable: str
    args: tuple[str, ...]
    env: Mapping[str, str] | None
    child_fds: Mapping[int, int | str] | None
    pid: int | None
    signals: list[str] = field(default_factory=list)
    stdin_closed: bool = False

    def signalProcess(self, signalID: str | int) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        name = str(signalID)
        self.signals.append(name)

    def end(self, code: int | None = 0, signal: str | None = None) -> None:
        """
        Deliver C{processEnded}: exit C{code}, or death by C{signal}.
        """
        assert self.pid is not None, "already ended"
        reason: Failure
        if signal is None and code == 0:
            reason = Failure(ProcessDone(0))
        else:
            number = SIGNAL_NUMBERS[signal] if signal else None
            reason = Failure(ProcessTerminated(code if signal is None else None, number))
        self.pid = None
        self.protocol.processEnded(reason)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: Iterable[bytes]) -> None:
        pass

    def getPeer(self) -> IAddress:
        raise NotImplementedError()

    def getHost(self) -> IAddress:
        raise NotImplementedError()


@implementer(IListeningPort, IReadDescriptor)
class FakeListeningPort:
    """
    What L{ProcessClock.listenTCP} returns: a listening port with a file
    descriptor number (nothing is open), that records whether it was closed.
    """

    def __init__(self, port: int, fd: int = 77) -> None:
        self.address = IPv4Address("TCP", "127.0.0.1", port)
        self.fd = fd
        self.closed = False

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.closed = True

    def getHost(self) -> IAddress:
        return self.address

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "FakeListeningPort"


@implementer(IReactorProcess)
class ProcessClock(MemoryReactorClock):
    """
    A L{MemoryReactorClock} (a L{Clock}, and a reactor where nothing listens
    for real) that "starts" processes: each C{spawnProcess} call makes a
    L{FakeProcess} (in C{spawned}) and connects the protocol to it.  Set
    C{fail_next} to an C{OSError} to make the next call raise it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []
        self.listening: list[FakeListeningPort] = []
        self.fail_next: OSError | None = None
        self._next_pid = 1000

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[AnyStr, AnyStr] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self._next_pid += 1
        process = FakeProcess(
            processProtocol,
            str(executable),
            tuple(str(a) for a in args),
            {str(k): str(v) for k, v in env.items()} if env is not None else None,
            childFDs,
            self._next_pid,
        )
        self.spawned.append(process)
        processProtocol.makeConnection(process)
        return process

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> FakeListeningPort:
        self.tcpServers.append((port, factory, backlog, interface))
        listening = FakeListeningPort(port)
        self.listening.append(listening)
        return listening

    @property
    def last(self) -> FakeProcess:
        return self.spawned[-1]

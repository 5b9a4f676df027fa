"""
C{--workers N}: the parent twistd process holds the one L{MemoryState} and
serves it to its workers over a local UNIX socket with Twisted's AMP; no
extra server to install.

 - the parent: L{StateServerFactory} (one L{StateServer} per worker
   connection).  It remembers, per connection, the keys that worker leads and
   the waits it has open: a worker that dies has its keys finished with no
   answer (the next waiter leads) and its waits dropped.
 - a worker: L{WorkersState}, a L{SharedState} whose every call is one AMP
   command with a short timeout (the wait on another worker's answer is the
   exception: the caller bounds it by its request timeout).  It reconnects by
   itself (L{twisted.application.internet.ClientService}); while it is not
   connected its calls fail at once, and L{inkflow.state.fallback} answers
   from the worker's own state.

Metrics ride on the same connection: the parent asks every worker for its
C{/metrics} text (L{WorkerMetrics}) and merges them
(L{inkflow.state.aggregate}); a worker's C{/metrics} asks the parent for the
merged text (L{ScrapeAll}).

A value in an AMP box is at most 65,535 bytes; a stored answer may be 1 MiB,
so the answers and metrics texts travel as L{BigBytes} (split over several
keys).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from inkflow.state.aggregate import Aggregator, merge_health
from inkflow.state.base import Claim, Outcome, StateUnavailable, Wake, outcome_from_json, outcome_to_json
from inkflow.state.memory import MemoryState

__all__ = [
    "CALL_TIMEOUT",
    "SOCKET_ENV",
    "BigBytes",
    "ParentStateService",
    "StateServer",
    "StateServerFactory",
    "StateUnavailable",
    "WorkersState",
]

log = Logger()

#: The environment variable naming the parent's state socket for a worker.
SOCKET_ENV = "INKFLOW_STATE_SOCKET"
#: Seconds one call to the parent may take before the worker answers alone.
CALL_TIMEOUT = 0.5
#: Seconds the parent waits for one worker's metrics.
METRICS_TIMEOUT = 1.0
_CHUNK = 0xFFFF

#: A command's arguments or response.
Args = list[tuple[bytes, amp.Argument]]


class BigBytes(amp.Argument):
    """
    Bytes of any length, split over C{name}, C{name.2}, C{name.3}, ...
    """

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        value: bytes = objects[name.decode("ascii")]
        chunks = [value[i : i + _CHUNK] for i in range(0, len(value), _CHUNK)] or [b""]
        strings[name] = chunks[0]
        for n, chunk in enumerate(chunks[1:], start=2):
            strings[name + b".%d" % n] = chunk

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        parts = [strings.pop(name)]
        for n in itertools.count(2):
            part = strings.pop(name + b".%d" % n, None)
            if part is None:
                break
            parts.append(part)
        objects[name.decode("ascii")] = b"".join(parts)


class _Json(BigBytes):
    """
    A JSON value (as L{BigBytes}).
    """

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        key = name.decode("ascii")
        super().toBox(name, strings, {key: json.dumps(objects[key]).encode()}, proto)

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        key = name.decode("ascii")
        objects[key] = json.loads(objects[key])


# --- the commands (worker -> parent unless said)


class Hello(amp.Command):
    """A worker says who it is (its slot, or its pid): the label of its metrics."""

    arguments: ClassVar[Args] = [(b"worker", amp.Unicode())]
    response: ClassVar[Args] = []


class ClaimKey(amp.Command):
    arguments: ClassVar[Args] = [(b"owner", amp.Unicode()), (b"key", amp.Unicode()), (b"fingerprint", amp.Unicode())]
    response: ClassVar[Args] = [(b"kind", amp.Unicode()), (b"answer", _Json()), (b"ticket", amp.Integer())]


class AwaitKey(amp.Command):
    """Wait for the leader's outcome of a C{wait} claim (by its ticket)."""

    arguments: ClassVar[Args] = [(b"ticket", amp.Integer())]
    response: ClassVar[Args] = [(b"wake", _Json())]
    errors: ClassVar[dict[type[Exception], bytes]] = {StateUnavailable: b"STATE_UNAVAILABLE"}


class LeaveKey(amp.Command):
    """The waiting request went away."""

    arguments: ClassVar[Args] = [(b"ticket", amp.Integer())]
    response: ClassVar[Args] = []
    requiresAnswer = False


class StreamingKey(amp.Command):
    arguments: ClassVar[Args] = [(b"owner", amp.Unicode()), (b"key", amp.Unicode())]
    response: ClassVar[Args] = []


class FinishKey(amp.Command):
    arguments: ClassVar[Args] = [(b"owner", amp.Unicode()), (b"key", amp.Unicode()), (b"outcome", _Json())]
    response: ClassVar[Args] = []


class TakeToken(amp.Command):
    arguments: ClassVar[Args] = [(b"bucket", amp.Unicode())]
    response: ClassVar[Args] = [(b"wait", amp.Float())]


class RememberExecution(amp.Command):
    arguments: ClassVar[Args] = [(b"execution", amp.Unicode()), (b"index", amp.Integer())]
    response: ClassVar[Args] = []


class LookupExecution(amp.Command):
    arguments: ClassVar[Args] = [(b"execution", amp.Unicode())]
    response: ClassVar[Args] = [(b"index", amp.Integer())]


class ScrapeAll(amp.Command):
    """A worker asks for the whole server's metrics text."""

    arguments: ClassVar[Args] = []
    response: ClassVar[Args] = [(b"text", BigBytes())]


class HealthAll(amp.Command):
    """A worker asks for the whole server's health: totals and a section per worker."""

    arguments: ClassVar[Args] = []
    response: ClassVar[Args] = [(b"health", _Json())]


class WorkerHealth(amp.Command):
    """Parent -> worker: this worker's own health snapshot."""

    arguments: ClassVar[Args] = []
    response: ClassVar[Args] = [(b"health", _Json())]


class WorkerMetrics(amp.Command):
    """Parent -> worker: this worker's own metrics text."""

    arguments: ClassVar[Args] = []
    response: ClassVar[Args] = [(b"text", BigBytes())]


# --- the parent


class StateServer(amp.AMP):
    """
    The parent's end of one worker's connection.
    """

    def __init__(self, factory: StateServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.worker: str | None = None
        self._tickets: dict[int, Deferred[Wake]] = {}
        self._leading: set[tuple[str, str]] = set()
        #: The waits woken to lead, by ticket, until their key is finished.
        self._lead_by_ticket: dict[int, tuple[str, str]] = {}
        #: Wakes the worker has not asked for yet, and the asks not woken yet.
        self._fired: dict[int, dict[str, Any]] = {}
        self._awaiting: dict[int, Deferred[dict[str, Any]]] = {}

    @property
    def store(self) -> MemoryState:
        return self.factory.store

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.factory.connections.discard(self)
        for d in list(self._tickets.values()):
            d.cancel()
        self._tickets.clear()
        self._lead_by_ticket.clear()
        self._fired.clear()
        # A worker gone mid-request: its keys end without an answer, so a
        # request waiting on one (in another worker) leads now.
        for owner, key in list(self._leading):
            self.store.finish_now(owner, key, None)
        self._leading.clear()
        if self.worker is not None:
            self.factory.aggregator.retire(self.worker)

    @Hello.responder
    def hello(self, worker: str) -> dict[str, Any]:
        self.worker = worker
        return {}

    @ClaimKey.responder
    def claim(self, owner: str, key: str, fingerprint: str) -> dict[str, Any]:
        claim = self.store.claim_now(owner, key, fingerprint)
        ticket = 0
        if claim.kind == "lead":
            self._leading.add((owner, key))
        elif claim.kind == "wait":
            assert claim.waiting is not None
            ticket = next(self.factory.tickets)
            self._tickets[ticket] = claim.waiting
            claim.waiting.addCallbacks(
                self._woken, self._left, callbackArgs=(ticket, (owner, key)), errbackArgs=(ticket,)
            )
        return {"kind": claim.kind, "answer": outcome_to_json(claim.answer), "ticket": ticket}

    def _woken(self, wake: Wake, ticket: int, owner_key: tuple[str, str]) -> None:
        self._tickets.pop(ticket, None)
        if isinstance(wake, str):
            # This worker's request leads now (known here before the worker
            # hears it: a worker that dies or leaves meanwhile still frees it).
            self._leading.add(owner_key)
            self._lead_by_ticket[ticket] = owner_key
        reply = {"wake": outcome_to_json(wake)}
        awaiting = self._awaiting.pop(ticket, None)
        if awaiting is not None:
            awaiting.callback(reply)
        else:
            self._fired[ticket] = reply

    def _left(self, reason: Failure, ticket: int) -> None:
        reason.trap(CancelledError)
        self._tickets.pop(ticket, None)
        awaiting = self._awaiting.pop(ticket, None)
        if awaiting is not None:
            awaiting.errback(StateUnavailable("the wait was left"))

    @AwaitKey.responder
    def await_key(self, ticket: int) -> Deferred[dict[str, Any]]:
        if ticket in self._fired:
            return succeed(self._fired.pop(ticket))
        if ticket not in self._tickets:
            return fail(StateUnavailable(f"no such wait: {ticket}"))
        awaiting: Deferred[dict[str, Any]] = Deferred()
        self._awaiting[ticket] = awaiting
        return awaiting

    @LeaveKey.responder
    def leave(self, ticket: int) -> dict[str, Any]:
        self._fired.pop(ticket, None)
        waiting = self._tickets.pop(ticket, None)
        if waiting is not None:
            waiting.cancel()
        # Woken to lead while it was leaving (the answer crossed the leave):
        # nobody leads; the next waiter does.
        owner_key = self._lead_by_ticket.pop(ticket, None)
        if owner_key is not None and owner_key in self._leading:
            self._leading.discard(owner_key)
            self.store.finish_now(*owner_key, None)
        return {}

    @StreamingKey.responder
    def streaming(self, owner: str, key: str) -> dict[str, Any]:
        self.store.streaming_now(owner, key)
        return {}

    @FinishKey.responder
    def finish(self, owner: str, key: str, outcome: dict[str, Any]) -> dict[str, Any]:
        self._leading.discard((owner, key))
        for ticket in [t for t, ok in self._lead_by_ticket.items() if ok == (owner, key)]:
            del self._lead_by_ticket[ticket]
        wake = outcome_from_json(outcome)
        self.store.finish_now(owner, key, None if isinstance(wake, str) else wake)
        return {}

    @TakeToken.responder
    def take(self, bucket: str) -> dict[str, Any]:
        return {"wait": self.store.take_now(bucket)}

    @RememberExecution.responder
    def remember(self, execution: str, index: int) -> dict[str, Any]:
        self.store.executions.remember(execution, index)
        return {}

    @LookupExecution.responder
    def lookup(self, execution: str) -> dict[str, Any]:
        index = self.store.executions.lookup(execution)
        return {"index": -1 if index is None else index}

    @ScrapeAll.responder
    def scrape_all(self) -> Deferred[dict[str, Any]]:
        return self.factory.scrape().addCallback(lambda text: {"text": text})

    @HealthAll.responder
    def health_all(self) -> Deferred[dict[str, Any]]:
        return self.factory.health().addCallback(lambda health: {"health": health})


class StateServerFactory(Factory):
    """
    The parent's state service for its workers: listen on a UNIX socket with
    it (C{UNIXServerEndpoint(reactor, path, mode=0o600)} in a private folder),
    pass the path to each worker in L{SOCKET_ENV}.
    """

    def __init__(self, store: MemoryState, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self.connections: set[StateServer] = set()
        self.tickets = itertools.count(1)
        self.aggregator = Aggregator()

    def buildProtocol(self, addr: Any) -> StateServer:
        return StateServer(self)

    def scrape(self) -> Deferred[bytes]:
        """
        Every connected worker's metrics, merged (a worker that does not answer
        in time counts with its last text).
        """

        def one(conn: StateServer) -> Deferred[None]:
            d = conn.callRemote(WorkerMetrics)
            d.addTimeout(METRICS_TIMEOUT, self.clock)

            def got(result: dict[str, Any]) -> None:
                if conn.worker is not None:
                    self.aggregator.update(conn.worker, result["text"].decode("utf-8"))

            def failed(reason: Failure) -> None:
                log.warn("worker {worker} did not send its metrics: {error}", worker=conn.worker, error=reason.value)

            return d.addCallbacks(got, failed)

        done = gatherResults([one(c) for c in list(self.connections) if c.worker is not None])
        return done.addCallback(lambda _: self.aggregator.render())

    def health(self) -> Deferred[dict[str, Any]]:
        """
        Every connected worker's health snapshot (a worker that does not
        answer in time is left out), merged: L{merge_health}.
        """
        snapshots: dict[str, dict[str, Any]] = {}

        def one(conn: StateServer) -> Deferred[None]:
            d = conn.callRemote(WorkerHealth)
            d.addTimeout(METRICS_TIMEOUT, self.clock)

            def got(result: dict[str, Any]) -> None:
                if conn.worker is not None:
                    snapshots[conn.worker] = result["health"]

            return d.addCallbacks(got, lambda _: None)

        done = gatherResults([one(c) for c in list(self.connections) if c.worker is not None])
        return done.addCallback(lambda _: merge_health(dict(sorted(snapshots.items()))))


# --- a worker


class _WorkerClient(amp.AMP):
    def __init__(self, state: WorkersState) -> None:
        super().__init__()
        self.owner = state  # not "state": AMP's parser uses that name

    def connectionMade(self) -> None:
        super().connectionMade()
        # Connected once the parent knows this worker's label (its metrics
        # are merged under it from then on).
        hello: Deferred[dict[str, Any]] = self.callRemote(Hello, worker=self.owner.worker)
        hello.addCallbacks(lambda _: self.owner._connected(self), lambda _: None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.owner._disconnected(self)

    @WorkerMetrics.responder
    def metrics(self) -> dict[str, Any]:
        return {"text": self.owner.metrics_text()}

    @WorkerHealth.responder
    def health(self) -> dict[str, Any]:
        return {"health": self.owner.health_snapshot()}


class _ClientFactory(Factory):
    def __init__(self, state: WorkersState) -> None:
        self.state = state

    def buildProtocol(self, addr: Any) -> _WorkerClient:
        return _WorkerClient(self.state)


class WorkersState:
    """
    A worker's L{SharedState}: the parent's store over AMP.

    @param endpoint: the parent's socket (C{UNIXClientEndpoint(reactor, path)}).
    @param worker: this worker's label in the merged metrics (its slot).
    @param metrics_text: this worker's own C{/metrics} text (for the parent).
    @param health_snapshot: this worker's own health snapshot (for the parent).
    @param timeout: seconds per call before L{StateUnavailable}.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        worker: str,
        metrics_text: Callable[[], bytes] = lambda: b"",
        timeout: float = CALL_TIMEOUT,
        health_snapshot: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        self.clock = clock
        self.worker = worker
        self.metrics_text = metrics_text
        self.health_snapshot = health_snapshot
        self.timeout = timeout
        self._protocol: _WorkerClient | None = None
        self._ready: list[Deferred[None]] = []
        self._service = ClientService(
            endpoint,
            _ClientFactory(self),
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=5.0),
            clock=clock,
        )
        self._service.startService()

    def read_health(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        """
        Hand the parent this worker's own health snapshot from now on.  The
        composition root calls it once the health reporter is built (the
        reporter reads the shared state's section, so it comes after it).
        """
        self.health_snapshot = snapshot

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def when_connected(self) -> Deferred[None]:
        """
        Fires once connected to the parent, and introduced (start-up, tests).
        """
        if self._protocol is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready.append(d)
        return d

    @property
    def degraded(self) -> bool:
        return self._protocol is None

    def _connected(self, protocol: _WorkerClient) -> None:
        self._protocol = protocol
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(None)

    def _disconnected(self, protocol: _WorkerClient) -> None:
        if self._protocol is protocol:
            self._protocol = None

    def _call(self, command: type[amp.Command], timeout: float | None = None, **kw: Any) -> Deferred[dict[str, Any]]:
        protocol = self._protocol
        if protocol is None:
            return fail(StateUnavailable("not connected to the workers' parent"))
        d: Deferred[dict[str, Any]] = protocol.callRemote(command, **kw)
        d.addTimeout(self.timeout if timeout is None else timeout, self.clock)
        return d.addErrback(_unavailable)

    def idem_claim(self, owner: str, key: str, fingerprint: str) -> Deferred[Claim]:
        def decided(result: dict[str, Any]) -> Claim:
            kind = result["kind"]
            answer = outcome_from_json(result["answer"])
            if kind == "wait":
                return Claim("wait", waiting=self._await(result["ticket"]))
            return Claim(kind, answer=answer if kind == "replay" else None)  # type: ignore[arg-type]

        return self._call(ClaimKey, owner=owner, key=key, fingerprint=fingerprint).addCallback(decided)

    def _await(self, ticket: int) -> Deferred[Wake]:
        protocol = self._protocol
        if protocol is None:
            return fail(StateUnavailable("not connected to the workers' parent"))

        def cancel(_: Deferred[Wake]) -> None:
            inner.cancel()
            if self._protocol is protocol:
                protocol.callRemote(LeaveKey, ticket=ticket)

        outer: Deferred[Wake] = Deferred(cancel)
        inner: Deferred[dict[str, Any]] = protocol.callRemote(AwaitKey, ticket=ticket)

        def woken(result: dict[str, Any]) -> None:
            wake = outcome_from_json(result["wake"])
            assert wake is not None
            outer.callback(wake)

        def failed(reason: Failure) -> None:
            if not reason.check(CancelledError):
                outer.errback(_unavailable(reason))

        inner.addCallbacks(woken, failed)
        return outer

    def idem_streaming(self, owner: str, key: str) -> Deferred[None]:
        return self._call(StreamingKey, owner=owner, key=key).addCallback(lambda _: None)

    def idem_finish(self, owner: str, key: str, outcome: Outcome) -> Deferred[None]:
        return self._call(FinishKey, owner=owner, key=key, outcome=outcome_to_json(outcome)).addCallback(lambda _: None)

    def rate_take(self, bucket: str) -> Deferred[float]:
        return self._call(TakeToken, bucket=bucket).addCallback(lambda r: float(r["wait"]))

    def execution_remember(self, execution_id: str, url_index: int) -> Deferred[None]:
        return self._call(RememberExecution, execution=execution_id, index=url_index).addCallback(lambda _: None)

    def execution_lookup(self, execution_id: str) -> Deferred[int | None]:
        def found(result: dict[str, Any]) -> int | None:
            index = int(result["index"])
            return None if index < 0 else index

        return self._call(LookupExecution, execution=execution_id).addCallback(found)

    def scrape(self, timeout: float = 2 * METRICS_TIMEOUT + CALL_TIMEOUT) -> Deferred[bytes]:
        """
        The whole server's metrics text, merged by the parent.
        """
        return self._call(ScrapeAll, timeout=timeout).addCallback(lambda r: bytes(r["text"]))

    def server_health(self, timeout: float = 2 * METRICS_TIMEOUT + CALL_TIMEOUT) -> Deferred[dict[str, Any]]:
        """
        The whole server's health: C{{"totals": ..., "workers": {slot: snapshot}}}.
        """
        return self._call(HealthAll, timeout=timeout).addCallback(lambda r: dict(r["health"]))

    def close(self) -> Deferred[None]:
        stopped = self._service.stopService()
        return stopped.addCallback(lambda _: None) if stopped is not None else succeed(None)


def _unavailable(reason: Failure) -> Failure:
    if reason.check(StateUnavailable, CancelledError):
        if reason.check(CancelledError):
            return Failure(StateUnavailable("cancelled"))
        return reason
    return Failure(StateUnavailable(str(reason.value)))


class ParentStateService(Service):
    """
    The parent's side, as a service: a private folder (0700) with the state
    socket (0600) in it, served while the service runs; the workers get its
    path in L{SOCKET_ENV}.

    @ivar factory: the state server (its L{StateServerFactory.scrape} merges
        the workers' metrics).
    """

    name = "state"

    def __init__(self, store: MemoryState, reactor: Any) -> None:
        self.reactor = reactor
        self.factory = StateServerFactory(store, reactor)
        self.folder = ""
        self.path = ""
        self._port: Any = None

    def privilegedStartService(self) -> None:
        # Before the workers' command is built (it names the socket).
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._port is not None:
            return
        self.folder = tempfile.mkdtemp(prefix="inkflow-state-")
        self.path = os.path.join(self.folder, "state.sock")
        self._port = self.reactor.listenUNIX(self.path, self.factory, mode=0o600)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        for conn in list(self.factory.connections):
            if conn.transport is not None:
                conn.transport.loseConnection()
        stopped = port.stopListening() if port is not None else None

        def remove(_: object) -> None:
            shutil.rmtree(self.folder, ignore_errors=True)

        if isinstance(stopped, Deferred):
            return stopped.addCallback(remove)
        remove(None)
        return None

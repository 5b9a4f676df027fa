"""
L{FallbackState}: the shared store (the workers' parent, or Redis), and this
process's own L{MemoryState} for when the shared one cannot answer in time.
Callers see one L{SharedState}.

 - a call the shared store fails (not connected, timed out) is answered from
   the process's state: chat keeps working, never a 500, never a hang;
 - then the shared store is left alone for L{RETRY_AFTER} seconds (each
   request would otherwise pay the timeout), after which the next call tries
   it again; a success ends the degraded state;
 - one log line when the state becomes degraded and one when it is shared
   again (not one per request); L{fallbacks_total} counts the calls answered
   locally, L{degraded} is health's C{degraded};
 - a key claimed in one store is finished in that same store.

The trade-off while degraded: the rate limit is per process (N processes let
through up to N times the limit) and a key is checked per process (a retry
landing on another process may run the workflow again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from inkflow.errors import ApiError
from inkflow.state.base import LEAD, Claim, Outcome, SharedState, StateUnavailable, Wake
from inkflow.state.memory import MemoryState

__all__ = ["RETRY_AFTER", "FallbackState", "StateCollector"]

log = Logger()

#: Seconds the shared store is not asked after it failed.
RETRY_AFTER = 1.0


class FallbackState:
    """
    @param shared: the workers' parent or Redis.
    @param local: this process's state (the same config).
    @param backend: C{"workers"} or C{"redis"}, for health and the log.
    """

    def __init__(
        self,
        shared: SharedState,
        local: MemoryState,
        clock: IReactorTime,
        backend: str,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self.shared = shared
        self.local = local
        self.clock = clock
        self.backend = backend
        self.retry_after = retry_after
        self.fallbacks_total = 0
        self._down_until: float | None = None
        self._reason = ""
        #: (owner, key) -> the store that leads it.
        self._leads: dict[tuple[str, str], Any] = {}

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    def snapshot(self) -> dict[str, Any]:
        """
        Health's C{state} object.
        """
        return {
            "backend": self.backend,
            "shared": not self.degraded,
            "fallbacks_total": self.fallbacks_total,
            **({"error": self._reason} if self.degraded else {}),
        }

    # --- routing

    def _skip_shared(self) -> bool:
        return self._down_until is not None and self.clock.seconds() < self._down_until

    def _failed(self, operation: str, reason: Failure) -> None:
        self.fallbacks_total += 1
        if self._down_until is None:
            self._reason = reason.getErrorMessage()
            log.warn(
                "shared state ({backend}) unreachable: {error}; answering from this process",
                backend=self.backend,
                error=self._reason,
                operation=operation,
            )
        self._down_until = self.clock.seconds() + self.retry_after

    def _ok(self) -> None:
        if self._down_until is not None:
            self._down_until = None
            log.info("shared state ({backend}) reachable again", backend=self.backend)

    def _either(self, operation: str, shared: Callable[[], Deferred[Any]], local: Callable[[], Any]) -> Deferred[Any]:
        if self._skip_shared():
            self.fallbacks_total += 1
            return succeed(local())
        d = shared()
        left = False

        def cancel(_: Deferred[Any]) -> None:
            # The caller went away (its client left): the store's call is
            # cancelled too, and that is no outage.
            nonlocal left
            left = True
            d.cancel()

        outer: Deferred[Any] = Deferred(cancel)

        def ok(value: Any) -> Any:
            self._ok()
            return value

        def failed(reason: Failure) -> Any:
            if left:
                return None
            reason.trap(StateUnavailable)
            self._failed(operation, reason)
            return local()

        def relay(result: Any) -> None:
            if left or outer.called:
                return
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

        d.addCallbacks(ok, failed).addBoth(relay)
        return outer

    def probe(self) -> Deferred[None]:
        """
        While degraded, once C{retry_after} has passed: ask the shared store
        (a cheap lookup), so an idle process does not stay degraded until its
        next chat.  Call it from the health reporter or a C{LoopingCall}.
        """
        if self._down_until is None or self._skip_shared():
            return succeed(None)
        d = self._either("probe", lambda: self.shared.execution_lookup("-"), lambda: None)
        return d.addCallback(lambda _: None)

    # --- idempotency

    def idem_claim(self, owner: str, key: str, fingerprint: str) -> Deferred[Claim]:
        where = (owner, key)

        def local() -> Claim:
            return self._noted(where, self.local, self._local_claim(owner, key, fingerprint))

        def shared() -> Deferred[Claim]:
            return self.shared.idem_claim(owner, key, fingerprint).addCallback(
                lambda claim: self._noted(where, self.shared, claim, owner, key, fingerprint)
            )

        return self._either("idempotency", shared, local)

    def _local_claim(self, owner: str, key: str, fingerprint: str) -> Claim:
        return self.local.claim_now(owner, key, fingerprint)

    def _noted(self, where: tuple[str, str], store: Any, claim: Claim, *again: str) -> Claim:
        if claim.kind == "lead":
            self._leads[where] = store
        if claim.kind == "wait" and claim.waiting is not None:
            return Claim("wait", waiting=self._watch(where, store, claim.waiting, again))
        return claim

    def _watch(
        self, where: tuple[str, str], store: Any, waiting: Deferred[Wake], again: tuple[str, ...]
    ) -> Deferred[Wake]:
        """
        A wait: when woken to lead, this request leads in C{store}; when the
        shared store fails mid-wait, the request claims the key locally.
        """
        outer: Deferred[Wake] = Deferred(lambda _: waiting.cancel())

        def woken(wake: Wake) -> None:
            if isinstance(wake, str):
                self._leads[where] = store
            outer.callback(wake)

        def failed(reason: Failure) -> None:
            if outer.called:
                return
            if not reason.check(StateUnavailable) or not again:
                outer.errback(reason)
                return
            self._failed("idempotency", reason)
            claim = self._local_claim(*again)
            if claim.kind == "lead":
                self._leads[where] = self.local
                outer.callback(LEAD)
            elif claim.kind == "wait" and claim.waiting is not None:
                self._watch(where, self.local, claim.waiting, ()).chainDeferred(outer)
            elif claim.kind == "replay" and claim.answer is not None:
                outer.callback(claim.answer)
            elif claim.kind == "in_progress":
                outer.callback(ApiError("in_progress"))
            else:
                outer.callback(ApiError("idempotency_mismatch"))

        waiting.addCallbacks(woken, failed)
        return outer

    def idem_streaming(self, owner: str, key: str) -> Deferred[None]:
        store = self._leads.get((owner, key), self.shared)
        if store is self.local:
            return self.local.idem_streaming(owner, key)
        return self._either("idempotency", lambda: store.idem_streaming(owner, key), lambda: None)

    def idem_finish(self, owner: str, key: str, outcome: Outcome) -> Deferred[None]:
        store = self._leads.pop((owner, key), self.shared)
        if store is self.local:
            return self.local.idem_finish(owner, key, outcome)
        # The shared store's lease frees the key when this fails.
        return self._either("idempotency", lambda: store.idem_finish(owner, key, outcome), lambda: None)

    # --- rate limit, executions

    def rate_take(self, bucket: str) -> Deferred[float]:
        return self._either("rate_limit", lambda: self.shared.rate_take(bucket), lambda: self.local.take_now(bucket))

    def execution_remember(self, execution_id: str, url_index: int) -> Deferred[None]:
        # Kept locally too: a lookup while the shared store is away still finds
        # what this process started.
        self.local.executions.remember(execution_id, url_index)
        return self._either("executions", lambda: self.shared.execution_remember(execution_id, url_index), lambda: None)

    def execution_lookup(self, execution_id: str) -> Deferred[int | None]:
        def shared() -> Deferred[int | None]:
            d = self.shared.execution_lookup(execution_id)
            return d.addCallback(
                lambda index: index if index is not None else self.local.executions.lookup(execution_id)
            )

        return self._either("executions", shared, lambda: self.local.executions.lookup(execution_id))

    def close(self) -> Deferred[None]:
        return self.shared.close()


class StateCollector(Collector):
    """
    C{inkflow_state_degraded} (1 while answering from the process) and
    C{inkflow_state_fallbacks_total}, for the metrics registry.
    """

    def __init__(self, state: FallbackState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "inkflow_state_degraded",
            "1 while the shared state (workers' parent or Redis) is unreachable and this process answers alone",
            value=int(self._state.degraded),
        )
        yield CounterMetricFamily(
            "inkflow_state_fallbacks",
            "Calls to the shared state answered from this process instead",
            value=self._state.fallbacks_total,
        )

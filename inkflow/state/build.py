"""
Which store a process uses, decided once by the composition root
(C{makeService}):

 - C{--redis URL}: Redis, with this process's memory as the fallback (every
   process of every instance; under C{--workers} too);
 - a C{--workers} worker (the parent named its state socket in
   L{SOCKET_ENV}): the parent's store over AMP, with the worker's memory as
   the fallback;
 - otherwise (one process): memory, nothing else.

A worker keeps its AMP link to the parent under C{--redis} as well: the
parent merges the workers' metrics over it (L{Built.link}).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import UNIXClientEndpoint

from inkflow.state.base import SharedState, StateConfig
from inkflow.state.fallback import FallbackState
from inkflow.state.memory import MemoryState
from inkflow.state.redis import DEFAULT_PREFIX, RedisState, connect, parse_redis_url
from inkflow.state.workers import SOCKET_ENV, WorkersState

__all__ = ["LEASE_MARGIN", "Built", "build_state", "state_config"]

#: Seconds beyond C{--request-timeout} a claimed key stays claimed when its
#: leader's process died.
LEASE_MARGIN = 30.0


def state_config(settings: Any) -> StateConfig:
    """
    The stores' config from the settings.
    """
    return StateConfig(
        idempotency_ttl=float(settings.idempotency_ttl),
        rate_limit=int(settings.rate_limit),
        lease=float(settings.request_timeout) + LEASE_MARGIN,
    )


@dataclass(frozen=True)
class Built:
    """
    @ivar state: what the routes use.
    @ivar local: this process's own store (the whole state in one process).
    @ivar link: a worker's link to its parent (metrics), else C{None}.
    @ivar backend: C{"memory"}, C{"workers"} or C{"redis"}.
    """

    state: SharedState
    local: MemoryState
    link: WorkersState | None
    backend: str

    @property
    def fallback(self) -> FallbackState | None:
        return self.state if isinstance(self.state, FallbackState) else None


def build_state(
    settings: Any,
    reactor: Any,
    *,
    environ: Mapping[str, str] = os.environ,
    worker: str = "",
    metrics_text: Callable[[], bytes] = lambda: b"",
) -> Built:
    """
    The store for this process (see the module's docstring).

    @param worker: this worker's label (its slot); its pid when empty.
    @param metrics_text: this process's own C{/metrics} text, for the parent.
        (Its health snapshot is handed to the link once the health reporter
        is built: L{WorkersState.read_health}.)
    """
    config = state_config(settings)
    local = MemoryState(reactor, config)
    link: WorkersState | None = None
    socket_path = environ.get(SOCKET_ENV)
    if socket_path:
        link = WorkersState(
            UNIXClientEndpoint(reactor, socket_path),
            reactor,
            worker or str(os.getpid()),
            metrics_text,
        )
    redis_url = getattr(settings, "redis", "")
    if redis_url:
        prefix = getattr(settings, "redis_prefix", DEFAULT_PREFIX)
        shared = RedisState(connect(parse_redis_url(redis_url)), reactor, config, prefix=prefix)
        return Built(FallbackState(shared, local, reactor, "redis"), local, link, "redis")
    if link is not None:
        return Built(FallbackState(link, local, reactor, "workers"), local, link, "workers")
    return Built(local, local, None, "memory")

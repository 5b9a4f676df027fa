"""
The health of one InkFlow process: the liveness snapshot behind
C{/api/health} (and the admin listener, and C{/metrics}) and the readiness
answer behind C{/api/ready}.

Pure (no reactor, no I/O): L{HealthReporter} reads its sources (plain
callables the composition root hands it) and L{build_health} puts their
figures in the contract's JSON shape (L{inkflow.snapshot.Health}).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

from twisted.internet.interfaces import IReactorTime

from inkflow import __version__
from inkflow.settings import Settings, origin_url
from inkflow.snapshot import (
    CleanupSnapshot,
    Health,
    ProcessSnapshot,
    QueueSnapshot,
    StreamsSnapshot,
    UpstreamSnapshot,
    WebSocketsSnapshot,
)

__all__ = ["HealthInputs", "HealthReporter", "SiteStats", "build_health", "readiness"]

#: RSS over which health says "degraded".
DEFAULT_RSS_DEGRADED = 1024 * 1024 * 1024


class SiteStats(NamedTuple):
    """
    The site's figures for health and readiness.
    """

    connections_active: int
    connections_rejected: int
    connections_timed_out: int
    draining: bool


@dataclass(frozen=True)
class HealthInputs:
    """
    Everything a health snapshot is made of, gathered by the web layer.

    @ivar cleanup: the cleanup loop's snapshot, or C{None} when there is no
        loop (its section is then all zero).
    """

    settings: Settings
    uptime_s: float
    site: SiteStats
    queue: QueueSnapshot
    upstreams: list[UpstreamSnapshot]
    process: ProcessSnapshot
    cleanup: CleanupSnapshot | None
    rss_degraded: int = DEFAULT_RSS_DEGRADED
    websockets: WebSocketsSnapshot | None = None
    streams: StreamsSnapshot | None = None


def build_health(inputs: HealthInputs) -> Health:
    """
    The contract's C{/api/health} body.
    """
    s = inputs.settings
    process = inputs.process
    status = "ok"
    if inputs.site.draining:
        status = "draining"
    elif _all_upstreams_open(inputs.upstreams) or process["memory"]["rss_bytes"] > inputs.rss_degraded:
        status = "degraded"
    return {
        "status": status,
        "version": __version__,
        "mode": s.mode,
        "pid": os.getpid(),
        "uptime_s": round(inputs.uptime_s, 3),
        "connections": {
            "active": inputs.site.connections_active,
            "max": s.max_connections,
            "rejected_total": inputs.site.connections_rejected,
            "timed_out_total": inputs.site.connections_timed_out,
        },
        "queue": inputs.queue,
        "websockets": inputs.websockets if inputs.websockets is not None else {"open": 0, "opened_total": 0},
        "upstreams": inputs.upstreams,
        "memory": process["memory"],
        "cpu_percent": process["cpu_percent"],
        "open_files": process["open_files"],
        "threads": process["threads"],
        "cleanup": inputs.cleanup if inputs.cleanup is not None else _NO_CLEANUP.copy(),
        "streams": inputs.streams if inputs.streams is not None else {"in_flight": 0, "total": 0, "endings": {}},
        "limits": {
            "max_file_size": s.max_file_size,
            "max_files": s.max_files,
            "max_connections": s.max_connections,
            "queue_size": s.queue_size,
            "max_message_chars": s.max_message_chars,
            "allowed_types": list(s.allowed_types),
        },
    }


_NO_CLEANUP = CleanupSnapshot(runs=0, last_run=None, temp_files_removed=0, gc_collected=0)


def _all_upstreams_open(upstreams: list[UpstreamSnapshot]) -> bool:
    return bool(upstreams) and all(u["state"] == "open" for u in upstreams)


def readiness(*, draining: bool, queue_full: bool, upstreams: list[UpstreamSnapshot]) -> tuple[bool, str | None]:
    """
    Whether to accept chat work: C{(True, None)} or C{(False, reason)}.
    """
    if draining:
        return False, "draining"
    if queue_full:
        return False, "queue_full"
    if _all_upstreams_open(upstreams):
        return False, "upstreams_unavailable"
    return True, None


class QueueSource(Protocol):
    """
    What health reads of the chat queue (L{inkflow.web.admission.ChatQueue}).
    """

    @property
    def full(self) -> bool: ...

    def snapshot(self) -> QueueSnapshot: ...


class HealthReporter:
    """
    The one producer of the health snapshot and of readiness, read by
    C{/api/health}, C{/api/ready}, the admin listener and C{/metrics}.

    @param site: the connection registry's figures.
    @param queue: the chat queue.
    @param process: the process's figures.
    @param upstreams: each webhook URL's breaker (none in demo mode).
    @param cleanup: the cleanup loop's figures (none without a loop).
    @param websockets: the WebSocket relay's figures.
    @param streams: the figures of the streams being relayed.
    @param state: the shared state's section (C{backend}, C{shared}, ...):
        C{degraded} while C{shared} is false (this process answers the rate
        limit and the keys alone); readiness is not affected (a load
        balancer must not take every instance out because Redis is away).
    """

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        *,
        site: Callable[[], SiteStats],
        queue: QueueSource,
        process: Callable[[], ProcessSnapshot],
        upstreams: Callable[[], list[UpstreamSnapshot]] | None = None,
        cleanup: Callable[[], CleanupSnapshot] | None = None,
        websockets: Callable[[], WebSocketsSnapshot] | None = None,
        streams: Callable[[], StreamsSnapshot] | None = None,
        rss_degraded: int = DEFAULT_RSS_DEGRADED,
        state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.started = clock.seconds()
        self._site = site
        self._queue = queue
        self._process = process
        self._upstreams = upstreams
        self._cleanup = cleanup
        self._websockets = websockets
        self._streams = streams
        self._rss_degraded = rss_degraded
        self._state = state

    def _connections_full(self, site: SiteStats) -> bool:
        return site.connections_active >= self.settings.max_connections

    def _upstream_list(self) -> list[UpstreamSnapshot]:
        return self._upstreams() if self._upstreams is not None else []

    def health(self) -> Health:
        """
        The full health snapshot: upstreams shown by index and
        C{scheme://host:port} only (in n8n the webhook path is the secret);
        C{degraded} while every connection place is taken.
        """
        site = self._site()
        snapshot = build_health(
            HealthInputs(
                settings=self.settings,
                uptime_s=self.clock.seconds() - self.started,
                site=site,
                queue=self._queue.snapshot(),
                upstreams=[{**u, "index": i, "url": origin_url(u["url"])} for i, u in enumerate(self._upstream_list())],
                process=self._process(),
                cleanup=self._cleanup() if self._cleanup is not None else None,
                rss_degraded=self._rss_degraded,
                websockets=self._websockets() if self._websockets is not None else None,
                streams=self._streams() if self._streams is not None else None,
            )
        )
        if snapshot["status"] == "ok" and self._connections_full(site):
            snapshot["status"] = "degraded"
        if self._state is not None:
            state = self._state()
            cast(dict[str, Any], snapshot)["state"] = state
            if snapshot["status"] == "ok" and state.get("shared") is False:
                snapshot["status"] = "degraded"
        return snapshot

    def readiness(self) -> tuple[bool, str | None]:
        """
        Whether to accept chat work: C{(True, None)} or C{(False, reason)}.
        """
        site = self._site()
        ok, reason = readiness(draining=site.draining, queue_full=self._queue.full, upstreams=self._upstream_list())
        if ok and self._connections_full(site):
            return False, "connections_full"
        return ok, reason

"""
The liveness snapshot behind C{/api/health} and the readiness answer behind
C{/api/ready}.

L{build_health} is pure: it takes the numbers and returns the contract's JSON
shape (L{inkflow.snapshot.Health}).  L{ProcessMetrics} is the one place psutil is read; it never blocks
(C{cpu_percent} is measured between two calls).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import psutil

from inkflow import __version__
from inkflow.settings import Settings
from inkflow.snapshot import (
    CleanupSnapshot,
    Health,
    ProcessSnapshot,
    QueueSnapshot,
    StreamsSnapshot,
    UpstreamSnapshot,
    WebSocketsSnapshot,
)

__all__ = ["HealthInputs", "ProcessMetrics", "SiteStats", "build_health", "readiness"]

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


class ProcessMetrics:
    """
    Reads this process's figures with psutil.
    """

    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(pid or os.getpid())
        self._process.cpu_percent(None)  # prime: the next call measures since now

    def read(self) -> ProcessSnapshot:
        p = self._process
        try:
            with p.oneshot():
                mem = p.memory_info()
                return ProcessSnapshot(
                    memory={"rss_bytes": mem.rss, "vms_bytes": mem.vms, "percent": round(p.memory_percent(), 2)},
                    cpu_percent=round(p.cpu_percent(None), 1),
                    open_files=p.num_fds() if hasattr(p, "num_fds") else len(p.open_files()),
                    threads=p.num_threads(),
                )
        except psutil.Error:
            return ProcessSnapshot(
                memory={"rss_bytes": 0, "vms_bytes": 0, "percent": 0.0}, cpu_percent=0.0, open_files=0, threads=0
            )


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

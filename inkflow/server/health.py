"""
The liveness snapshot behind C{/api/health} and the readiness answer behind
C{/api/ready}.

L{build_health} is pure: it takes the numbers and returns the contract's JSON
shape.  L{ProcessMetrics} is the one place psutil is read; it never blocks
(C{cpu_percent} is measured between two calls).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import psutil

from inkflow import __version__
from inkflow.settings import Settings

__all__ = ["ProcessMetrics", "build_health", "readiness"]

#: RSS over which health says "degraded".
DEFAULT_RSS_DEGRADED = 1024 * 1024 * 1024

EMPTY_QUEUE: dict[str, Any] = {
    "depth": 0,
    "max": 0,
    "in_flight": 0,
    "max_concurrent": 0,
    "processed_total": 0,
    "rejected_total": 0,
    "timed_out_total": 0,
    "wait_ms_p50": 0.0,
    "wait_ms_p95": 0.0,
}

EMPTY_STREAMS: dict[str, Any] = {"in_flight": 0, "total": 0}

EMPTY_CLEANUP: dict[str, Any] = {"runs": 0, "last_run": None, "temp_files_removed": 0, "gc_collected": 0}


class ProcessMetrics:
    """
    Reads this process's figures with psutil.
    """

    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(pid or os.getpid())
        self._process.cpu_percent(None)  # prime: the next call measures since now
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        with self._lock:
            p = self._process
            try:
                with p.oneshot():
                    mem = p.memory_info()
                    figures = {
                        "memory": {
                            "rss_bytes": mem.rss,
                            "vms_bytes": mem.vms,
                            "percent": round(p.memory_percent(), 2),
                        },
                        "cpu_percent": round(p.cpu_percent(None), 1),
                        "open_files": p.num_fds() if hasattr(p, "num_fds") else len(p.open_files()),
                        "threads": p.num_threads(),
                    }
            except psutil.Error:
                figures = {
                    "memory": {"rss_bytes": 0, "vms_bytes": 0, "percent": 0.0},
                    "cpu_percent": 0.0,
                    "open_files": 0,
                    "threads": 0,
                }
        return figures


@dataclass(frozen=True)
class HealthInputs:
    """
    Everything a health snapshot is made of, gathered by the web layer.
    """

    settings: Settings
    uptime_s: float
    draining: bool
    connections_active: int
    connections_rejected: int
    queue: dict[str, Any]
    upstreams: list[dict[str, Any]]
    process: dict[str, Any]
    cleanup: dict[str, Any]
    rss_degraded: int = DEFAULT_RSS_DEGRADED
    streams: dict[str, Any] | None = None


def build_health(inputs: HealthInputs) -> dict[str, Any]:
    """
    The contract's C{/api/health} body.
    """
    s = inputs.settings
    status = "ok"
    if inputs.draining:
        status = "draining"
    elif _all_upstreams_open(inputs.upstreams) or inputs.process["memory"]["rss_bytes"] > inputs.rss_degraded:
        status = "degraded"
    queue = dict(EMPTY_QUEUE)
    queue.update({"max": s.queue_size, "max_concurrent": s.max_concurrent})
    queue.update(inputs.queue)
    return {
        "status": status,
        "version": __version__,
        "mode": s.mode,
        "pid": os.getpid(),
        "uptime_s": round(inputs.uptime_s, 3),
        "connections": {
            "active": inputs.connections_active,
            "max": s.max_connections,
            "rejected_total": inputs.connections_rejected,
        },
        "queue": queue,
        "upstreams": inputs.upstreams,
        "memory": inputs.process["memory"],
        "cpu_percent": inputs.process["cpu_percent"],
        "open_files": inputs.process["open_files"],
        "threads": inputs.process["threads"],
        "cleanup": {**EMPTY_CLEANUP, **inputs.cleanup},
        "streams": {**EMPTY_STREAMS, **(inputs.streams or {})},
        "limits": {
            "max_file_size": s.max_file_size,
            "max_files": s.max_files,
            "max_connections": s.max_connections,
            "queue_size": s.queue_size,
            "max_message_chars": s.max_message_chars,
            "allowed_types": list(s.allowed_types),
        },
    }


def _all_upstreams_open(upstreams: list[dict[str, Any]]) -> bool:
    return bool(upstreams) and all(u.get("state") == "open" for u in upstreams)


def readiness(*, draining: bool, queue_full: bool, upstreams: list[dict[str, Any]]) -> tuple[bool, str | None]:
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

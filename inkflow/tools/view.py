"""
The monitor's pure part: each poll of C{/api/health} (the health object, or
the error that stood in its place) plus the previous good one, to a L{View}
with per-second rates.  No I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Poll", "Rates", "Tracker", "UpstreamRow", "View", "build_view", "compute_rates"]


@dataclass(frozen=True)
class Poll:
    """
    One poll: the health dict, or the error that stood in its place.

    @ivar at: monotonic seconds, for rates.
    @ivar wall: epoch seconds, for showing times.
    """

    at: float
    wall: float
    health: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Rates:
    """
    Per-second rates of the server's counters between two good polls; None
    where there is nothing to compare with (first poll, server restarted).
    """

    processed: float | None = None
    rejected: float | None = None
    timed_out: float | None = None
    connections_rejected: float | None = None


@dataclass(frozen=True)
class UpstreamRow:
    url: str
    state: str
    consecutive_failures: int | None
    failures_total: int | None
    requests_total: int | None
    last_error: str | None


@dataclass(frozen=True)
class View:
    """
    Everything the dashboard shows, already picked out of the health dict.
    Numbers the server did not send are None.

    @ivar up: the last poll succeeded.
    @ivar stale: the numbers are the last known ones, from before the server
        stopped answering.
    """

    url: str
    up: bool
    status: str
    error: str | None
    polled_wall: float
    last_seen_wall: float | None
    stale: bool
    version: str | None = None
    mode: str | None = None
    pid: int | None = None
    uptime_s: float | None = None
    rss_bytes: float | None = None
    cpu_percent: float | None = None
    open_files: int | None = None
    threads: int | None = None
    connections_active: int | None = None
    connections_max: int | None = None
    connections_rejected: int | None = None
    queue_depth: int | None = None
    queue_max: int | None = None
    in_flight: int | None = None
    max_concurrent: int | None = None
    processed_total: int | None = None
    rejected_total: int | None = None
    timed_out_total: int | None = None
    wait_ms_p50: float | None = None
    wait_ms_p95: float | None = None
    rates: Rates = Rates()
    upstreams: tuple[UpstreamRow, ...] = ()
    cleanup_runs: int | None = None
    cleanup_last_run: Any = None
    temp_files_removed: int | None = None
    gc_collected: int | None = None


def _get(data: Mapping[str, Any] | None, *path: str) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _number(data: Mapping[str, Any] | None, *path: str) -> float | None:
    value = _get(data, *path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _int(data: Mapping[str, Any] | None, *path: str) -> int | None:
    value = _number(data, *path)
    return int(value) if value is not None else None


def _str(data: Mapping[str, Any] | None, *path: str) -> str | None:
    value = _get(data, *path)
    return None if value is None else str(value)


_COUNTERS = {
    "processed": ("queue", "processed_total"),
    "rejected": ("queue", "rejected_total"),
    "timed_out": ("queue", "timed_out_total"),
    "connections_rejected": ("connections", "rejected_total"),
}


def compute_rates(current: Poll, previous: Poll | None) -> Rates:
    """
    Per-second rates of the counters between two good polls of the same server
    process.  A counter that went backwards, a new pid or a smaller uptime means
    the server restarted: no rate then.
    """
    if previous is None or current.health is None or previous.health is None:
        return Rates()
    elapsed = current.at - previous.at
    if elapsed <= 0:
        return Rates()
    now, before = current.health, previous.health
    if _get(now, "pid") != _get(before, "pid"):
        return Rates()
    uptime_now, uptime_before = _number(now, "uptime_s"), _number(before, "uptime_s")
    if uptime_now is not None and uptime_before is not None and uptime_now < uptime_before:
        return Rates()
    rates: dict[str, float | None] = {}
    for name, path in _COUNTERS.items():
        a, b = _number(now, *path), _number(before, *path)
        rates[name] = (a - b) / elapsed if a is not None and b is not None and a >= b else None
    return Rates(**rates)


def _upstreams(health: Mapping[str, Any]) -> tuple[UpstreamRow, ...]:
    items = health.get("upstreams")
    if not isinstance(items, list):
        return ()
    rows = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        rows.append(
            UpstreamRow(
                url=_str(item, "url") or "?",
                state=_str(item, "state") or "?",
                consecutive_failures=_int(item, "consecutive_failures"),
                failures_total=_int(item, "failures_total"),
                requests_total=_int(item, "requests_total"),
                last_error=_str(item, "last_error"),
            )
        )
    return tuple(rows)


def build_view(
    url: str,
    poll: Poll,
    last_good: Poll | None,
    previous_good: Poll | None = None,
) -> View:
    """
    The view of one poll.

    @param poll: this poll, good or failed.
    @param last_good: the latest good poll (C{poll} itself when it is good):
        its numbers are shown, marked stale when C{poll} failed.
    @param previous_good: the good poll before C{last_good}, for rates.
    """
    up = poll.health is not None
    health = last_good.health if last_good is not None else None
    if up:
        status = _str(health, "status") or "unknown"
        rates = compute_rates(poll, previous_good)
    else:
        status = "DOWN"
        rates = Rates()
    common: dict[str, Any] = {
        "url": url,
        "up": up,
        "status": status,
        "error": poll.error if not up else None,
        "polled_wall": poll.wall,
        "last_seen_wall": last_good.wall if last_good is not None else None,
        "stale": not up and health is not None,
    }
    if health is None:
        return View(**common)
    return View(
        **common,
        version=_str(health, "version"),
        mode=_str(health, "mode"),
        pid=_int(health, "pid"),
        uptime_s=_number(health, "uptime_s"),
        rss_bytes=_number(health, "memory", "rss_bytes"),
        cpu_percent=_number(health, "cpu_percent"),
        open_files=_int(health, "open_files"),
        threads=_int(health, "threads"),
        connections_active=_int(health, "connections", "active"),
        connections_max=_int(health, "connections", "max"),
        connections_rejected=_int(health, "connections", "rejected_total"),
        queue_depth=_int(health, "queue", "depth"),
        queue_max=_int(health, "queue", "max"),
        in_flight=_int(health, "queue", "in_flight"),
        max_concurrent=_int(health, "queue", "max_concurrent"),
        processed_total=_int(health, "queue", "processed_total"),
        rejected_total=_int(health, "queue", "rejected_total"),
        timed_out_total=_int(health, "queue", "timed_out_total"),
        wait_ms_p50=_number(health, "queue", "wait_ms_p50"),
        wait_ms_p95=_number(health, "queue", "wait_ms_p95"),
        rates=rates,
        upstreams=_upstreams(health),
        cleanup_runs=_int(health, "cleanup", "runs"),
        cleanup_last_run=_get(health, "cleanup", "last_run"),
        temp_files_removed=_int(health, "cleanup", "temp_files_removed"),
        gc_collected=_int(health, "cleanup", "gc_collected"),
    )


class Tracker:
    """
    Remembers the good polls that rates and the DOWN screen need.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_good: Poll | None = None
        self.previous_good: Poll | None = None

    def update(self, poll: Poll) -> View:
        if poll.health is not None:
            self.previous_good, self.last_good = self.last_good, poll
        return build_view(self.url, poll, self.last_good, self.previous_good)

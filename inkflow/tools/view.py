"""
The monitor's pure part: each poll of C{/api/health} (the health object, or
the error that stood in its place) plus the previous good one, to a L{View}
with per-second rates.  No I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from inkflow.snapshot import Health, ServerSnapshot, StateSnapshot, read_health, read_section

__all__ = ["Poll", "Rates", "Tracker", "View", "build_view", "compute_rates"]


@dataclass(frozen=True)
class Poll:
    """
    One poll: the health dict as received, or the error that stood in its place.

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
    cancelled: float | None = None
    connections_rejected: float | None = None


def _no_health() -> Health:
    return read_health(None)


@dataclass(frozen=True)
class View:
    """
    Everything the dashboard shows.

    @ivar up: the last poll succeeded.
    @ivar stale: the numbers are the last known ones, from before the server
        stopped answering.
    @ivar health: the last good answer, reduced to the schema by
        L{read_health}: every section is there, a number the server did not
        send (or sent with the wrong type) is absent, so read it with
        C{.get()}.  Empty before the server was first reached.
    """

    url: str
    up: bool
    status: str
    error: str | None
    polled_wall: float
    last_seen_wall: float | None
    stale: bool
    health: Health = field(default_factory=_no_health)
    rates: Rates = Rates()
    #: Under C{--workers N}: the whole server (totals, one section per worker).
    server: ServerSnapshot | None = None
    #: The shared state (backend, shared or answering alone).
    state: StateSnapshot | None = None


#: The counters that get a rate, each read from the schema.
_COUNTERS: dict[str, Callable[[Health], float | None]] = {
    "processed": lambda h: h["queue"].get("processed_total"),
    "rejected": lambda h: h["queue"].get("rejected_total"),
    "timed_out": lambda h: h["queue"].get("timed_out_total"),
    "cancelled": lambda h: h["queue"].get("cancelled_total"),
    "connections_rejected": lambda h: h["connections"].get("rejected_total"),
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
    now, before = read_health(current.health), read_health(previous.health)
    server_now = read_section(ServerSnapshot, current.health, "server")
    server_before = read_section(ServerSnapshot, previous.health, "server")
    if server_now and server_before and server_now.get("totals") and server_before.get("totals"):
        # --workers N: each poll may be answered by another worker; the
        # server's totals never go backwards.
        now, before = server_totals(now, server_now), server_totals(before, server_before)
    elif now.get("pid") != before.get("pid"):
        return Rates()
    uptime_now, uptime_before = now.get("uptime_s"), before.get("uptime_s")
    if uptime_now is not None and uptime_before is not None and uptime_now < uptime_before:
        return Rates()
    rates: dict[str, float | None] = {}
    for name, read in _COUNTERS.items():
        a, b = read(now), read(before)
        rates[name] = (a - b) / elapsed if a is not None and b is not None and a >= b else None
    return Rates(**rates)


def server_totals(health: Health, server: ServerSnapshot) -> Health:
    """
    C{health} with its counters (queue, connections) replaced by the whole
    server's (C{--workers N}).
    """
    totals = server.get("totals", {})
    merged: dict[str, Any] = dict(health)
    merged.pop("pid", None)
    merged.pop("uptime_s", None)
    merged["queue"] = {**health["queue"], **totals.get("queue", {})}
    merged["connections"] = {**health["connections"], **totals.get("connections", {})}
    return cast(Health, merged)


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
    seen = last_good is not None and last_good.health is not None
    health = read_health(last_good.health if last_good is not None else None)
    return View(
        url=url,
        up=up,
        status=(health.get("status") or "unknown") if up else "DOWN",
        error=poll.error if not up else None,
        polled_wall=poll.wall,
        last_seen_wall=last_good.wall if last_good is not None else None,
        stale=not up and seen,
        health=health,
        rates=compute_rates(poll, previous_good) if up else Rates(),
        server=read_section(ServerSnapshot, last_good.health, "server") if last_good is not None else None,
        state=read_section(StateSnapshot, last_good.health, "state") if last_good is not None else None,
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

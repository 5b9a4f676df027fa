"""
``inkflow monitor``: a live terminal view of a running InkFlow's ``/api/health``.

Three layers, each usable alone:

  - L{inkflow.tools.healthcheck.HealthClient}: one GET with a timeout, the
    same client the watchdog uses;
  - L{inkflow.tools.view}: pure; turns each poll (a health dict, or the error
    that stood in its place) plus the previous good snapshot into a L{View}
    with per-second rates;
  - L{inkflow.tools.dashboard}: a L{View} to a C{rich} renderable.

L{run_once} and L{LiveMonitor} put them together on a reactor.
"""

from __future__ import annotations

import json
import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from inkflow.tools.dashboard import format_bytes, format_duration, render, status_style
from inkflow.tools.healthcheck import DEFAULT_URL, HealthCheckFailed, HealthClient, describe_failure
from inkflow.tools.view import Poll, Rates, Tracker, View, build_view, compute_rates

__all__ = [
    "DEFAULT_URL",
    "LiveMonitor",
    "Poll",
    "Rates",
    "Tracker",
    "View",
    "build_view",
    "compute_rates",
    "format_bytes",
    "format_duration",
    "poll",
    "render",
    "run_once",
    "status_style",
]

log = Logger()


def poll(client: HealthClient, url: str, clock: IReactorTime) -> Deferred[Poll]:
    """
    One poll, never failing for a server that is away: the error stands in
    the health object's place.  C{clock} times it for the rates.
    """
    at, wall = clock.seconds(), time.time()

    def failed(reason: Failure) -> Poll:
        return Poll(at=at, wall=wall, error=describe_failure(reason, client.timeout))

    return client.health(url).addCallbacks(lambda health: Poll(at=at, wall=wall, health=health), failed)


def run_once(client: HealthClient, url: str, as_json: bool, out: TextIO, err: TextIO) -> Deferred[int]:
    """
    One snapshot: JSON (the server's own health object) or one dashboard frame.
    Exit status 0, or 1 with one line on C{err} when the server cannot be read.
    """

    def show(health: dict[str, object]) -> int:
        if as_json:
            out.write(json.dumps(health, indent=2, ensure_ascii=False) + "\n")
        else:
            view = Tracker(url).update(Poll(at=time.monotonic(), wall=time.time(), health=health))
            Console(file=out).print(render(view))
        return 0

    def failed(reason: Failure) -> int:
        reason.trap(HealthCheckFailed)
        err.write(f"inkflow monitor: cannot read {url}: {reason.value}\n")
        return 1

    return client.health(url).addCallbacks(show, failed)


class LiveMonitor:
    """
    Poll every C{interval} seconds and redraw, until L{stop}.  A poll still
    running when the next one is due delays it (never two at a time).
    """

    def __init__(
        self, clock: IReactorTime, client: HealthClient, url: str, interval: float, console: Console | None = None
    ) -> None:
        self._clock = clock
        self._client = client
        self._url = url
        self._interval = interval
        self._tracker = Tracker(url)
        self._live = Live(console=console or Console(), auto_refresh=False, transient=False)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> Deferred[None]:
        """
        Start; the Deferred fires once stopped.
        """
        self._live.start()
        done: Deferred[None] = self._loop.start(self._interval, now=True).addCallback(lambda _: None)
        return done.addBoth(self._stopped)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> Deferred[None]:
        def show(result: Poll) -> None:
            self._live.update(render(self._tracker.update(result), self._interval), refresh=True)

        d = poll(self._client, self._url, self._clock).addCallback(show)
        return d.addErrback(lambda f: log.failure("could not show a poll", f))

    def _stopped(self, result: object) -> object:
        self._live.stop()
        return result

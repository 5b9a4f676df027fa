"""
``inkflow monitor``: a live terminal view of a running InkFlow's ``/api/health``.

Three layers, each usable alone:

  - L{fetch_health}: one blocking GET with a timeout (this is a separate CLI
    process, not the server, so plain urllib is the simplest thing that works);
  - L{Tracker} and L{build_view}: pure; turn each poll (a health dict, or the
    error that stood in its place) plus the previous good snapshot into a
    L{View} with per-second rates.  The health dict is read against the one
    schema, L{inkflow.snapshot.Health}.  No I/O, no clock of their own;
  - L{render}: a L{View} to a C{rich} renderable; L{run_live} and L{run_once}
    put them together.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from inkflow import paths
from inkflow.snapshot import Health, read_health

__all__ = [
    "DEFAULT_URL",
    "FetchError",
    "Poll",
    "Rates",
    "Tracker",
    "View",
    "build_view",
    "compute_rates",
    "fetch_health",
    "format_bytes",
    "format_duration",
    "render",
    "run_live",
    "run_once",
    "status_style",
]

DEFAULT_URL = f"http://127.0.0.1:8000{paths.HEALTH}"
MAX_BODY = 1024 * 1024
DASH = "—"


# --- fetching


class FetchError(Exception):
    """
    The health URL could not be read; the message is one short line.
    """


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_health(url: str, timeout: float) -> dict[str, Any]:
    """
    GET C{url} and return its JSON object.

    @raise FetchError: on any failure: connection, timeout, HTTP status other
        than 2xx, a body that is not a JSON object.
    """
    # A proxy from the environment has no business between us and a local server.
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(url) else []
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "inkflow-monitor"})
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as e:
        raise FetchError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            raise FetchError(f"no answer within {timeout:g}s") from None
        if isinstance(reason, ConnectionRefusedError):
            raise FetchError("connection refused") from None
        raise FetchError(_one_line(reason)) from None
    except TimeoutError:
        raise FetchError(f"no answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(_one_line(e) or type(e).__name__) from None
    if len(body) > MAX_BODY:
        raise FetchError("health answer is larger than 1 MiB")
    try:
        data = json.loads(body)
    except ValueError:
        raise FetchError("health answer is not JSON") from None
    if not isinstance(data, dict):
        raise FetchError("health answer is not a JSON object")
    return data


def _one_line(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --- the pure part: polls to view models


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
    if now.get("pid") != before.get("pid"):
        return Rates()
    uptime_now, uptime_before = now.get("uptime_s"), before.get("uptime_s")
    if uptime_now is not None and uptime_before is not None and uptime_now < uptime_before:
        return Rates()
    rates: dict[str, float | None] = {}
    for name, read in _COUNTERS.items():
        a, b = read(now), read(before)
        rates[name] = (a - b) / elapsed if a is not None and b is not None and a >= b else None
    return Rates(**rates)


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


# --- formatting (pure)


def format_bytes(value: float | None) -> str:
    if value is None:
        return DASH
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_rate(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}/s"


def format_of(value: float | None, limit: float | None) -> str:
    left = DASH if value is None else f"{value:g}"
    return left if limit is None else f"{left} / {limit:g}"


def format_clock(wall: float | None) -> str:
    return DASH if wall is None else time.strftime("%H:%M:%S", time.localtime(wall))


def format_when(value: Any, now: float) -> str:
    """
    A time sent by the server (epoch seconds, or text such as ISO 8601).
    """
    if value is None:
        return "never"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{format_clock(value)} ({format_duration(now - value)} ago)"
    return str(value)


_STATUS_STYLES = {
    "ok": "bold green",
    "degraded": "bold yellow",
    "draining": "bold magenta",
    "DOWN": "bold white on red",
}
_BREAKER_STYLES = {"closed": "green", "half_open": "yellow", "open": "bold red"}


def status_style(status: str) -> str:
    """
    The colour of a health status: ok green, degraded yellow, draining
    magenta, DOWN white on red, anything else plain bold.
    """
    return _STATUS_STYLES.get(status, "bold")


# --- rendering


def _pairs(title: str, rows: list[tuple[str, str]], dim: bool) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="cyan", no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    for name, value in rows:
        grid.add_row(name, value)
    return _panel(grid, title, dim)


def _panel(body: RenderableType, title: str, dim: bool) -> Panel:
    return Panel(
        body,
        title=title + (" (last known)" if dim else ""),
        title_align="left",
        border_style="dim" if dim else "blue",
        style="dim" if dim else "",
    )


def _header(view: View, interval: float | None) -> Panel:
    health = view.health
    version, mode, pid, uptime = health.get("version"), health.get("mode"), health.get("pid"), health.get("uptime_s")
    line = Text()
    line.append(f" {view.status.upper()} ", style=status_style(view.status))
    if view.stale:
        line.append("  last known", style="dim")
    if version is not None:
        line.append(f"  v{version}")
    if mode is not None:
        line.append("  mode ", style="dim")
        line.append(mode)
    if pid is not None:
        line.append("  pid ", style="dim")
        line.append(str(pid))
    if uptime is not None and not view.stale:
        line.append("  up ", style="dim")
        line.append(format_duration(uptime))
    lines: list[RenderableType] = [line]
    if not view.up:
        down = Text()
        down.append(view.error or "no answer", style="red")
        if view.last_seen_wall is not None:
            ago = format_duration(view.polled_wall - view.last_seen_wall)
            down.append(f"   last seen {format_clock(view.last_seen_wall)} ({ago} ago)", style="dim")
        else:
            down.append("   never reached", style="dim")
        lines.append(down)
    footer = f"polled {format_clock(view.polled_wall)}"
    if interval is not None:
        footer += f" · every {interval:g}s · Ctrl-C quits"
    return Panel(
        Group(*lines),
        title=f"[bold]InkFlow[/] {view.url}",
        title_align="left",
        subtitle=footer,
        subtitle_align="right",
        border_style="red" if not view.up else "blue",
    )


def _upstream_table(view: View, dim: bool) -> Panel:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, show_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("URL", overflow="fold")
    table.add_column("breaker")
    table.add_column("failing", justify="right")
    table.add_column("failures / requests", justify="right")
    table.add_column("last error", overflow="fold", style="dim")
    upstreams = view.health["upstreams"]
    if not upstreams:
        table.add_row("", "none (demo or static-only mode)", "", "", "", "")
    for index, upstream in enumerate(upstreams):
        state = upstream.get("state") or "?"
        table.add_row(
            str(index),
            upstream.get("url") or "?",
            Text(state, style=_BREAKER_STYLES.get(state, "")),
            format_of(upstream.get("consecutive_failures"), None),
            format_of(upstream.get("failures_total"), upstream.get("requests_total")),
            upstream.get("last_error") or "",
        )
    return _panel(table, "Upstreams", dim)


def render(view: View, interval: float | None = None) -> RenderableType:
    """
    The whole dashboard for one view.
    """
    header = _header(view, interval)
    health = view.health
    if health.get("version") is None and health.get("pid") is None and not view.up:
        return header
    dim = view.stale
    cpu = health.get("cpu_percent")
    process = _pairs(
        "Process",
        [
            ("RSS", format_bytes(health["memory"].get("rss_bytes"))),
            ("CPU", DASH if cpu is None else f"{cpu:.1f} %"),
            ("open files", format_of(health.get("open_files"), None)),
            ("threads", format_of(health.get("threads"), None)),
        ],
        dim,
    )
    c = health["connections"]
    connections = _pairs(
        "Connections",
        [
            ("active", format_of(c.get("active"), c.get("max"))),
            ("rejected", format_of(c.get("rejected_total"), None)),
            ("rejected rate", format_rate(view.rates.connections_rejected)),
            ("timed out", format_of(c.get("timed_out_total"), None)),
        ],
        dim,
    )
    q = health["queue"]
    p50, p95 = q.get("wait_ms_p50"), q.get("wait_ms_p95")
    queue = _pairs(
        "Queue",
        [
            ("waiting", format_of(q.get("depth"), q.get("max"))),
            ("in flight", format_of(q.get("in_flight"), q.get("max_concurrent"))),
            ("wait p50", DASH if p50 is None else f"{p50:.1f} ms"),
            ("wait p95", DASH if p95 is None else f"{p95:.1f} ms"),
        ],
        dim,
    )
    counts = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, show_edge=False)
    counts.add_column("", style="cyan")
    counts.add_column("total", justify="right")
    counts.add_column("rate", justify="right")
    counts.add_row("processed", format_of(q.get("processed_total"), None), format_rate(view.rates.processed))
    counts.add_row("rejected", format_of(q.get("rejected_total"), None), format_rate(view.rates.rejected))
    counts.add_row("timed out", format_of(q.get("timed_out_total"), None), format_rate(view.rates.timed_out))
    counts.add_row("client left", format_of(q.get("cancelled_total"), None), format_rate(view.rates.cancelled))
    totals = _panel(counts, "Chat requests", dim)
    cl = health["cleanup"]
    cleanup = _pairs(
        "Cleanup",
        [
            ("runs", format_of(cl.get("runs"), None)),
            ("last run", format_when(cl.get("last_run"), view.polled_wall)),
            ("temp files removed", format_of(cl.get("temp_files_removed"), None)),
            ("gc collected", format_of(cl.get("gc_collected"), None)),
        ],
        dim,
    )
    top = Table.grid(expand=True, padding=(0, 1))
    for _ in range(3):
        top.add_column(ratio=1)
    top.add_row(process, connections, queue)
    middle = Table.grid(expand=True, padding=(0, 1))
    middle.add_column(ratio=1)
    middle.add_column(ratio=1)
    middle.add_row(totals, cleanup)
    return Group(header, top, middle, _upstream_table(view, dim))


# --- the two ways to run


def poll_once(url: str, timeout: float) -> Poll:
    """
    One poll, never raising for a server that is away.
    """
    at, wall = time.monotonic(), time.time()
    try:
        return Poll(at=at, wall=wall, health=fetch_health(url, timeout))
    except FetchError as e:
        return Poll(at=at, wall=wall, error=str(e))


def probe_timeout(interval: float) -> float:
    """
    How long one poll may take: the interval, between 1 and 5 seconds.
    """
    return min(max(interval, 1.0), 5.0)


def run_once(url: str, as_json: bool, out: TextIO, err: TextIO, timeout: float = 5.0) -> int:
    """
    One snapshot: JSON (the server's own health object) or one dashboard frame.
    Exit status 0, or 1 with one line on C{err} when the server cannot be read.
    """
    try:
        health = fetch_health(url, timeout)
    except FetchError as e:
        err.write(f"inkflow monitor: cannot read {url}: {e}\n")
        return 1
    if as_json:
        out.write(json.dumps(health, indent=2, ensure_ascii=False) + "\n")
    else:
        view = Tracker(url).update(Poll(at=time.monotonic(), wall=time.time(), health=health))
        Console(file=out).print(render(view))
    return 0


def run_live(url: str, interval: float, console: Console | None = None) -> int:
    """
    Poll every C{interval} seconds and redraw until Ctrl-C (exit status 0).
    """
    console = console if console is not None else Console()
    tracker = Tracker(url)
    timeout = probe_timeout(interval)
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                started = time.monotonic()
                view = tracker.update(poll_once(url, timeout))
                live.update(render(view, interval), refresh=True)
                time.sleep(max(0.0, started + interval - time.monotonic()))
    except KeyboardInterrupt:
        return 0

"""
``inkflow monitor``: a live terminal view of a running InkFlow's ``/api/health``.

Three layers, each usable alone:

  - L{fetch_health}: one blocking GET with a timeout (this is a separate CLI
    process, not the server, so plain urllib is the simplest thing that works);
  - L{Tracker} and L{build_view}: pure; turn each poll (a health dict, or the
    error that stood in its place) plus the previous good snapshot into a
    L{View} with per-second rates.  No I/O, no clock of their own;
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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = [
    "DEFAULT_URL",
    "FetchError",
    "Poll",
    "Rates",
    "Tracker",
    "UpstreamRow",
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

DEFAULT_URL = "http://127.0.0.1:8000/api/health"
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
    line = Text()
    line.append(f" {view.status.upper()} ", style=status_style(view.status))
    if view.stale:
        line.append("  last known", style="dim")
    if view.version is not None:
        line.append(f"  v{view.version}")
    if view.mode is not None:
        line.append("  mode ", style="dim")
        line.append(view.mode)
    if view.pid is not None:
        line.append("  pid ", style="dim")
        line.append(str(view.pid))
    if view.uptime_s is not None and not view.stale:
        line.append("  up ", style="dim")
        line.append(format_duration(view.uptime_s))
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
    if not view.upstreams:
        table.add_row("", "none (demo or static-only mode)", "", "", "", "")
    for index, row in enumerate(view.upstreams):
        table.add_row(
            str(index),
            row.url,
            Text(row.state, style=_BREAKER_STYLES.get(row.state, "")),
            format_of(row.consecutive_failures, None),
            format_of(row.failures_total, row.requests_total),
            row.last_error or "",
        )
    return _panel(table, "Upstreams", dim)


def render(view: View, interval: float | None = None) -> RenderableType:
    """
    The whole dashboard for one view.
    """
    header = _header(view, interval)
    if view.version is None and view.pid is None and not view.up:
        return header
    dim = view.stale
    process = _pairs(
        "Process",
        [
            ("RSS", format_bytes(view.rss_bytes)),
            ("CPU", DASH if view.cpu_percent is None else f"{view.cpu_percent:.1f} %"),
            ("open files", format_of(view.open_files, None)),
            ("threads", format_of(view.threads, None)),
        ],
        dim,
    )
    connections = _pairs(
        "Connections",
        [
            ("active", format_of(view.connections_active, view.connections_max)),
            ("rejected", format_of(view.connections_rejected, None)),
            ("rejected rate", format_rate(view.rates.connections_rejected)),
        ],
        dim,
    )
    queue = _pairs(
        "Queue",
        [
            ("waiting", format_of(view.queue_depth, view.queue_max)),
            ("in flight", format_of(view.in_flight, view.max_concurrent)),
            ("wait p50", DASH if view.wait_ms_p50 is None else f"{view.wait_ms_p50:.1f} ms"),
            ("wait p95", DASH if view.wait_ms_p95 is None else f"{view.wait_ms_p95:.1f} ms"),
        ],
        dim,
    )
    counts = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, show_edge=False)
    counts.add_column("", style="cyan")
    counts.add_column("total", justify="right")
    counts.add_column("rate", justify="right")
    counts.add_row("processed", format_of(view.processed_total, None), format_rate(view.rates.processed))
    counts.add_row("rejected", format_of(view.rejected_total, None), format_rate(view.rates.rejected))
    counts.add_row("timed out", format_of(view.timed_out_total, None), format_rate(view.rates.timed_out))
    totals = _panel(counts, "Chat requests", dim)
    cleanup = _pairs(
        "Cleanup",
        [
            ("runs", format_of(view.cleanup_runs, None)),
            ("last run", format_when(view.cleanup_last_run, view.polled_wall)),
            ("temp files removed", format_of(view.temp_files_removed, None)),
            ("gc collected", format_of(view.gc_collected, None)),
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

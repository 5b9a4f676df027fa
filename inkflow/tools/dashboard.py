"""
The monitor's dashboard: a L{View} to a C{rich} renderable, and the
formatting of its numbers.  Pure: no I/O.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from inkflow.tools.view import View

__all__ = ["format_bytes", "format_duration", "render", "status_style"]

DASH = "—"


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
    if view.state:
        shared = view.state.get("shared")
        line.append("  state ", style="dim")
        line.append(
            f"{view.state.get('backend', '?')}" + ("" if shared is not False else " (answering alone)"),
            style="" if shared is not False else "yellow",
        )
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


def _workers_table(view: View, dim: bool) -> Panel | None:
    """
    Under C{--workers N}: one row per worker (the other panels show the
    worker that answered this poll; the chat counts are the server's).
    """
    server = view.server
    if not server or not server.get("workers"):
        return None
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, show_edge=False)
    table.add_column("worker", justify="right", style="dim")
    table.add_column("pid", justify="right")
    table.add_column("status")
    table.add_column("up", justify="right")
    table.add_column("connections", justify="right")
    table.add_column("in flight", justify="right")
    table.add_column("processed", justify="right")
    for slot, worker in sorted(server["workers"].items()):
        status = worker.get("status") or "?"
        table.add_row(
            slot,
            format_of(worker.get("pid"), None),
            Text(status, style=status_style(status)),
            format_duration(worker.get("uptime_s")),
            format_of(worker.get("connections", {}).get("active"), worker.get("connections", {}).get("max")),
            format_of(worker.get("queue", {}).get("in_flight"), worker.get("queue", {}).get("max_concurrent")),
            format_of(worker.get("queue", {}).get("processed_total"), None),
        )
    return _panel(table, f"Workers ({len(server['workers'])}, this answer from pid {view.health.get('pid')})", dim)


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
    server_queue: dict[str, float] = view.server.get("totals", {}).get("queue", {}) if view.server else {}
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
    # Under --workers N the server's totals (all workers), else this process's.
    counted: dict[str, Any] = {**q, **server_queue}
    counts.add_row("processed", format_of(counted.get("processed_total"), None), format_rate(view.rates.processed))
    counts.add_row("rejected", format_of(counted.get("rejected_total"), None), format_rate(view.rates.rejected))
    counts.add_row("timed out", format_of(counted.get("timed_out_total"), None), format_rate(view.rates.timed_out))
    counts.add_row("client left", format_of(counted.get("cancelled_total"), None), format_rate(view.rates.cancelled))
    totals = _panel(counts, "Chat requests (all workers)" if server_queue else "Chat requests", dim)
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
    st = health["streams"]
    endings = st.get("endings") or {}
    streams = _pairs(
        "Streams",
        [
            ("in flight", format_of(st.get("in_flight"), None)),
            ("total", format_of(st.get("total"), None)),
            *((f"ended: {cause}", format_of(count, None)) for cause, count in sorted(endings.items())),
        ],
        dim,
    )
    ws = health["websockets"]
    websockets = _pairs(
        "WebSockets (/chat)",
        [("open", format_of(ws.get("open"), None)), ("opened", format_of(ws.get("opened_total"), None))],
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
    lower = Table.grid(expand=True, padding=(0, 1))
    lower.add_column(ratio=1)
    lower.add_column(ratio=1)
    lower.add_row(streams, websockets)
    workers = _workers_table(view, dim)
    parts: list[RenderableType] = [header, top, middle, lower]
    if workers is not None:
        parts.append(workers)
    return Group(*parts, _upstream_table(view, dim))

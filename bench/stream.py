"""
Streamed answers (issue 13): what InkFlow adds to a stream, and how many it
carries at once.

The backend is L{bench.stream_backend} (n8n 2.8.4's streaming framing, each
item stamped with its send time).  The reference is
L{bench.reference_stream}, a bare twisted.web + treq proxy relaying each
chunk as it arrives, measured in the same run:

 - time to first item at one client (Connection: close, sequential), through
   InkFlow minus straight to the backend (goal: at most 2 ms added);
 - C{--count} concurrent streams (default 2,000) started evenly over 2 s, 10
   items 1 s apart, raised limits: all complete; every item at most 100 ms
   after the backend sent it (p99); InkFlow's RSS growth at most 50 MB;
   C{/api/health} p99 at most 100 ms meanwhile.

    python -m bench.stream [--rounds 2] [--count 2000] [--first-items 200]
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from typing import Any

from bench._common import (
    PYTHON,
    REPO,
    Prober,
    Row,
    arguments,
    env,
    fmt,
    logdir,
    median,
    module,
    percentile,
    print_rows,
    raise_fd_limit,
    ratio,
    say,
)

GOAL_ADDED_MS = 2.0
GOAL_LAG_MS = 100.0
GOAL_RSS_MB = 50.0
GOAL_HEALTH_MS = 100.0
BACKLOG = "2048"


def first_item_ms(port: int, path: str, count: int) -> list[float]:
    """
    C{count} sequential requests for a one-item stream; milliseconds from
    sending each to its first item line.
    """
    body = json.dumps({"message": "items=1 interval=0", "sessionId": "bench"}).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: text/plain\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out: list[float] = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            s.sendall(request)
            data = b""
            while b'"type":"item"' not in data:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError(f"{path} on {port}: closed before the first item: {data[:300]!r}")
                data += chunk
            out.append((time.perf_counter() - started) * 1000.0)
            while s.recv(65536):
                pass
    return out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_mb(self.pid))


def many(url: str, pid: int, count: int, health_port: int | None) -> dict[str, Any]:
    """
    C{count} concurrent streams through one server (the client a separate
    process); the server's RSS before and at its peak, health meanwhile.
    """
    before = rss_mb(pid)
    sampler = RssSampler(pid)
    prober = Prober(health_port, interval=0.1) if health_port is not None else None
    client = subprocess.run(
        [PYTHON, "-m", "bench.stream_client", "--url", url, "--count", str(count), "--ramp", "2"],
        capture_output=True,
        text=True,
        env=env(),
        cwd=str(REPO),
        timeout=300,
        check=False,
    )
    peak = sampler.stop()
    health = prober.stop() if prober is not None else None
    if client.returncode != 0:
        raise RuntimeError(f"stream client failed: {client.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(client.stdout)
    result["rss_before_mb"] = before
    result["rss_growth_mb"] = peak - before
    if health is not None:
        latencies = health["latencies_ms"]
        result["health_p99_ms"] = percentile(latencies, 99) if latencies else None
        result["health_probes"] = len(latencies)
        result["health_failed"] = sum(v for k, v in health["statuses"].items() if k != "200") + sum(
            health["errors"].values()
        )
    return result


def run(rounds: int = 2, count: int = 2000, first_items: int = 200) -> list[Row]:
    raise_fd_limit(max(8192, count * 3 + 1000))
    say(f"stream: first item at 1 client x{first_items}, then {count} concurrent streams (10 items 1 s apart)")
    first: dict[str, list[float]] = {"backend": [], "InkFlow": [], "reference": []}
    load: dict[str, list[dict[str, Any]]] = {"InkFlow": [], "reference": []}
    limits = str(count + 500)
    with logdir() as logs, module(logs, "stream_backend", "--backlog", BACKLOG) as backend:
        webhook = backend.url("/webhook/chat")
        ink_args = ("--webhook", webhook, "--rate-limit", "0", "--access-log", "false")
        ink_args += (
            "--max-concurrent",
            limits,
            "--queue-size",
            limits,
            "--max-connections",
            limits,
            "--max-connections-per-ip",
            "0",
        )
        ink_args += ("--attempt-timeout", "30", "--request-timeout", "60")
        with (
            inkflow_on_backlog(logs, ink_args) as ink,
            module(logs, "reference_stream", "--backend", webhook, "--backlog", BACKLOG) as reference,
        ):
            ports = {"backend": (backend.port, "/webhook/chat"), "InkFlow": (ink.port, "/api/chat")}
            ports["reference"] = (reference.port, "/api/chat")
            for port, path in ports.values():
                first_item_ms(port, path, 20)  # warm-up
            for r in range(rounds):
                for name, (port, path) in ports.items():
                    values = first_item_ms(port, path, first_items)
                    first[name].append(median(values))
                    say(f"  round {r + 1} {name}: first item p50 {median(values):.3f} ms")
            for r in range(rounds):
                for name, server in (("InkFlow", ink), ("reference", reference)):
                    result = many(server.url("/api/chat"), server.pid, count, ink.port if name == "InkFlow" else None)
                    load[name].append(result)
                    say(f"  round {r + 1} {name} x{count}: {json.dumps(result)}")
                    time.sleep(1.0)  # let closed connections go
    base = median(first["backend"])
    ink_added = median(first["InkFlow"]) - base
    ref_added = median(first["reference"]) - base
    rows = [
        Row(
            "stream",
            f"time to first item at 1 client, added to the backend's {fmt(base, 'ms', 3)}",
            f"+{fmt(ink_added, 'ms', 2)}",
            f"+{fmt(ref_added, 'ms', 2)} (bare treq proxy)",
            f"{ratio(ink_added, ref_added):.2f}x",
            f"<= {GOAL_ADDED_MS:g} ms",
            ink_added <= GOAL_ADDED_MS,
        )
    ]

    def worst(name: str, key: str) -> float:
        values = [x[key] for x in load[name] if x.get(key) is not None]
        return max(values) if values else float("nan")

    ink, ref = load["InkFlow"], load["reference"]
    complete = all(x["completed"] == count and x["failed"] == 0 for x in ink)
    rows.append(
        Row(
            "stream",
            f"{count} concurrent streams: completed (worst round)",
            f"{min(x['completed'] for x in ink)}/{count}",
            f"{min(x['completed'] for x in ref)}/{count}",
            "",
            "all",
            complete,
            "; ".join(f"InkFlow errors {x['errors']}" for x in ink if x["errors"]),
        )
    )

    def against_reference(what: str, key: str, unit: str, goal: float, note: str = "") -> Row:
        """The worst round of C{key}, InkFlow against the bare proxy, at most C{goal}."""
        mine, bare = worst("InkFlow", key), worst("reference", key)
        return Row(
            "stream",
            f"{count} streams: {what} (worst round)",
            fmt(mine, unit, 1),
            f"{fmt(bare, unit, 1)} (bare treq proxy)",
            f"{ratio(mine, bare):.2f}x",
            f"<= {goal:g} {unit}",
            mine <= goal,
            note,
        )

    lag_note = f"p50 {fmt(worst('InkFlow', 'lag_ms_p50'), 'ms', 1)}, max {fmt(worst('InkFlow', 'lag_ms_max'), 'ms', 1)}"
    rows.append(against_reference("item lag after the backend sent it, p99", "lag_ms_p99", "ms", GOAL_LAG_MS, lag_note))
    rows.append(against_reference("RSS growth", "rss_growth_mb", "MB", GOAL_RSS_MB))
    health = worst("InkFlow", "health_p99_ms")
    rows.append(
        Row(
            "stream",
            f"{count} streams: /api/health p99 meanwhile (worst round)",
            fmt(health, "ms", 1),
            "n/a",
            "",
            f"<= {GOAL_HEALTH_MS:g} ms",
            health <= GOAL_HEALTH_MS and all(x.get("health_failed", 0) == 0 for x in ink),
        )
    )
    return rows


def inkflow_on_backlog(logs: Any, args: tuple[str, ...]) -> Any:
    from bench._common import inkflow_command, running

    return running("inkflow", inkflow_command(*args, listen=f"tcp:0:interface=127.0.0.1:backlog={BACKLOG}"), logs)


def main() -> None:
    def extra(p: Any) -> None:
        p.add_argument("--count", type=int, default=2000, help="concurrent streams")
        p.add_argument("--first-items", type=int, default=200, help="requests per first-item measurement")

    args = arguments(__doc__ or "", extra)
    print_rows("stream", run(args.rounds, args.count, args.first_items))


if __name__ == "__main__":
    main()

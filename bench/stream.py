"""
Streamed answers (issues 13 and 24): what a relay adds to a stream, and how
many it carries at once.

The backend is L{bench.stream_backend} (n8n 2.8.4's streaming framing, each
item stamped with its send time).  Every relay is measured in the same run,
with the same backend and the same load client:

 - C{direct}: the client straight to the backend (the floor);
 - C{nginx}: nginx, one worker, C{proxy_buffering off}, loopback only, its
   configuration generated into a temporary directory (when nginx is
   installed: C{sh scripts/install-system-deps.sh load-tools});
 - C{bare proxy}: L{bench.reference_stream}, a bare twisted.web + treq proxy
   relaying each chunk as it arrives;
 - C{InkFlow}: one process, and C{InkFlow x2}: C{--workers 2};
 - C{baseline} (with C{--baseline DIR}, repeatable): InkFlow from another
   checkout (an A/B of a change in one run).

For each: the time to first item at one client (Connection: close,
sequential), then C{--count} concurrent streams (default 2,000) started
evenly over 2 s, 10 items 1 s apart: completion, item lag after the backend
sent it (p50 / p99), the relay's RSS growth, C{/api/health} p99 meanwhile
(InkFlow).  Goals (issue 24): InkFlow at most 100 ms lag p99, 100 ms health
p99, 50 MB RSS growth, all complete, at least 5x better lag than the bare
proxy; C{--workers 2} no worse than one process; time to first item at most
+1.0 ms over the backend alone.

C{--profile FILE} records InkFlow (one process) with py-spy during the first
ramp (C{pip install py-spy}): FILE.txt the collapsed stacks, FILE.top the
heaviest functions by share.  C{--gc-trace} records InkFlow's garbage
collections (L{bench.gc_trace}) and shows their pauses in each ramp.  On a
shared machine the CPU seconds each relay used are steadier than its lag.

    python -m bench.stream [--rounds 2] [--count 2000] [--first-items 200]
        [--only direct,nginx,bare,inkflow,workers] [--baseline DIR ...] [--profile FILE] [--gc-trace]
        [--webhook-host localhost]
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import (
    BENCH as BENCH_DIR,
)
from bench._common import (
    HOST,
    PYTHON,
    REPO,
    Prober,
    Proc,
    Row,
    arguments,
    env,
    fmt,
    free_port,
    logdir,
    median,
    module,
    percentile,
    print_rows,
    raise_fd_limit,
    ratio,
    say,
)

GOAL_ADDED_MS = 1.0
GOAL_LAG_RATIO = 5.0
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
    """
    The resident memory of C{pid} and all its descendants (C{--workers}'
    processes, nginx's worker), in MB.
    """
    total = 0.0
    for one in _tree(pid):
        try:
            with open(f"/proc/{one}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024.0
                        break
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """
    The CPU time (user + system) used so far by C{pid} and its descendants
    alive now: on a shared machine a steadier figure of a relay's cost than
    its latency.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for one in _tree(pid):
        try:
            with open(f"/proc/{one}/stat", encoding="ascii") as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        one = todo.pop()
        out.append(one)
        try:
            with open(f"/proc/{one}/task/{one}/children", encoding="ascii") as f:
                todo.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


class RssSampler:
    """
    The peak RSS of a process tree, and its CPU time used in the first
    C{ramp} seconds (the streams' arrival).
    """

    def __init__(self, pid: int, interval: float = 0.2, ramp: float = 3.0) -> None:
        self.pid, self.interval = pid, interval
        self.peak = rss_mb(pid)
        self.cpu_start = cpu_seconds(pid)
        self.cpu_ramp = math.nan
        self._ramp_end = time.monotonic() + ramp
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb(self.pid))
            if math.isnan(self.cpu_ramp) and time.monotonic() >= self._ramp_end:
                self.cpu_ramp = cpu_seconds(self.pid) - self.cpu_start

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_mb(self.pid))


@dataclass
class Relay:
    """
    One row: a relay (or none) between the load client and the backend.
    """

    name: str
    port: int
    path: str
    pid: int | None  # whose RSS is measured (with its descendants)
    health_port: int | None = None

    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"


def many(relay: Relay, count: int, profile: str | None = None) -> dict[str, Any]:
    """
    C{count} concurrent streams through one relay (the client a separate
    process); the relay's RSS before and at its peak, health meanwhile.
    """
    before = rss_mb(relay.pid) if relay.pid is not None else math.nan
    sampler = RssSampler(relay.pid) if relay.pid is not None else None
    prober = Prober(relay.health_port, interval=0.1) if relay.health_port is not None else None
    spy = _py_spy(relay.pid, profile) if profile and relay.pid is not None else None
    began = time.time()
    client = subprocess.run(
        [PYTHON, "-m", "bench.stream_client", "--url", relay.url(), "--count", str(count), "--ramp", "2"],
        capture_output=True,
        text=True,
        env=env(),
        cwd=str(REPO),
        timeout=300,
        check=False,
    )
    peak = sampler.stop() if sampler is not None else math.nan
    cpu = cpu_seconds(sampler.pid) - sampler.cpu_start if sampler is not None else math.nan
    health = prober.stop() if prober is not None else None
    if spy is not None:
        spy.wait(60)
    if client.returncode != 0:
        raise RuntimeError(f"stream client failed: {client.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(client.stdout)
    result["rss_before_mb"] = before
    result["rss_growth_mb"] = peak - before
    result["cpu_s"] = cpu
    result["cpu_ramp_s"] = sampler.cpu_ramp if sampler is not None else math.nan
    result["window"] = (began, time.time())
    if health is not None:
        latencies = health["latencies_ms"]
        result["health_p99_ms"] = percentile(latencies, 99) if latencies else None
        result["health_probes"] = len(latencies)
        result["health_failed"] = sum(v for k, v in health["statuses"].items() if k != "200") + sum(
            health["errors"].values()
        )
    return result


# -- profile (py-spy, the ramp only) ---------------------------------------------------


def _py_spy(pid: int, out: str) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(spy).exists() and shutil.which("py-spy") is None:
        say("  (no py-spy: pip install py-spy)")
        return None
    command = [spy, "record", "--pid", str(pid), "--duration", "3", "--rate", "500", "--nonblocking", "--gil"]
    command += ["--format", "raw", "--output", f"{out}.txt"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_top(collapsed: str, top: int = 40) -> str:
    """
    The heaviest functions of py-spy's collapsed stacks: self and inclusive
    share of the samples.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(collapsed).read_text("utf-8", "replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        samples = int(n)
        total += samples
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f for f in stack.split(";")
        ]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "", "self%  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", "incl%  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


# -- nginx ------------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 4096; }}
    server {{
        listen 127.0.0.1:{port} backlog={backlog};
        location / {{
            proxy_pass http://backend/webhook/chat;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


@contextlib.contextmanager
def nginx(logs: Path, backend_port: int) -> Iterator[Proc | None]:
    """
    nginx relaying to the backend, or C{None} when it is not installed.
    """
    binary = nginx_binary()
    if binary is None:
        say("  (nginx is not installed: sh scripts/install-system-deps.sh load-tools)")
        yield None
        return
    conf_dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=logs))
    port = free_port()
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=conf_dir, backend=backend_port, port=port, backlog=BACKLOG), "utf-8")
    proc = Proc("nginx", [binary, "-p", str(conf_dir), "-c", str(conf), "-e", str(conf_dir / "error.log")], logs)
    with proc.log_path.open("wb") as log:
        proc.proc = subprocess.Popen(proc.command, stdout=log, stderr=subprocess.STDOUT, cwd=str(conf_dir))
    proc.port = port
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if proc.proc.poll() is not None or time.monotonic() > deadline:
                    error = (
                        (conf_dir / "error.log").read_text("utf-8", "replace")
                        if (conf_dir / "error.log").exists()
                        else ""
                    )
                    raise RuntimeError(f"nginx did not start: {error[-2000:]}") from None
                time.sleep(0.02)
        yield proc
    finally:
        proc.stop()


# -- the run ---------------------------------------------------------------------------

ALL = ("direct", "nginx", "bare", "inkflow", "workers")
LABELS = {
    "direct": "direct (no relay)",
    "nginx": "nginx, 1 worker",
    "bare": "bare treq proxy",
    "inkflow": "InkFlow",
    "workers": "InkFlow --workers 2",
    "baseline": "InkFlow baseline",
}


def run(
    rounds: int = 2,
    count: int = 2000,
    first_items: int = 200,
    only: tuple[str, ...] = ALL,
    baselines: tuple[str, ...] = (),
    profile: str | None = None,
    gc_trace: bool = False,
    webhook_host: str = "",
) -> list[Row]:
    raise_fd_limit(max(16384, count * 4 + 1000))
    say(f"stream: first item at 1 client x{first_items}, then {count} concurrent streams (10 items 1 s apart)")
    say(f"  load average before: {os.getloadavg()}")
    first: dict[str, list[float]] = collections.defaultdict(list)
    load: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    limits = str(count + 500)
    with contextlib.ExitStack() as stack:
        logs = stack.enter_context(logdir())
        backend = stack.enter_context(module(logs, "stream_backend", "--backlog", BACKLOG))
        webhook = backend.url("/webhook/chat")
        if webhook_host:
            webhook = webhook.replace(f"//{HOST}:", f"//{webhook_host}:")
        ink_args: tuple[str, ...] = ("--webhook", webhook, "--rate-limit", "0", "--access-log", "false")
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
        relays: dict[str, Relay] = {}
        if "direct" in only:
            relays["direct"] = Relay("direct", backend.port, "/webhook/chat", None)
        if "nginx" in only:
            proc = stack.enter_context(nginx(logs, backend.port))
            if proc is not None:
                relays["nginx"] = Relay("nginx", proc.port, "/api/chat", proc.pid)
        if "bare" in only:
            ref = stack.enter_context(module(logs, "reference_stream", "--backend", webhook, "--backlog", BACKLOG))
            relays["bare"] = Relay("bare", ref.port, "/api/chat", ref.pid)

        def traced(name: str, tree: Path = REPO) -> dict[str, str]:
            if not gc_trace:
                return {"PYTHONPATH": str(tree)}
            return {
                "PYTHONPATH": f"{BENCH_DIR / 'gc_trace'}{os.pathsep}{tree}",
                "BENCH_GC_TRACE": str(logs / f"gc-{name}"),
            }

        if "inkflow" in only:
            ink = stack.enter_context(inkflow_on_backlog(logs, ink_args, traced("inkflow")))
            relays["inkflow"] = Relay("inkflow", ink.port, "/api/chat", ink.pid, ink.port)
        if "workers" in only:
            two = stack.enter_context(inkflow_on_backlog(logs, (*ink_args, "--workers", "2"), traced("workers")))
            relays["workers"] = Relay("workers", two.port, "/api/chat", two.pid, two.port)
        for i, tree in enumerate(baselines):
            name = "baseline" if i == 0 else f"baseline{i + 1}"
            LABELS[name] = f"InkFlow @ {Path(tree).name}"
            base = stack.enter_context(inkflow_on_backlog(logs, ink_args, traced(name, Path(tree).resolve())))
            relays[name] = Relay(name, base.port, "/api/chat", base.pid, base.port)
        for relay in relays.values():
            first_item_ms(relay.port, relay.path, 20)  # warm-up
        for r in range(rounds):
            for name, relay in relays.items():
                values = first_item_ms(relay.port, relay.path, first_items)
                first[name].append(median(values))
                say(f"  round {r + 1} {name}: first item p50 {median(values):.3f} ms")
        for r in range(rounds):
            for name, relay in relays.items():
                spy = profile if (profile and r == 0 and name == "inkflow") else None
                result = many(relay, count, spy)
                result["load_average"] = os.getloadavg()[0]
                if gc_trace:
                    time.sleep(0.2)  # (the last collections' lines)
                    result.update(gc_in(logs, name, result["window"]))
                    if name != "workers" and relay.pid is not None:
                        result.update(census(logs, name, relay.pid, count))
                load[name].append(result)
                say(f"  round {r + 1} {name} x{count}: {json.dumps(result)}")
                time.sleep(1.0)  # let closed connections go
    if profile and Path(f"{profile}.txt").exists():
        top = profile_top(f"{profile}.txt")
        Path(f"{profile}.top").write_text(top + "\n", "utf-8")
        say(f"  profile: {profile}.txt, {profile}.top")
    print_relays(relays, first, load, count)
    return goal_rows(first, load, count)


def gc_in(logs: Path, name: str, window: tuple[float, float], ramp: float = 3.0) -> dict[str, Any]:
    """
    The garbage collections a server (and its workers) made during one run:
    in its ramp (the first C{ramp} seconds) and in all, their total and
    longest CPU time in ms.
    """
    events: list[tuple[float, int, float]] = []
    freed = 0
    for path in logs.glob(f"gc-{name}-*.txt"):
        if "-census-" in path.name:
            continue
        for line in path.read_text("ascii").splitlines():
            at, generation, ms, collected = line.split()
            events.append((float(at), int(generation), float(ms)))
            if window[0] <= float(at) < window[1]:
                freed += int(collected)
    if not events:
        return {}
    began, ended = window
    ramp_pauses = [ms for at, _, ms in events if began <= at < began + ramp]
    all_pauses = [ms for at, _, ms in events if began <= at < ended]
    by_generation = {
        g: [round(ms, 1) for at, gen, ms in events if began <= at < ended and gen == g and ms >= 5.0] for g in (0, 1, 2)
    }
    counts = [sum(1 for at, gen, _ in events if began <= at < ended and gen == g) for g in (0, 1, 2)]
    return {
        "gc_ramp_ms": sum(ramp_pauses),
        "gc_ramp_max_ms": max(ramp_pauses, default=0.0),
        "gc_ms": sum(all_pauses),
        "gc_max_ms": max(all_pauses, default=0.0),
        "gc_count": len(all_pauses),
        "gc_counts": counts,
        "gc_pauses_over_5ms": by_generation,
        "gc_freed": freed,
    }


def runs_the_tracer(pid: int) -> bool:
    """
    Whether process C{pid} runs C{bench/gc_trace} (C{BENCH_GC_TRACE} in its
    environment): only such a process answers C{SIGUSR2} with a census.  To
    the bare proxy the signal is fatal, to nginx a binary upgrade.
    """
    try:
        return b"\0BENCH_GC_TRACE=" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def census(logs: Path, name: str, pid: int, count: int, wait: float = 10.0) -> dict[str, Any]:
    """
    The objects a server (one process) holds that only the garbage collector
    can free, right after a run (L{bench.gc_trace}, C{SIGUSR2}): what the
    run's streams left in reference cycles that its own passes (counted in
    L{gc_in}) did not free yet, and the commonest types.
    """
    if not runs_the_tracer(pid):
        return {}
    path = logs / f"gc-{name}-census-{pid}.txt"
    before = len(path.read_text("ascii").splitlines()) if path.exists() else 0
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        lines = path.read_text("ascii").splitlines() if path.exists() else []
        if len(lines) > before:
            _, found, *top = lines[-1].split()
            return {"cyclic_left": int(found), "cyclic_top": " ".join(top)}
        time.sleep(0.05)
    return {}


def _worst(rounds: list[dict[str, Any]], key: str) -> float:
    values = [x[key] for x in rounds if x.get(key) is not None and not math.isnan(x[key])]
    return max(values) if values else math.nan


def print_relays(
    relays: dict[str, Relay], first: dict[str, list[float]], load: dict[str, list[dict[str, Any]]], count: int
) -> None:
    """
    One row per relay (the worst round of each figure, round values in
    brackets), the lag ratios against the bare proxy and nginx.
    """
    base = median(first.get("direct") or first.get("nginx") or [math.nan])
    bare_lag = _worst(load.get("bare", []), "lag_ms_p99")
    nginx_lag = _worst(load.get("nginx", []), "lag_ms_p99")
    print(f"\n## stream: {count} streams over 2 s, every relay in one run (worst round; rounds in brackets)\n")
    print(
        "| relay | first item | completed | lag p50 | lag p99 | lag p99 vs bare proxy | vs nginx "
        "| RSS growth | /api/health p99 | CPU s, ramp (3 s) | CPU s, all | GC CPU ms in ramp (longest) | load avg |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in relays:
        rounds = load[name]

        def each(key: str, digits: int = 1, rounds: list[dict[str, Any]] = rounds) -> str:
            values = [x.get(key) for x in rounds]
            if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
                return "—"
            shown = " / ".join("n/a" if v is None else f"{v:,.{digits}f}" for v in values)
            return f"{fmt(_worst(rounds, key), '', digits)} ({shown})"

        lag = _worst(rounds, "lag_ms_p99")
        added = median(first[name]) - base
        first_text = f"{median(first[name]):.3f} ms" if name == "direct" else f"{added:+.2f} ms"
        done = f"{min(x['completed'] for x in rounds)}/{count}"
        loads = " / ".join(f"{x['load_average']:.1f}" for x in rounds)
        print(
            f"| {LABELS[name]} | {first_text} | {done} | {each('lag_ms_p50')} ms | {each('lag_ms_p99')} ms "
            f"| {ratio(bare_lag, lag):.1f}x better | {ratio(lag, nginx_lag):.1f}x nginx's "
            f"| {each('rss_growth_mb')} MB | {each('health_p99_ms')} ms | {each('cpu_ramp_s', 2)} | {each('cpu_s', 2)} "
            f"| {each('gc_ramp_ms', 0)} ({each('gc_ramp_max_ms', 0)}) "
            f"| {loads} |"
        )
    for name, rounds in load.items():
        if any("cyclic_left" in x for x in rounds):
            freed = " / ".join(f"{x.get('gc_freed', 0):,}" for x in rounds)
            left = " / ".join(f"{x.get('cyclic_left', 0):,}" for x in rounds)
            per = " / ".join(f"{(x.get('gc_freed', 0) + x.get('cyclic_left', 0)) / count:.1f}" for x in rounds)
            print(
                f"\n{LABELS[name]}: objects only the collector could free, by round: {freed} freed by its passes "
                f"during the round, {left} left at its end ({per} per stream)"
            )
            print(f"  left at the end of the last round, commonest: {rounds[-1].get('cyclic_top', '')}")
    sys.stdout.flush()


def goal_rows(first: dict[str, list[float]], load: dict[str, list[dict[str, Any]]], count: int) -> list[Row]:
    """
    The goals of issue 24 as result rows (InkFlow, one process, against the
    bare proxy; C{--workers 2} against one process).
    """
    rows: list[Row] = []
    if "inkflow" not in load:
        return rows
    base = median(first["direct"]) if "direct" in first else math.nan
    ink, ref = load["inkflow"], load.get("bare", [])
    ink_added = median(first["inkflow"]) - base
    ref_added = median(first["bare"]) - base if "bare" in first else math.nan
    rows.append(
        Row(
            "stream",
            f"time to first item at 1 client, added to the backend's {fmt(base, 'ms', 3)}",
            f"+{fmt(ink_added, 'ms', 2)}",
            f"+{fmt(ref_added, 'ms', 2)} (bare treq proxy)",
            f"{ratio(ink_added, ref_added):.2f}x",
            f"<= +{GOAL_ADDED_MS:g} ms",
            ink_added <= GOAL_ADDED_MS,
        )
    )
    complete = all(x["completed"] == count and x["failed"] == 0 for x in ink)
    rows.append(
        Row(
            "stream",
            f"{count} concurrent streams: completed (worst round)",
            f"{min(x['completed'] for x in ink)}/{count}",
            f"{min(x['completed'] for x in ref)}/{count}" if ref else "n/a",
            "",
            "all",
            complete,
            "; ".join(f"InkFlow errors {x['errors']}" for x in ink if x["errors"]),
        )
    )
    mine, bare = _worst(ink, "lag_ms_p99"), _worst(ref, "lag_ms_p99")
    rows.append(
        Row(
            "stream",
            f"{count} streams: item lag after the backend sent it, p99 (worst round)",
            fmt(mine, "ms", 1),
            f"{fmt(bare, 'ms', 1)} (bare treq proxy)",
            f"{ratio(bare, mine):.1f}x better",
            f"<= {GOAL_LAG_MS:g} ms and >= {GOAL_LAG_RATIO:g}x better",
            mine <= GOAL_LAG_MS and ratio(bare, mine) >= GOAL_LAG_RATIO,
            f"p50 {fmt(_worst(ink, 'lag_ms_p50'), 'ms', 1)}, max {fmt(_worst(ink, 'lag_ms_max'), 'ms', 1)}",
        )
    )
    growth, bare_growth = _worst(ink, "rss_growth_mb"), _worst(ref, "rss_growth_mb")
    rows.append(
        Row(
            "stream",
            f"{count} streams: RSS growth (worst round)",
            fmt(growth, "MB", 1),
            f"{fmt(bare_growth, 'MB', 1)} (bare treq proxy)",
            f"{ratio(growth, bare_growth):.2f}x",
            f"<= {GOAL_RSS_MB:g} MB",
            growth <= GOAL_RSS_MB,
        )
    )
    health = _worst(ink, "health_p99_ms")
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
    if "workers" in load:
        two = _worst(load["workers"], "lag_ms_p99")
        rows.append(
            Row(
                "stream",
                f"{count} streams: item lag p99, --workers 2 against one process (worst round)",
                fmt(two, "ms", 1),
                f"{fmt(mine, 'ms', 1)} (one process)",
                f"{ratio(two, mine):.2f}x",
                "no worse (<= 1.1x or <= 100 ms)",
                two <= max(GOAL_LAG_MS, mine * 1.1)
                and all(x["completed"] == count and x["failed"] == 0 for x in load["workers"]),
            )
        )
    return rows


def inkflow_on_backlog(logs: Any, args: tuple[str, ...], extra_env: dict[str, str] | None = None) -> Any:
    from bench._common import inkflow_command, running

    command = inkflow_command(*args, listen=f"tcp:0:interface=127.0.0.1:backlog={BACKLOG}")
    return running("inkflow", command, logs, extra_env=extra_env)


def main() -> None:
    def extra(p: Any) -> None:
        p.add_argument("--count", type=int, default=2000, help="concurrent streams")
        p.add_argument("--first-items", type=int, default=200, help="requests per first-item measurement")
        p.add_argument("--only", default=",".join(ALL), help="comma-separated subset of " + ",".join(ALL))
        p.add_argument(
            "--baseline", action="append", default=[], help="a checkout whose InkFlow is measured too (A/B; repeatable)"
        )
        p.add_argument("--gc-trace", action="store_true", help="InkFlow's garbage collections in each run")
        p.add_argument(
            "--webhook-host",
            default="",
            help="the relays reach the backend by this name (e.g. localhost), not 127.0.0.1",
        )
        p.add_argument("--profile", default=None, help="py-spy InkFlow's first ramp into FILE.txt / FILE.top")

    args = arguments(__doc__ or "", extra)
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    rows = run(
        args.rounds,
        args.count,
        args.first_items,
        only,
        tuple(args.baseline),
        args.profile,
        args.gc_trace,
        args.webhook_host,
    )
    print_rows("stream", rows)


if __name__ == "__main__":
    main()

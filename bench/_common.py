"""
Shared helpers for the benchmarks: starting servers as subprocesses on
loopback, running wrk, statistics, and the result rows.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
STATIC = REPO / "static"
HOST = "127.0.0.1"
PYTHON = sys.executable
#: Every server here logs "<Something> starting on <port>" once listening (the
#: fake n8n: "listening on http://127.0.0.1:<port>/").
STARTED = re.compile(r"(?:starting on |listening on http://127\.0\.0\.1:)(\d+)")


def twistd() -> str:
    """
    The twistd next to this Python (the venv's), else the one on PATH.
    """
    path = Path(PYTHON).parent / "twistd"
    return str(path) if path.exists() else "twistd"


def env() -> dict[str, str]:
    """
    A clean environment for a server: the checkout first on C{sys.path}, no
    C{INKFLOW_*} from the caller.
    """
    out = {k: v for k, v in os.environ.items() if not k.startswith("INKFLOW_")}
    out["PYTHONPATH"] = str(REPO) + (os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else "")
    out["PYTHONUNBUFFERED"] = "1"
    return out


def free_port() -> int:
    """
    A port free right now on 127.0.0.1 (only for commands that need one up front).
    """
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_fd_limit(wanted: int = 8192) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Proc:
    """
    A server subprocess whose output goes to a log file (not a pipe: a pipe
    nobody drains fast enough would slow the server down), and whose port is
    read from its "starting on <port>" log line.
    """

    def __init__(
        self, name: str, command: Sequence[str], logdir: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = list(command)
        self.extra_env = dict(extra_env or {})
        self.log_path = logdir / f"{name}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.started_at = 0.0

    def start(self, timeout: float = 30.0, pattern: re.Pattern[str] = STARTED) -> Proc:
        with self.log_path.open("wb") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env={**env(), **self.extra_env}, cwd=str(REPO)
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pattern.search(self.output())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout}s:\n{self.output()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def output(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def running(
    name: str, command: Sequence[str], logdir: Path, timeout: float = 30.0, extra_env: dict[str, str] | None = None
) -> Iterator[Proc]:
    proc = Proc(name, command, logdir, extra_env)
    try:
        yield proc.start(timeout)
    finally:
        proc.stop()


def inkflow_command(*args: str, listen: str = "tcp:0:interface=127.0.0.1") -> list[str]:
    return [twistd(), "-n", "--pidfile=", "inkflow", "--listen", listen, *args]


def inkflow(logdir: Path, *args: str) -> contextlib.AbstractContextManager[Proc]:
    """
    The real InkFlow server (C{twistd -n inkflow}) on a free loopback port.
    """
    return running("inkflow", inkflow_command(*args), logdir)


def fake_n8n(logdir: Path, delay: float = 0.0) -> contextlib.AbstractContextManager[Proc]:
    """
    The tests' fake n8n (JSON echo), as a separate process.
    """
    command = [PYTHON, "-m", "tests.support.fake_n8n", "--port", "0", "--interface", HOST]
    if delay:
        command += ["--delay", str(delay)]
    return running("fake-n8n", command, logdir)


def module(logdir: Path, name: str, *args: str) -> contextlib.AbstractContextManager[Proc]:
    """
    One of bench/'s own servers (C{python -m bench.<name>}).
    """
    return running(name, [PYTHON, "-m", f"bench.{name}", *args], logdir)


@contextlib.contextmanager
def logdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="inkflow-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def read_head(s: socket.socket, size: int = 65536) -> bytes:
    """
    What C{s} reads up to the end of an HTTP head (its blank line), with
    whatever came with it in the same reads; less when the peer closed first.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(size)
        if not chunk:
            break
        data += chunk
    return data


#: The chat message the benchmarks post (the fast backend answers it C{{"output":"ok"}}).
CHAT_BODY = {"message": "x", "sessionId": "bench"}


def check_chat(port: int, name: str) -> None:
    """
    One C{POST /api/chat} to the server C{name} on C{port} before it is
    measured: it must answer 200 with the fast backend's C{"ok"}.

    @raise RuntimeError: any other answer.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("POST", "/api/chat", json.dumps(CHAT_BODY), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200 or json.loads(data).get("output") != "ok":
        raise RuntimeError(f"{name}: POST /api/chat gave {response.status} {data[:200]!r}")


# -- statistics ----------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """
    Nearest-rank percentile (C{nan} for no values).
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def fmt(value: float, unit: str = "", digits: int = 0) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"


def rounds_note(values: Sequence[float], unit: str = "", digits: int = 0) -> str:
    """
    "median (round values)", e.g. C{"3,100 req/s (3,050 / 3,150)"}.
    """
    each = " / ".join(fmt(v, "", digits) for v in values)
    return f"{fmt(median(values), unit, digits)} ({each})"


# -- wrk -------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    raw: str = field(repr=False)


def _duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return math.nan
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(
    url: str, *, threads: int = 2, connections: int = 50, duration: float = 10, script: Path | None = None
) -> WrkResult:
    """
    Run wrk against C{url} (loopback only) and parse its report.
    """
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"benchmarks only send traffic to {HOST}: {url}")
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=duration + 30, check=False)
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=int(total.group(1)) if total else 0,
        rps=float(rps.group(1)) if rps else math.nan,
        p50_ms=_duration_ms(p50.group(1)) if p50 else math.nan,
        p99_ms=_duration_ms(p99.group(1)) if p99 else math.nan,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        raw=out,
    )


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


# -- health prober (a separate process, so the load generator's GIL does not skew it) --


class Prober:
    """
    C{python -m bench._probe}: polls C{/api/health} every C{interval} seconds
    until stopped; L{stop} returns its figures.
    """

    def __init__(self, port: int, interval: float = 0.05, max_seconds: float = 120.0) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench._probe", "--port", str(port), "--interval", str(interval), "--max", str(max_seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=str(REPO),
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "probing" not in line:
            raise RuntimeError(f"prober did not start: {line!r}")

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0:
            raise RuntimeError(f"prober failed: {err}")
        result: dict[str, Any] = json.loads(out)
        return result


# -- results -------------------------------------------------------------------------


@dataclass
class Row:
    """
    One line of the results table.
    """

    bench: str
    what: str
    inkflow: str
    reference: str
    ratio: str
    goal: str
    met: bool | None
    note: str = ""

    @property
    def met_text(self) -> str:
        return "—" if self.met is None else ("yes" if self.met else "**NO**")


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| bench | what | InkFlow | reference | ratio | goal | met? |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r.bench} | {r.what} | {r.inkflow} | {r.reference} | {r.ratio} | {r.goal} | {r.met_text} |")
    return "\n".join(lines)


def print_rows(title: str, rows: Sequence[Row]) -> None:
    print(f"\n## {title}\n")
    print(table(rows))
    notes = [r for r in rows if r.note]
    for r in notes:
        print(f"- {r.what}: {r.note}")
    sys.stdout.flush()


def say(*parts: object) -> None:
    print(*parts, flush=True)


def arguments(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per measurement (median reported; at least 2)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    args.rounds = max(2, args.rounds)
    return args

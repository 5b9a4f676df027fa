"""
Issue "chat core": uploads.

4 clients at once each POST 5 x 10 MB files (PDF / PNG headers + random
bytes) as multipart to C{/api/chat}; InkFlow streams them to disk and forwards
them to the fake n8n (a separate process, so its memory is not counted).

 - peak RSS growth of the server process (psutil, every 20 ms), against the
   naive Klein app of L{bench.naive_klein} (twisted.web's in-memory multipart
   parsing) receiving the same uploads;
 - wall time of the 4 uploads through InkFlow, against the same 4 uploads
   posted straight to the fake n8n;
 - C{/api/health} latency polled every 50 ms (separate process) during the
   uploads, against the same poll on the naive app.

    python -m bench.uploads [--rounds 2] [--naive-clients 1]
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench._common import (
    HOST,
    Prober,
    Proc,
    Row,
    arguments,
    fake_n8n,
    fmt,
    inkflow,
    logdir,
    median,
    module,
    percentile,
    print_rows,
    ratio,
    rounds_note,
    say,
)

MB = 1024 * 1024
FILE_SIZE = 10 * MB  # exactly --max-file-size's default
FILES = 5
CLIENTS = 4
BOUNDARY = "----inkflow-bench-boundary-1f3c9a"
GOAL_RSS_MB = 40.0
GOAL_TIME_RATIO = 1.5
GOAL_HEALTH_P99_MS = 100.0
#: Bounds a stuck forward (seconds); a healthy 4 x 50 MB run takes a few.
ATTEMPT_TIMEOUT = 15


def _pdf(rng: random.Random, size: int) -> bytes:
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\nstream\n"
    return head + rng.randbytes(size - len(head))


def _png(rng: random.Random, size: int) -> bytes:
    head = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x04\x00\x00\x00\x03\x00\x08\x06\x00\x00\x00\x9a\x1c\x8a\x9c"
        b"\x00\x00\x00\x00IDAT"
    )
    return head + rng.randbytes(size - len(head))


def make_files(size: int = FILE_SIZE, count: int = FILES) -> list[tuple[str, str, bytes]]:
    """
    (filename, content type, bytes): alternating PDFs and PNGs.
    """
    rng = random.Random(20260101)
    out = []
    for i in range(count):
        if i % 2 == 0:
            out.append((f"report-{i + 1}.pdf", "application/pdf", _pdf(rng, size)))
        else:
            out.append((f"photo-{i + 1}.png", "image/png", _png(rng, size)))
    return out


def multipart(message: str, files: list[tuple[str, str, bytes]], session: str = "bench-uploads") -> bytes:
    parts: list[bytes] = []
    for name, value in (("message", message), ("sessionId", session)):
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, ctype, data in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        parts.append(data)
        parts.append(b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def post(port: int, path: str, body: bytes, timeout: float = 120.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": CONTENT_TYPE})
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data[:300]
    finally:
        conn.close()


def concurrent_uploads(port: int, path: str, body: bytes, clients: int) -> tuple[float, list[str]]:
    """
    C{clients} threads post C{body} at once; (wall seconds, problems).
    """
    problems: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def one() -> None:
        barrier.wait()
        try:
            status, answer = post(port, path, body)
        except Exception as e:
            problems.append(f"{type(e).__name__}: {e}")
            return
        sizes = [f.get("size") for f in answer.get("files", [])] if isinstance(answer, dict) else []
        if status != 200 or sizes != [FILE_SIZE] * FILES:
            code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
            problems.append(f"{status} {code}" if code else f"{status} {str(answer)[:120]}")

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join(180)
    return time.perf_counter() - began, problems


class RssSampler(threading.Thread):
    """
    Samples a process's RSS every C{interval} seconds until stopped.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        """
        Stop; the peak growth in MB.
        """
        self._stop_event.set()
        self.join(5)
        return (self.peak - self.baseline) / MB


@dataclass
class Measured:
    growth_mb: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    health_errors: int = 0
    problems: list[str] = field(default_factory=list)


def measure_server(server: Proc, path: str, body: bytes, clients: int, into: Measured) -> None:
    """
    One round against a fresh server: warm up, then sample RSS and poll
    health during C{clients} concurrent uploads.
    """
    small = multipart("warm-up", make_files(64 * 1024, 1))
    status, answer = post(server.port, path, small)
    if status != 200:
        into.problems.append(f"warm-up: {status} {str(answer)[:200]}")
    time.sleep(0.3)
    prober = Prober(server.port)
    sampler = RssSampler(server.pid)
    sampler.start()
    try:
        seconds, problems = concurrent_uploads(server.port, path, body, clients)
    finally:
        growth = sampler.stop()
        health = prober.stop()
    into.growth_mb.append(growth)
    into.seconds.append(seconds)
    into.health_ms.extend(health["latencies_ms"])
    into.health_errors += sum(health["errors"].values())
    into.problems.extend(problems)
    say(
        f"  {server.name}: {clients} x {FILES * FILE_SIZE // MB} MB in {seconds:.2f} s, peak RSS +{growth:.0f} MB "
        f"({sampler.samples} samples), health p50 {percentile(health['latencies_ms'], 50):.1f} ms "
        f"p99 {percentile(health['latencies_ms'], 99):.1f} ms, {len(problems)} problems"
    )


def run(rounds: int = 2, naive_clients: int = 1) -> list[Row]:
    say(f"uploads: {CLIENTS} clients x {FILES} x {FILE_SIZE // MB} MB, {rounds} rounds")
    body = multipart("שלום, הנה הקבצים", make_files())
    ink, naive, direct = Measured(), Measured(), Measured()
    with logdir() as logs, fake_n8n(logs) as fake:
        webhook = fake.url("/webhook/chat")
        for r in range(rounds):
            say(f" round {r + 1}")
            args = ("--webhook", webhook, "--rate-limit", "0", "--max-file-size", str(FILE_SIZE))
            args += ("--attempt-timeout", str(ATTEMPT_TIMEOUT))
            with inkflow(logs, *args) as server:
                measure_server(server, "/api/chat", body, CLIENTS, ink)
            seconds, problems = concurrent_uploads(fake.port, urlsplit(webhook).path, body, CLIENTS)
            direct.seconds.append(seconds)
            direct.problems.extend(problems)
            say(f"  straight to fake n8n: {CLIENTS} x {FILES * FILE_SIZE // MB} MB in {seconds:.2f} s")
            with module(logs, "naive_klein") as server:
                measure_server(server, "/api/chat", body, naive_clients, naive)

    for name, m in (("InkFlow", ink), ("naive", naive), ("direct", direct)):
        for problem in m.problems[:5]:
            say(f"  problem ({name}): {problem}")

    growth, naive_growth = median(ink.growth_mb), median(naive.growth_mb)
    t_ink, t_direct = median(ink.seconds), median(direct.seconds)
    p50, p99 = percentile(ink.health_ms, 50), percentile(ink.health_ms, 99)
    n50, n99 = percentile(naive.health_ms, 50), percentile(naive.health_ms, 99)
    clean = not ink.problems
    failed = ""
    if ink.problems:
        summary = ", ".join(f"{n} x {p}" for p, n in Counter(ink.problems).most_common())
        failed = f"{len(ink.problems)} of {rounds * CLIENTS} InkFlow uploads failed ({summary})"
    naive_note = f"naive Klein app, {naive_clients} client{'s' if naive_clients != 1 else ''}"
    rows = [
        Row(
            "uploads",
            f"peak RSS growth, {CLIENTS} clients x {FILES} x 10 MB",
            rounds_note(ink.growth_mb, "MB"),
            f"{rounds_note(naive.growth_mb, 'MB')} ({naive_note})",
            f"{ratio(growth, naive_growth):.3f}x",
            f"<= {GOAL_RSS_MB:.0f} MB",
            growth <= GOAL_RSS_MB,
            failed,
        ),
        Row(
            "uploads",
            f"time for {CLIENTS} concurrent 50 MB uploads",
            rounds_note(ink.seconds, "s", 2),
            f"{rounds_note(direct.seconds, 's', 2)} (straight to fake n8n)",
            f"{ratio(t_ink, t_direct):.2f}x",
            f"<= {GOAL_TIME_RATIO}x",
            ratio(t_ink, t_direct) <= GOAL_TIME_RATIO and clean,
            f"{failed}: the time is the --attempt-timeout, not an upload" if failed else "",
        ),
        Row(
            "uploads",
            "/api/health p50 / p99 during the uploads (every 50 ms)",
            f"{fmt(p50, 'ms', 1)} / {fmt(p99, 'ms', 1)} ({len(ink.health_ms)} probes, {ink.health_errors} errors)",
            f"{fmt(n50, 'ms', 1)} / {fmt(n99, 'ms', 1)} ({naive_note}; {len(naive.health_ms)} probes, "
            f"{naive.health_errors} errors)",
            f"{ratio(p99, n99):.3f}x (p99)",
            f"p99 <= {GOAL_HEALTH_P99_MS:.0f} ms",
            p99 <= GOAL_HEALTH_P99_MS and ink.health_errors == 0,
        ),
    ]
    return rows


def main() -> None:
    args = arguments(
        __doc__ or "",
        lambda p: p.add_argument(
            "--naive-clients", type=int, default=1, help=f"clients for the naive app (1; {CLIENTS} takes ~20 s a round)"
        ),
    )
    print_rows("uploads", run(args.rounds, args.naive_clients))


if __name__ == "__main__":
    main()

"""
Issue 12, "hostile clients": each attack class, with a handful of sockets,
against the default configuration (a real C{twistd -n inkflow} on loopback,
demo mode; only C{--upload-dir} and C{--static-dir} point at private copies,
the static copy holding a 2 MB and a 6 MB file).

For each class: what the server pays (the connection places it held, for
how long, peak RSS above the class's start, peak bytes in the upload folder),
read from the server's own C{/api/health} every 0.25 s; and a probe client
that sends C{GET /} on a new connection ten times, once a second, during the
attack (answered = HTTP 200 within 3 s).

    python -m bench.attack [--cap 45] [--only TEXT] [--server-arg ARG ...] [--websocket-only]

C{--only} runs the classes whose name holds TEXT; C{--server-arg} adds an
option to the server (e.g. C{--server-arg=--max-connections-per-ip=0} for
the figures without the per-address cap).  Classes that must not share the
rate-limit bucket of the others connect from their own loopback address
(127.0.0.5 and up: Linux routes all of 127/8 to loopback).

The C{/chat} WebSocket classes (a 64 MiB message, an upgrade burst, a ping
flood) are in L{bench.attack_websocket}.

Bounded: every class ends when the server has let every attack socket go,
or after C{--cap} seconds; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import attack_websocket
from bench._common import HOST, STATIC, Proc, Row, arguments, inkflow, logdir, print_rows, read_head, say

MB = 1024 * 1024
BIG = "big.bin"  # 2 MB: cached in memory
HUGE = "huge.bin"  # 6 MB: over the cache limit, streamed from disk


def connect(port: int, rcvbuf: int | None = None, source: str | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source is not None:
        s.bind((source, 0))
    s.settimeout(5)
    s.connect((HOST, port))
    return s


def read_response(s: socket.socket) -> bytes:
    """One whole response (head and a Content-Length body); b"" when the server closed first."""
    data = read_head(s)
    if b"\r\n\r\n" not in data:
        return data
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def head(port: int, method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def health(port: int) -> dict[str, object]:
    s = connect(port)
    try:
        s.sendall(head(port, "GET", "/api/health", "Connection: close"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


def dir_bytes(path: Path) -> int:
    total = 0
    for entry in os.scandir(path):
        with contextlib.suppress(OSError):
            total += entry.stat().st_size
    return total


@dataclass
class Outcome:
    name: str
    sockets: int
    held_max: int = 0
    seconds: float = 0.0
    still_open: bool = False
    rss_mb: float = 0.0
    upload_mb: float = 0.0
    upload_left: int = 0
    probes_ok: int = 0
    probes_answered: int = 0
    probes: int = 0
    notes: list[str] = field(default_factory=list)


#: The probe's address: another visitor than the attacks (which come from 127.0.0.1, or their own).
PROBE_SOURCE = "127.0.0.2"


class Probe(threading.Thread):
    """Ten C{GET /}, one a second, each on a new connection from L{PROBE_SOURCE}."""

    def __init__(self, port: int, count: int = 10) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.ok, self.answered = port, count, 0, 0

    def run(self) -> None:
        for _ in range(self.count):
            started = time.monotonic()
            try:
                s = connect(self.port, source=PROBE_SOURCE)
                s.settimeout(3)
                s.sendall(head(self.port, "GET", "/", "Connection: close"))
                status = s.recv(12)
                self.answered += status.startswith(b"HTTP/1.1 ")
                self.ok += status.startswith(b"HTTP/1.1 200")
                s.close()
            except OSError:
                pass
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


# --- the attacks: each opens its sockets and returns them (threads may keep feeding) ----------


def stalled_chunked(port: int, n: int) -> list[socket.socket]:
    """A chunked chat head, then silence."""
    socks = [connect(port) for _ in range(n)]
    for s in socks:
        s.sendall(head(port, "POST", "/api/chat", "Content-Type: application/json", "Transfer-Encoding: chunked"))
    return socks


def stalled_chunk_line(port: int, n: int) -> list[socket.socket]:
    """A chunked head and a chunk-size line, then silence."""
    socks = stalled_chunked(port, n)
    for s in socks:
        s.sendall(b"3e8\r\nab")
    return socks


def stalled_multipart(port: int, n: int) -> list[socket.socket]:
    """A multipart head announcing 40 MB, then silence."""
    socks = [connect(port) for _ in range(n)]
    for s in socks:
        s.sendall(
            head(
                port, "POST", "/api/chat", "Content-Type: multipart/form-data; boundary=zz", "Content-Length: 40000000"
            )
        )
    return socks


def drip(socks: list[socket.socket], byte: bytes, every: float = 4.0) -> list[socket.socket]:
    """
    Send C{byte} on each of C{socks} every C{every} seconds (a daemon thread)
    until the server has closed them all; return C{socks}.
    """

    def feed() -> None:
        alive = list(socks)
        while alive:
            time.sleep(every)
            for s in list(alive):
                try:
                    s.sendall(byte)
                except OSError:
                    alive.remove(s)

    threading.Thread(target=feed, daemon=True).start()
    return socks


def trickle(port: int, n: int) -> list[socket.socket]:
    """A multipart head announcing 40 MB, then one byte every 4 s."""
    return drip(stalled_multipart(port, n), b"-")


def header_slowloris(port: int, n: int) -> list[socket.socket]:
    """A request line, then a header byte every 4 s."""
    socks = [connect(port) for _ in range(n)]
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\n")
    return drip(socks, b"X")


def never_reads(port: int, n: int) -> list[socket.socket]:
    """50 pipelined GETs of a 2 MB file on a 4 KiB receive buffer, never read."""
    socks = [connect(port, rcvbuf=4096) for _ in range(n)]
    for s in socks:
        s.sendall(head(port, "GET", f"/{BIG}") * 50)
    return socks


def idle_flood(port: int, n: int) -> list[socket.socket]:
    """More connections than --max-connections, each silent."""
    return [connect(port) for _ in range(n)]


def spellings(port: int, n: int) -> list[socket.socket]:
    """Twelve percent-encoded spellings of a 6 MB file, each fetched in full."""
    names = [
        "huge.bin", "%68uge.bin", "h%75ge.bin", "hu%67e.bin", "hug%65.bin", "huge%2ebin",
        "huge%2Ebin", "huge.%62in", "huge.b%69n", "huge.bi%6e", "huge.bi%6E", "%68%75%67%65.bin",
    ]  # fmt: skip
    for name in names[:12]:
        s = connect(port)
        s.sendall(head(port, "GET", "/" + name, "Connection: close"))
        while s.recv(1 << 20):
            pass
        s.close()
    return []


def rate_limited_uploads(port: int, n: int) -> list[socket.socket]:
    """
    40 multipart chats of 5 MB from one address (the limit is 30 a minute),
    each head with C{Expect: 100-continue}: the body is sent only after
    C{100 Continue}, so a 429 that comes first was decided from the head.
    """
    boundary = "zz"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\n'
        ).encode()
        + b"a" * (5 * MB)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    statuses: list[str] = []
    for _ in range(40):
        s = connect(port)
        s.sendall(
            head(
                port,
                "POST",
                "/api/chat",
                f"Content-Type: multipart/form-data; boundary={boundary}",
                f"Content-Length: {len(body)}",
                "Expect: 100-continue",
                "Connection: close",
            )
        )
        first = s.recv(65536)
        if first.startswith(b"HTTP/1.1 100"):
            s.sendall(body)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            statuses.append(answer[9:12].decode())
        else:
            statuses.append(first[9:12].decode() + " before the body")
        s.close()
    counts = {k: statuses.count(k) for k in sorted(set(statuses))}
    RATE_NOTES.append("answers: " + ", ".join(f"{v} x {k}" for k, v in counts.items()))
    return []


RATE_NOTES: list[str] = []


def cross_site(port: int, n: int) -> list[socket.socket]:
    """Cross-site multipart chats (a foreign Origin, a browser's Sec-Fetch-Site)."""
    codes = []
    for i in range(n):
        s = connect(port)
        origin = "Origin: https://evil.example" if i % 2 else "Sec-Fetch-Site: cross-site"
        s.sendall(
            head(
                port,
                "POST",
                "/api/chat",
                "Content-Type: multipart/form-data; boundary=zz",
                "Content-Length: 5000000",
                origin,
            )
        )
        codes.append(s.recv(12)[9:12].decode())
        s.close()
    CROSS_NOTES.append(f"answers: {', '.join(sorted(set(codes)))} (before any body byte)")
    return []


CROSS_NOTES: list[str] = []


def hostile_json(port: int, n: int) -> list[socket.socket]:
    """Deep nesting, NaN, 1e999, lone surrogates, a 2,000-deep metadata string, /api//health."""
    bodies = [
        b"[" * 50_000,
        b'{"message":"hi","metadata":{"a":NaN}}',
        b'{"message":"hi","metadata":{"a":1e999}}',
        b'{"message":"a\\ud800"}',
        json.dumps({"message": "hi", "metadata": "[" * 2000 + "]" * 2000}).encode(),
        b'{"message":"hi","sessionId":"abc\\n"}',
    ]
    statuses = []
    for raw in bodies:
        s = connect(port)
        s.sendall(
            head(port, "POST", "/api/chat", "Content-Type: application/json", f"Content-Length: {len(raw)}") + raw
        )
        statuses.append(s.recv(12)[9:12].decode())
        s.close()
    s = connect(port)
    s.sendall(head(port, "GET", "/api//health"))
    statuses.append(s.recv(12)[9:12].decode())
    s.close()
    JSON_NOTES.append(f"answers: {', '.join(statuses)}")
    return []


JSON_NOTES: list[str] = []


# --- issue 21: early exits of a spooled body; one address holding sockets ----------------------

ORPHAN_FILE = 5 * MB


def _chat_upload(content: bytes = b"a" * ORPHAN_FILE, files: int = 2, boundary: str = "zz") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n'.encode()]
    for i in range(files):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="f{i}.txt"\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _send_upload(
    port: int,
    source: str,
    *headers: str,
    method: str = "POST",
    body: bytes | None = None,
    host: bytes | None = None,
    cut: bool = False,
) -> str:
    """
    One multipart chat of two 5 MB files (or C{body}) from C{source}; its
    status (or "closed").  C{cut}: send half the body and leave.
    """
    body = _chat_upload() if body is None else body
    lines = [f"{method} /api/chat HTTP/1.1".encode(), b"Host: " + (host or f"{HOST}:{port}".encode())]
    lines += [h.encode() for h in headers]
    lines += [b"Content-Type: multipart/form-data; boundary=zz", f"Content-Length: {len(body)}".encode()]
    lines.append(b"Connection: close")
    s = connect(port, source=source)
    try:
        s.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        if cut:
            s.sendall(body[: len(body) // 2])
            time.sleep(0.3)
            return "left mid-body"
        with contextlib.suppress(OSError):
            s.sendall(body)
        answer = read_response(s)
        return answer[9:12].decode() if answer else "closed"
    finally:
        s.close()


def orphaned_uploads(port: int, n: int) -> list[socket.socket]:
    """
    Multipart chats (2 x 5 MB) that end anywhere but an answered chat: an
    C{Upgrade: websocket} (404), a Host that is not UTF-8 (400), an invalid
    C{Idempotency-Key} (400), a replayed key and a reused one with other
    bytes (422), a file type not allowed (415), a chunked body over the
    limit (413), a client leaving mid-body, C{PUT} (405), a foreign Origin
    (403), over the rate limit (429) and over the per-address cap (503);
    C{n} rounds.  What counts is the bytes left in C{--upload-dir} after.
    """
    answers: list[str] = []
    exe = b"MZ" + b"\x00" * (ORPHAN_FILE - 2)
    for round_ in range(n):
        src = f"127.0.0.{5 + round_ * 4}"
        key = f"orphan-{round_}"
        answers.append(_send_upload(port, src, "Upgrade: websocket", "Connection: Upgrade"))
        answers.append(_send_upload(port, src, host=b"x\xff.example"))
        answers.append(_send_upload(port, src, "Idempotency-Key: not a key"))
        answers.append(_send_upload(port, src, f"Idempotency-Key: {key}"))
        answers.append(_send_upload(port, src, f"Idempotency-Key: {key}"))
        answers.append(_send_upload(port, src, f"Idempotency-Key: {key}", body=_chat_upload(b"b" * ORPHAN_FILE)))
        answers.append(_send_upload(port, src, body=_chat_upload(exe, files=1)))
        answers.append(_send_upload(port, src, cut=True))
        answers.append(_send_upload(port, src, method="PUT"))
        answers.append(_send_upload(port, src, "Origin: https://evil.example"))
        # A chunked body over --max-body-size: refused while streaming.
        s = connect(port, source=src)
        s.sendall(head(port, "POST", "/api/chat", "Content-Type: multipart/form-data; boundary=zz",
                       "Transfer-Encoding: chunked", "Connection: close"))  # fmt: skip
        big = _chat_upload(b"c" * (10 * MB + 1), files=1)
        with contextlib.suppress(OSError):
            for i in range(0, len(big), MB):
                chunk = big[i : i + MB]
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answers.append((read_response(s)[9:12] or b"closed").decode())
        s.close()
        # Over the rate limit (30 a minute): small chats from a fresh address until 429, then an upload.
        rate_src = f"127.0.0.{6 + round_ * 4}"
        for _ in range(31):
            _send_upload(port, rate_src, body=_chat_upload(b"d", files=0))
        answers.append(_send_upload(port, rate_src))
        # Over --max-connections-per-ip: silent sockets from one address, then an upload from it.
        cap_src = f"127.0.0.{7 + round_ * 4}"
        held = []
        with contextlib.suppress(OSError):
            for _ in range(60):
                held.append(connect(port, source=cap_src))
        answers.append(_send_upload(port, cap_src))
        for h in held:
            h.close()
    counts = {k: answers.count(k) for k in sorted(set(answers))}
    ORPHAN_NOTES.append("answers: " + ", ".join(f"{v} x {k}" for k, v in counts.items()))
    return []


ORPHAN_NOTES: list[str] = []


def socket_hold(port: int, n: int) -> list[socket.socket]:
    """
    C{n} kept-alive sockets from one address (127.0.0.20), each asking
    C{GET /} every 3 s for 15 s: the sockets it may hold are held the whole
    time, the others are refused; the probe (another address) is served.
    """
    socks: list[socket.socket] = []
    with contextlib.suppress(OSError):
        for _ in range(n):
            socks.append(connect(port, source="127.0.0.20"))
    statuses: dict[str, int] = {}
    alive = list(socks)
    stop = time.monotonic() + 15
    while alive and time.monotonic() < stop:
        for s in list(alive):
            try:
                s.sendall(head(port, "GET", "/"))
                answer = read_response(s)
            except OSError:
                answer = b""
            status = answer[9:12].decode() or "closed"
            if b"too_many_connections_from_address" in answer:
                status += " per-address"
            elif b'"busy"' in answer:
                status += " busy"
            statuses[status] = statuses.get(status, 0) + 1
            if not status.startswith("200"):
                alive.remove(s)
        time.sleep(3)
    HOLD_NOTES.append(
        f"{len(alive)} sockets still served after 15 s; answers: "
        + ", ".join(f"{v} x {k}" for k, v in sorted(statuses.items()))
    )
    for s in socks:
        s.close()
    return []


HOLD_NOTES: list[str] = []

#: name, attack, sockets, what a client can do now
CLASSES: list[tuple[str, Callable[[int, int], list[socket.socket]], int, str]] = [
    ("stalled chunked body", stalled_chunked, 6, "hold a place for --body-timeout (10 s), then 408"),
    ("chunk-size line, then nothing", stalled_chunk_line, 6, "hold a place for --body-timeout (10 s), then 408"),
    ("multipart head, 40 MB announced, nothing", stalled_multipart, 6, "10 s, then 408"),
    ("body trickle, 1 byte / 4 s", trickle, 6, "cut once behind 64 KiB/s after the 10 s grace"),
    ("header slowloris, 1 byte / 4 s", header_slowloris, 6, "--header-timeout (10 s), then 408"),
    ("never reads, 50 pipelined GETs of 2 MB", never_reads, 2, "one answer buffered; aborted after --write-timeout"),
    ("idle flood, 60 sockets (limit 50)", idle_flood, 60, "12 (per address) for 10 s; the rest 503 after 1 s"),
    ("12 spellings of a 6 MB file", spellings, 1, "streamed from disk, nothing kept"),
    ("40 uploads of 5 MB over the rate limit", rate_limited_uploads, 1, "429 from the head, no body byte read"),
    ("cross-site multipart chats", cross_site, 6, "403 forbidden_origin from the head"),
    ("hostile JSON and paths", hostile_json, 1, "400 / 404, never a 500"),
    ("orphaned uploads: multipart chats ended by an early exit", orphaned_uploads, 2, "0 bytes left in --upload-dir"),
    (
        "socket hold from one address while another client is served",
        socket_hold,
        60,
        "--max-connections-per-ip (12) held; the rest 503; probe served",
    ),
]


def run_class(
    server: Proc, uploads: Path, name: str, attack: Callable[[int, int], list[socket.socket]], n: int, cap: float
) -> Outcome:
    port = server.port
    base = health(port)
    rss0 = base["memory"]["rss_bytes"]  # type: ignore[index]
    out = Outcome(name, n)
    probe = Probe(port)
    started = time.monotonic()
    probe.start()
    socks: list[socket.socket] = []
    worker = threading.Thread(target=lambda: socks.extend(attack(port, n)), daemon=True)
    worker.start()
    peak_rss, peak_upload, last_busy = rss0, 0, started
    while True:
        now = time.monotonic()
        snap = health(port)
        held = int(snap["connections"]["active"]) - 1  # type: ignore[index]  # minus this health request
        out.held_max = max(out.held_max, held)
        peak_rss = max(peak_rss, snap["memory"]["rss_bytes"])  # type: ignore[index]
        peak_upload = max(peak_upload, dir_bytes(uploads))
        if held > 0:
            last_busy = now
        if held <= 0 and not probe.is_alive() and not worker.is_alive():
            break
        if now - started > cap:
            out.still_open = held > 0
            break
        time.sleep(0.25)
    worker.join(15)
    probe.join(15)
    for s in socks:
        s.close()
    out.seconds = last_busy - started
    out.rss_mb = (peak_rss - rss0) / MB
    out.upload_mb = peak_upload / MB
    out.upload_left = dir_bytes(uploads)
    out.probes_ok, out.probes_answered, out.probes = probe.ok, probe.answered, probe.count
    out.notes = RATE_NOTES + CROSS_NOTES + JSON_NOTES + ORPHAN_NOTES + HOLD_NOTES
    for notes in (RATE_NOTES, CROSS_NOTES, JSON_NOTES, ORPHAN_NOTES, HOLD_NOTES):
        notes.clear()
    time.sleep(1)
    return out


def run(cap: float = 45.0, only: str = "", server_args: tuple[str, ...] = ()) -> list[Row]:
    classes = [c for c in CLASSES if only in c[0]]
    say(f"attack: {len(classes)} classes against the default configuration, each capped at {cap:g} s")
    rows = []
    with logdir() as logs:
        static = logs / "static"
        shutil.copytree(STATIC, static)
        (static / BIG).write_bytes(os.urandom(2 * MB))
        (static / HUGE).write_bytes(os.urandom(6 * MB))
        uploads = logs / "uploads"
        uploads.mkdir(mode=0o700)
        with inkflow(logs, "--upload-dir", str(uploads), "--static-dir", str(static), *server_args) as server:
            for name, attack, n, can in classes:
                say(f" {name}")
                o = run_class(server, uploads, name, attack, n, cap)
                held = f"{o.held_max} held, {'still open after' if o.still_open else 'all let go within'} {o.seconds:.1f} s"
                cost = f"{held}; RSS +{o.rss_mb:.1f} MB; uploads peak {o.upload_mb:.1f} MB, left {o.upload_left} B"
                rows.append(
                    Row(
                        "attack",
                        f"{name} ({o.sockets} sockets)",
                        cost,
                        can,
                        "—",
                        "probe 10/10, seconds and KB",
                        o.probes_answered == o.probes and not o.still_open and o.upload_left == 0,
                        note=f"probe answered {o.probes_answered}/{o.probes} (200: {o.probes_ok})"
                        + (f"; {'; '.join(o.notes)}" if o.notes else ""),
                    )
                )
            log = server.output()
            rows.append(
                Row(
                    "attack",
                    "tracebacks in the server log",
                    str(log.count("Traceback")),
                    "—",
                    "—",
                    "0",
                    "Traceback" not in log,
                )
            )
    return rows


def main() -> None:
    def extra(p: object) -> None:
        p.add_argument("--cap", type=float, default=45.0, help="seconds per class at most")  # type: ignore[attr-defined]
        p.add_argument("--only", default="", help="run the classes whose name holds this text")  # type: ignore[attr-defined]
        p.add_argument("--server-arg", action="append", default=[], help="an extra server option")  # type: ignore[attr-defined]
        p.add_argument(  # type: ignore[attr-defined]
            "--websocket-only", action="store_true", help="only the /chat WebSocket classes (bench.attack_websocket)"
        )

    args = arguments(__doc__ or "", extra)
    rows = [] if args.websocket_only else run(args.cap, args.only, tuple(args.server_arg))
    print_rows("attack", (rows + attack_websocket.run(args.cap)) if not args.only else rows)


if __name__ == "__main__":
    main()

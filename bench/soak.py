"""
Soak: 20,000 chat requests through InkFlow to a fast backend, half of them
multipart with a small file, and what is left afterwards: RSS drift after a
warm-up (goal <= 10 %), temp files left in the upload folder (goal 0), file
descriptors leaked (goal 0).  Read from the server's own /api/health.

    python -m bench.soak [--requests 20000]
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._common import HOST, Row, arguments, inkflow, logdir, module, print_rows, say

GOAL_DRIFT = 0.10
WARM_UP = 2_000
CLIENTS = 8
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489") + os.urandom(4096)


def _multipart() -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n\r\nסוק\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="sessionId"\r\n\r\nsoak\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="תמונה.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + PNG
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _client(port: int, count: int, offset: int) -> dict[int, int]:
    """One keep-alive client sending C{count} chats; returns status counts."""
    statuses: dict[int, int] = {}
    json_body = json.dumps({"message": "soak", "sessionId": "soak"}).encode()
    multipart_body, multipart_type = _multipart()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        for i in range(count):
            if (i + offset) % 2:
                body, ctype = multipart_body, multipart_type
            else:
                body, ctype = json_body, "application/json"
            try:
                conn.request("POST", "/api/chat", body=body, headers={"Content-Type": ctype})
                response = conn.getresponse()
                response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=30)
            except (OSError, http.client.HTTPException):
                statuses[0] = statuses.get(0, 0) + 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
    finally:
        conn.close()
    return statuses


def _drive(port: int, total: int) -> dict[int, int]:
    per = total // CLIENTS
    merged: dict[int, int] = {}
    with ThreadPoolExecutor(CLIENTS) as pool:
        for statuses in pool.map(lambda k: _client(port, per, k), range(CLIENTS)):
            for code, n in statuses.items():
                merged[code] = merged.get(code, 0) + n
    return merged


def _health(port: int) -> dict[str, object]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/api/health")
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def run(requests: int = 20_000) -> list[Row]:
    say(f"soak: {requests:,} chats ({CLIENTS} keep-alive clients, half multipart with a 4 KB PNG), fast backend")
    with logdir() as logs, module(logs, "fast_backend") as backend:
        uploads = Path(logs) / "uploads"
        args = ("--webhook", backend.url("/webhook"), "--rate-limit", "0", "--access-log", "false")
        with inkflow(logs, *args, "--upload-dir", str(uploads), "--max-concurrent", "16") as ink:
            warm = _drive(ink.port, WARM_UP)
            before = _health(ink.port)
            rest = _drive(ink.port, requests - WARM_UP)
            after = _health(ink.port)
            left = sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []
    statuses = {**warm}
    for code, n in rest.items():
        statuses[code] = statuses.get(code, 0) + n
    rss_before = before["memory"]["rss_bytes"]  # type: ignore[index]
    rss_after = after["memory"]["rss_bytes"]  # type: ignore[index]
    drift = (rss_after - rss_before) / rss_before
    fds_before, fds_after = before["open_files"], after["open_files"]
    say(
        f"  statuses {statuses}; RSS {rss_before / 1e6:.1f} -> {rss_after / 1e6:.1f} MB; fds {fds_before} -> {fds_after}"
    )
    ok = statuses.get(200, 0)
    return [
        Row("soak", f"{requests:,} chats: answered 200", f"{ok:,}", "—", "—", f"{requests:,}", ok == requests),
        Row(
            "soak",
            f"RSS drift after {WARM_UP:,} warm-up chats",
            f"{drift:+.1%} ({rss_before / 1e6:.1f} -> {rss_after / 1e6:.1f} MB)",
            "—",
            "—",
            f"<= {GOAL_DRIFT:.0%}",
            drift <= GOAL_DRIFT,
        ),
        Row("soak", "temp files left in the upload folder", str(len(left)), "—", "—", "0", not left),
        Row(
            "soak",
            "file descriptors, after warm-up -> end",
            f"{fds_before} -> {fds_after}",
            "—",
            "—",
            "no growth",
            fds_after <= fds_before,  # type: ignore[operator]
        ),
    ]


def main() -> None:
    args = arguments(
        __doc__ or "", lambda p: p.add_argument("--requests", type=int, default=20_000, help="chat requests in all")
    )
    print_rows("soak", run(args.requests))


if __name__ == "__main__":
    main()

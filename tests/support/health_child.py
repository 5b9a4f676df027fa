"""
A tiny stand-in for InkFlow, for supervising in tests: answers
``GET /api/health`` on 127.0.0.1:PORT with ``{"status": "ok", "pid": ...}`` and
writes its pid to a file once it listens.

    python tests/support/health_child.py --port 8123 --pid-file /tmp/child.pid [--ignore-term]

Stdlib only, so it starts fast and depends on nothing under test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import FrameType

STARTED = time.monotonic()


class HealthHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/api/health":
            self.send_error(404)
            return
        body = json.dumps(
            {
                "status": "ok",
                "version": "test",
                "mode": "demo",
                "pid": os.getpid(),
                "uptime_s": time.monotonic() - STARTED,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the watchdog's log is what the tests read


def write_pid(path: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (only SIGKILL stops it)")
    args = parser.parse_args(argv)

    def on_term(number: int, frame: FrameType | None) -> None:
        if args.ignore_term:
            print(f"health_child {os.getpid()}: ignoring SIGTERM", file=sys.stderr, flush=True)
            return
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = HTTPServer(("127.0.0.1", args.port), HealthHandler)
    write_pid(args.pid_file)
    print(f"health_child {os.getpid()}: listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""
A health prober, run as its own process by the benchmarks: a new connection
and C{GET /api/health} every C{--interval} seconds (on a fixed schedule) until
SIGINT / SIGTERM or C{--max} seconds, then one JSON object on stdout::

    {"latencies_ms": [...], "statuses": {"200": n}, "errors": {"ConnectionResetError": n}}

A probe's latency includes the connect, as a load balancer's would.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import time
from collections import Counter
from types import FrameType

HOST = "127.0.0.1"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/health")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--max", type=float, default=120.0, help="stop after this many seconds anyway")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()

    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    print("probing", flush=True)
    start = time.monotonic()
    tick = start
    while not stop and time.monotonic() - start < args.max:
        began = time.perf_counter()
        conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
        try:
            conn.request("GET", args.path)
            response = conn.getresponse()
            response.read()
            latencies.append((time.perf_counter() - began) * 1000)
            statuses[str(response.status)] += 1
        except Exception as e:
            errors[type(e).__name__] += 1
        finally:
            conn.close()
        tick += args.interval
        pause = tick - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            tick = time.monotonic()
    json.dump({"latencies_ms": latencies, "statuses": statuses, "errors": errors}, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

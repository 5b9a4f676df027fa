"""
Start-up time: from process start to the first 200 from C{/api/ready}
(polled every 5 ms on a port chosen up front), median of 5, against the same
measure for C{twistd web --path static} (first 200 from C{GET /}).

    python -m bench.startup [--runs 5]
"""

from __future__ import annotations

import http.client
import subprocess
import time

from bench._common import (
    HOST,
    STATIC,
    Row,
    arguments,
    env,
    free_port,
    inkflow_command,
    median,
    print_rows,
    ratio,
    rounds_note,
    say,
    twistd,
)

GOAL_SECONDS = 1.0
RUNS = 5


def time_to_200(command: list[str], port: int, path: str, timeout: float = 20.0) -> float:
    """
    Seconds from C{Popen} to the first 200 on C{path}.
    """
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    try:
        while time.perf_counter() - began < timeout:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return time.perf_counter() - began
            except OSError:
                pass
            finally:
                conn.close()
            if proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {proc.returncode} before answering")
            time.sleep(0.005)
        raise RuntimeError(f"no 200 from {path} within {timeout}s")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run(runs: int = RUNS) -> list[Row]:
    say(f"startup: process start to first 200, {runs} runs each, interleaved")
    ink: list[float] = []
    ref: list[float] = []
    for i in range(runs):
        port = free_port()
        ink.append(time_to_200(inkflow_command(listen=f"tcp:{port}:interface={HOST}"), port, "/api/ready"))
        port = free_port()
        web = [twistd(), "-n", "--pidfile=", "web", "--path", str(STATIC), "--listen", f"tcp:{port}:interface={HOST}"]
        ref.append(time_to_200(web, port, "/"))
        say(f"  run {i + 1}: InkFlow {ink[-1]:.3f} s, twistd web {ref[-1]:.3f} s")
    return [
        Row(
            "startup",
            f"process start to first 200 from /api/ready (median of {runs})",
            rounds_note(ink, "s", 3),
            f"{rounds_note(ref, 's', 3)} (twistd web --path, first 200 from /)",
            f"{ratio(median(ink), median(ref)):.2f}x",
            f"<= {GOAL_SECONDS:g} s",
            median(ink) <= GOAL_SECONDS,
        )
    ]


def main() -> None:
    args = arguments(__doc__ or "", lambda p: p.add_argument("--runs", type=int, default=RUNS, help="runs per server"))
    print_rows("startup", run(max(2, args.runs)))


if __name__ == "__main__":
    main()

"""
Several cores: static requests/s of InkFlow with C{--workers 2} against one
process, on the same page, wrk -t2 -c100, rounds interleaved.  Goal: >= 1.6x.

    python -m bench.workers [--rounds 2] [--duration 10]

On a 2-core machine wrk itself needs CPU too, so the ceiling is below 2x.
"""

from __future__ import annotations

from bench._common import (
    Row,
    arguments,
    have_wrk,
    http_get,
    inkflow,
    logdir,
    median,
    print_rows,
    ratio,
    rounds_note,
    say,
    wrk,
)

GOAL_RATIO = 1.6


def run(rounds: int = 2, duration: float = 10) -> list[Row]:
    if not have_wrk():
        raise SystemExit("wrk is not installed (sh scripts/install-system-deps.sh load-tools)")
    say(f"workers: GET / with wrk -t2 -c100 -d{duration:g}s, 1 process vs --workers 2, {rounds} rounds interleaved")
    common = ("--access-log", "false", "--max-connections", "400", "--max-connections-per-ip", "0")
    results: dict[str, list[float]] = {"1 process": [], "2 workers": []}
    errors = 0
    with logdir() as logs, inkflow(logs, *common) as one, inkflow(logs, *common, "--workers", "2") as two:
        servers = {"1 process": one, "2 workers": two}
        for name, server in servers.items():
            status, _ = http_get(server.port, "/")
            if status != 200:
                raise RuntimeError(f"{name}: GET / gave {status}")
            wrk(server.url("/"), connections=100, duration=1)  # warm-up (both workers)
        for r in range(rounds):
            for name, server in servers.items():
                result = wrk(server.url("/"), connections=100, duration=duration)
                results[name].append(result.rps)
                errors += result.non_2xx + result.socket_errors
                say(f"  round {r + 1} {name}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms")
    r = ratio(median(results["2 workers"]), median(results["1 process"]))
    return [
        Row(
            "workers",
            "GET / req/s, wrk -t2 -c100, no access log",
            f"{rounds_note(results['2 workers'], 'req/s')} (--workers 2)",
            f"{rounds_note(results['1 process'], 'req/s')} (1 process)",
            f"{r:.2f}x",
            f">= {GOAL_RATIO}x",
            r >= GOAL_RATIO and errors == 0,
            f"{errors} non-2xx / socket errors" if errors else "",
        )
    ]


def main() -> None:
    args = arguments(
        __doc__ or "", lambda p: p.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    )
    print_rows("workers", run(args.rounds, args.duration))


if __name__ == "__main__":
    main()

"""
The shared state's cost and the workers' gain, on the JSON chat path
(C{POST /api/chat} to L{bench.fast_backend}, wrk with L{bench.proxy}'s
script; the rate limit on but never reached, C{--rate-limit 1000000}, so
every chat takes a token from the shared bucket):

 - C{--redis} (a real C{redis-server} on loopback) against the same server
   in memory, without and with a fresh C{Idempotency-Key} per request
   (claim, finish and store per chat); goal: at least 0.8x;
 - C{--workers 2} (the parent holds the state, the workers reach it over
   AMP) against one process; goal: at least 1.6x on a machine with 2 free
   cores.  The CPU the load generator (wrk) and the backend took is
   reported: on a 2-core machine they compete with the workers.

Rounds interleaved; medians reported.

    python -m bench.shared_state [--rounds 2] [--duration 10] [--only redis,workers]
"""

from __future__ import annotations

import os
import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from bench._common import (
    BENCH,
    Proc,
    Row,
    WrkResult,
    arguments,
    check_chat,
    have_wrk,
    http_get,
    inkflow,
    logdir,
    median,
    module,
    print_rows,
    ratio,
    rounds_note,
    say,
    wrk,
)

PLAIN = BENCH / "post_json.lua"
KEYED = BENCH / "post_json_keyed.lua"
GOAL_REDIS = 0.8
GOAL_WORKERS = 1.6
COMMON = (
    "--rate-limit",
    "1000000",
    "--access-log",
    "false",
    "--max-concurrent",
    "200",
    "--queue-size",
    "200",
    "--max-connections",
    "400",
)


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    from tests.support.redis_server import RedisServer, redis_server_path

    binary = redis_server_path()
    if binary is None:
        raise SystemExit("redis-server is not installed (sh scripts/install-system-deps.sh redis)")
    server = RedisServer(binary).start()
    try:
        assert server.process is not None
        yield server.url, server.process.pid
    finally:
        server.close()


CHAT_STATUS = re.compile(r'^inkflow_http_requests_total\{route="/api/chat",status="(\d+)"\} (\S+)$', re.M)


def _figures(server: Proc) -> tuple[float, dict[str, float]]:
    """
    From C{/metrics}: C{inkflow_state_fallbacks_total} (the shared-state
    calls this server answered alone: the store did not answer within its
    timeout), and the chats answered by status.
    """
    _, body = http_get(server.port, "/metrics")
    text = body.decode()
    fallbacks = 0.0
    for line in text.splitlines():
        if line.startswith("inkflow_state_fallbacks_total "):
            fallbacks = float(line.split()[1])
    statuses: dict[str, float] = {}
    for status, value in CHAT_STATUS.findall(text):
        statuses[status] = statuses.get(status, 0.0) + float(value)
    return fallbacks, statuses


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            times = p.cpu_times()
            total += times.user + times.system
            for child in p.children(recursive=True):
                t = child.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measured(
    server: Proc, backend: Proc, *, connections: int, duration: float, script: Path, redis_pid: int | None = None
) -> tuple[WrkResult, dict[str, float]]:
    """
    One wrk run, and the cores each side used meanwhile (wrk, the backend,
    InkFlow and its workers, the redis-server).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    redis = [redis_pid] if redis_pid is not None else []
    fallbacks0, statuses0 = _figures(server)
    ink0, back0, redis0, t0 = _cpu([server.pid]), _cpu([backend.pid]), _cpu(redis), time.monotonic()
    result = wrk(server.url("/api/chat"), connections=connections, duration=duration, script=script)
    elapsed = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    fallbacks1, statuses1 = _figures(server)
    other = {k: v - statuses0.get(k, 0.0) for k, v in statuses1.items() if k != "200" and v > statuses0.get(k, 0.0)}
    if other:
        say(f"    statuses other than 200 at InkFlow: {other}")
    cores = {
        "wrk": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / elapsed,
        "backend": (_cpu([backend.pid]) - back0) / elapsed,
        "inkflow": (_cpu([server.pid]) - ink0) / elapsed,
        "redis": (_cpu(redis) - redis0) / elapsed,
        "fallbacks": (fallbacks1 - fallbacks0) / max(result.requests, 1),
    }
    return result, cores


def _compare(
    servers: dict[str, Proc],
    backend: Proc,
    rounds: int,
    duration: float,
    connections: int,
    script: Path,
    redis_pid: int | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[dict[str, float]]], int]:
    rps: dict[str, list[float]] = {name: [] for name in servers}
    cores: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    errors = 0
    for name, server in servers.items():
        check_chat(server.port, name)
        wrk(server.url("/api/chat"), connections=connections, duration=1, script=script)  # warm-up
    for r in range(rounds):
        for name, server in servers.items():
            result, used = measured(
                server,
                backend,
                connections=connections,
                duration=duration,
                script=script,
                redis_pid=redis_pid if name == "redis" else None,
            )
            rps[name].append(result.rps)
            cores[name].append(used)
            errors += result.non_2xx + result.socket_errors
            say(
                f"  round {r + 1} {name} -c{connections}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                f"cores: inkflow {used['inkflow']:.2f}, wrk {used['wrk']:.2f}, backend {used['backend']:.2f}, "
                f"redis {used['redis']:.2f}; shared-state calls answered alone per chat {used['fallbacks']:.1%}; "
                f"non-2xx {result.non_2xx}, socket errors {result.socket_errors}"
            )
    return rps, cores, errors


def _cores_note(cores: list[dict[str, float]]) -> str:
    used = ", ".join(f"{k} {median([c[k] for c in cores]):.2f}" for k in ("inkflow", "wrk", "backend", "redis"))
    alone = median([c["fallbacks"] for c in cores])
    return used + (f" (shared-state calls answered without the shared store, per chat: {alone:.1%})" if alone else "")


def _per_core(rps: list[float], cores: list[dict[str, float]]) -> float:
    """
    Chats per second per core InkFlow used (the redis-server's counted in):
    what a loaded machine, where InkFlow gets less than its cores, still
    compares fairly.
    """
    return median([r / max(c["inkflow"] + c["redis"], 1e-9) for r, c in zip(rps, cores, strict=True)])


def run_redis(rounds: int, duration: float) -> list[Row]:
    say(f"shared state: POST /api/chat, --redis against memory, wrk -t2 -c50 -d{duration:g}s, {rounds} rounds")
    rows = []
    with logdir() as logs, module(logs, "fast_backend") as backend, redis_server() as (url, redis_pid):
        webhook = ("--webhook", backend.url("/webhook/chat"))
        with inkflow(logs, *webhook, *COMMON) as memory, inkflow(logs, *webhook, *COMMON, "--redis", url) as redis:
            for label, script in (("no key", PLAIN), ("a fresh Idempotency-Key each", KEYED)):
                servers = {"memory": memory, "redis": redis}
                rps, cores, errors = _compare(servers, backend, rounds, duration, 50, script, redis_pid)
                r = ratio(median(rps["redis"]), median(rps["memory"]))
                per_core = ratio(_per_core(rps["redis"], cores["redis"]), _per_core(rps["memory"], cores["memory"]))
                rows.append(
                    Row(
                        "shared state",
                        f"POST /api/chat JSON req/s, {label}, wrk -t2 -c50, fast backend",
                        f"{rounds_note(rps['redis'], 'req/s')} (--redis)",
                        f"{rounds_note(rps['memory'], 'req/s')} (in memory)",
                        f"{r:.2f}x",
                        f">= {GOAL_REDIS}x",
                        r >= GOAL_REDIS and errors == 0,
                        f"per core used (InkFlow + redis-server): {per_core:.2f}x; "
                        f"cores used, --redis: {_cores_note(cores['redis'])}; memory: {_cores_note(cores['memory'])}"
                        + (f"; {errors} non-2xx / socket errors" if errors else ""),
                    )
                )
    return rows


def run_workers(rounds: int, duration: float) -> list[Row]:
    say(f"shared state: POST /api/chat, --workers 2 against 1 process, wrk -t2 -c100 -d{duration:g}s, {rounds} rounds")
    with logdir() as logs, module(logs, "fast_backend") as backend:
        webhook = ("--webhook", backend.url("/webhook/chat"))
        with inkflow(logs, *webhook, *COMMON) as one, inkflow(logs, *webhook, *COMMON, "--workers", "2") as two:
            servers = {"1 process": one, "2 workers": two}
            rps, cores, errors = _compare(servers, backend, rounds, duration, 100, PLAIN)
    r = ratio(median(rps["2 workers"]), median(rps["1 process"]))
    per_core = ratio(_per_core(rps["2 workers"], cores["2 workers"]), _per_core(rps["1 process"], cores["1 process"]))
    return [
        Row(
            "shared state",
            "POST /api/chat JSON req/s (rate limit through the parent), wrk -t2 -c100, fast backend",
            f"{rounds_note(rps['2 workers'], 'req/s')} (--workers 2)",
            f"{rounds_note(rps['1 process'], 'req/s')} (1 process)",
            f"{r:.2f}x",
            f">= {GOAL_WORKERS}x (2 free cores)",
            r >= GOAL_WORKERS and errors == 0,
            f"per core used: {per_core:.2f}x; "
            f"cores used, --workers 2: {_cores_note(cores['2 workers'])}; 1 process: {_cores_note(cores['1 process'])}"
            + (f"; {errors} non-2xx / socket errors" if errors else ""),
        )
    ]


def run(rounds: int = 2, duration: float = 10, only: tuple[str, ...] = ("redis", "workers")) -> list[Row]:
    if not have_wrk():
        raise SystemExit("wrk is not installed (sh scripts/install-system-deps.sh load-tools)")
    say(f"load average: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    rows: list[Row] = []
    if "redis" in only:
        rows += run_redis(rounds, duration)
    if "workers" in only:
        rows += run_workers(rounds, duration)
    say(f"load average after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return rows


def main() -> None:
    def extra(p: object) -> None:
        p.add_argument("--duration", type=float, default=10, help="seconds per wrk run")  # type: ignore[attr-defined]
        p.add_argument("--only", default="redis,workers", help="redis, workers or both")  # type: ignore[attr-defined]

    args = arguments(__doc__ or "", extra)
    print_rows("shared state", run(args.rounds, args.duration, tuple(args.only.split(","))))


if __name__ == "__main__":
    main()

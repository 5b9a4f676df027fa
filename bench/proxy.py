"""
Chat proxy overhead against a fast backend.

The backend is L{bench.fast_backend} (a raw Protocol answering a fixed JSON
200 with keep-alive), a separate process.  InkFlow (C{--webhook} to it,
C{--rate-limit 0}, C{--access-log false}, and C{--max-concurrent} /
C{--queue-size} / C{--max-connections} raised so 50 clients are all admitted)
against L{bench.reference_proxy} (bare twisted.web + treq with a persistent
pool) on the same backend:

 - requests/s for C{POST /api/chat} JSON with C{wrk -t2 -c50} (goal: InkFlow
   at least 0.9x the reference);
 - p50 latency at one client (C{wrk -t1 -c1}) minus the backend's own p50
   measured directly (goal: at most 0.1 ms more than the reference adds).

    python -m bench.proxy [--rounds 2] [--duration 10] [--latency-duration 4]
"""

from __future__ import annotations

from bench._common import (
    BENCH,
    Row,
    WrkResult,
    arguments,
    check_chat,
    fmt,
    have_wrk,
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

SCRIPT = BENCH / "post_json.lua"
GOAL_RATIO = 0.9  # issue 15 (was 0.8)
#: At most this much more added p50 latency than the bare proxy's, at one client (issue 15).
GOAL_OVER_REFERENCE_MS = 0.1


def run(rounds: int = 2, duration: float = 10, latency_duration: float = 4) -> list[Row]:
    if not have_wrk():
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    say(
        f"proxy: POST /api/chat JSON, wrk -t2 -c50 -d{duration:g}s and -t1 -c1 -d{latency_duration:g}s, {rounds} rounds"
    )
    load: dict[str, list[WrkResult]] = {"InkFlow": [], "reference": []}
    single: dict[str, list[WrkResult]] = {"InkFlow": [], "reference": [], "backend": []}
    with logdir() as logs, module(logs, "fast_backend") as backend:
        webhook = backend.url("/webhook/chat")
        ink_args = ("--webhook", webhook, "--rate-limit", "0", "--access-log", "false")
        ink_args += (
            "--max-concurrent",
            "100",
            "--queue-size",
            "100",
            "--max-connections",
            "200",
            "--max-connections-per-ip",
            "0",
        )
        with (
            inkflow(logs, *ink_args) as ink,
            module(logs, "reference_proxy", "--backend", webhook) as reference,
        ):
            servers = {"InkFlow": ink, "reference": reference}
            for name, server in servers.items():
                check_chat(server.port, name)
                wrk(server.url("/api/chat"), duration=1, script=SCRIPT)  # warm-up
            for r in range(rounds):
                for name, server in servers.items():
                    result = wrk(server.url("/api/chat"), duration=duration, script=SCRIPT)
                    load[name].append(result)
                    say(
                        f"  round {r + 1} {name} -c50: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                        f"non-2xx {result.non_2xx}, socket errors {result.socket_errors}"
                    )
            targets = {"backend": backend, **servers}
            for r in range(rounds):
                for name, server in targets.items():
                    result = wrk(
                        server.url("/api/chat" if name != "backend" else "/webhook/chat"),
                        threads=1,
                        connections=1,
                        duration=latency_duration,
                        script=SCRIPT,
                    )
                    single[name].append(result)
                    say(f"  round {r + 1} {name} -c1: p50 {result.p50_ms:.3f} ms, {result.rps:,.0f} req/s")

    ink_rps, ref_rps = [x.rps for x in load["InkFlow"]], [x.rps for x in load["reference"]]
    r = ratio(median(ink_rps), median(ref_rps))
    errors = sum(x.non_2xx + x.socket_errors for x in load["InkFlow"])
    base = median([x.p50_ms for x in single["backend"]])
    ink_added = median([x.p50_ms for x in single["InkFlow"]]) - base
    ref_added = median([x.p50_ms for x in single["reference"]]) - base
    return [
        Row(
            "proxy",
            "POST /api/chat JSON req/s, wrk -t2 -c50, fast backend",
            rounds_note(ink_rps, "req/s"),
            f"{rounds_note(ref_rps, 'req/s')} (bare treq proxy)",
            f"{r:.2f}x",
            f">= {GOAL_RATIO}x",
            r >= GOAL_RATIO and errors == 0,
            f"{errors} non-2xx / socket errors" if errors else "",
        ),
        Row(
            "proxy",
            f"added p50 latency at 1 client (backend alone: {fmt(base, 'ms', 3)})",
            f"+{fmt(ink_added, 'ms', 2)}",
            f"+{fmt(ref_added, 'ms', 2)} (bare treq proxy)",
            f"{ratio(ink_added, ref_added):.2f}x",
            f"<= reference + {GOAL_OVER_REFERENCE_MS:g} ms",
            ink_added <= ref_added + GOAL_OVER_REFERENCE_MS,
        ),
    ]


def main() -> None:
    def extra(p: object) -> None:
        p.add_argument("--duration", type=float, default=10, help="seconds per wrk -c50 run")  # type: ignore[attr-defined]
        p.add_argument("--latency-duration", type=float, default=4, help="seconds per wrk -c1 run")  # type: ignore[attr-defined]

    args = arguments(__doc__ or "", extra)
    print_rows("proxy", run(args.rounds, args.duration, args.latency_duration))


if __name__ == "__main__":
    main()

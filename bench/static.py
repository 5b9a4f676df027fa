"""
Issue "proof": the page.

Requests/s for C{GET /} (the real C{static/index.html}) with
C{wrk -t2 -c50 -d10s}: InkFlow (default config, access log on; and with
C{--access-log false}) against C{twistd web --path static} on the same folder
(which writes an access line per request too).  Rounds are interleaved;
medians reported.

    python -m bench.static [--rounds 2] [--duration 10]
"""

from __future__ import annotations

from bench._common import (
    STATIC,
    Row,
    WrkResult,
    arguments,
    have_wrk,
    http_get,
    inkflow,
    logdir,
    median,
    print_rows,
    ratio,
    rounds_note,
    running,
    say,
    twistd,
    wrk,
)

GOAL_RATIO = 1.5


def run(rounds: int = 2, duration: float = 10) -> list[Row]:
    if not have_wrk():
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    say(f"static: GET / with wrk -t2 -c50 -d{duration:g}s, {rounds} rounds interleaved")
    page = (STATIC / "index.html").read_bytes()
    results: dict[str, list[WrkResult]] = {"twistd web": [], "InkFlow": [], "InkFlow, no access log": []}
    twistd_web = [twistd(), "-n", "--pidfile=", "web", "--path", str(STATIC), "--listen", "tcp:0:interface=127.0.0.1"]
    with (
        logdir() as logs,
        running("twistd-web", twistd_web, logs) as reference,
        # Headroom over wrk's 50 connections: twistd web has no limit, and a connection wrk
        # closes and reopens can briefly count twice against InkFlow's.
        inkflow(logs, "--max-connections", "200", "--max-connections-per-ip", "0") as ink,
        inkflow(logs, "--max-connections", "200", "--max-connections-per-ip", "0", "--access-log", "false") as quiet,
    ):
        servers = {"twistd web": reference, "InkFlow": ink, "InkFlow, no access log": quiet}
        for name, server in servers.items():
            status, body = http_get(server.port, "/")
            # twistd web serves the file as it is; InkFlow fills in the [page] names.
            whole = body == page if server is reference else body.startswith(page[:15]) and b"{{page." not in body
            if status != 200 or not whole:
                raise RuntimeError(f"{name}: GET / gave {status}, {len(body)} bytes, not the page")
            wrk(server.url("/"), duration=1)  # warm-up
        for r in range(rounds):
            for name, server in servers.items():
                result = wrk(server.url("/"), duration=duration)
                results[name].append(result)
                say(
                    f"  round {r + 1} {name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx}, socket errors {result.socket_errors}"
                )
    ref = [x.rps for x in results["twistd web"]]
    rows = []
    for name in ("InkFlow", "InkFlow, no access log"):
        values = [x.rps for x in results[name]]
        errors = sum(x.non_2xx + x.socket_errors for x in results[name])
        r = ratio(median(values), median(ref))
        rows.append(
            Row(
                "static",
                f"GET / req/s, wrk -t2 -c50 ({name}{'; access log on' if name == 'InkFlow' else ''})",
                rounds_note(values, "req/s"),
                f"{rounds_note(ref, 'req/s')} (twistd web --path, access log on)",
                f"{r:.2f}x",
                f">= {GOAL_RATIO}x",
                r >= GOAL_RATIO and errors == 0,
                f"{errors} non-2xx / socket errors" if errors else "",
            )
        )
    return rows


def main() -> None:
    args = arguments(
        __doc__ or "", lambda p: p.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    )
    print_rows("static", run(args.rounds, args.duration))


if __name__ == "__main__":
    main()

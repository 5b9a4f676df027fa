"""
Issue "admission control": 10x the connection limit.

InkFlow runs with C{--max-connections 20} (and C{--rate-limit 0}), forwarding
chat to the fake n8n (a separate process, answering after 0.2 s like a slow
workflow).  An asyncio client keeps 200 connections' worth of work going for
10 s: each of 200 workers repeatedly opens a connection, sends C{GET /} or a
chat C{POST} (alternating) with C{Connection: close}, reads the answer to EOF
and classifies it.  A separate process polls C{/api/health} every 50 ms.

The reference is the stock-Twisted way to cap connections
(L{bench.naive_limit}: C{ThrottlingFactory(maxConnectionCount=20)}, same
backend), under the same load.

    python -m bench.overload [--rounds 2] [--duration 10] [--clients 200]
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

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
    raise_fd_limit,
    say,
)

LIMIT = 20
CLIENTS = 10 * LIMIT
BACKEND_DELAY = 0.2
REQUEST_TIMEOUT = 10.0

#: What an attempt can end as.
OK, BUSY, BUSY_NO_RETRY_AFTER, OTHER_STATUS = "200", "503", "503 without Retry-After", "other status"
RESET, REFUSED, CLOSED, TIMEOUT, ERROR = "reset", "refused", "closed without answer", "timeout", "other error"
NO_ANSWER = (RESET, REFUSED, CLOSED)


def _requests(port: int) -> list[bytes]:
    body = json.dumps({"message": "overload", "sessionId": "overload"}).encode()
    host = f"Host: {HOST}:{port}\r\n".encode()
    return [
        b"GET / HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n",
        b"POST /api/chat HTTP/1.1\r\n"
        + host
        + b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body,
    ]


async def _attempt(port: int, request: bytes) -> str:
    writer = None
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        await writer.drain()
        data = await reader.read()  # to EOF: every request says Connection: close
    except ConnectionRefusedError:
        return REFUSED
    except (ConnectionResetError, BrokenPipeError):
        return RESET
    except OSError:
        return ERROR
    finally:
        if writer is not None:
            writer.close()
    if not data:
        return CLOSED
    head = data.split(b"\r\n\r\n", 1)[0]
    status = head.split(b" ", 2)[1:2]
    if status == [b"200"]:
        return OK
    if status == [b"503"]:
        return BUSY if b"\r\nretry-after:" in head.lower() else BUSY_NO_RETRY_AFTER
    return OTHER_STATUS


async def _load(port: int, clients: int, duration: float) -> tuple[Counter[str], float]:
    requests = _requests(port)
    counts: Counter[str] = Counter()
    end = time.monotonic() + duration

    async def worker(index: int) -> None:
        i = index
        while time.monotonic() < end:
            i += 1
            try:
                outcome = await asyncio.wait_for(_attempt(port, requests[i % 2]), REQUEST_TIMEOUT)
            except TimeoutError:
                outcome = TIMEOUT
            counts[outcome] += 1

    began = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return counts, time.monotonic() - began


@dataclass
class Measured:
    rounds: list[Counter[str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    health_errors: int = 0
    health_probes: int = 0

    def med(self, *outcomes: str) -> float:
        return median([sum(c[o] for o in outcomes) for c in self.rounds])

    def totals(self) -> list[int]:
        return [sum(c.values()) for c in self.rounds]

    def breakdown(self, *outcomes: str) -> str:
        """
        "reset 0, refused 0, ..." (medians over the rounds).
        """
        return ", ".join(f"{o} {fmt(self.med(o))}" for o in outcomes)


def measure(server: Proc, clients: int, duration: float, into: Measured) -> None:
    prober = Prober(server.port)
    try:
        counts, seconds = asyncio.run(_load(server.port, clients, duration))
    finally:
        health = prober.stop()
    into.rounds.append(counts)
    into.seconds.append(seconds)
    into.health_ms.extend(health["latencies_ms"])
    into.health_errors += sum(health["errors"].values())
    into.health_probes += len(health["latencies_ms"]) + sum(health["errors"].values())
    total = sum(counts.values())
    say(
        f"  {server.name}: {total} requests in {seconds:.1f} s ({total / seconds:,.0f}/s): "
        + ", ".join(f"{k} {v}" for k, v in counts.most_common())
        + f"; health p50 {percentile(health['latencies_ms'], 50):.1f} ms p99 "
        f"{percentile(health['latencies_ms'], 99):.1f} ms, probe errors {dict(health['errors'])}"
    )


def run(rounds: int = 2, duration: float = 10, clients: int = CLIENTS) -> list[Row]:
    raise_fd_limit(4 * clients + 1024)
    say(f"overload: {clients} clients against --max-connections {LIMIT} for {duration:g} s, {rounds} rounds")
    ink, ref = Measured(), Measured()
    with logdir() as logs, fake_n8n(logs, delay=BACKEND_DELAY) as fake:
        webhook = fake.url("/webhook/chat")
        with (
            inkflow(
                logs,
                "--max-connections",
                str(LIMIT),
                "--max-connections-per-ip",
                "0",
                "--rate-limit",
                "0",
                "--webhook",
                webhook,
            ) as server,
            module(logs, "naive_limit", "--backend", webhook, "--limit", str(LIMIT)) as reference,
        ):
            for r in range(rounds):
                say(f" round {r + 1}")
                measure(server, clients, duration, ink)
                time.sleep(1)
                measure(reference, clients, duration, ref)
                time.sleep(1)

    def rate(m: Measured) -> str:
        values = [
            sum(c[o] for o in (OK, BUSY, BUSY_NO_RETRY_AFTER)) / s for c, s in zip(m.rounds, m.seconds, strict=True)
        ]
        return fmt(median(values), "/s")

    no_answer, ref_no_answer = ink.med(*NO_ANSWER), ref.med(*NO_ANSWER)
    p50, p99 = percentile(ink.health_ms, 50), percentile(ink.health_ms, 99)
    r50, r99 = percentile(ref.health_ms, 50), percentile(ref.health_ms, 99)
    ink_busy = ink.med(BUSY) + ink.med(BUSY_NO_RETRY_AFTER)
    stock = "stock ThrottlingFactory"
    return [
        Row(
            "overload",
            f"requests sent in {duration:g} s by {clients} clients (limit {LIMIT})",
            f"{fmt(median(ink.totals()))} ({' / '.join(str(t) for t in ink.totals())})",
            f"{fmt(median(ref.totals()))} ({' / '.join(str(t) for t in ref.totals())}) ({stock})",
            "—",
            "—",
            None,
        ),
        Row(
            "overload",
            "answered 200 / 503 (HTTP answers per second)",
            f"{fmt(ink.med(OK))} / {fmt(ink_busy)} ({rate(ink)})",
            f"{fmt(ref.med(OK))} / {fmt(ref.med(BUSY) + ref.med(BUSY_NO_RETRY_AFTER))} ({rate(ref)})",
            "—",
            "—",
            None,
        ),
        Row(
            "overload",
            "503s carrying Retry-After",
            f"{fmt(ink.med(BUSY))} of {fmt(ink_busy)}",
            f"{fmt(ref.med(BUSY))} of {fmt(ref.med(BUSY) + ref.med(BUSY_NO_RETRY_AFTER))}",
            "—",
            "all",
            ink.med(BUSY_NO_RETRY_AFTER) == 0 and ink_busy > 0,
        ),
        Row(
            "overload",
            "connections with no HTTP answer (reset / refused / closed)",
            f"{fmt(no_answer)} ({ink.breakdown(*NO_ANSWER)})",
            f"{fmt(ref_no_answer)} ({ref.breakdown(*NO_ANSWER)})",
            "—",
            "0",
            no_answer == 0,
        ),
        Row(
            "overload",
            "other statuses, timeouts, other errors",
            ink.breakdown(OTHER_STATUS, TIMEOUT, ERROR),
            ref.breakdown(OTHER_STATUS, TIMEOUT, ERROR),
            "—",
            "0",
            ink.med(OTHER_STATUS, TIMEOUT, ERROR) == 0,
        ),
        Row(
            "overload",
            "/api/health p50 / p99 under the load (every 50 ms, new connection each)",
            f"{fmt(p50, 'ms', 1)} / {fmt(p99, 'ms', 1)} ({ink.health_probes} probes, {ink.health_errors} failed)",
            f"{fmt(r50, 'ms', 1)} / {fmt(r99, 'ms', 1)} ({ref.health_probes} probes, {ref.health_errors} failed)",
            f"{p99 / r99:.2f}x (p99)" if r99 == r99 and r99 > 0 else "—",
            "every probe answered",
            ink.health_errors == 0,
        ),
    ]


def main() -> None:
    def extra(p: object) -> None:
        p.add_argument("--duration", type=float, default=10, help="seconds of load per round")  # type: ignore[attr-defined]
        p.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients")  # type: ignore[attr-defined]

    args = arguments(__doc__ or "", extra)
    print_rows("overload", run(args.rounds, args.duration, args.clients))


if __name__ == "__main__":
    main()

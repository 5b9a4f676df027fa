"""
The load generator of L{bench.stream}: C{--count} concurrent streamed chat
requests, started evenly over C{--ramp} seconds; for every item line, how long
after the backend sent it (its C{content} is the send time) it arrived.
Prints one JSON object.

    python -m bench.stream_client --url http://127.0.0.1:PORT/api/chat --count 500
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from bench._common import percentile
from inkflow.n8n.multipart import BytesProducer


class Lines(Protocol):
    def __init__(self, stats: dict[str, Any], done: Deferred[None]) -> None:
        self.stats = stats
        self.done = done
        self.buffer = b""
        self.items = 0

    def dataReceived(self, data: bytes) -> None:
        now = time.time()
        *complete, self.buffer = (self.buffer + data).split(b"\n")
        for raw in complete:
            if b'"item"' not in raw:
                continue
            value = json.loads(raw)
            if value.get("type") == "item":
                self.items += 1
                self.stats["lags"].append((now - float(value["content"])) * 1000.0)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        ok = reason is not None and reason.check(ResponseDone) and self.items == self.stats["items_each"]
        self.stats["completed" if ok else "failed"] += 1
        self.done.callback(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--ramp", type=float, default=2.0)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool, connectTimeout=30)
    stats: dict[str, Any] = {"lags": [], "completed": 0, "failed": 0, "errors": {}, "items_each": args.items}
    body = json.dumps({"message": f"items={args.items} interval={args.interval}", "sessionId": "bench"}).encode()
    headers = Headers({b"Content-Type": [b"application/json"], b"Accept": [b"text/plain"]})
    remaining = [args.count]
    started = time.monotonic()

    def finished(_: object) -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            reactor.stop()  # type: ignore[attr-defined]

    def one() -> None:
        d = agent.request(b"POST", args.url.encode(), headers, BytesProducer(body))  # type: ignore[arg-type]

        def got(response: Any) -> Deferred[None]:
            done: Deferred[None] = Deferred()
            if response.code != 200:
                stats["errors"][str(response.code)] = stats["errors"].get(str(response.code), 0) + 1
            response.deliverBody(Lines(stats, done))
            return done

        def failed(failure: Failure) -> None:
            name = type(failure.value).__name__
            stats["errors"][name] = stats["errors"].get(name, 0) + 1
            stats["failed"] += 1

        d.addCallbacks(got, failed).addBoth(finished)

    for i in range(args.count):
        reactor.callLater(args.ramp * i / max(1, args.count), one)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    lags = stats.pop("lags")
    stats.pop("items_each")
    stats.update(
        {
            "items": len(lags),
            "lag_ms_p50": percentile(lags, 50) if lags else None,
            "lag_ms_p99": percentile(lags, 99) if lags else None,
            "lag_ms_max": max(lags) if lags else None,
            "seconds": time.monotonic() - started,
        }
    )
    print(json.dumps(stats))


if __name__ == "__main__":
    main()

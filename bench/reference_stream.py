"""
A bare twisted.web + treq streaming proxy, the reference for L{bench.stream}:
POST the body to the backend, relay each chunk of the answer as it arrives.
No validation, limits, line splitting, deadlines or logging.

    python -m bench.reference_stream --backend http://127.0.0.1:PORT/webhook/chat
"""

from __future__ import annotations

import argparse
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import NOT_DONE_YET, Request, Site

from bench import reference_proxy


class Relay(Protocol):
    def __init__(self, request: Request) -> None:
        self.request = request

    def dataReceived(self, data: bytes) -> None:
        if not self.request._disconnected:
            self.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.request.finished and not self.request._disconnected:
            self.request.finish()


class Proxy(reference_proxy.Proxy):
    """
    L{bench.reference_proxy}'s proxy, relaying the answer as it comes
    instead of buffering it.
    """

    def render_POST(self, request: Request) -> Any:
        body = request.content.read() if request.content is not None else b""
        d = treq.post(
            self.backend, data=body, headers={"Content-Type": "application/json"}, pool=self.pool, unbuffered=True
        )

        def answer(response: Any) -> None:
            request.setResponseCode(response.code)
            request.setHeader(b"Content-Type", b"application/x-ndjson; charset=utf-8")
            request.write(b"")
            response.deliverBody(Relay(request))

        def failed(failure: Failure) -> None:
            if not request.finished and not request._disconnected:
                request.setResponseCode(502)
                request.write(b'{"error": "upstream_error"}')
                request.finish()

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=2048)
    args = parser.parse_args()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2500
    site = Site(Proxy(args.backend, pool))
    port = reactor.listenTCP(args.port, site, backlog=args.backlog, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"reference stream proxy starting on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

"""
A bare twisted.web + treq chat proxy, the reference for L{bench.proxy}: read
the body, POST it to the backend over a persistent connection pool, relay the
answer.  No validation, limits, retries or logging.

    python -m bench.reference_proxy --backend http://127.0.0.1:PORT/webhook/chat
"""

from __future__ import annotations

import argparse
from typing import Any

import treq
from twisted.internet import reactor
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class Proxy(Resource):
    isLeaf = True

    def __init__(self, backend: str, pool: HTTPConnectionPool) -> None:
        super().__init__()
        self.backend, self.pool = backend, pool

    def render_POST(self, request: Request) -> Any:
        body = request.content.read() if request.content is not None else b""
        d = treq.post(self.backend, data=body, headers={"Content-Type": "application/json"}, pool=self.pool)
        d.addCallback(lambda r: treq.content(r).addCallback(lambda content: (r.code, content)))

        def answer(result: tuple[int, bytes]) -> None:
            if not request.finished and not request._disconnected:
                request.setResponseCode(result[0])
                request.setHeader(b"Content-Type", b"application/json")
                request.write(result[1])
                request.finish()

        def failed(failure: Failure) -> None:
            answer((502, b'{"error": "upstream_error"}'))

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET


def make_site(backend: str) -> Site:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 100
    return Site(Proxy(backend, pool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    port = reactor.listenTCP(args.port, make_site(args.backend), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"reference proxy starting on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

"""
The stock-Twisted way to cap connections, as the reference for
L{bench.overload}: the page from C{static.File}, C{/api/chat} through the
bare treq proxy of L{bench.reference_proxy}, C{/api/health} a constant, the
whole site wrapped in C{policies.ThrottlingFactory(site, maxConnectionCount=N)} (which, like
C{LimitTotalConnectionsFactory}, closes connections over the limit instead of
answering them).

    python -m bench.naive_limit --backend http://127.0.0.1:PORT/webhook/chat --limit 20
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.protocols.policies import ThrottlingFactory
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data, File

from bench.reference_proxy import Proxy

STATIC = Path(__file__).resolve().parents[1] / "static"


def make_factory(backend: str, limit: int) -> ThrottlingFactory:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 100
    root = File(str(STATIC))
    api = Resource()
    api.putChild(b"chat", Proxy(backend, pool))
    api.putChild(b"health", Data(b'{"status": "ok"}', "application/json"))
    root.putChild(b"api", api)
    return ThrottlingFactory(Site(root), maxConnectionCount=limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    port: Any = reactor.listenTCP(args.port, make_factory(args.backend, args.limit), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"stock limited site starting on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

"""
The naive way to take uploads with Klein, as a reference for
L{bench.uploads}: a plain C{Site(app.resource())}, so twisted.web parses every
multipart body into C{request.args} in memory (C{parsePOSTFormSubmission}'s
default) before the route runs.

    python -m bench.naive_klein --port 0
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from klein import Klein
from twisted.web.server import Site

app = Klein()


@app.route("/api/chat", methods=["POST"])
def chat(request: Any) -> bytes:
    files = request.args.get(b"files", [])
    message = (request.args.get(b"message") or [b""])[0].decode("utf-8", "replace")
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"output": f"echo: {message}", "files": [{"size": len(f)} for f in files]}).encode()


@app.route("/api/health", methods=["GET"])
def health(request: Any) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    return b'{"status": "ok"}'


def main() -> None:
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    port = reactor.listenTCP(args.port, Site(app.resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"naive klein starting on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

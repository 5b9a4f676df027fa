"""
A streaming backend for L{bench.stream}: answers every POST the way a
streaming n8n 2.8.4 workflow does (200 and the headers at once, chunked,
one JSON line per flush: begin, items, end), each item's C{content} the
time it was sent (C{time.time()}), so a client can tell how late it came.

The message text (C{chatInput} or C{message}) may say C{"items=N interval=S"}.

    python -m bench.stream_backend [--port 0] [--backlog 2048]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

META = {"nodeId": "agent", "nodeName": "Agent", "itemIndex": 0, "runIndex": 0}


def _line(kind: str, content: str | None = None) -> bytes:
    value: dict[str, Any] = {"type": kind}
    if content is not None:
        value["content"] = content
    value["metadata"] = {**META, "timestamp": int(time.time() * 1000)}
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _plan(body: bytes) -> tuple[int, float]:
    items, interval = 10, 1.0
    try:
        value = json.loads(body)
        text = str(value.get("chatInput") or value.get("message") or "")
    except ValueError:
        text = ""
    for word in text.split():
        key, _, raw = word.partition("=")
        if key == "items":
            items = max(1, min(1000, int(raw)))
        elif key == "interval":
            interval = max(0.0, float(raw))
    return items, interval


class Streamer(Resource):
    isLeaf = True

    def render_POST(self, request: Request) -> Any:
        body = request.content.read() if request.content is not None else b""
        items, interval = _plan(body)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.write(_line("begin"))
        calls: list[Any] = []

        def item(n: int) -> None:
            if request.finished or request._disconnected:
                return
            request.write(_line("item", repr(time.time())))
            if n + 1 < items:
                calls.append(reactor.callLater(interval, item, n + 1))  # type: ignore[attr-defined]
            else:
                request.write(_line("end"))
                request.finish()

        def gone(_: object) -> None:
            for call in calls:
                if call.active():
                    call.cancel()

        request.notifyFinish().addErrback(gone)
        item(0)
        return NOT_DONE_YET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=2048)
    args = parser.parse_args()
    port = reactor.listenTCP(args.port, Site(Streamer()), backlog=args.backlog, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"stream backend starting on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

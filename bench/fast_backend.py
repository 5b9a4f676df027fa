"""
The fastest backend we can make in Twisted, for L{bench.proxy}: a raw
C{Protocol} that answers every request with a fixed small JSON 200 and keeps
the connection open.  No HTTP machinery beyond finding the end of each request.

    python -m bench.fast_backend --port 0
"""

from __future__ import annotations

import argparse

from twisted.internet.protocol import Factory, Protocol

BODY = b'{"output":"ok"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
    % len(BODY)
) + BODY


class FastHTTP(Protocol):
    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end].lower()
            start = end + 4
            if b"transfer-encoding: chunked" in head:
                last = self.buffer.find(b"0\r\n\r\n", start)
                if last < 0:
                    break
                total = last + 5
            else:
                length = 0
                at = head.find(b"content-length:")
                if at >= 0:
                    length = int(head[at + 15 :].split(b"\r\n", 1)[0])
                total = start + length
            if len(self.buffer) < total:
                break
            self.buffer = self.buffer[total:]
            answers += 1
        if answers:
            self.transport.write(RESPONSE * answers)  # type: ignore[union-attr]


def main() -> None:
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    port = reactor.listenTCP(args.port, Factory.forProtocol(FastHTTP), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"fast backend starting on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

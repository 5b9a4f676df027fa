"""
A threaded stdlib HTTP server on a free loopback port, serving from a daemon
thread while a C{with} block runs: the frame of the browser tests' fake n8n
servers and of the widget tests' site owner.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["LoopbackHTTPServer", "QuietHandler"]


class QuietHandler(BaseHTTPRequestHandler):
    """
    A request handler that logs nothing.
    """

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_whole(self, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        """
        Answer 200 with C{body}: its C{Content-Type}, any other C{headers},
        its C{Content-Length}.
        """
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LoopbackHTTPServer:
    """
    Serves C{handler} on C{127.0.0.1}, on a port the kernel picks, while
    entered; on the way out L{_stopping} runs first (to let held handlers go),
    then the server is shut down and its thread joined.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _stopping(self) -> None:
        """
        Called before the server shuts down; nothing by default.
        """

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

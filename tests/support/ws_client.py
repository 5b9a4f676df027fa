"""
A small blocking WebSocket client (wsproto over a socket) for tests that are
not driven by the reactor (tests/n8n).
"""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

__all__ = ["BlockingWebSocket", "chat_socket_url"]


def chat_socket_url(
    base: str, session_id: str, execution_id: str, token: str | None = None, public: bool = True
) -> str:
    """
    The C{/chat} socket URL the official widget (@n8n/chat 1.36.4 and 1.37.0)
    opens after an C{executionStarted} answer: C{base} with C{http} made
    C{ws}, C{?sessionId=..&executionId=..}, C{&isPublic=true}, and
    C{&token=<resumeToken>} when the answer carried one (n8n 2.41 rejects a
    socket without it: "Connection rejected", close 1008).  Like the widget,
    the values are not escaped.
    """
    url = f"{base.replace('http', 'ws', 1)}/chat?sessionId={session_id}&executionId={execution_id}"
    if public:
        url += "&isPublic=true"
    if token:
        url += f"&token={token}"
    return url


class BlockingWebSocket:
    """
    C{ws://host:port/path?query}, opened at construction.

    @raise ConnectionError: the handshake was refused (status in the message).
    """

    def __init__(self, url: str, timeout: float = 30.0, origin: str | None = None) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        extra = [(b"Origin", origin.encode())] if origin else []
        self.sock.sendall(self.ws.send(Request(host=parts.netloc, target=target, extra_headers=extra)))
        self.close_code: int | None = None
        self._pending: list[str] = []
        self._text = ""
        #: Events that came in the same read as the handshake's answer.
        self._backlog: list[object] = []
        while True:
            events = self._events()
            for i, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    self._backlog = events[i + 1 :]
                    return
                if isinstance(event, RejectConnection):
                    raise ConnectionError(f"WebSocket refused: {event.status_code}")

    def _events(self) -> list[object]:
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            return backlog
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed")
        self.ws.receive_data(data)
        return list(self.ws.events())

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def receive(self) -> str:
        """
        The next text message (pings answered on the way).

        @raise ConnectionError: the socket closed first (C{close_code} set).
        """
        while not self._pending:
            for event in self._events():
                if isinstance(event, TextMessage):
                    self._text += event.data
                    if event.message_finished:
                        self._pending.append(self._text)
                        self._text = ""
                elif isinstance(event, Message):
                    pass
                elif isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    raise ConnectionError(f"closed with {event.code}")
        return self._pending.pop(0)

    def close(self, code: int = 1000) -> None:
        with contextlib.suppress(Exception):
            self.sock.sendall(self.ws.send(CloseConnection(code=code)))
        self.sock.close()

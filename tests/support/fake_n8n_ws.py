"""
A fake n8n C{/chat} WebSocket (the Chat Trigger's "Using Response Nodes"
mode), on the same port as a L{FakeN8n}'s webhooks, built on Twisted's own
L{twisted.web.websocket} like InkFlow's relay.

    sockets = install_chat_sockets(fake)
    ...                           # a client opens ws://<fake>/chat?sessionId=..&executionId=..
    conn = await sockets.next_connection()
    conn.send("n8n|heartbeat")    # to the client
    await conn.next_message()     # from the client

Every text message that is not n8n's own protocol (C{n8n|...}) is answered
with C{"n8n: <message>"} when C{echo} is on.

As n8n 2.41.3 (C{version=N8N_2_41}), executions carry a C{resumeToken}
(L{ChatSockets.start_execution} makes one) and a socket without
C{&token=<resumeToken>} for a known execution -- or for an unknown
execution -- is opened, sent the text C{Connection rejected} and closed with
1008; 2.8.4 takes any socket.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport

from tests.support.fake_n8n import N8N_2_8, N8N_2_41, FakeN8n

#: What n8n 2.41.3 writes on a socket it refuses, before closing it with 1008.
REJECTED_TEXT = "Connection rejected"
POLICY_VIOLATION = 1008

__all__ = ["REJECTED_TEXT", "ChatConnection", "ChatSockets", "install_chat_sockets"]


class _Queue:
    """
    Items handed to waiters in order (no sleeps: a Deferred per wait).
    """

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.waiting: list[Deferred[Any]] = []

    def put(self, item: Any) -> None:
        if self.waiting:
            self.waiting.pop(0).callback(item)
        else:
            self.items.append(item)

    def get(self) -> Deferred[Any]:
        if self.items:
            return succeed(self.items.pop(0))
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d


class ChatConnection:
    """
    One client socket to the fake's C{/chat}.

    @ivar query: the request's query arguments (first value each).
    @ivar received: every text message from the client.
    """

    def __init__(self, sockets: ChatSockets, request: Request) -> None:
        self.sockets = sockets
        self.query = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        self.received: list[str] = []
        self.transport: WebSocketTransport | None = None
        self.lost: Deferred[None] = Deferred()
        self._messages = _Queue()

    # WebSocketProtocol
    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        if not self.sockets.admits(self.query):
            self.sockets.rejected.append(self)
            self.send(REJECTED_TEXT)
            self.close(POLICY_VIOLATION)
            return
        self.sockets._connections.put(self)

    def pongReceived(self, payload: bytes) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        self.received.append(message)
        self._messages.put(message)
        if self.sockets.echo and not message.startswith("n8n|"):
            self.send(f"n8n: {message}")

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self.textMessageReceived(bytes(data).decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure) -> None:
        self.sockets.open.discard(self)
        if not self.lost.called:
            self.lost.callback(None)

    # for tests
    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.sendTextMessage(text)

    def next_message(self) -> Deferred[str]:
        return self._messages.get()

    def close(self, code: int = 1000) -> None:
        assert self.transport is not None
        self.transport.loseConnection(code)


class ChatSockets:
    """
    The fake's C{/chat} WebSocket server.

    @ivar connections: every connection, in order; C{open}: those still open;
        C{rejected}: those refused for their token (2.41.3), never handed to
        L{next_connection}.
    @ivar tokens: executionId -> resumeToken (2.41.3).
    """

    def __init__(self, echo: bool = True, version: str = N8N_2_8) -> None:
        self.echo = echo
        self.version = version
        self.tokens: dict[str, str] = {}
        self.rejected: list[ChatConnection] = []
        self.connections: list[ChatConnection] = []
        self.open: set[ChatConnection] = set()
        self._connections = _Queue()

    def buildProtocol(self, request: Request) -> ChatConnection:
        conn = ChatConnection(self, request)
        self.connections.append(conn)
        self.open.add(conn)
        return conn

    def start_execution(self, execution_id: str) -> dict[str, Any]:
        """
        The Chat Trigger's C{executionStarted} answer for C{execution_id} as
        this version writes it (2.41.3: with a fresh C{resumeToken}, which
        the socket then requires).
        """
        answer: dict[str, Any] = {"executionStarted": True, "executionId": execution_id}
        if self.version == N8N_2_41:
            token = self.tokens.setdefault(execution_id, secrets.token_hex(16))
            answer["resumeToken"] = token
        return answer

    def admits(self, query: dict[str, str]) -> bool:
        """
        Whether n8n would take a socket with this query.
        """
        if self.version != N8N_2_41:
            return True
        expected = self.tokens.get(query.get("executionId", ""))
        return expected is not None and secrets.compare_digest(query.get("token", ""), expected)

    def next_connection(self) -> Deferred[ChatConnection]:
        return self._connections.get()

    def drop_all(self) -> None:
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.loseConnection(1001)


class _Dispatch(Resource):
    isLeaf = True

    def __init__(self, chat: Resource, webhooks: Any) -> None:
        super().__init__()
        self.chat = chat
        self.webhooks = webhooks

    def render(self, request: Request) -> Any:
        if request.path == b"/chat":
            return self.chat.render(request)
        return self.webhooks.render(request)


def install_chat_sockets(fake: FakeN8n, echo: bool = True, version: str = N8N_2_8) -> ChatSockets:
    """
    Serve a fake C{/chat} WebSocket on C{fake}'s port, beside its webhooks,
    as n8n C{version} does.
    """
    sockets = ChatSockets(echo, version)
    fake.site.resource = _Dispatch(WebSocketResource(sockets), fake.site.resource)
    return sockets


class ResponseNodes:
    """
    Plays a Chat Trigger in "Using Response Nodes" mode with a Chat node
    "Send Message" then one "Send and Wait for Response": every chat POST
    answers C{executionStarted}; on the socket, a heartbeat and the first
    message, then, once the visitor answers, the reply to it.
    """

    def __init__(self, fake: FakeN8n, path: str = "/webhook/chat", version: str = N8N_2_8) -> None:
        from tests.support.fake_n8n import json_reply

        self.sockets = install_chat_sockets(fake, echo=False, version=version)
        fake.set_default(path, json_reply(self.sockets.start_execution("1001")))
        self._watch()

    def _watch(self) -> None:
        self.sockets.next_connection().addCallback(self._connected)

    def _connected(self, conn: ChatConnection) -> None:
        self._watch()
        conn.send("n8n|heartbeat")
        conn.send("ההודעה הראשונה מ-n8n")
        conn.next_message().addCallback(self._answered, conn)

    def _answered(self, message: str, conn: ChatConnection) -> None:
        if message.startswith("n8n|"):
            conn.next_message().addCallback(self._answered, conn)
            return
        try:
            text = json.loads(message).get("chatInput", message)
        except ValueError:
            text = message
        conn.send(f"קיבלתי: {text}")
        conn.next_message().addCallback(self._answered, conn)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a test helper process
    """
    A fake n8n whose /webhook/chat plays "Using Response Nodes" (L{ResponseNodes}).
    """
    import argparse

    from twisted.internet import reactor

    from tests.support.fake_n8n import listen_fake_n8n

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--n8n-version", choices=(N8N_2_8, N8N_2_41), default=N8N_2_8)
    args = parser.parse_args(argv)
    fake = listen_fake_n8n(reactor, args.port)
    ResponseNodes(fake, version=args.n8n_version)
    print(f"fake n8n listening on {fake.port}", flush=True)
    cast(Any, reactor).run()


if __name__ == "__main__":  # pragma: no cover
    main()

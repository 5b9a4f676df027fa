"""
End to end: the C{/chat} WebSocket relay (Chat Trigger "Using Response
Nodes"): a real C{twistd -n inkflow} between a WebSocket client in this
process and two fake n8n upstreams with a C{/chat} WebSocket each.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from wsproto.frame_protocol import CloseReason

from inkflow.web.websocket import Wire, connect_upstream
from tests.support.fake_n8n import FakeN8n, json_reply, listen_fake_n8n, status_reply
from tests.support.fake_n8n_ws import ChatSockets, install_chat_sockets
from tests.support.server import ServerProcess

reactor: Any = _reactor

TIMEOUT = 10.0


class Client:
    """
    A WebSocket client to InkFlow's C{/chat}: whole messages kept, and the
    close code (C{lost}).
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.wire: Any = None
        self.lost: Deferred[int | None] = Deferred()
        self._waiting: list[Deferred[str]] = []
        self._parts: list[str] = []

    def chunk(self, wire: Wire, data: str | bytes | bytearray, fin: bool) -> None:
        self._parts.append(data if isinstance(data, str) else bytes(data).decode())
        if not fin:
            return
        message, self._parts = "".join(self._parts), []
        if self._waiting:
            self._waiting.pop(0).callback(message)
        else:
            self.messages.append(message)

    def next_message(self) -> Deferred[str]:
        if self.messages:
            d: Deferred[str] = Deferred()
            d.callback(self.messages.pop(0))
            return d
        d = Deferred()
        self._waiting.append(d)
        return d.addTimeout(TIMEOUT, reactor)

    def send(self, text: str) -> None:
        self.wire.send_chunk(text, True)


class _Handler:
    """
    Hands a L{Client}'s wire events on (its C{lost} attribute is the Deferred).
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def chunk(self, wire: Wire, data: str | bytes | bytearray, fin: bool) -> None:
        self.client.chunk(wire, data, fin)

    def lost(self, wire: Wire) -> None:
        if not self.client.lost.called:
            self.client.lost.callback(wire.close_code)


async def open_socket(server: ServerProcess, query: str) -> Client:
    client = Client()
    client.wire = await connect_upstream(reactor, f"ws://127.0.0.1:{server.port}/chat?{query}", _Handler(client))
    return client


def raw(server: ServerProcess, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A WebSocket handshake by hand (for refusals, which never reach n8n)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else {}


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeN8n, ChatSockets, FakeN8n, ChatSockets]]:
    a, b = listen_fake_n8n(reactor), listen_fake_n8n(reactor)
    sa, sb = install_chat_sockets(a), install_chat_sockets(b)
    yield a, sa, b, sb
    sa.drop_all()
    sb.drop_all()
    pytest_twisted.blockon(a.stop())
    pytest_twisted.blockon(b.stop())


@pytest.fixture(scope="module")
def server(upstreams: tuple[FakeN8n, ChatSockets, FakeN8n, ChatSockets]) -> Iterator[ServerProcess]:
    a, _, b, _ = upstreams
    s = ServerProcess(
        "--webhook",
        a.url("/webhook/chat"),
        "--webhook",
        b.url("/webhook/chat"),
        "--rate-limit",
        "0",
        "--max-connections",
        "6",
        "--cors-origin",
        "https://shop.example",
        "--websocket-max-message",
        "1000",
        "--websocket-idle-timeout",
        "60",
    ).start()
    yield s
    s.stop()


async def start_execution(server: ServerProcess, upstream: FakeN8n, execution: str) -> Any:
    upstream.script("/webhook/chat", json_reply({"executionStarted": True, "executionId": execution}))
    response = await treq.post(
        server.url("/api/chat"),
        json={"action": "sendMessage", "sessionId": "ws-session", "chatInput": "start"},
    )
    return await response.json()


@pytest_twisted.ensureDeferred
async def test_relay_both_ways_to_the_upstream_that_started_the_execution(server, upstreams) -> None:
    """
    Upstream A fails over to B, B starts execution 42: the socket for 42 goes
    to B with the query string, messages and heartbeats pass both ways.
    """
    a, sa, b, sb = upstreams
    a.script("/webhook/chat", status_reply(503))
    assert await start_execution(server, b, "42") == {"executionStarted": True, "executionId": "42"}
    before_a = len(sa.connections)
    client = await open_socket(server, "sessionId=ws-session&executionId=42&isPublic=true")
    conn = await sb.next_connection()
    assert len(sa.connections) == before_a
    assert conn.query == {"sessionId": "ws-session", "executionId": "42", "isPublic": "true"}

    conn.send("n8n|heartbeat")
    assert await client.next_message() == "n8n|heartbeat"
    client.send("n8n|heartbeat-ack")
    assert await conn.next_message() == "n8n|heartbeat-ack"
    conn.send('{"type":"message","text":"שלום מ-n8n"}')
    assert await client.next_message() == '{"type":"message","text":"שלום מ-n8n"}'
    client.send("n8n|continue")
    assert await conn.next_message() == "n8n|continue"
    client.send("תשובה")
    assert await conn.next_message() == "תשובה"
    assert await client.next_message() == "n8n: תשובה"

    health = await (await treq.get(server.url("/api/health"))).json()
    assert health["websockets"]["open"] == 1
    metrics = await (await treq.get(server.url("/metrics"))).text()
    assert "inkflow_websockets_open 1.0" in metrics

    conn.close(4000)
    assert await client.lost.addTimeout(TIMEOUT, reactor) == 4000


@pytest_twisted.ensureDeferred
async def test_execution_started_at_a_goes_to_a(server, upstreams) -> None:
    """The map is per execution: one started at A opens at A."""
    a, sa, _, _ = upstreams
    await start_execution(server, a, "7")
    client = await open_socket(server, "sessionId=s&executionId=7")
    conn = await sa.next_connection()
    assert conn.query["executionId"] == "7"
    client.send("hi")
    assert await conn.next_message() == "hi"
    client.wire.close(1000)
    await conn.lost.addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_message_over_the_cap_closes_1009(server, upstreams) -> None:
    """A message over --websocket-max-message closes the browser's socket with 1009, and n8n's."""
    a, sa, _, _ = upstreams
    await start_execution(server, a, "big")
    client = await open_socket(server, "executionId=big")
    conn = await sa.next_connection()
    client.send("x" * 1001)
    assert await client.lost.addTimeout(TIMEOUT, reactor) == 1009
    await conn.lost.addTimeout(TIMEOUT, reactor)
    assert conn.received == []


@pytest_twisted.ensureDeferred
async def test_unknown_execution_with_two_origins_is_refused(server) -> None:
    """With two n8n origins an execution InkFlow did not see has no upstream: 404 unknown_execution."""
    status, body = raw(server, "/chat?executionId=nope", UPGRADE)
    assert (status, body["error"]["code"]) == (404, "unknown_execution")


@pytest_twisted.ensureDeferred
async def test_refusals(server) -> None:
    """A foreign Origin is 403, a plain GET 426, an upgrade elsewhere 404; an allowed Origin passes the check."""
    status, body = raw(server, "/chat?executionId=42", {**UPGRADE, "Origin": "https://evil.example"})
    assert (status, body["error"]["code"]) == (403, "forbidden_origin")
    status, body = raw(server, "/chat", {})
    assert (status, body["error"]["code"]) == (426, "websocket_required")
    status, body = raw(server, "/api/health", UPGRADE)
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = raw(server, "/chat?executionId=nope", {**UPGRADE, "Origin": "https://shop.example"})
    assert body["error"]["code"] == "unknown_execution"  # past the Origin check
    status, body = raw(server, "/chat?executionId=nope", {**UPGRADE, "Origin": f"http://127.0.0.1:{server.port}"})
    assert body["error"]["code"] == "unknown_execution"  # its own origin


@pytest_twisted.ensureDeferred
async def test_upstream_refusing_is_502() -> None:
    """n8n's socket not there (no /chat on that port): 502 before any upgrade."""
    plain = listen_fake_n8n(reactor)  # webhooks only: /chat answers a JSON echo, not an upgrade
    try:
        with ServerProcess("--webhook", plain.url("/webhook/chat")) as s:
            status, body = await _raw_in_thread(s, "/chat?executionId=1", UPGRADE)
            assert (status, body["error"]["code"]) == (502, "upstream_error")
    finally:
        await plain.stop()


async def _raw_in_thread(server: ServerProcess, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    from twisted.internet.threads import deferToThread

    result: tuple[int, dict[str, Any]] = await deferToThread(raw, server, path, headers)
    return result


@pytest_twisted.ensureDeferred
async def test_idle_timeout_and_drain(upstreams) -> None:
    """
    One origin: any execution id goes to it.  An idle socket is closed after
    --websocket-idle-timeout; on SIGTERM an open one is closed with 1001.
    """
    _, _, b, sb = upstreams
    s = ServerProcess("--webhook", b.url("/webhook/chat"), "--websocket-idle-timeout", "0.5").start()
    try:
        client = await open_socket(s, "executionId=anything")
        conn = await sb.next_connection()
        assert await client.lost.addTimeout(TIMEOUT, reactor) == 1000
        await conn.lost.addTimeout(TIMEOUT, reactor)
    finally:
        s.stop()
    s = ServerProcess("--webhook", b.url("/webhook/chat"), "--drain-timeout", "5").start()
    try:
        client = await open_socket(s, "executionId=drain")
        conn = await sb.next_connection()
        s.send_signal(signal.SIGTERM)
        assert await client.lost.addTimeout(TIMEOUT, reactor) == 1001
        await conn.lost.addTimeout(TIMEOUT, reactor)
        from twisted.internet.threads import deferToThread

        code = await deferToThread(s.wait, 15.0)
        assert code in (0, -signal.SIGTERM)  # twistd re-raises SIGTERM after an orderly stop
    finally:
        s.stop()


@pytest_twisted.ensureDeferred
async def test_token_passed_and_a_close_without_status_is_1000(server, upstreams) -> None:
    """
    n8n 2.41's token reaches n8n unchanged; n8n closing without a status
    (its response nodes' normal end) closes the browser's side with 1000.
    """
    a, sa, _, _ = upstreams
    await start_execution(server, a, "34")
    client = await open_socket(server, "sessionId=s&executionId=34&token=970493fc%2Bab")
    conn = await sa.next_connection()
    assert conn.query["token"] == "970493fc+ab"
    conn.transport.loseConnection(CloseReason.NO_STATUS_RCVD)
    assert await client.lost.addTimeout(TIMEOUT, reactor) == 1000


@pytest_twisted.ensureDeferred
async def test_bad_handshakes_are_json_400s(server) -> None:
    """A DEL byte in the target, HTTP/1.0, two keys: 400 bad_request, never a 500."""
    status, body = await _raw_in_thread(server, "/chat?executionId=42&x=\x7f", UPGRADE)
    assert (status, body["error"]["code"]) == (400, "bad_request")
    status, body = await _raw_in_thread(server, "/chat?executionId=42", {**UPGRADE, "Sec-WebSocket-Key": "short"})
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert "Traceback" not in server.output()


@pytest_twisted.ensureDeferred
async def test_workers_share_the_execution_map(upstreams) -> None:
    """
    --workers 2 with two n8n origins: an execution started at B through a chat
    one worker answered opens its socket at B from the other worker too (the
    execution map is the parent's), never 404 unknown_execution.
    """
    from twisted.internet.threads import deferToThread

    from tests.e2e.test_workers import pids_answering

    a, _, b, sb = upstreams
    s = ServerProcess(
        "--workers", "2", "--webhook", a.url("/webhook/chat"), "--webhook", b.url("/webhook/chat"), "--rate-limit", "0"
    ).start()

    def per_worker() -> dict[str, tuple[int, int]]:
        workers = s.get_json("/api/health")[1]["server"]["workers"]
        return {slot: (w["queue"]["processed_total"], w["websockets"]["opened_total"]) for slot, w in workers.items()}

    try:
        assert len(await deferToThread(pids_answering, s, 2)) == 2
        fresh = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        crossed = 0
        for n in range(3):
            execution = f"shared-{n}"
            before = await deferToThread(per_worker)
            a.script("/webhook/chat", status_reply(503))
            b.script("/webhook/chat", json_reply({"executionStarted": True, "executionId": execution}))
            response = await fresh.post(
                s.url("/api/chat"), json={"action": "sendMessage", "sessionId": "ws-w", "chatInput": execution}
            )
            assert (await response.json())["executionId"] == execution
            after = await deferToThread(per_worker)
            (chat_worker,) = [w for w in after if after[w][0] > before.get(w, (0, 0))[0]]
            # Sockets on fresh connections until one is taken by the other worker (bounded).
            for _ in range(30):
                before = after
                client = await open_socket(s, f"sessionId=ws-w&executionId={execution}")
                conn = await sb.next_connection()
                assert conn.query["executionId"] == execution
                client.wire.close(1000)
                await conn.lost.addTimeout(TIMEOUT, reactor)
                after = await deferToThread(per_worker)
                (socket_worker,) = [w for w in after if after[w][1] > before[w][1]]
                if socket_worker != chat_worker:
                    crossed += 1
                    break
        assert crossed == 3
    finally:
        await deferToThread(s.stop)
    assert "Traceback" not in s.output()

"""
End to end: C{--max-connections-per-ip} on the real C{twistd -n inkflow}.
One address (127.0.0.2: Linux routes all of 127/8 to loopback) holds its
share of connection places, silent, uploading or kept alive; another
(127.0.0.1) is still served.  Bounded in sockets and seconds.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.threads import deferToThread

from bench._common import read_head
from tests.support.fake_n8n import listen_fake_n8n
from tests.support.fake_n8n_ws import install_chat_sockets
from tests.support.server import ServerProcess

reactor: Any = _reactor

#: --max-connections 12: the per-address cap is auto, min(12, max(8, 12 // 4)) = 8.
CAP = 8
HOLDER = "127.0.0.2"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    uploads = tmp_path_factory.mktemp("uploads")
    args = ["--upload-dir", str(uploads), "--max-connections", "12", "--header-timeout", "8", "--body-timeout", "8"]
    with ServerProcess(*args) as s:
        yield s


def connect(server: ServerProcess, source: str = HOLDER) -> socket.socket:
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", server.port))
    return s


def ask(server: ServerProcess, source: str, path: str = "/") -> tuple[int, dict[str, object] | None, bytes]:
    """One GET on a new connection from C{source}; the status, the JSON body (if any) and the raw answer."""
    s = connect(server, source)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    finally:
        s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    return int(head[9:12]), parsed, head


def active(server: ServerProcess) -> int:
    return int(server.get_json("/api/health")[1]["connections"]["active"]) - 1


def wait_for_active(server: ServerProcess, count: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while active(server) != count:
        assert time.monotonic() < deadline, f"active {active(server)} != {count}"
        time.sleep(0.05)


def refused(answer: tuple[int, dict[str, object] | None, bytes]) -> bool:
    status, body, head = answer
    error: Any = (body or {}).get("error") or {}
    return status == 503 and error.get("code") == "too_many_connections_from_address" and b"Retry-After: " in head


def test_silent_sockets_from_one_address_do_not_keep_another_client_out(server: ServerProcess) -> None:
    """8 silent sockets from one address: its 9th is a polite 503 with Retry-After; another address gets 200."""
    held = [connect(server) for _ in range(CAP)]
    try:
        wait_for_active(server, CAP)
        assert refused(ask(server, HOLDER))
        assert ask(server, "127.0.0.1")[0] == 200
        assert ask(server, HOLDER, "/api/health")[0] == 200  # health is answered over the cap
    finally:
        for s in held:
            s.close()
    wait_for_active(server, 0)
    assert ask(server, HOLDER)[0] == 200


def test_uploads_in_progress_from_one_address_do_not_keep_another_client_out(server: ServerProcess) -> None:
    """8 chats still sending their bodies hold the address's places; another address's chat is answered."""
    held = []
    try:
        for _ in range(CAP):
            s = connect(server)
            s.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            held.append(s)
        wait_for_active(server, CAP)
        assert refused(ask(server, HOLDER))
        s = connect(server, "127.0.0.1")
        body = json.dumps({"message": "שלום"}).encode()
        s.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert s.recv(12) == b"HTTP/1.1 200"
        s.close()
    finally:
        for s in held:
            s.close()
    wait_for_active(server, 0)


def test_idle_kept_alive_sockets_make_room_for_their_own_address(server: ServerProcess) -> None:
    """8 idle kept-alive sockets: the address's 9th is served, its oldest idle socket closed; never more than 8."""
    held = []
    try:
        for _ in range(CAP):
            s = connect(server)
            s.sendall(b"GET /api/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(s)
        wait_for_active(server, CAP)
        assert ask(server, HOLDER)[0] == 200
        assert held[0].recv(1) == b""  # closed by the server to make room
        wait_for_active(server, CAP - 1)  # the 9th was answered and closed; the 7 others remain
    finally:
        for s in held:
            s.close()
    wait_for_active(server, 0)


def upgrade(server: ServerProcess, source: str) -> tuple[int, socket.socket, bytes]:
    """
    A /chat WebSocket handshake from C{source}: its status, the socket (kept
    open) and the answer (the head; for a refusal, all of it).
    """
    s = connect(server, source)
    s.sendall(
        b"GET /chat?sessionId=s&executionId=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    data = read_head(s)
    status = int(data[9:12] or b"0")
    if status != 101:
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
    return status, s, data


@pytest_twisted.ensureDeferred
async def test_websockets_from_one_address_hold_only_its_share() -> None:
    """3 relayed WebSockets from one address (cap 3): its 4th upgrade is a JSON 503; another address's is relayed."""
    fake = listen_fake_n8n(reactor)
    chat_sockets = install_chat_sockets(fake)
    held: list[socket.socket] = []
    try:
        with ServerProcess("--webhook", fake.url("/webhook/chat"), "--max-connections-per-ip", "3") as s:
            for _ in range(3):
                status, sock, _ = await deferToThread(upgrade, s, HOLDER)
                held.append(sock)
                assert status == 101
            status, sock, answer = await deferToThread(upgrade, s, HOLDER)
            sock.close()
            assert status == 503 and b"Retry-After: " in answer
            assert b'"too_many_connections_from_address"' in answer
            status, sock, _ = await deferToThread(upgrade, s, "127.0.0.1")
            held.append(sock)
            assert status == 101
            assert len(chat_sockets.connections) == 4  # each relayed socket has its own to n8n
    finally:
        for sock in held:
            sock.close()
        chat_sockets.drop_all()
        await fake.stop()


def test_no_traceback(server: ServerProcess) -> None:
    """Nothing above logged a traceback."""
    assert "Traceback" not in server.output()

"""
End to end: admission control on the real server — the chat queue, the
connection limit, the rate limit, slow-client deadlines, CORS and the
graceful drain.  Loopback only, bounded in count and time.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.fake_n8n import FakeN8n, json_reply, listen_fake_n8n, slow
from tests.support.server import ServerProcess

reactor: Any = _reactor


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeN8n]:
    f = listen_fake_n8n(reactor)
    f.set_default("/webhook/slow", slow(1.0, json_reply({"output": "slow ok"})))
    yield f
    pytest_twisted.blockon(f.stop())


def client() -> treq.client.HTTPClient:
    """A client with its own pool, so each request has its own connection."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


async def chat(http: Any, server: ServerProcess, message: str = "x") -> tuple[int, Any, Any]:
    response = await http.post(
        server.url("/api/chat"),
        data=json.dumps({"message": message, "sessionId": "adm"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    body = await response.content()
    return response.code, response.headers, json.loads(body) if body else None


async def wait_until(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_queue_full_gets_503_and_health_stays_fast(fake: FakeN8n, tmp_path: Path) -> None:
    """--max-concurrent 2 --queue-size 2: of 8 concurrent chats 4 are answered and 4 get 503 busy with Retry-After."""
    s = ServerProcess(
        "--webhook",
        fake.url("/webhook/slow"),
        "--max-concurrent",
        "2",
        "--queue-size",
        "2",
        "--rate-limit",
        "0",
        "--upload-dir",
        str(tmp_path),
    ).start()
    try:
        http = client()
        results = defer.gatherResults([defer.Deferred.fromCoroutine(chat(http, s)) for _ in range(8)])
        await wait_until(lambda: len(fake.requests_for("/webhook/slow")) >= 2)
        started = time.monotonic()
        response = await http.get(s.url("/api/health"))
        health = json.loads(await response.content())
        health_ms = (time.monotonic() - started) * 1000
        assert health_ms < 500
        assert health["queue"]["in_flight"] == 2
        answers = await results
        codes = sorted(code for code, _, _ in answers)
        assert codes == [200] * 4 + [503] * 4
        for code, headers, body in answers:
            if code == 503:
                assert body["error"]["code"] == "busy"
                assert int(headers.getRawHeaders("Retry-After")[0]) >= 1
        response = await http.get(s.url("/api/health"))
        queue = json.loads(await response.content())["queue"]
        assert queue["processed_total"] == 4
        assert queue["rejected_total"] == 4
    finally:
        s.stop()


def _open_and_ask(port: int, count: int, path: str = "/api/ready") -> list[bytes]:
    """Open C{count} connections at once, then ask each for C{path}; return the raw answers."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    answers: list[bytes] = []
    try:
        for sock in sockets:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        for sock in sockets:
            data = b""
            try:
                while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                data = b"RESET"
            answers.append(data)
    finally:
        for sock in sockets:
            sock.close()
    return answers


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_connections_over_the_limit_get_503_not_a_reset(tmp_path: Path) -> None:
    """60 connections against --max-connections 20: no reset; the 40 extra get 503 busy with Retry-After."""
    # One address opens all 60: the per-address cap is off, this is the global limit.
    with ServerProcess("--max-connections", "20", "--max-connections-per-ip", "0", "--upload-dir", str(tmp_path)) as s:
        answers = _open_and_ask(s.port, 60, "/")
        assert b"RESET" not in answers
        assert all(a.startswith(b"HTTP/1.1 ") for a in answers)
        ok = [a for a in answers if a.startswith(b"HTTP/1.1 200 ")]
        busy = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
        assert len(ok) == 20 and len(busy) == 40
        for answer in busy:
            assert b"Retry-After: " in answer and b"Connection: close" in answer and b'"busy"' in answer
        # the limit frees up again once they are gone
        assert s.request("GET", "/")[0] == 200
        health = s.get_json("/api/health")[1]
        assert health["connections"]["rejected_total"] == 40


def test_health_is_answered_over_the_limit(tmp_path: Path) -> None:
    """Over the connection limit, /api/health and /api/ready still answer 200."""
    with ServerProcess("--max-connections", "5", "--upload-dir", str(tmp_path)) as s:
        answers = _open_and_ask(s.port, 15, "/api/health")
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)


def test_rate_limit_gives_429_with_retry_after(tmp_path: Path) -> None:
    """--rate-limit 3: the fourth chat in a burst gets 429 rate_limited with Retry-After."""
    with ServerProcess("--rate-limit", "3", "--upload-dir", str(tmp_path)) as s:
        codes = [s.post_json("/api/chat", {"message": "x"})[0] for _ in range(3)]
        status, headers, body = s.post_json("/api/chat", {"message": "x"})
        assert codes == [200, 200, 200]
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert 1 <= int(headers["retry-after"]) <= 20
        # the page and health are not rate limited
        assert s.request("GET", "/api/health")[0] == 200


def test_slow_head_is_cut_after_the_header_deadline(tmp_path: Path) -> None:
    """A client sending its head a byte at a time is answered 408 at --header-timeout, then closed."""
    with ServerProcess("--header-timeout", "1", "--upload-dir", str(tmp_path)) as s:
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        try:
            started = time.monotonic()
            answer = b""
            sock.settimeout(0.25)
            for byte in b"GET / HTTP/1.1\r\nHost: slow\r\n":
                sock.sendall(bytes([byte]))
                try:
                    answer = sock.recv(65536)  # waits up to 0.25 s: the pace of the slow client
                except TimeoutError:
                    continue
                break
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                answer += chunk
            took = time.monotonic() - started
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert 0.9 < took < 3.0
        assert s.request("GET", "/")[0] == 200


def test_keepalive_client_that_behaves_is_not_cut(tmp_path: Path) -> None:
    """Requests on one kept-alive connection are answered, none cut by the deadlines."""
    import http.client

    with ServerProcess("--header-timeout", "1", "--upload-dir", str(tmp_path)) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        try:
            for _ in range(20):
                conn.request("GET", "/api/ready")
                response = conn.getresponse()
                assert response.status == 200
                response.read()
        finally:
            conn.close()


def test_cors_preflight_and_allowlist(tmp_path: Path) -> None:
    """An allowed origin gets CORS headers on preflight and on the answer; another origin gets none."""
    with ServerProcess("--cors-origin", "https://shop.example", "--upload-dir", str(tmp_path)) as s:
        status, headers, _ = s.request(
            "OPTIONS",
            "/api/chat",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
        )
        assert status == 204
        assert headers["access-control-allow-origin"] == "https://shop.example"
        assert "POST" in headers["access-control-allow-methods"]
        _, headers, _ = s.post_json("/api/chat", {"message": "x"}, {"Origin": "https://shop.example"})
        assert headers["access-control-allow-origin"] == "https://shop.example"
        _, headers, _ = s.post_json("/api/chat", {"message": "x"}, {"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in headers


def _ask(port: int, data: bytes) -> tuple[int, dict[str, str], Any]:
    """
    Send C{data} (a whole request) on a new connection and read the answer
    until the server closes: its status, headers (names in lower case) and
    JSON body.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, json.loads(body) if body else None


def _chat_head(origin: str, extra: str, method: str = "POST", content_type: str = "application/json") -> bytes:
    return (
        f"{method} /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nOrigin: {origin}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    ).encode()


def test_early_refusals_carry_cors_for_a_listed_origin(tmp_path: Path) -> None:
    """
    Chat refused before its route (413 from Content-Length and while the body
    streams, 415 from the head, 503 over --max-connections) carries the CORS
    headers for a --cors-origin, none for another origin; over the limit the
    preflight is answered, so the embed's POST reads its 503.
    """
    shop, evil = "https://shop.example", "https://evil.example"
    with ServerProcess(
        *("--cors-origin", shop, "--max-files", "1", "--max-file-size", "1000", "--max-message-chars", "100"),
        *("--max-connections", "1", "--max-connections-per-ip", "0", "--upload-dir", str(tmp_path)),
    ) as s:
        big = b"x" * 70_000
        status, headers, body = _ask(s.port, _chat_head(shop, f"Content-Length: {len(big)}\r\n") + big)
        assert (status, body["error"]["code"]) == (413, "too_large")
        assert headers["access-control-allow-origin"] == shop
        assert headers["vary"] == "Origin"
        assert "Retry-After" in headers["access-control-expose-headers"]
        chunked = _chat_head(shop, "Transfer-Encoding: chunked\r\n") + b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
        status, headers, body = _ask(s.port, chunked)
        assert (status, body["error"]["code"]) == (413, "too_large")
        assert headers["access-control-allow-origin"] == shop
        text = _chat_head(shop, "Content-Length: 5\r\n", content_type="text/plain") + b"hello"
        status, headers, body = _ask(s.port, text)
        assert (status, body["error"]["code"]) == (415, "unsupported_type")
        assert headers["access-control-allow-origin"] == shop
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as held:
            held.sendall(b"GET / HTTP/1.1\r\n")  # holds the one place
            preflight = _chat_head(shop, "Access-Control-Request-Method: POST\r\n", method="OPTIONS")
            status, headers, _ = _ask(s.port, preflight)
            assert (status, headers["access-control-allow-origin"]) == (204, shop)
            message = b'{"message":"a"}'
            for origin in (shop, evil):
                status, headers, body = _ask(s.port, _chat_head(origin, "Content-Length: 15\r\n") + message)
                assert (status, body["error"]["code"]) == (503, "busy")
                assert "retry-after" in headers
                assert headers.get("access-control-allow-origin") == (shop if origin == shop else None)
        assert "Traceback" not in s.output()


@pytest_twisted.ensureDeferred
async def test_sigterm_during_ten_chats_answers_all_ten(fake: FakeN8n, tmp_path: Path) -> None:
    """SIGTERM while 10 chats are in flight: all 10 are answered 200, then the server exits cleanly."""
    s = ServerProcess(
        "--webhook",
        fake.url("/webhook/slow"),
        "--rate-limit",
        "0",
        "--upload-dir",
        str(tmp_path),
    ).start()
    before = len(fake.requests_for("/webhook/slow"))
    http = client()
    results = defer.gatherResults([defer.Deferred.fromCoroutine(chat(http, s, f"m{i}")) for i in range(10)])
    await wait_until(lambda: len(fake.requests_for("/webhook/slow")) - before >= 10)
    s.send_signal(signal.SIGTERM)
    answers = await results
    assert [code for code, _, _ in answers] == [200] * 10
    assert all(body == {"output": "slow ok"} for _, _, body in answers)
    code = await threads.deferToThread(s.wait, 15)
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert "Traceback" not in s.output()
    assert "Drained" in s.output()

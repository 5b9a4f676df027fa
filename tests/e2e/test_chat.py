"""
End to end: the real server forwarding chat to a fake n8n, both on loopback.

The fake n8n runs in this process's reactor (pytest-twisted); InkFlow runs as
a real C{twistd -n inkflow} subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater

from tests.support.fake_n8n import (
    FakeN8n,
    echo,
    empty,
    json_reply,
    n8n_not_registered,
    reset,
    slow,
    status_reply,
    text,
)
from tests.support.server import ServerProcess, multipart

reactor: Any = _reactor

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + os.urandom(2000)
PDF = b"%PDF-1.4\n" + os.urandom(50_000) + b"\n%%EOF\n"


def free_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def server(fake: FakeN8n, uploads: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        "--webhook",
        fake.url("/webhook/chat"),
        "--webhook-header",
        "X-N8N-Auth: s3cret-value",
        "--upload-dir",
        str(uploads),
        "--max-file-size",
        str(1024 * 1024),
        "--rate-limit",
        "0",
        "--attempt-timeout",
        "2",
        "--request-timeout",
        "5",
    ) as s:
        yield s


async def post(
    url: str, body: bytes, content_type: str, headers: dict[bytes | str, bytes | str] | None = None
) -> tuple[int, Any, Any]:
    all_headers: dict[bytes | str, bytes | str] = {"Content-Type": content_type, **(headers or {})}
    response = await treq.post(url, data=body, headers=all_headers)
    content = await response.content()
    try:
        value = json.loads(content) if content else None
    except ValueError:
        value = content
    return response.code, response.headers, value


async def post_json(
    server: ServerProcess, value: Any, headers: dict[bytes | str, bytes | str] | None = None
) -> tuple[int, Any, Any]:
    return await post(server.url("/api/chat"), json.dumps(value).encode(), "application/json", headers)


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def eventually_empty(folder: Path, within: float = 5.0) -> list[str]:
    """Wait (bounded) for the server to clean its upload folder."""
    deadline = time.monotonic() + within
    while temp_files(folder) and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
    return temp_files(folder)


@pytest_twisted.ensureDeferred
async def test_json_chat_is_forwarded_in_the_contract_shape(server: ServerProcess, fake: FakeN8n) -> None:
    """A JSON message reaches n8n as {action, sessionId, chatInput, metadata} with the contract's headers only."""
    fake.script("/webhook/chat", json_reply({"output": "תשובה מ-n8n"}))
    before = len(fake.requests_for("/webhook/chat"))
    status, headers, body = await post_json(
        server,
        {"message": "שלום", "sessionId": "sess-1"},
        {"Cookie": "sid=secret", "Authorization": "Bearer client-token"},
    )
    assert status == 200
    assert body == {"output": "תשובה מ-n8n"}
    got = fake.requests_for("/webhook/chat")[before:]
    assert len(got) == 1
    sent = got[0]
    assert sent.json["action"] == "sendMessage"
    assert sent.json["sessionId"] == "sess-1"
    assert sent.json["chatInput"] == "שלום"
    assert sent.json["metadata"]["source"] == "inkflow"
    request_id = headers.getRawHeaders("X-Request-ID")[0]
    assert sent.json["metadata"]["requestId"] == request_id
    assert sent.header("X-Request-ID") == request_id
    assert sent.header("Idempotency-Key")
    assert sent.header("X-N8N-Auth") == "s3cret-value"
    assert sent.header("Cookie") is None
    assert sent.header("Authorization") is None


@pytest_twisted.ensureDeferred
async def test_files_arrive_intact_with_hebrew_names(server: ServerProcess, fake: FakeN8n, uploads: Path) -> None:
    """Files reach n8n byte for byte (sha256), Hebrew names kept, types from the bytes; no temp file stays."""
    fake.script("/webhook/chat", echo())
    before = len(fake.requests_for("/webhook/chat"))
    payload, ctype = multipart(
        {"message": "קבצים", "sessionId": "sess-2"},
        [
            ("files", "תמונה.png", "application/octet-stream", PNG),
            ("files", "../../מסמך.pdf", "image/png", PDF),
        ],
    )
    status, _, _ = await post(server.url("/api/chat"), payload, ctype)
    assert status == 200
    sent = fake.requests_for("/webhook/chat")[before]
    assert sent.fields["chatInput"] == "קבצים"
    assert json.loads(sent.fields["metadata"])["source"] == "inkflow"
    got = {(f.filename, f.content_type, f.sha256) for f in sent.files}
    assert got == {
        ("תמונה.png", "image/png", hashlib.sha256(PNG).hexdigest()),
        ("מסמך.pdf", "application/pdf", hashlib.sha256(PDF).hexdigest()),
    }
    assert await eventually_empty(uploads) == []


@pytest_twisted.ensureDeferred
async def test_text_answer_is_wrapped(server: ServerProcess, fake: FakeN8n) -> None:
    """A 2xx text answer becomes {"output": text}."""
    fake.script("/webhook/chat", text("plain answer"))
    status, _, body = await post_json(server, {"message": "hi"})
    assert (status, body) == (200, {"output": "plain answer", "sessionId": body["sessionId"]})


@pytest_twisted.ensureDeferred
async def test_no_retry_on_500(server: ServerProcess, fake: FakeN8n) -> None:
    """n8n's 500 (the workflow ran and failed) is not retried: one attempt, 502 upstream_error."""
    fake.script("/webhook/chat", status_reply(500, b'{"message":"Error in workflow"}'))
    before = len(fake.requests_for("/webhook/chat"))
    status, _, body = await post_json(server, {"message": "x"})
    assert status == 502
    assert body["error"]["code"] == "upstream_error"
    assert len(fake.requests_for("/webhook/chat")) - before == 1


@pytest_twisted.ensureDeferred
async def test_503_is_retried_with_one_idempotency_key(server: ServerProcess, fake: FakeN8n) -> None:
    """A 503 every time: exactly retries + 1 attempts, all with the same Idempotency-Key, then 502."""
    fake.script("/webhook/chat", status_reply(503), status_reply(503), status_reply(503))
    before = len(fake.requests_for("/webhook/chat"))
    status, _, body = await post_json(server, {"message": "x"})
    attempts = fake.requests_for("/webhook/chat")[before:]
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert len(attempts) == 3
    assert len({a.header("Idempotency-Key") for a in attempts}) == 1


@pytest_twisted.ensureDeferred
async def test_429_then_success(server: ServerProcess, fake: FakeN8n) -> None:
    """A 429 with Retry-After is waited out and the next attempt's answer is passed on."""
    fake.script("/webhook/chat", status_reply(429, headers={"Retry-After": "1"}), json_reply({"output": "ok"}))
    started = time.monotonic()
    status, _, body = await post_json(server, {"message": "x", "sessionId": "s"})
    assert (status, body) == (200, {"output": "ok"})
    assert time.monotonic() - started >= 0.9


@pytest_twisted.ensureDeferred
async def test_empty_200_is_502(server: ServerProcess, fake: FakeN8n) -> None:
    """An empty 2xx (the workflow failed before its Respond node) is 502, and is not retried."""
    fake.script("/webhook/chat", empty())
    before = len(fake.requests_for("/webhook/chat"))
    status, _, body = await post_json(server, {"message": "x"})
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert len(fake.requests_for("/webhook/chat")) - before == 1


@pytest_twisted.ensureDeferred
async def test_slow_backend_is_504_within_the_deadline(server: ServerProcess, fake: FakeN8n) -> None:
    """A backend slower than --request-timeout gets the client a 504 by the deadline, not after."""
    fake.script("/webhook/chat", slow(10.0))
    started = time.monotonic()
    status, _, body = await post_json(server, {"message": "x"})
    took = time.monotonic() - started
    assert status in (502, 504), body
    # attempt timeout 2 s (timeouts are not retried by default): 502 after one attempt
    assert took < 5.5


@pytest_twisted.ensureDeferred
async def test_health_shows_upstreams_without_secrets(server: ServerProcess, fake: FakeN8n) -> None:
    """/api/health lists the webhook with its breaker state and never shows header values."""
    response = await treq.get(server.url("/api/health"))
    health = json.loads(await response.content())
    assert health["mode"] == "proxy"
    (upstream,) = health["upstreams"]
    # index and scheme://host:port only: in n8n the webhook path is the secret
    assert (upstream["index"], upstream["url"]) == (0, f"http://127.0.0.1:{fake.port}")
    assert "/webhook/chat" not in json.dumps(health)
    assert upstream["state"] in ("closed", "half_open", "open")
    assert upstream["requests_total"] >= 1
    assert "s3cret-value" not in json.dumps(health)


@pytest_twisted.ensureDeferred
async def test_file_type_decided_from_bytes(server: ServerProcess, uploads: Path) -> None:
    """An executable named .png with an image/png type is refused 415, and its temp file removed."""
    exe = b"MZ\x90\x00" + b"\x00" * 60 + os.urandom(4000)
    payload, ctype = multipart({"message": "x"}, [("files", "cat.png", "image/png", exe)])
    status, _, body = await post(server.url("/api/chat"), payload, ctype)
    assert status == 415 and body["error"]["code"] == "unsupported_type"
    assert await eventually_empty(uploads) == []


@pytest_twisted.ensureDeferred
async def test_too_many_files(server: ServerProcess, uploads: Path) -> None:
    """Six files against the default five: 400 too_many_files, no temp file left."""
    files = [("files", f"{i}.txt", "text/plain", b"hello\n") for i in range(6)]
    payload, ctype = multipart({"message": "x"}, files)
    status, _, body = await post(server.url("/api/chat"), payload, ctype)
    assert status == 400 and body["error"]["code"] == "too_many_files"
    assert await eventually_empty(uploads) == []


@pytest_twisted.ensureDeferred
async def test_oversize_file_with_content_length(server: ServerProcess, uploads: Path) -> None:
    """A file over --max-file-size is 413 too_large (body under the total limit), no temp file left."""
    payload, ctype = multipart({"message": "x"}, [("files", "big.txt", "text/plain", b"a" * (1024 * 1024 + 10))])
    status, _, body = await post(server.url("/api/chat"), payload, ctype)
    assert status == 413 and body["error"]["code"] == "too_large"
    assert await eventually_empty(uploads) == []


def _raw_exchange(port: int, head: bytes, chunks: list[bytes], close_early: bool = False) -> bytes:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        conn.sendall(head)
        for chunk in chunks:
            try:
                conn.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        if close_early:
            return b""
        data = b""
        while True:
            try:
                got = conn.recv(65536)
            except ConnectionResetError:
                break
            if not got:
                break
            data += got
        return data
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_oversize_chunked_upload_refused_while_streaming(server: ServerProcess, uploads: Path) -> None:
    """A chunked upload with no Content-Length is refused 413 once a file crosses the limit; no temp file left."""
    payload, ctype = multipart({"message": "x"}, [("files", "big.txt", "text/plain", b"a" * (3 * 1024 * 1024))])
    chunks = [
        b"%x\r\n%s\r\n" % (len(payload[i : i + 65536]), payload[i : i + 65536]) for i in range(0, len(payload), 65536)
    ]
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    answer = _raw_exchange(server.port, head, [*chunks, b"0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b'"too_large"' in answer
    assert await eventually_empty(uploads) == []


@pytest_twisted.ensureDeferred
async def test_client_gone_mid_upload_leaves_no_temp_file(server: ServerProcess, uploads: Path) -> None:
    """A client that disconnects half-way through a file leaves nothing in the upload folder."""
    payload, ctype = multipart({"message": "x"}, [("files", "half.txt", "text/plain", b"b" * 600_000)])
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    _raw_exchange(server.port, head, [payload[: len(payload) // 2]], close_early=True)
    assert await eventually_empty(uploads) == []
    response = await treq.get(server.url("/api/health"))
    assert response.code == 200
    await response.content()


@pytest_twisted.ensureDeferred
async def test_failover_from_refused_port_and_inactive_webhook(fake: FakeN8n, tmp_path: Path) -> None:
    """With a refused port and a 404 (inactive) webhook first, the message is answered by the third URL."""
    fake.set_default("/webhook/inactive", n8n_not_registered("inactive"))
    fake.set_default("/webhook/live", json_reply({"output": "live"}))
    dead = f"http://127.0.0.1:{free_port()}/webhook/dead"
    s = ServerProcess(
        "--webhook",
        dead,
        "--webhook",
        fake.url("/webhook/inactive"),
        "--webhook",
        fake.url("/webhook/live"),
        "--upload-dir",
        str(tmp_path),
    ).start()
    try:
        status, _, body = await post_json(s, {"message": "x", "sessionId": "f"})
        assert (status, body) == (200, {"output": "live"})
        assert len(fake.requests_for("/webhook/inactive")) == 1
        assert len(fake.requests_for("/webhook/live")) == 1
    finally:
        s.stop()


@pytest_twisted.ensureDeferred
async def test_request_timeout_is_504(fake: FakeN8n, tmp_path: Path) -> None:
    """With timeouts retried, a backend that never answers gets a 504 upstream_timeout at --request-timeout."""
    fake.set_default("/webhook/stuck", slow(30.0))
    s = ServerProcess(
        "--webhook",
        fake.url("/webhook/stuck"),
        "--retry-on",
        "connect,timeout",
        "--retries",
        "5",
        "--attempt-timeout",
        "0.5",
        "--request-timeout",
        "1.5",
        "--upload-dir",
        str(tmp_path),
    ).start()
    try:
        started = time.monotonic()
        status, _, body = await post_json(s, {"message": "x"})
        took = time.monotonic() - started
        assert status == 504 and body["error"]["code"] == "upstream_timeout"
        # never after the deadline; a little before it when no further attempt fits
        assert 0.9 < took < 2.0
    finally:
        s.stop()


@pytest_twisted.ensureDeferred
async def test_reset_before_headers_is_502(server: ServerProcess, fake: FakeN8n) -> None:
    """A connection reset after the request was sent is not retried by default (n8n may have run): 502."""
    fake.script("/webhook/chat", reset())
    before = len(fake.requests_for("/webhook/chat"))
    status, _, body = await post_json(server, {"message": "x"})
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert len(fake.requests_for("/webhook/chat")) - before == 1


@pytest_twisted.ensureDeferred
async def test_five_large_files_arrive_whole(fake: FakeN8n, tmp_path: Path) -> None:
    """5 files of almost 10 MB each (the default limits) reach n8n whole, byte for byte, and no temp file stays."""
    fake.set_default("/webhook/big", json_reply({"output": "got them"}))
    s = ServerProcess("--webhook", fake.url("/webhook/big"), "--upload-dir", str(tmp_path)).start()
    try:
        blobs = [b"%PDF-1.4\n" + os.urandom(10 * 1024 * 1024 - 4096) for _ in range(5)]
        files = [("files", f"קובץ-{i}.pdf", "application/pdf", blob) for i, blob in enumerate(blobs)]
        payload, ctype = multipart({"message": "חמישה קבצים", "sessionId": "big"}, files)
        started = time.monotonic()
        status, _, body = await post(s.url("/api/chat"), payload, ctype)
        assert (status, body) == (200, {"output": "got them"})
        assert time.monotonic() - started < 20
        (sent,) = fake.requests_for("/webhook/big")
        assert sent.complete_multipart
        assert [(f.filename, f.size, f.sha256) for f in sent.files] == [
            (f"קובץ-{i}.pdf", len(blob), hashlib.sha256(blob).hexdigest()) for i, blob in enumerate(blobs)
        ]
        assert await eventually_empty(tmp_path) == []
    finally:
        s.stop()

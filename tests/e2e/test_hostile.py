"""
End to end: hostile clients against the real C{twistd -n inkflow}
on loopback.  Each test is bounded in sockets and seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import REPO, ServerProcess, multipart, run_command, twistd

STATIC = REPO / "static"


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("static") / "static"
    shutil.copytree(STATIC, folder)
    (folder / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (folder / "huge.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, static_dir: Path) -> Iterator[ServerProcess]:
    uploads = tmp_path_factory.mktemp("uploads")
    args = ["--upload-dir", str(uploads), "--static-dir", str(static_dir)]
    args += ["--body-timeout", "1", "--write-timeout", "1", "--rate-limit", "3"]
    with ServerProcess(*args) as s:
        yield s


def raw(port: int, data: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Send C{data}, read until the server closes (or C{wait}); the bytes and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out, time.monotonic() - started


def active(server: ServerProcess) -> int:
    return int(server.get_json("/api/health")[1]["connections"]["active"]) - 1


def test_stalled_chunked_body_is_cut_after_the_body_timeout(server: ServerProcess) -> None:
    """A chunked chat head and then nothing: 408 and a close after --body-timeout, not minutes."""
    head = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    out, seconds = raw(server.port, head)
    assert out.startswith(b"HTTP/1.1 408 "), out[:200]
    assert seconds < 4


def test_client_that_never_reads_is_aborted(server: ServerProcess) -> None:
    """20 pipelined GETs of a 2 MB file, never read: aborted after --write-timeout; memory stays flat."""
    rss_before = server.get_json("/api/health")[1]["memory"]["rss_bytes"]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
    deadline = time.monotonic() + 8
    while active(server) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    health = server.get_json("/api/health")[1]
    s.close()
    assert health["connections"]["active"] == 1  # this health request
    assert health["memory"]["rss_bytes"] - rss_before < 20 * 1024 * 1024


def test_cross_site_multipart_chat_is_403_before_the_body(server: ServerProcess) -> None:
    """A foreign Origin on a multipart chat: 403 forbidden_origin, JSON, before any body byte."""
    head = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n"
        b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 5000000\r\n\r\n"
    )
    out, _ = raw(server.port, head, wait=3)
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n"), out[:200]
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "forbidden_origin" and body["message"] == body["error"]["message"]


def test_same_origin_chat_is_answered(server: ServerProcess) -> None:
    """The page's own origin is allowed."""
    status, _, body = server.post_json(
        "/api/chat", {"message": "שלום"}, headers={"Origin": server.base, "X-Forwarded-For": "10.9.9.9"}
    )
    assert status == 200, body


def test_non_finite_metadata_is_400(server: ServerProcess) -> None:
    """NaN in metadata is not JSON: 400."""
    status, _, body = server.request(
        "POST", "/api/chat", b'{"message":"hi","metadata":{"a":NaN}}', {"Content-Type": "application/json"}
    )
    assert status == 400, body


def test_rate_limit_is_decided_from_the_head(server: ServerProcess) -> None:
    """Over --rate-limit, a 5 MB upload's head is answered 429 with Retry-After at once."""
    body, ctype = multipart({"message": "x"}, [])
    for _ in range(3):
        server.request("POST", "/api/chat", body, {"Content-Type": ctype})
    head = (f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 5000000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        s.sendall(head)  # and no body byte
        out = s.recv(4096)
    assert out.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), out[:200]
    assert b"Retry-After: " in out


def test_api_paths_with_doubled_slashes_are_json_404s(server: ServerProcess) -> None:
    """/api//health is a JSON 404 (not werkzeug's redirect turned into a 500), with no traceback."""
    status, headers, body = server.request("GET", "/api//health")
    assert status == 404 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "not_found"
    assert "Traceback" not in server.output()


def test_large_static_file_is_streamed_with_ranges(server: ServerProcess, static_dir: Path) -> None:
    """A file over the cache limit: 200 whole, 206 for a Range, 304 for its ETag."""
    content = (static_dir / "huge.bin").read_bytes()
    status, headers, body = server.request("GET", "/huge.bin")
    assert (status, body == content) == (200, True)
    status, _, body = server.request("GET", "/h%75ge.bin", headers={"Range": "bytes=100-199"})
    assert (status, body) == (206, content[100:200])
    status, _, _ = server.request("GET", "/huge.bin", headers={"If-None-Match": headers["etag"]})
    assert status == 304


def test_webhook_with_credentials_is_refused_at_start() -> None:
    """user:password@ in --webhook stops start-up with one line naming the option, the password never shown."""
    result = run_command(
        [twistd(), "-n", "--pidfile=", "inkflow", "--webhook", "http://me:hunter2@127.0.0.1:9/webhook/x"]
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "--webhook" in output and "Authorization" in output
    assert "hunter2" not in output and "Traceback" not in output


def test_admin_listener_has_the_full_health(tmp_path: Path) -> None:
    """With --admin-listen, the public health says only its status and /metrics is 404; the admin port has both."""
    with ServerProcess("--upload-dir", str(tmp_path), "--admin-listen", "tcp:0:interface=127.0.0.1") as s:
        assert s.get_json("/api/health") == (200, {"status": "ok"})
        assert s.request("GET", "/metrics")[0] == 404
        admin_port = int(s.wait_for(re.compile(r"(?<!InkFlow)Site starting on (\d+)")).group(1))
        admin = ServerProcess.attach(admin_port)
        status, health = admin.get_json("/api/health")
        assert status == 200 and health["mode"] == "demo" and "connections" in health
        assert admin.request("GET", "/metrics")[0] == 200


@pytest.mark.parametrize(
    "target",
    [b"/api/chat\x7f", b"/api/health?x=\x7f", b"/chat?token=\x7f", b"/\x7f", b"/api/health?\xb0"],
    ids=["chat", "health-query", "websocket-query", "page", "high-byte"],
)
def test_del_or_high_byte_in_any_target_is_a_json_400(server: ServerProcess, target: bytes) -> None:
    """A DEL (or a byte over 0x7e) in any request target, an upgrade's included: JSON 400, no traceback."""
    upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    head = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 13\r\n" + upgrade + b"\r\n"
    out, _ = raw(server.port, head, wait=3)
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"
    assert "Traceback" not in server.output()


def test_absolute_form_target_is_served_for_the_own_host_only(server: ServerProcess) -> None:
    """GET http://<Host>/api/health is health (RFC 9112 3.2.2); another host in the target is a JSON 400."""
    host = f"127.0.0.1:{server.port}"
    for authority, expected in ((host, b"HTTP/1.1 200 "), ("evil.example", b"HTTP/1.1 400 ")):
        head = f"GET http://{authority}/api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        out, _ = raw(server.port, head.encode(), wait=5)
        assert out.startswith(expected), out[:200]
        assert out.split(b"\r\n\r\n", 1)[1].startswith(b"{")

"""
End to end: a multipart chat's spooled files are gone when its request
ends, whatever ended it (contract, "Request bodies"): each early exit of
the real C{twistd -n inkflow} leaves 0 bytes in C{--upload-dir}.  Each
request comes from its own loopback address (127.0.0.x), so the rate limit
and the per-address cap are reached only where a test means to.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

MB = 1024 * 1024
_sources = itertools.count(30)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def server(uploads: Path) -> Iterator[ServerProcess]:
    args = ["--upload-dir", str(uploads), "--rate-limit", "3", "--max-connections-per-ip", "2"]
    with ServerProcess(*args, "--max-file-size", str(2 * MB)) as s:
        yield s


def source() -> str:
    """A loopback address of its own (its own rate-limit bucket and per-address count)."""
    return f"127.0.0.{next(_sources)}"


def upload(content: bytes = b"a" * MB, files: int = 2) -> bytes:
    parts = [b'--zz\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n']
    for i in range(files):
        disposition = f'Content-Disposition: form-data; name="files"; filename="f{i}.txt"'
        parts.append(b"--zz\r\n" + disposition.encode() + b"\r\n\r\n" + content + b"\r\n")
    return b"".join(parts) + b"--zz--\r\n"


def send(
    server: ServerProcess,
    src: str,
    *headers: bytes,
    body: bytes | None = None,
    method: bytes = b"POST",
    cut: Path | None = None,
) -> bytes:
    """One multipart chat from C{src}; the server's answer (all of it, until it closes)."""
    body = upload() if body is None else body
    head = [method + b" /api/chat HTTP/1.1", *headers, b"Content-Type: multipart/form-data; boundary=zz"]
    if not any(h.lower().startswith(b"host:") for h in headers):
        head.append(b"Host: 127.0.0.1")
    head += [b"Content-Length: %d" % len(body), b"Connection: close"]
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((src, 0))
        s.connect(("127.0.0.1", server.port))
        s.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        if cut is not None:
            s.sendall(body[: len(body) // 2])
            deadline = time.monotonic() + 5
            while not os.listdir(cut) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert os.listdir(cut), "the upload was never spooled"
            return b""
        with contextlib.suppress(OSError):  # refused from its head: the server stopped reading
            s.sendall(body)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def left_behind(server: ServerProcess, uploads: Path, within: float = 5.0) -> list[str]:
    """The files in the upload folder once the server holds no connection but the health request's."""
    deadline = time.monotonic() + within
    while server.get_json("/api/health")[1]["connections"]["active"] > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.listdir(uploads)


def status(answer: bytes) -> int:
    return int(answer[9:12])


def _replay(server: ServerProcess) -> list[int]:
    src = source()
    return [status(send(server, src, b"Idempotency-Key: same-key")) for _ in range(2)]


def _mismatch(server: ServerProcess) -> list[int]:
    src = source()
    first = send(server, src, b"Idempotency-Key: reused-key")
    other = send(server, src, b"Idempotency-Key: reused-key", body=upload(b"b" * MB))
    return [status(first), status(other)]


def _rate_limited(server: ServerProcess) -> list[int]:
    src = source()
    small = upload(files=0)
    answers = [status(send(server, src, body=small)) for _ in range(3)]
    return [*answers, status(send(server, src))]


def _over_the_address_cap(server: ServerProcess) -> list[int]:
    src = source()
    held = []
    for _ in range(2):
        s = socket.socket()
        s.bind((src, 0))
        s.connect(("127.0.0.1", server.port))
        held.append(s)
    try:
        return [status(send(server, src))]
    finally:
        for s in held:
            s.close()


EXITS: dict[str, tuple[Callable[[ServerProcess], list[int]], list[int]]] = {
    "websocket-upgrade-404": (
        lambda s: [status(send(s, source(), b"Upgrade: websocket", b"Connection: Upgrade"))],
        [404],
    ),
    "host-not-utf8-400": (lambda s: [status(send(s, source(), b"Host: x\xff.example"))], [400]),
    "invalid-idempotency-key-400": (lambda s: [status(send(s, source(), b"Idempotency-Key: not a key"))], [400]),
    "idempotent-replay-200": (_replay, [200, 200]),
    "idempotency-mismatch-422": (_mismatch, [200, 422]),
    "file-type-not-allowed-415": (lambda s: [status(send(s, source(), body=upload(b"MZ" + bytes(MB))))], [415]),
    "file-over-the-limit-413": (lambda s: [status(send(s, source(), body=upload(b"c" * (2 * MB + 1), 1)))], [413]),
    "put-405": (lambda s: [status(send(s, source(), method=b"PUT", body=upload(b"p" * 1000, 1)))], [405]),
    "put-large-413": (lambda s: [status(send(s, source(), method=b"PUT"))], [413]),
    "foreign-origin-403": (lambda s: [status(send(s, source(), b"Origin: https://evil.example"))], [403]),
    "rate-limited-429": (_rate_limited, [200, 200, 200, 429]),
    "over-the-address-cap-503": (_over_the_address_cap, [503]),
}


@pytest.mark.parametrize("name", list(EXITS))
def test_an_early_exit_leaves_no_upload(server: ServerProcess, uploads: Path, name: str) -> None:
    """The exit answers as expected and the upload folder is empty after it."""
    run, expected = EXITS[name]
    assert run(server) == expected
    assert left_behind(server, uploads) == []


def test_a_client_leaving_mid_body_leaves_no_upload(server: ServerProcess, uploads: Path) -> None:
    """Half a 2 MB upload is spooled, then the client goes: its spooled part is removed."""
    send(server, source(), cut=uploads)
    assert left_behind(server, uploads) == []


def test_no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in server.output()

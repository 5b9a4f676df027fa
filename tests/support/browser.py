"""
Helpers for the browser tests (L{tests.e2e.test_browser}): Debian's Chromium
driven by Playwright, the real InkFlow server on a free loopback port, and a
fake n8n that runs in the test process.

Nothing here downloads anything: Playwright is pointed at C{/usr/bin/chromium}
(install it with C{scripts/install-system-deps.sh browser}); C{playwright install} is
never needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.loopback_http import LoopbackHTTPServer, QuietHandler
from tests.support.server import REPO, ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "FakeN8n",
    "ReceivedFile",
    "ReceivedRequest",
    "artifact",
    "browser_missing",
    "launch_browser",
    "png_bytes",
    "skip_without_browser",
    "start_inkflow",
]

#: Debian's Chromium (C{apt-get install chromium}); C{CHROMIUM_PATH} overrides.
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

#: Quiet, loopback-only Chromium: no GPU, no QUIC, no background fetches.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Screenshots land here (ignored by git).
ARTIFACTS = REPO / "test-artifacts"


def browser_missing() -> str | None:
    """
    Why the browser tests cannot run here, or C{None} when they can.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright==1.65.2)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (run scripts/install-system-deps.sh browser)"
    return None


def skip_without_browser() -> None:
    """
    Skip the calling test module (at import) when L{browser_missing} says
    why the browser tests cannot run here.
    """
    import pytest

    missing = browser_missing()
    if missing:
        pytest.skip(f"browser tests need Playwright and Chromium: {missing}", allow_module_level=True)


@contextmanager
def launch_browser(playwright: Playwright) -> Iterator[Browser]:
    """
    Launch Debian's Chromium headless.  Playwright gives every launch a fresh
    user data folder of its own (and removes it on close); each test then
    opens its own context, so no state leaks between tests.
    """
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        timeout=60_000,
    )
    try:
        yield browser
    finally:
        browser.close()


@contextmanager
def start_inkflow(*args: str, timeout: float = 30.0) -> Iterator[ServerProcess]:
    """
    Run C{twistd -n inkflow} from this checkout on a free loopback port
    (C{tcp:0}, the port read from its log), wait until C{/api/health}
    answers, and stop it (SIGTERM) afterwards.
    """
    server = ServerProcess(*args)
    server.start(timeout=timeout)
    try:
        status, health = server.get_json("/api/health")
        if status != 200:
            raise AssertionError(f"/api/health answered {status}: {health!r}\n{server.output()}")
        yield server
    finally:
        server.stop()


# -- a fake n8n ---------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedFile:
    """
    One file part as the fake n8n received it.
    """

    field: str
    filename: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class ReceivedRequest:
    """
    One request as the fake n8n received it: JSON or multipart fields, files.
    """

    path: str
    headers: dict[str, str]
    fields: dict[str, Any]
    files: tuple[ReceivedFile, ...] = ()

    @property
    def chat_input(self) -> str | None:
        value = self.fields.get("chatInput")
        return value if isinstance(value, str) else None


def received_request(handler: BaseHTTPRequestHandler) -> ReceivedRequest:
    """
    The request C{handler} is serving, its body read and parsed.
    """
    fields, files = _parse(handler.headers.get("Content-Type", ""), _read_body(handler))
    return ReceivedRequest(handler.path, {k.lower(): v for k, v in handler.headers.items()}, fields, files)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _parse(content_type: str, body: bytes) -> tuple[dict[str, Any], tuple[ReceivedFile, ...]]:
    if content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1") + body
        )
        fields: dict[str, Any] = {}
        files: list[ReceivedFile] = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition") or ""
            filename = part.get_filename()
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            if filename is not None:
                files.append(ReceivedFile(str(name), filename, part.get_content_type(), data))
            else:
                fields[str(name)] = data.decode("utf-8")
        return fields, tuple(files)
    try:
        value = json.loads(body.decode("utf-8")) if body else {}
    except ValueError:
        value = {"_raw": body.decode("utf-8", "replace")}
    return (value if isinstance(value, dict) else {"_value": value}), ()


class FakeN8n(LoopbackHTTPServer):
    """
    A threaded stdlib HTTP server standing in for an n8n webhook, on a free
    loopback port.  Every POST is recorded; the answer is
    C{{"output": "n8n: <chatInput> (<n> files)"}}.

    A message starting with C{hold} waits until L{release} (at most
    C{hold_timeout} seconds), to keep InkFlow's only slot busy.
    """

    def __init__(self, hold_timeout: float = 30.0) -> None:
        self.requests: list[ReceivedRequest] = []
        self.hold_timeout = hold_timeout
        self._gate = threading.Event()
        self._changed = threading.Condition()
        fake = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                received = received_request(self)
                fields, files = received.fields, received.files
                fake._record(received)
                text = received.chat_input or ""
                if text.startswith("hold"):
                    fake._gate.wait(fake.hold_timeout)
                reply: dict[str, Any]
                if fields.get("action") == "loadPreviousSession":
                    reply = {"data": []}  # what n8n's Chat Trigger answers for a new session
                else:
                    reply = {"output": f"n8n: {text} ({len(files)} files)", "sessionId": fields.get("sessionId")}
                data = json.dumps(reply, ensure_ascii=False).encode("utf-8")
                self.send_whole(data, "application/json; charset=utf-8")

        super().__init__(Handler)

    def url(self, path: str = "/webhook/inkflow") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _record(self, request: ReceivedRequest) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def release(self) -> None:
        """
        Let every held request (and any later one) answer.
        """
        self._gate.set()

    def wait_for(self, predicate: Callable[[ReceivedRequest], bool], timeout: float = 15.0) -> ReceivedRequest:
        """
        Block until a request matching C{predicate} has arrived; return it.
        """
        found: list[ReceivedRequest] = []

        def ready() -> bool:
            found[:] = [r for r in self.requests if predicate(r)]
            return bool(found)

        with self._changed:
            if not self._changed.wait_for(ready, timeout):
                raise AssertionError(f"the fake n8n got no such request in {timeout}s: {self.requests!r}")
        return found[0]

    def with_input(self, text: str) -> list[ReceivedRequest]:
        with self._changed:
            return [r for r in self.requests if r.chat_input == text]

    def _stopping(self) -> None:
        self._gate.set()


# -- test files -----------------------------------------------------------------


def png_bytes(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (67, 56, 202)) -> bytes:
    """
    A small, valid PNG (a filled rectangle), so a type check on the bytes
    accepts it.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def artifact(name: str) -> Path:
    """
    A path under C{test-artifacts/} at the repository root (created).
    """
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]", "_", name)

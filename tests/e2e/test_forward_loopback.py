"""
End-to-end tests of the real L{Forwarder} and L{make_agent} against the
fake n8n, over loopback TCP on the real reactor (pytest + pytest-twisted).

Timeouts are small (a fraction of a second) so the suite stays fast.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor

from inkflow.chat import ChatMessage, UploadedFile
from inkflow.errors import ApiError
from inkflow.n8n.client import Forwarder, make_agent
from inkflow.settings import Settings
from tests.support.fake_n8n import (
    FakeN8n,
    empty,
    listen_fake_n8n,
    n8n_not_registered,
    reset,
    slow,
    status_reply,
)

reactor: Any = _reactor

#: Seconds: long enough for loopback, short enough for a fast suite.
ATTEMPT_TIMEOUT = 0.5


def free_port() -> int:
    """
    A loopback port nothing listens on (bound, then closed).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def message(request_id: str = "e2e-1", files: tuple[UploadedFile, ...] = ()) -> ChatMessage:
    return ChatMessage(
        request_id=request_id,
        session_id="session-e2e",
        action="sendMessage",
        text="שלום n8n",
        metadata={},
        files=files,
    )


class Env:
    """
    A fake n8n, and a Forwarder over a real pooled client aimed at it.
    """

    def __init__(
        self, paths: tuple[str, ...] = ("/webhook/a",), before: tuple[str, ...] = (), **overrides: Any
    ) -> None:
        self.fake: FakeN8n = listen_fake_n8n(reactor)
        webhooks = before + tuple(self.fake.url(p) for p in paths)
        values: dict[str, Any] = {
            "webhook": webhooks,
            "webhook_header": (("X-N8N-Key", "e2e-secret"),),
            "attempt_timeout": ATTEMPT_TIMEOUT,
            "request_timeout": 5.0,
        }
        values.update(overrides)
        self.settings = Settings.defaults(**values)
        self.agent, self.pool = make_agent(reactor, self.settings)
        self.forwarder = Forwarder(self.settings, self.agent, reactor, random=lambda: 0.2)

    async def forward(self, msg: ChatMessage | None = None, timeout: float = 3.0) -> Any:
        return await self.forwarder.forward(msg or message(), reactor.seconds() + timeout)

    async def close(self) -> None:
        await self.pool.closeCachedConnections()
        await self.fake.stop()


def write_upload(tmp_path: Any, name: str, data: bytes, content_type: str) -> UploadedFile:
    path = tmp_path / f"upload-{len(os.listdir(tmp_path))}"
    path.write_bytes(data)
    return UploadedFile(path=str(path), filename=name, content_type=content_type, size=len(data))


@pytest_twisted.ensureDeferred
async def test_failover_from_refused_port() -> None:
    """
    A refused connection on the first URL fails over to the second, which
    answers; the first never saw the request.
    """
    fake_path = "/webhook/b"
    env = Env(paths=(fake_path,), before=(f"http://127.0.0.1:{free_port()}/webhook/a",))
    try:
        result = await env.forward()
        assert result.url_index == 1
        assert result.attempts == 2
        assert result.body["output"] == "echo: שלום n8n"
        [received] = env.fake.requests
        assert received.path == fake_path
        assert received.header("x-request-id") == "e2e-1"
        assert received.header("x-n8n-key") == "e2e-secret"
        assert received.json["metadata"] == {"requestId": "e2e-1", "source": "inkflow"}
        assert env.forwarder.upstreams()[0]["failures_total"] == 1
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_no_retry_on_500() -> None:
    """
    n8n's 500 is final by default: 502 to the caller, the second URL untouched.
    """
    env = Env(paths=("/webhook/a", "/webhook/b"))
    try:
        env.fake.set_default("/webhook/a", status_reply(500, b'{"message":"Error in workflow"}'))
        with pytest.raises(ApiError) as caught:
            await env.forward()
        assert (caught.value.status, caught.value.code) == (502, "upstream_error")
        assert [r.path for r in env.fake.requests] == ["/webhook/a"]
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_503_exactly_retries_plus_one_attempts() -> None:
    """
    A webhook answering 503 gets exactly C{retries + 1} attempts, all with
    one Idempotency-Key.
    """
    env = Env(retries=2)
    try:
        env.fake.set_default("/webhook/a", status_reply(503, b'{"message":"busy"}'))
        with pytest.raises(ApiError) as caught:
            await env.forward()
        assert caught.value.code == "upstream_error"
        assert len(env.fake.requests) == 3
        keys = {r.header("idempotency-key") for r in env.fake.requests}
        assert len(keys) == 1 and None not in keys
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_404_fails_over() -> None:
    """
    n8n's 404 (webhook not registered) moves on to the next URL.
    """
    env = Env(paths=("/webhook/a", "/webhook/b"))
    try:
        env.fake.set_default("/webhook/a", n8n_not_registered("a"))
        result = await env.forward()
        assert result.url_index == 1
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_empty_200_is_502() -> None:
    """
    An empty 200 (workflow failed before its Respond node) is a 502, not
    retried.
    """
    env = Env(paths=("/webhook/a", "/webhook/b"))
    try:
        env.fake.set_default("/webhook/a", empty())
        with pytest.raises(ApiError) as caught:
            await env.forward()
        assert (caught.value.status, caught.value.code) == (502, "upstream_error")
        assert len(env.fake.requests) == 1
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_reset_before_headers_not_retried() -> None:
    """
    A connection dropped after the request was sent is a 502, not retried by
    default (the workflow may have run).
    """
    env = Env(paths=("/webhook/a", "/webhook/b"))
    try:
        env.fake.set_default("/webhook/a", reset())
        with pytest.raises(ApiError) as caught:
            await env.forward()
        assert caught.value.code == "upstream_error"
        assert len(env.fake.requests) == 1
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_slow_backend_times_out_by_the_deadline() -> None:
    """
    A backend slower than the deadline gives 504, and the caller has its
    answer by the deadline, not after.
    """
    env = Env(attempt_timeout=2.0, retry_on=("connect", "timeout"))
    try:
        env.fake.set_default("/webhook/a", slow(5.0))
        started = reactor.seconds()
        with pytest.raises(ApiError) as caught:
            await env.forward(timeout=0.3)
        elapsed = reactor.seconds() - started
        assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
        assert 0.28 <= elapsed < 0.5
        assert len(env.fake.requests) == 1
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_multipart_files_arrive_intact(tmp_path: Any) -> None:
    """
    Files reach n8n as C{files} parts with their Hebrew names, types and
    exact bytes, next to the text fields.
    """
    big = os.urandom(1_500_000)
    uploads = (
        write_upload(tmp_path, "דוח שנתי.pdf", big, "application/pdf"),
        write_upload(tmp_path, "תמונה.png", b"\x89PNG\r\n\x1a\n" + os.urandom(5000), "image/png"),
    )
    env = Env()
    try:
        result = await env.forward(message(files=uploads))
        [received] = env.fake.requests
        assert received.complete_multipart
        assert received.fields["chatInput"] == "שלום n8n"
        assert received.fields["sessionId"] == "session-e2e"
        assert received.fields["action"] == "sendMessage"
        assert received.fields["metadata"] == '{"requestId":"e2e-1","source":"inkflow"}'
        expected = [
            ("files", u.filename, u.content_type, u.size, hashlib.sha256(Path(u.path).read_bytes()).hexdigest())
            for u in uploads
        ]
        got = [(f.field, f.filename, f.content_type, f.size, f.sha256) for f in received.files]
        assert got == expected
        assert [f["filename"] for f in result.body["files"]] == ["דוח שנתי.pdf", "תמונה.png"]
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_files_reopened_on_retry(tmp_path: Any) -> None:
    """
    After a 503, the retry sends the files again in full.
    """
    data = os.urandom(300_000)
    uploads = (write_upload(tmp_path, "a.pdf", data, "application/pdf"),)
    env = Env(retries=1)
    try:
        env.fake.script("/webhook/a", status_reply(503))
        result = await env.forward(message(files=uploads))
        assert result.attempts == 2
        digest = hashlib.sha256(data).hexdigest()
        assert [[f.sha256 for f in r.files] for r in env.fake.requests] == [[digest], [digest]]
        assert all(r.complete_multipart for r in env.fake.requests)
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_big_answer_is_502() -> None:
    """
    An answer over the response cap is a 502.
    """
    env = Env()
    env.forwarder = Forwarder(env.settings, env.agent, reactor, max_response_bytes=64 * 1024)
    try:
        env.fake.set_default("/webhook/a", status_reply(200, b'"' + b"x" * 200_000 + b'"'))
        with pytest.raises(ApiError) as caught:
            await env.forward()
        assert caught.value.code == "upstream_error"
    finally:
        await env.close()

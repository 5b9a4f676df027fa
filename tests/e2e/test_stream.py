"""
End to end: streamed answers through the real server.

The fake n8n (this process's reactor) streams exactly as n8n 2.8.4 does, one
line per call of the test (L{tests.support.fake_n8n.FakeStream}): no timers,
no sleeps.  InkFlow is a real C{twistd -n inkflow} subprocess.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from tests.support.fake_n8n import FakeN8n, FakeStream, json_reply, status_reply
from tests.support.server import ServerProcess, multipart

reactor: Any = _reactor

NDJSON = "application/x-ndjson; charset=utf-8"
GUARD = 10.0  # seconds: a bound on every wait, never a pause
line = FakeStream.line

SERVER_ARGS = (
    "--rate-limit",
    "0",
    "--attempt-timeout",
    "1",
    "--request-timeout",
    "1.5",
    "--stream-idle-timeout",
    "1.5",
    "--max-concurrent",
    "4",
)


@pytest.fixture(scope="module")
def server(fake: FakeN8n, uploads: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        "--webhook",
        fake.url("/webhook/chat"),
        "--webhook",
        fake.url("/webhook/alt"),
        "--upload-dir",
        str(uploads),
        *SERVER_ARGS,
    ) as s:
        yield s


class Reader(Protocol):
    """
    Reads a streamed body: complete lines as they come, and how it ended.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.lines: list[bytes] = []
        self.raw = b""
        self.ended: Deferred[str] = Deferred()
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines.extend(complete)
        self._wake()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self.ended.callback("clean" if reason.check(ResponseDone) else f"failed: {reason.value!r}")
        self._wake(force=True)

    def _wake(self, force: bool = False) -> None:
        still = []
        for count, d in self._waiters:
            if len(self.lines) >= count or force:
                d.callback(None)
            else:
                still.append((count, d))
        self._waiters = still

    async def wait_lines(self, count: int) -> list[dict[str, Any]]:
        """
        Wait (bounded) until C{count} lines are in; return them parsed.
        """
        if len(self.lines) < count and not self.ended.called:
            d: Deferred[None] = Deferred()
            self._waiters.append((count, d))
            await d.addTimeout(GUARD, reactor)
        assert len(self.lines) >= count, (self.lines, self.buffer)
        return [json.loads(x) for x in self.lines]

    async def end(self) -> str:
        return await self.ended.addTimeout(GUARD, reactor)

    def leave(self) -> None:
        transport: Any = self.transport
        transport.stopProducing()


async def open_stream(
    server: ServerProcess,
    value: Any = None,
    accept: str = "text/plain",
    body: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[Any, Reader]:
    data = body if body is not None else json.dumps(value or {"message": "שלום", "sessionId": "s-1"}).encode()
    response = await treq.post(
        server.url("/api/chat"),
        data=data,
        headers=cast(Any, {"Content-Type": content_type, "Accept": accept}),
        unbuffered=True,
        persistent=False,
    )
    reader = Reader()
    response.deliverBody(reader)
    return response, reader


async def post_json(server: ServerProcess, value: Any) -> tuple[int, Any, Any]:
    """
    A JSON client (without blocking the reactor the fake n8n runs in).
    """
    response = await treq.post(
        server.url("/api/chat"),
        data=json.dumps(value).encode(),
        headers=cast(Any, {"Content-Type": "application/json"}),
        persistent=False,
    )
    return response.code, response.headers, json.loads(await response.content())


def health(server: ServerProcess) -> dict[str, Any]:
    return server.get_json("/api/health")[1]


async def settled_health(server: ServerProcess) -> dict[str, Any]:
    """
    Health once the stream under test has ended: InkFlow releases the slot
    in the same callback that ends the stream (before the client sees the
    end, or n8n the close), so one look suffices; no polling.
    """
    snapshot = health(server)
    assert snapshot["streams"]["in_flight"] == 0, snapshot["streams"]
    assert snapshot["queue"]["in_flight"] == 0, snapshot["queue"]
    return snapshot


@pytest_twisted.ensureDeferred
async def test_lines_pass_through_unchanged_as_they_come(server: ServerProcess, fake: FakeN8n) -> None:
    """
    Each of n8n's lines reaches the client as soon as n8n sends it, byte for
    byte, with the streaming headers; the end comes when n8n closes.
    """
    stream = fake.stream("/webhook/chat")
    stream.send_line("begin", node="agent")
    response, reader = await open_stream(server)
    assert response.code == 200
    headers = response.headers
    assert headers.getRawHeaders("Content-Type") == [NDJSON]
    assert headers.getRawHeaders("Cache-Control") == ["no-store"]
    assert headers.getRawHeaders("X-Accel-Buffering") == ["no"]
    # (Twisted's client hides Transfer-Encoding; the raw client below sees the chunked end.)
    assert headers.getRawHeaders("X-Request-ID")
    assert headers.getRawHeaders("X-Session-ID") == ["s-1"]
    assert headers.getRawHeaders("Content-Length") is None
    await reader.wait_lines(1)
    for i, word in enumerate(["שלום", " ", "עולם"]):
        stream.send_line("item", word, node="agent")
        await reader.wait_lines(2 + i)  # this one is in before the next is sent
    stream.send_line("end", node="agent")
    await reader.wait_lines(5)
    # A delay between "end" and the close: the body is still open.
    assert not reader.ended.called
    stream.finish()
    assert await reader.end() == "clean"
    expected = (
        line("begin", node="agent")
        + b"".join(line("item", w, node="agent") for w in ["שלום", " ", "עולם"])
        + line("end", node="agent")
    )
    assert reader.raw == expected
    # One access log line at the end, with the bytes and the duration.
    server.wait_for(rf"POST /api/chat 200 {len(expected)} stream \d+\.\d+s", timeout=GUARD)


@pytest_twisted.ensureDeferred
async def test_lines_and_characters_cut_across_chunks(server: ServerProcess, fake: FakeN8n) -> None:
    """
    n8n's chunks cut a line, and a Hebrew character, in two: the client gets
    the line whole and unchanged.
    """
    stream = fake.stream("/webhook/chat")
    first = line("begin")
    stream.send_raw(first[:5])
    stream.send_raw(first[5:])
    _, reader = await open_stream(server, accept="application/x-ndjson")
    await reader.wait_lines(1)
    item = line("item", "אבגד")
    cut = item.index("ג".encode()) + 1
    stream.send_raw(item[:cut])
    stream.send_raw(item[cut:] + line("end")[:3])
    await reader.wait_lines(2)
    stream.send_raw(line("end")[3:])
    stream.finish()
    assert await reader.end() == "clean"
    assert reader.raw == first + item + line("end")


@pytest_twisted.ensureDeferred
async def test_several_nodes_and_interleaved_runs(server: ServerProcess, fake: FakeN8n) -> None:
    """
    Interleaved node runs pass through in n8n's order to a streaming client;
    a JSON client of the same workflow gets the items joined per run.
    """
    script = [
        ("begin", None, "a", 0),
        ("item", "A0-1 ", "a", 0),
        ("begin", None, "b", 0),
        ("item", "B0", "b", 0),
        ("item", "A0-2", "a", 0),
        ("begin", None, "a", 1),
        ("item", "A1", "a", 1),
        ("end", None, "b", 0),
        ("end", None, "a", 0),
        ("end", None, "a", 1),
    ]
    stream = fake.stream("/webhook/chat")
    for kind, content, node, run in script:
        stream.send_line(kind, content, node=node, run=run)
    stream.finish()
    _, reader = await open_stream(server)
    assert await reader.end() == "clean"
    assert reader.raw == b"".join(line(k, c, node=n, run=r) for k, c, n, r in script)

    stream = fake.stream("/webhook/chat")
    for kind, content, node, run in script:
        stream.send_line(kind, content, node=node, run=run)
    stream.finish()
    status, _, body = await post_json(server, {"message": "hi", "sessionId": "s-2"})
    assert status == 200
    assert body == {"output": "A0-1 A0-2\n\nB0\n\nA1"}


@pytest_twisted.ensureDeferred
async def test_json_client_of_a_streaming_workflow_gets_a_generated_session(
    server: ServerProcess, fake: FakeN8n
) -> None:
    """
    Bridging keeps the JSON path's rule: a generated sessionId is added.
    """
    stream = fake.stream("/webhook/chat")
    stream.send_line("begin")
    stream.send_line("item", "תשובה")
    stream.send_line("end")
    stream.finish()
    status, headers, body = await post_json(server, {"message": "hi"})
    assert status == 200
    assert body["output"] == "תשובה"
    assert [body["sessionId"]] == headers.getRawHeaders("X-Session-ID")


@pytest_twisted.ensureDeferred
async def test_streaming_client_of_a_json_workflow(server: ServerProcess, fake: FakeN8n) -> None:
    """
    A JSON answer is synthesized as begin / item / end for a streaming client.
    """
    fake.script("/webhook/chat", json_reply({"output": "מ-JSON"}))
    response, reader = await open_stream(server)
    assert response.headers.getRawHeaders("Content-Type") == [NDJSON]
    assert await reader.end() == "clean"
    lines = await reader.wait_lines(3)
    assert [x["type"] for x in lines] == ["begin", "item", "end"]
    assert lines[1]["content"] == "מ-JSON"
    assert lines[1]["metadata"]["nodeId"] == "inkflow"


@pytest_twisted.ensureDeferred
async def test_multipart_streams_too(server: ServerProcess, fake: FakeN8n) -> None:
    """
    A message with a file and C{Accept: text/plain} streams the same way,
    and n8n gets the file.
    """
    stream = fake.stream("/webhook/chat")
    stream.send_line("begin")
    stream.send_line("item", "קיבלתי")
    stream.send_line("end")
    stream.finish()
    body, content_type = multipart(
        {"message": "קובץ", "sessionId": "s-3"}, [("files", "note.txt", "text/plain", b"hello " * 100)]
    )
    _, reader = await open_stream(server, body=body, content_type=content_type)
    assert await reader.end() == "clean"
    lines = await reader.wait_lines(3)
    assert lines[1]["content"] == "קיבלתי"
    sent = fake.requests_for("/webhook/chat")[-1]
    assert sent.files and sent.files[0].size == 600


@pytest_twisted.ensureDeferred
async def test_empty_stream_is_the_empty_answer_502(server: ServerProcess, fake: FakeN8n) -> None:
    """
    A streamed 200 with no line: 502 upstream_error with its JSON body, for
    both kinds of client.
    """
    fake.stream("/webhook/chat").finish()
    response, reader = await open_stream(server)
    assert response.code == 502
    await reader.end()
    assert json.loads(reader.raw)["error"]["code"] == "upstream_error"
    fake.stream("/webhook/chat").finish()
    status, _, body = await post_json(server, {"message": "hi"})
    assert status == 502 and body["error"]["code"] == "upstream_error"


@pytest_twisted.ensureDeferred
async def test_failover_before_the_first_byte(server: ServerProcess, fake: FakeN8n) -> None:
    """
    503 at the first URL, a stream at the next: the client gets the stream.
    """
    before = len(fake.requests_for("/webhook/chat"))
    fake.script("/webhook/chat", status_reply(503))
    stream = fake.stream("/webhook/alt")
    stream.send_line("begin", node="alt")
    stream.send_line("item", "מהשני", node="alt")
    stream.send_line("end", node="alt")
    stream.finish()
    _, reader = await open_stream(server)
    assert await reader.end() == "clean"
    lines = await reader.wait_lines(3)
    assert lines[1]["content"] == "מהשני"
    assert len(fake.requests_for("/webhook/chat")) == before + 1
    assert len(fake.requests_for("/webhook/alt")) >= 1


@pytest_twisted.ensureDeferred
async def test_reset_mid_stream_is_an_error_line_and_a_clean_end(server: ServerProcess, fake: FakeN8n) -> None:
    """
    n8n drops the connection after the commit: no retry, no failover; the
    client gets one error line and a clean chunked end; the breaker counts it.
    """
    before_chat = len(fake.requests_for("/webhook/chat"))
    before_alt = len(fake.requests_for("/webhook/alt"))
    stream = fake.stream("/webhook/chat")
    stream.send_line("begin")
    stream.send_line("item", "חצי")
    _, reader = await open_stream(server)
    await reader.wait_lines(2)
    stream.send_raw(line("item", "never")[:10])
    stream.reset()
    assert await reader.end() == "clean"
    lines = await reader.wait_lines(3)
    assert [x["type"] for x in lines] == ["begin", "item", "error"]
    assert lines[2]["metadata"]["nodeId"] == "inkflow"
    assert lines[2]["content"]
    assert len(fake.requests_for("/webhook/chat")) == before_chat + 1
    assert len(fake.requests_for("/webhook/alt")) == before_alt
    snapshot = await settled_health(server)
    assert snapshot["upstreams"][0]["consecutive_failures"] >= 1


@pytest_twisted.ensureDeferred
async def test_silence_is_an_idle_timeout_error_line(server: ServerProcess, fake: FakeN8n) -> None:
    """
    n8n goes quiet after the commit: after --stream-idle-timeout an error
    line, a clean end, and n8n's connection is closed.
    """
    stream = fake.stream("/webhook/chat")
    stream.send_line("begin")
    _, reader = await open_stream(server)
    assert await reader.end() == "clean"
    lines = await reader.wait_lines(2)
    assert lines[-1]["type"] == "error"
    assert await stream.closed.addTimeout(GUARD, reactor) == "lost"


@pytest_twisted.ensureDeferred
async def test_over_long_line_is_an_error_line(server: ServerProcess, fake: FakeN8n) -> None:
    """
    A line over the 1 MiB line cap: an error line and a clean end, not a crash.
    """
    stream = fake.stream("/webhook/chat")
    stream.send_line("begin")
    _, reader = await open_stream(server)
    await reader.wait_lines(1)
    stream.send_raw(b'{"type":"item","content":"' + b"x" * (1024 * 1024 + 10))
    assert await reader.end() == "clean"
    lines = await reader.wait_lines(2)
    assert [x["type"] for x in lines] == ["begin", "error"]
    assert await stream.closed.addTimeout(GUARD, reactor) == "lost"
    status, _ = server.get_json("/api/health")
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_committed_stream_outlives_the_request_timeout(server: ServerProcess, fake: FakeN8n) -> None:
    """
    --request-timeout (1.5 s here) stops counting at the commit: a stream that
    keeps flowing for longer is not cut.
    """
    stream = fake.stream("/webhook/chat")
    stream.send_line("begin")
    _, reader = await open_stream(server)
    await reader.wait_lines(1)
    started = reactor.seconds()
    count = 1
    # Driven line by line (each one waits for the previous to arrive): no sleep.
    while reactor.seconds() - started < 2.5 and count < 100_000:
        stream.send_line("item", f"{count} ")
        count += 1
        await reader.wait_lines(count)
    stream.send_line("end")
    stream.finish()
    assert await reader.end() == "clean"
    lines = await reader.wait_lines(count + 1)
    assert lines[-1]["type"] == "end"
    assert all(x["type"] != "error" for x in lines)


@pytest_twisted.ensureDeferred
async def test_client_that_leaves_frees_n8n_and_its_slot(server: ServerProcess, fake: FakeN8n) -> None:
    """
    The client closes mid-stream: n8n's connection is closed within 1 s, the
    slot is free and the stream counted as client_left.
    """
    stream = fake.stream("/webhook/chat")
    stream.send_line("begin")
    _, reader = await open_stream(server)
    await reader.wait_lines(1)
    assert health(server)["streams"]["in_flight"] == 1
    left = reactor.seconds()
    reader.leave()
    assert await stream.closed.addTimeout(1.0, reactor) == "lost"
    assert reactor.seconds() - left < 1.0
    snapshot = await settled_health(server)
    assert snapshot["streams"]["in_flight"] == 0
    assert snapshot["queue"]["in_flight"] == 0
    _, _, metrics = server.request("GET", "/metrics")
    assert b'inkflow_stream_endings_total{cause="client_left"}' in metrics


class PausedClient(Protocol):
    """
    A raw HTTP client that stops reading after the first bytes.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.got_some: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.got_some.called and b"\r\n\r\n" in self.data:
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.got_some.callback(None)
        if self.data.endswith(b"0\r\n\r\n"):
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(None)


@pytest_twisted.ensureDeferred
async def test_slow_reader_pauses_n8n(server: ServerProcess, fake: FakeN8n) -> None:
    """
    A client that stops reading: InkFlow stops reading n8n (the fake's writes
    get paused) instead of buffering; when the client reads again every line
    arrives, unchanged.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    stream = fake.stream("/webhook/chat")
    stream.send_line("begin")
    body = json.dumps({"message": "slow", "sessionId": "s-slow"}).encode()
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    client = PausedClient(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), client)
    await client.got_some.addTimeout(GUARD, reactor)
    chunk = line("item", "x" * 60_000)
    sent = 0
    while not stream.is_paused and sent < 2000:
        stream.send_raw(chunk)
        sent += 1
        await deferLater(reactor, 0, lambda: None)  # let the bytes move
    assert stream.is_paused, "n8n's side was never paused"
    assert sent < 2000
    stream.send_line("end")
    stream.finish()
    client.transport.resumeProducing()  # type: ignore[union-attr]
    await client.done.addTimeout(GUARD, reactor)
    # Every line made it, in order, from the chunked body.
    assert client.data.count(b'"type":"item"') == sent
    assert client.data.count(b'"type":"end"') == 1
    assert b'"type":"error"' not in client.data


@pytest_twisted.ensureDeferred
async def test_errors_before_the_commit_keep_their_status(server: ServerProcess, fake: FakeN8n) -> None:
    """
    What InkFlow decides itself before the commit (here a 400) is the JSON
    error with its status, for a streaming client too.
    """
    response, reader = await open_stream(server, value={"sessionId": "s"})
    assert response.code == 400
    await reader.end()
    assert json.loads(reader.raw)["error"]["code"] == "bad_request"


@pytest_twisted.ensureDeferred
async def test_demo_mode_streams_a_synthesized_answer(fake: FakeN8n, uploads: Path) -> None:
    """
    Without a webhook the demo responder's answer is synthesized as begin /
    item / end for a streaming client.
    """
    s = ServerProcess("--upload-dir", str(uploads), *SERVER_ARGS).start()
    try:
        response, reader = await open_stream(s)
        assert response.headers.getRawHeaders("Content-Type") == [NDJSON]
        assert await reader.end() == "clean"
        lines = await reader.wait_lines(3)
        assert [x["type"] for x in lines] == ["begin", "item", "end"]
        assert "שלום" in lines[1]["content"]
    finally:
        s.stop()


@pytest_twisted.ensureDeferred
async def test_drain_ends_streams_with_an_error_line(fake: FakeN8n, uploads: Path) -> None:
    """
    SIGTERM: a stream keeps going until --drain-timeout, then gets an error
    line and a clean end (never a reset), and the server exits.
    """
    s = ServerProcess(
        "--webhook", fake.url("/webhook/drain"), "--upload-dir", str(uploads), "--drain-timeout", "1", *SERVER_ARGS
    ).start()
    try:
        stream = fake.stream("/webhook/drain")
        stream.send_line("begin")
        _, reader = await open_stream(s)
        await reader.wait_lines(1)
        s.send_signal(signal.SIGTERM)
        s.wait_for("Draining", timeout=GUARD)
        stream.send_line("item", "עדיין")
        await reader.wait_lines(2)
        assert await reader.end() == "clean"
        lines = await reader.wait_lines(3)
        assert [x["type"] for x in lines] == ["begin", "item", "error"]
        assert await stream.closed.addTimeout(GUARD, reactor) == "lost"
    finally:
        s.stop()

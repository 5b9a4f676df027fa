"""
End to end: what n8n 2.41 does differently (docs/n8n.md, "n8n 2.41"), through
a real C{twistd -n inkflow}, with the fake n8n playing 2.41.3 (or both
releases): a chunk per node run, n8n's own keepalive lines, the 500 of a
workflow failing before its Respond node, the C{resumeToken} of the C{/chat}
socket; and a JSON client of a long stream (past C{--attempt-timeout} and
C{--request-timeout}), paced by the test through the reactor, never a sleep.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater

from tests.e2e.test_stream import GUARD, open_stream, post_json
from tests.e2e.test_websocket import open_socket
from tests.support.fake_n8n import (
    N8N_2_8,
    N8N_2_41,
    N8N_KEEPALIVE,
    FakeN8n,
    FakeStream,
    json_reply,
    workflow_failed,
)
from tests.support.fake_n8n_ws import REJECTED_TEXT, ChatSockets, install_chat_sockets
from tests.support.server import ServerProcess

reactor: Any = _reactor
line = FakeStream.line

#: Small deadlines so that a "long" stream takes seconds: the steps of the
#: paced stream (STEP) are under the idle timeout, its length over the
#: attempt and request timeouts.
ATTEMPT_TIMEOUT = 1.0
REQUEST_TIMEOUT = 1.5
IDLE_TIMEOUT = 1.5
STEP = 0.5


@pytest.fixture(scope="module")
def sockets(fake: FakeN8n) -> ChatSockets:
    return install_chat_sockets(fake, version=N8N_2_41)


@pytest.fixture(scope="module")
def server(fake: FakeN8n, sockets: ChatSockets, uploads: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        "--webhook",
        fake.url("/webhook/chat"),
        "--upload-dir",
        str(uploads),
        "--rate-limit",
        "0",
        "--attempt-timeout",
        str(ATTEMPT_TIMEOUT),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--stream-idle-timeout",
        str(IDLE_TIMEOUT),
        "--stream-timeout",
        "30",
    ) as s:
        yield s


def step() -> Any:
    """The test's pace between two of n8n's writes: a reactor timer, not a sleep."""
    return deferLater(reactor, STEP, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_chunk_per_node_run_reaches_a_streaming_client_line_by_line(
    server: ServerProcess, fake: FakeN8n
) -> None:
    """
    2.41 writes each node run (begin, items, end) as one chunk, and its own
    keepalive line: the streaming client gets every line unchanged, in
    order, with InkFlow's stream headers (not n8n's C{no-transform}).
    """
    stream = fake.stream("/webhook/chat", version=N8N_2_41)
    stream.send_run(["שלום", " עולם"], node="a")
    stream.send_keepalive()
    stream.send_run(["B"], node="b")
    stream.finish()
    response, reader = await open_stream(server)
    assert await reader.end() == "clean"
    assert response.code == 200
    assert response.headers.getRawHeaders("Cache-Control") == ["no-store"]
    assert len(stream.chunks) == 3 and stream.chunks[0].count(b"\n") == 4  # one chunk, four lines
    assert reader.raw == b"".join(stream.chunks)
    lines = await reader.wait_lines(8)
    kinds = ["begin", "item", "item", "end", "keepalive", "begin", "item", "end"]
    assert [x["type"] for x in lines] == kinds


@pytest_twisted.ensureDeferred
async def test_n8n_keepalive_lines_pass_through_as_they_come(server: ServerProcess, fake: FakeN8n) -> None:
    """
    n8n's keepalive line reaches a streaming client as soon as n8n writes
    it (before the rest of the answer), byte for byte.
    """
    stream = fake.stream("/webhook/chat", version=N8N_2_41)
    stream.send_run(["לפני"], node="a")
    _, reader = await open_stream(server)
    await reader.wait_lines(3)
    stream.send_keepalive()
    await reader.wait_lines(4)
    assert reader.lines[3] + b"\n" == N8N_KEEPALIVE
    stream.send_run(["אחרי"], node="a", run=1)
    stream.finish()
    assert await reader.end() == "clean"
    assert reader.raw == b"".join(stream.chunks)


@pytest_twisted.ensureDeferred
async def test_json_client_of_241_framing_gets_the_runs_joined(server: ServerProcess, fake: FakeN8n) -> None:
    """
    A JSON client of the same 2.41 stream: the runs joined, n8n's keepalive
    lines not part of the answer.
    """
    stream = fake.stream("/webhook/chat", version=N8N_2_41)
    stream.send_keepalive()
    stream.send_run(["שלום", " עולם"], node="a")
    stream.send_keepalive()
    stream.send_run(["B"], node="b")
    stream.finish()
    status, _, body = await post_json(server, {"message": "hi", "sessionId": "s-241"})
    assert status == 200, body
    assert body == {"output": "שלום עולם\n\nB"}


@pytest.mark.parametrize("version", [N8N_2_8, N8N_2_41])
@pytest_twisted.ensureDeferred
async def test_a_long_stream_is_answered_in_full_to_a_json_client(
    server: ServerProcess, fake: FakeN8n, version: str
) -> None:
    """
    Lines every STEP seconds for six steps (3 s: past --attempt-timeout, 1 s,
    and --request-timeout, 1.5 s, each step under --stream-idle-timeout):
    the JSON client gets the whole answer. In 2.41's framing the quiet spells
    carry n8n's keepalive lines, which count as progress.
    """
    stream = fake.stream("/webhook/chat", version=version)
    stream.send_line("begin", node="agent")
    answer = ensureDeferred(post_json(server, {"message": "ארוך", "sessionId": "long-" + version.replace(".", "-")}))
    await stream.arrived.addTimeout(GUARD, reactor)
    words = ["אחת ", "שתיים ", "שלוש ", "ארבע ", "חמש ", "שש"]
    for i, word in enumerate(words):
        await step()
        if version == N8N_2_41 and i % 2 == 0:
            stream.send_keepalive()
            await step()
        stream.send_line("item", word, node="agent")
    stream.send_line("end", node="agent")
    stream.finish()
    status, _, body = await answer
    assert status == 200, body
    assert body == {"output": "".join(words)}


@pytest_twisted.ensureDeferred
async def test_silence_after_the_first_line_is_a_504_for_a_json_client(server: ServerProcess, fake: FakeN8n) -> None:
    """
    After n8n's first line, --stream-idle-timeout without a byte ends the
    wait: 504 upstream_timeout, and InkFlow drops n8n's connection.
    """
    stream = fake.stream("/webhook/chat", version=N8N_2_41)
    stream.send_run(["חצי"], node="a")
    status, _, body = await post_json(server, {"message": "hi", "sessionId": "s-idle"})
    assert status == 504 and body["error"]["code"] == "upstream_timeout"
    assert await stream.closed.addTimeout(GUARD, reactor) == "lost"


@pytest.mark.parametrize("version", [N8N_2_8, N8N_2_41])
@pytest_twisted.ensureDeferred
async def test_workflow_failing_before_its_respond_node(server: ServerProcess, fake: FakeN8n, version: str) -> None:
    """
    2.8.4's empty 200 and 2.41's 500 {"message":"Error in workflow"} are both
    InkFlow's documented 502 upstream_error, for a JSON and for a streaming
    client, and neither is retried (n8n ran the workflow).
    """
    before = len(fake.requests_for("/webhook/chat"))
    fake.script("/webhook/chat", workflow_failed(version), workflow_failed(version))
    status, _, body = await post_json(server, {"message": "hi", "sessionId": "s-fail"})
    assert status == 502 and body["error"]["code"] == "upstream_error", body
    assert body["message"]
    response, reader = await open_stream(server)
    assert response.code == 502
    await reader.end()
    assert json.loads(reader.raw)["error"]["code"] == "upstream_error"
    assert len(fake.requests_for("/webhook/chat")) == before + 2


@pytest_twisted.ensureDeferred
async def test_resume_token_reaches_the_widget_and_n8n_socket(
    server: ServerProcess, fake: FakeN8n, sockets: ChatSockets
) -> None:
    """
    2.41's executionStarted answer keeps its resumeToken through InkFlow, and
    a socket opened with it (as the widget opens it) is relayed to n8n with
    the query unchanged.
    """
    started = sockets.start_execution("241")
    fake.script("/webhook/chat", json_reply(started))
    response = await treq.post(
        server.url("/api/chat"), json={"action": "sendMessage", "sessionId": "ws-241", "chatInput": "start"}
    )
    assert await response.json() == started
    token = started["resumeToken"]
    client = await open_socket(server, f"sessionId=ws-241&executionId=241&isPublic=true&token={token}")
    conn = await sockets.next_connection().addTimeout(GUARD, reactor)
    assert conn.query == {"sessionId": "ws-241", "executionId": "241", "isPublic": "true", "token": token}
    client.send("שלום")
    assert await client.next_message() == "n8n: שלום"
    client.wire.close(1000)
    await conn.lost.addTimeout(GUARD, reactor)


@pytest_twisted.ensureDeferred
async def test_socket_without_the_token_is_rejected_as_n8n_rejects_it(
    server: ServerProcess, fake: FakeN8n, sockets: ChatSockets
) -> None:
    """
    Without C{&token=}, n8n 2.41 opens the socket, says "Connection
    rejected" and closes with 1008: the browser's side gets both.
    """
    started = sockets.start_execution("242")
    fake.script("/webhook/chat", json_reply(started))
    response = await treq.post(
        server.url("/api/chat"), json={"action": "sendMessage", "sessionId": "ws-242", "chatInput": "start"}
    )
    assert (await response.json())["executionId"] == "242"
    rejected = len(sockets.rejected)
    client = await open_socket(server, "sessionId=ws-242&executionId=242&isPublic=true")
    assert await client.next_message() == REJECTED_TEXT
    assert await client.lost.addTimeout(GUARD, reactor) == 1008
    assert len(sockets.rejected) == rejected + 1

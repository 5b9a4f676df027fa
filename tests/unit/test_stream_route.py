"""
A streamed answer at the chat route, through the real site: what holds
while n8n's stream is relayed (the queue slot, the C{Idempotency-Key} in
progress), what the stream's end gives back, and what a committed stream
keeps alive (at 2,000 open streams, every object a stream holds is 2,000
objects).
"""

from __future__ import annotations

import gc
import inspect
import json
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

import inkflow
from inkflow.chat import ChatMessage
from inkflow.n8n.stream import COMPLETE, UPSTREAM_DROPPED, StreamStart
from tests.unit.test_routes import FakeForwarder, make_app


def line(kind: str, content: str = "") -> bytes:
    return json.dumps({"type": kind, "content": content, "metadata": {"nodeId": "n1", "runIndex": 0}}).encode()


class FakeStreamBody:
    """
    n8n's live body as the relay sees it (L{inkflow.web.stream.UpstreamBody}),
    driven by the test: C{send} lines, C{end} the stream.
    """

    def __init__(self) -> None:
        self.sink: Any = None
        self.pending = [line("begin")]
        self.aborted = False

    def attach(self, sink: Any) -> None:
        self.sink = sink
        pending, self.pending = self.pending, []
        sink.lines(pending)

    def detach(self) -> None:
        self.sink = None

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def send(self, *lines: bytes) -> None:
        self.sink.data_arrived()
        self.sink.lines(list(lines))

    def end(self, cause: str = COMPLETE) -> None:
        self.sink.ended(cause)


class StreamingForwarder(FakeForwarder):
    """
    Answers a streaming client with a stream (a new L{FakeStreamBody} each
    time), a JSON client as L{FakeForwarder} does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[FakeStreamBody] = []
        self.dropped: list[str] = []

    def forward(self, message: ChatMessage, deadline: float, *, stream: bool = False) -> defer.Deferred[Any]:
        if not stream:
            return super().forward(message, deadline)
        self.messages.append(message)
        body = FakeStreamBody()
        self.bodies.append(body)
        return defer.succeed(StreamStart(body=body, attempts=1, url_index=0, dropped=self.dropped.append))


_INKFLOW = str(Path(inkflow.__file__).parent)


def live_inkflow_coroutines() -> list[str]:
    """
    The names of InkFlow's coroutines that have not finished.
    """
    gc.collect()
    return sorted(
        o.cr_code.co_qualname
        for o in gc.get_objects()
        if inspect.iscoroutine(o) and o.cr_frame is not None and o.cr_code.co_filename.startswith(_INKFLOW)
    )


class CommittedStreamTests(TestCase):
    """
    A committed stream relays on its own: the chat route's coroutines have
    returned, and its end does what their ends did.
    """

    def setUp(self) -> None:
        self.forwarder = StreamingForwarder()
        self.app, self.stub = make_app(self, self.forwarder)
        self.queue = self.app.chat_handler.queue

    def open(self, key: str | None = None, message: str = "hi") -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.successResultOf(
            self.stub.post(
                "http://inkflow.test/api/chat",
                data=json.dumps({"message": message, "sessionId": "s-1"}).encode(),
                headers=headers,
            )
        )

    def test_a_committed_stream_keeps_none_of_the_routes_coroutines(self) -> None:
        """
        Once the stream is committed, the chat route's coroutines (the
        route, the idempotency wrapper, the answer, the relay's wait) have
        returned: only the relay and its Deferred live as long as the stream.
        """
        before = live_inkflow_coroutines()
        response = self.open(key="k-1")
        self.assertEqual(response.code, 200)
        self.assertEqual(live_inkflow_coroutines(), before)
        content = response.content()
        self.forwarder.bodies[0].end()
        self.stub.flush()
        self.assertEqual(self.successResultOf(content), line("begin") + b"\n")

    def test_lines_go_out_and_the_end_finishes_the_request_and_frees_the_slot(self) -> None:
        """
        Lines reach the client as they come; the stream's end finishes the
        request, gives the queue slot back and ends no stream twice.
        """
        response = self.open()
        content = response.content()
        body = self.forwarder.bodies[0]
        self.assertEqual(self.queue.in_flight, 1)
        body.send(line("item", "שלום"), line("item", "!"))
        body.send(line("end"))
        self.assertNoResult(content)
        body.end()
        self.stub.flush()
        self.assertEqual(
            self.successResultOf(content).split(b"\n"),
            [line("begin"), line("item", "שלום"), line("item", "!"), line("end"), b""],
        )
        self.assertEqual(self.queue.in_flight, 0)
        self.assertEqual(self.app.chat_handler.streams.registry.endings[COMPLETE], 1)

    def test_a_key_is_in_progress_until_its_stream_ends(self) -> None:
        """
        While a stream under an C{Idempotency-Key} is relayed, the same key is
        409 C{in_progress}; once it ended, nothing was stored and the key
        leads again.
        """
        first = self.open(key="k-1")
        content = first.content()
        again = self.open(key="k-1")
        self.assertEqual(again.code, 409)
        self.assertEqual(json.loads(self.successResultOf(again.content()))["error"]["code"], "in_progress")
        self.forwarder.bodies[0].end()
        self.stub.flush()
        self.successResultOf(content)
        self.assertEqual(self.open(key="k-1").code, 200)
        self.assertEqual(len(self.forwarder.messages), 2)

    def test_a_client_that_leaves_aborts_n8n_and_gives_back_the_slot_and_the_key(self) -> None:
        """
        A client that leaves mid-stream: n8n's side is aborted, the slot and
        the key are given back, nothing is written after.
        """
        self.open(key="k-1")
        body = self.forwarder.bodies[0]
        self.stub.disconnect()
        self.assertTrue(body.aborted)
        self.assertIsNone(body.sink)
        self.assertEqual(self.queue.in_flight, 0)
        self.assertEqual(self.app.chat_handler.streams.registry.in_flight, 0)
        self.assertEqual(self.open(key="k-1").code, 200)

    def test_n8n_dropping_the_stream_counts_against_its_url(self) -> None:
        """
        n8n dropping a committed stream: an error line and a clean end for the
        client, the drop told to the URL's breaker, the slot given back.
        """
        response = self.open()
        content = response.content()
        self.forwarder.bodies[0].end(UPSTREAM_DROPPED)
        self.stub.flush()
        lines = self.successResultOf(content).split(b"\n")
        self.assertEqual(json.loads(lines[1])["type"], "error")
        self.assertEqual(self.forwarder.dropped, ["n8n dropped the stream"])
        self.assertEqual(self.queue.in_flight, 0)

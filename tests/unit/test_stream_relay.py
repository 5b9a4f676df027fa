"""
Tests for streamed answers with Twisted, reactor-free: the Forwarder's
commit rules (L{inkflow.n8n.client}), the body opening and the relay
(L{inkflow.n8n.relay}), on a L{Clock} with in-memory transports.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from inkflow.errors import ApiError
from inkflow.n8n.client import ForwardResult, StreamStart
from inkflow.n8n.relay import StreamBody
from inkflow.n8n.stream import ERROR_TEXT, KEEPALIVE_LINE
from inkflow.web.stream import KEEPALIVE_AFTER, StreamRegistry, StreamRelay
from tests.unit.helpers import collector_off
from tests.unit.test_forward import URL_A, URL_B, Call, ForwarderTestsMixin, respond

N8N_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-cache"}


def line(kind: str, content: str | None = None, node: str = "n1", run: int = 0) -> bytes:
    value: dict[str, Any] = {"type": kind}
    if content is not None:
        value["content"] = content
    value["metadata"] = {"nodeId": node, "nodeName": node, "itemIndex": 0, "runIndex": run, "timestamp": 1}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class StreamTransport:
    """
    The transport a body protocol gets (like twisted.web's
    C{TransportProxyProducer}): pause, resume, stop.
    """

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IResponse)
class StreamResponse:
    """
    A 200 whose body the test drives: L{send}, L{end}, L{drop}.
    """

    version = (b"HTTP", 1, 1)
    previousResponse = None
    request = None
    length = UNKNOWN_LENGTH

    def __init__(self, code: int = 200, headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.phrase = b"OK"
        self.headers = Headers({k: [v] for k, v in (headers or N8N_HEADERS).items()})
        self.transport = StreamTransport()
        self.protocol: Any = None
        self._early: list[bytes] = []

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        early, self._early = self._early, []
        for data in early:
            protocol.dataReceived(data)

    def send(self, data: bytes) -> None:
        if self.protocol is None:
            self._early.append(data)
        else:
            self.protocol.dataReceived(data)

    def end(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))

    def drop(self) -> None:
        self.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))

    def setPreviousResponse(self, response: Any) -> None:
        pass


def streaming(response: StreamResponse) -> Any:
    def handle(call: Call) -> Deferred[Any]:
        call.response = response
        return succeed(response)

    return handle


@implementer(IConsumer)
class FakeRequest:
    """
    What the relay writes to: a consumer.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.unregistered = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered += 1

    def data(self) -> bytes:
        return b"".join(self.written)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.data().split(b"\n") if x]


class ForwarderStreamTests(ForwarderTestsMixin, TestCase):
    """
    The Forwarder and n8n's streamed answers: stream detection, bridging and
    the commit point.
    """

    def test_stream_start_after_first_line(self) -> None:
        """
        For a streaming client, a 2xx whose first line is a stream line is
        returned as soon as that line is in, with the body paused, and the
        attempt counts as a success.
        """
        forwarder = self.make()
        response = StreamResponse()
        self.agent.default = streaming(response)
        d = self.send_stream(forwarder)
        self.assertNoResult(d)
        response.send(line("begin")[:10])
        self.assertNoResult(d)
        response.send(line("begin")[10:] + line("item", "ש")[:5])
        start = self.successResultOf(d)
        self.assertIsInstance(start, StreamStart)
        self.assertEqual((start.attempts, start.url_index), (1, 0))
        self.assertTrue(response.transport.paused)
        self.assertEqual([o[1] for o in self.observed], ["ok"])
        self.assertEqual(forwarder.upstreams()[0]["consecutive_failures"], 0)

    def test_json_body_for_a_streaming_client(self) -> None:
        """
        A JSON answer (even pretty-printed over several lines) is a normal
        result for a streaming client too.
        """
        forwarder = self.make()
        self.agent.default = respond(body=b'{\n  "output": "hi"\n}\n')
        result = self.successResultOf(self.send_stream(forwarder))
        self.assertIsInstance(result, ForwardResult)
        self.assertEqual(result.body, {"output": "hi"})

    def test_failover_before_the_first_byte(self) -> None:
        """
        A 503 at the first URL moves on to the next, which streams.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        response = StreamResponse()
        self.agent.script.append(respond(503, b""))
        self.agent.script.append(streaming(response))
        d = self.send_stream(forwarder)
        response.send(line("begin"))
        start = self.successResultOf(d)
        self.assertEqual(start.url_index, 1)
        self.assertEqual(self.agent.urls(), [URL_A, URL_B])

    def test_first_line_under_the_attempt_deadline(self) -> None:
        """
        Headers at once but no line within the attempt time: a timeout (504,
        not retried by default), n8n's connection dropped.
        """
        forwarder = self.make(attempt_timeout=5.0, request_timeout=60.0)
        response = StreamResponse()
        self.agent.default = streaming(response)
        d = self.send_stream(forwarder)
        self.clock.advance(5.0)
        failure = self.failureResultOf(d, ApiError)
        self.assertEqual(failure.value.code, "upstream_timeout")
        self.assertTrue(response.transport.stopped)
        self.assertEqual(len(self.agent.calls), 1)

    def test_empty_stream_is_502(self) -> None:
        """
        A streamed 200 that ends without a line is the empty-answer 502.
        """
        forwarder = self.make()
        response = StreamResponse()
        self.agent.default = streaming(response)
        d = self.send_stream(forwarder)
        response.end()
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_error")

    def test_committed_stream_drop_counts_against_the_breaker(self) -> None:
        """
        After the commit there is no retry: n8n dropping the stream is one
        failure on its URL's breaker, and no new attempt.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        response = StreamResponse()
        self.agent.default = streaming(response)
        d = self.send_stream(forwarder)
        response.send(line("begin"))
        start = self.successResultOf(d)
        start.dropped("n8n dropped the stream")
        self.assertEqual(forwarder.upstreams()[0]["consecutive_failures"], 1)
        self.assertEqual(forwarder.upstreams()[0]["last_error"], "n8n dropped the stream")
        self.assertEqual(len(self.agent.calls), 1)

    def test_json_client_gets_the_joined_text(self) -> None:
        """
        A JSON client of a streaming workflow gets C{{"output"}} with the
        items joined per node run.
        """
        forwarder = self.make()
        body = (
            line("begin", node="a")
            + line("item", "שלום ", node="a")
            + line("begin", node="b")
            + line("item", "B", node="b")
            + line("item", "עולם", node="a")
            + line("end", node="a")
            + line("end", node="b")
        )
        self.agent.default = respond(body=body, headers=N8N_HEADERS)
        result = self.successResultOf(self.send(forwarder))
        self.assertEqual(result.body, {"output": "שלום עולם\n\nB"})

    def test_json_client_only_errors(self) -> None:
        """
        A stream of error lines only is a 502 C{upstream_error}, not retried.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.default = respond(body=line("error", "node failed"), headers=N8N_HEADERS)
        failure = self.failureResultOf(self.send(forwarder), ApiError)
        self.assertEqual(failure.value.code, "upstream_error")
        self.assertEqual(len(self.agent.calls), 1)

    def send_stream(self, forwarder: Any) -> Deferred[Any]:
        from twisted.internet.defer import ensureDeferred

        from tests.unit.test_forward import message

        return ensureDeferred(forwarder.forward(message(), self.clock.seconds() + 60.0, stream=True))


class RelayTestsMixin:
    clock: Clock
    response: StreamResponse
    request: FakeRequest
    registry: StreamRegistry
    endings: list[tuple[str, int, float]]

    def opened(self, *first: bytes) -> StreamBody:
        """
        A body whose opening found a stream (the first lines given).
        """
        self.clock = Clock()
        self.response = StreamResponse()
        d: Deferred[Any] = Deferred()
        body = StreamBody(d, 10_000_000, max_line=1000)
        self.response.deliverBody(body)
        for data in first:
            self.response.send(data)
        result: list[Any] = []
        d.addCallback(result.append)
        assert result and result[0] is body, result
        return body

    def relay(self, body: StreamBody, **kw: Any) -> StreamRelay:
        self.request = FakeRequest()
        self.registry = StreamRegistry()
        self.endings = []
        options: dict[str, Any] = {"idle_timeout": 120.0, "stream_timeout": 600.0}
        options.update(kw)
        relay = StreamRelay(
            self.request,
            body,
            self.clock,
            registry=self.registry,
            on_end=lambda *a: self.endings.append(a),
            **options,
        )
        return relay


class StreamBodyTests(RelayTestsMixin, TestCase):
    """
    Tests for L{StreamBody}'s opening.
    """

    def test_non_stream_body_collected_whole(self) -> None:
        """
        A first line that is not a stream line: the whole body is collected.
        """
        clock = Clock()
        del clock
        response = StreamResponse()
        d: Deferred[Any] = Deferred()
        response.deliverBody(StreamBody(d, 1000))
        response.send(b'{"output":\n')
        self.assertNoResult(d)
        response.send(b'"x"}')
        response.end()
        self.assertEqual(self.successResultOf(d), b'{"output":\n"x"}')

    def test_non_stream_body_over_the_cap(self) -> None:
        """
        A body over the cap fails and drops the connection.
        """
        response = StreamResponse()
        d: Deferred[Any] = Deferred()
        response.deliverBody(StreamBody(d, 10))
        response.send(b"x" * 11)
        self.failureResultOf(d)
        self.assertTrue(response.transport.stopped)

    def test_blank_lines_before_the_first(self) -> None:
        """
        Blank lines and keepalives before the first line do not decide
        anything; they are relayed as they came.
        """
        body = self.opened(b"\n\n", KEEPALIVE_LINE, line("begin"))
        self.assertEqual(body.state, "stream")
        relay = self.relay(body)
        relay.start()
        self.assertEqual(self.request.data(), b"\n\n" + KEEPALIVE_LINE + line("begin"))


class StreamRelayTests(RelayTestsMixin, TestCase):
    """
    Tests for L{StreamRelay}.
    """

    def test_lines_relayed_unchanged_as_they_come(self) -> None:
        """
        The lines read before the commit are written at the start, then each
        complete line as it arrives, byte for byte; a cut line waits for its
        end; the body resumes at the start.
        """
        first = line("begin") + line("item", "שלום")
        body = self.opened(first + line("item", "x")[:7])
        relay = self.relay(body)
        done = relay.start()
        self.assertEqual(self.request.data(), first)
        self.assertIs(self.request.producer, relay)
        self.assertFalse(self.response.transport.paused)
        rest = line("item", "x")[7:] + line("end")
        self.response.send(rest[:3])
        self.assertEqual(self.request.data(), first)
        self.response.send(rest[3:])
        self.assertEqual(self.request.data(), first + line("item", "x") + line("end"))
        self.assertNoResult(done)
        self.assertEqual(self.registry.in_flight, 1)
        self.response.end()
        self.assertEqual(self.successResultOf(done), "complete")
        self.assertEqual(self.request.unregistered, 1)
        self.assertFalse(self.response.transport.stopped)  # a complete response may go back to the pool
        self.assertEqual(self.registry.snapshot()["in_flight"], 0)
        self.assertEqual(self.registry.endings["complete"], 1)
        self.assertEqual(self.endings[0][:2], ("complete", len(self.request.data())))

    def test_upstream_drop_writes_an_error_line(self) -> None:
        """
        n8n dropping the stream: one error line (nodeId inkflow, Hebrew), then
        the end; the partial line is not written.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body)
        done = relay.start()
        self.response.send(line("item", "half")[:9])
        self.response.drop()
        self.assertEqual(self.successResultOf(done), "upstream_dropped")
        lines = self.request.lines()
        self.assertEqual([x["type"] for x in lines], ["begin", "error"])
        self.assertEqual(lines[-1]["content"], ERROR_TEXT["upstream_dropped"])
        self.assertEqual(lines[-1]["metadata"]["nodeId"], "inkflow")

    def test_end_already_read_before_the_commit(self) -> None:
        """
        A stream that ended before the relay attached is relayed whole.
        """
        body = self.opened(line("begin") + line("end"))
        self.response.end()
        relay = self.relay(body)
        self.assertEqual(self.successResultOf(relay.start()), "complete")
        self.assertEqual([x["type"] for x in self.request.lines()], ["begin", "end"])

    def test_complete_stream_logged_only_when_asked(self) -> None:
        """
        A complete stream's end is a debug line only with C{log_complete}
        (the log level is debug); without it no event is built at all. A
        stream that ends badly is logged either way.
        """
        for log_complete, expected in ((True, 1), (False, 0)):
            body = self.opened(line("begin") + line("end"))
            self.response.end()
            with capturedLogs() as events:
                self.successResultOf(self.relay(body, log_complete=log_complete).start())
            ended = [e for e in events if "ended" in e.get("log_format", "")]
            self.assertEqual(len(ended), expected)
            self.assertTrue(all(e["log_level"] is LogLevel.debug for e in ended))
        body = self.opened(line("begin"))
        relay = self.relay(body, log_complete=False, idle_timeout=5.0)
        with capturedLogs() as events:
            done = relay.start()
            self.clock.advance(5)
        self.assertEqual(self.successResultOf(done), "idle_timeout")
        self.assertEqual([e["cause"] for e in events if "ended" in e.get("log_format", "")], ["idle_timeout"])

    def test_idle_timeout(self) -> None:
        """
        No byte from n8n for the idle timeout: an error line, n8n dropped.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body, idle_timeout=50.0, keepalive=1000.0)
        done = relay.start()
        self.clock.advance(30)
        self.response.send(b"{")  # a byte, not a line
        self.clock.advance(49)
        self.assertNoResult(done)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(done), "idle_timeout")
        self.assertTrue(self.response.transport.stopped)
        self.assertEqual(self.request.lines()[-1]["content"], ERROR_TEXT["idle_timeout"])

    def test_keepalive_after_twenty_seconds_without_a_line(self) -> None:
        """
        A keepalive line after 20 s without a line from n8n, then every 20 s.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body)
        relay.start()
        self.clock.advance(KEEPALIVE_AFTER - 1)
        self.response.send(line("item", "a"))
        self.clock.advance(KEEPALIVE_AFTER - 1)
        self.assertNotIn(KEEPALIVE_LINE, self.request.written)
        self.clock.advance(1)
        self.assertEqual(self.request.written[-1], KEEPALIVE_LINE)
        self.clock.advance(KEEPALIVE_AFTER)
        self.assertEqual(self.request.written.count(KEEPALIVE_LINE), 2)

    def test_stream_timeout_even_while_lines_flow(self) -> None:
        """
        The whole stream is bounded, however lively.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body, stream_timeout=100.0)
        done = relay.start()
        for _ in range(9):
            self.clock.advance(10)
            self.response.send(line("item", "x"))
        self.assertNoResult(done)
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(done), "stream_timeout")

    def test_slow_client_pauses_n8n(self) -> None:
        """
        The client's channel pausing the relay pauses n8n's side; while paused
        the idle timeout does not run; resuming resumes n8n.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body, idle_timeout=10.0, keepalive=1000.0)
        done = relay.start()
        relay.pauseProducing()
        self.assertTrue(self.response.transport.paused)
        self.clock.advance(100)
        self.assertNoResult(done)
        relay.resumeProducing()
        self.assertFalse(self.response.transport.paused)
        self.clock.advance(9)
        self.assertNoResult(done)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(done), "idle_timeout")

    def test_client_leaves(self) -> None:
        """
        Cancelling (the client left): n8n's connection is dropped at once,
        nothing more is written, counted as client_left.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body)
        done = relay.start()
        written = len(self.request.written)
        done.cancel()
        self.failureResultOf(done)
        self.assertTrue(self.response.transport.stopped)
        self.response.send(line("item", "late"))
        self.assertEqual(len(self.request.written), written)
        self.assertEqual(self.registry.endings["client_left"], 1)
        self.assertEqual(self.registry.in_flight, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_channel_stops_the_producer(self) -> None:
        """
        The channel's stopProducing (connection lost) is the client leaving.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body)
        done = relay.start()
        relay.stopProducing()
        self.assertEqual(self.successResultOf(done), "client_left")
        self.assertTrue(self.response.transport.stopped)

    def test_line_over_the_cap(self) -> None:
        """
        A line over the line cap: an error line, n8n dropped.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body)
        done = relay.start()
        self.response.send(b'{"type":"item","content":"' + b"x" * 2000)
        self.assertEqual(self.successResultOf(done), "too_large")
        self.assertEqual(self.request.lines()[-1]["content"], ERROR_TEXT["too_large"])
        self.assertTrue(self.response.transport.stopped)

    def test_total_over_the_cap(self) -> None:
        """
        More than the stream cap in total: an error line.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body, max_bytes=500)
        done = relay.start()
        for _ in range(20):
            self.response.send(line("item", "y" * 50))
        self.assertEqual(self.successResultOf(done), "too_large")
        self.assertLessEqual(len(self.request.data()), 500 + 300)

    def test_drain_stops_every_stream(self) -> None:
        """
        Drain ends each stream with the drain error line and a clean end.
        """
        body = self.opened(line("begin"))
        relay = self.relay(body)
        done = relay.start()
        self.assertEqual(self.registry.stop_all(), 1)
        self.assertEqual(self.successResultOf(done), "drain")
        self.assertEqual(self.request.lines()[-1]["content"], ERROR_TEXT["drain"])
        self.assertTrue(self.response.transport.stopped)


class StreamMemoryTests(RelayTestsMixin, TestCase):
    """
    An ended stream leaves no reference cycle: its relay and n8n's body are
    freed the moment nothing refers to them, not by a later pass of the
    garbage collector.  (At 2,000 streams a burst left about 150,000 objects
    in cycles, and the generation-1 pass that freed them stopped the server
    for 0.7 s.)
    """

    def assertFreedAfter(self, end: Callable[[StreamRelay, Deferred[str]], None]) -> None:
        with collector_off():
            body = self.opened(line("begin"))
            relay = self.relay(body)
            done = relay.start()
            done.addErrback(lambda _: None)  # (a client who left: cancelled)
            end(relay, done)
            self.assertIsNotNone(relay.cause)
            refs: list[weakref.ref[Any]] = [weakref.ref(body), weakref.ref(relay)]
            del body, relay, done
            del self.response, self.request
            self.assertEqual([ref() for ref in refs], [None, None])

    def test_complete_stream_freed_without_the_collector(self) -> None:
        self.assertFreedAfter(lambda relay, done: self.response.end())

    def test_dropped_stream_freed_without_the_collector(self) -> None:
        self.assertFreedAfter(lambda relay, done: self.response.drop())

    def test_left_stream_freed_without_the_collector(self) -> None:
        self.assertFreedAfter(lambda relay, done: done.cancel())

    def test_drained_stream_freed_without_the_collector(self) -> None:
        self.assertFreedAfter(lambda relay, done: relay.stop())

    def test_timed_out_stream_freed_without_the_collector(self) -> None:
        self.assertFreedAfter(lambda relay, done: self.clock.advance(601))

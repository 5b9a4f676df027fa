"""
Tests for L{inkflow.web.channel}, L{inkflow.web.request} and L{inkflow.web.site}: deadlines, the connection limit, early refusals,
drain, all with C{StringTransport} and C{Clock} (no network, no real time).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import http
from twisted.web.resource import Resource

from inkflow.errors import ApiError
from inkflow.settings import Settings
from inkflow.web.bodies import BodySink, DiscardSink, JsonSink
from inkflow.web.channel import InkFlowChannel
from inkflow.web.request import InkFlowRequest
from inkflow.web.site import InkFlowSite
from inkflow.web.state import request_state


class Echo(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[InkFlowRequest] = []

    def render(self, request: Any) -> bytes:
        self.seen.append(request)
        error = request_state(request).body_error
        if error is not None:
            request.setResponseCode(error.status)
            return error.code.encode()
        return b"ok"


def sink_for(method: bytes, path: bytes, headers: http.Headers, length: int | None) -> BodySink | None:
    if path == b"/big":
        raise ApiError("too_large")
    if method == b"POST":
        if length is not None and length > 1000:
            raise ApiError("too_large")
        return JsonSink(1000)
    return None


class _Connections:
    """
    For test cases with a C{self.site}: open a connection to it from 127.0.0.1.
    """

    site: InkFlowSite

    def connect(self) -> tuple[InkFlowChannel, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        channel.makeConnection(transport)
        return channel, transport


class ChannelTests(_Connections, TestCase):
    """
    One site, connections driven by hand.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = Settings.defaults(max_connections=2, header_timeout=10.0, idle_timeout=60.0)
        self.resource = Echo()
        self.site = InkFlowSite(self.resource, self.settings, self.clock, sink_for)

    def test_request_answered_with_security_headers(self) -> None:
        """A plain GET is answered, with nosniff, CSP, X-Request-ID and no Twisted version."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"X-Content-Type-Options: nosniff", out)
        self.assertIn(b"Content-Security-Policy: ", out)
        self.assertIn(b"X-Request-Id: ", out)
        self.assertIn(b"Server: InkFlow", out)
        self.assertNotIn(b"TwistedWeb", out)

    def test_slow_head_gets_408_after_header_timeout(self) -> None:
        """A head still incomplete after --header-timeout is answered 408 and the connection closed."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(9.9)
        channel.dataReceived(b"Host: x\r\n")  # a byte now and then does not reset the deadline
        self.clock.advance(0.2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertIn(b'"request_timeout"', transport.value())
        self.clock.advance(1.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.seen, [])

    def test_connections_deadlines_share_one_reactor_timer(self) -> None:
        """
        The head deadlines of many connections are one reactor timer (the
        site's sweep), met at the deadline, and gone with the connections.
        """
        settings = Settings.defaults(max_connections=100, max_connections_per_ip=0, header_timeout=10.0)
        self.site = InkFlowSite(self.resource, settings, self.clock, sink_for)
        opened = []
        for _ in range(50):
            opened.append(self.connect())
            self.clock.advance(0.01)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10.0 - 0.5)  # the first is due at 10.0, the last at 10.49
        first, last = opened[0][1], opened[-1][1]
        self.assertTrue(first.value().startswith(b"HTTP/1.1 408 "))
        self.clock.advance(0.45)
        self.assertEqual(last.value(), b"")
        self.clock.advance(0.05)  # within the sweep's 0.1 s
        self.assertTrue(last.value().startswith(b"HTTP/1.1 408 "))
        for channel, _ in opened:
            channel.connectionLost(Failure(Exception("gone")))
        self.assertEqual(len(self.site.sweep), 0)

    def test_idle_keepalive_closed_quietly(self) -> None:
        """After a response, a connection idle for --idle-timeout is closed without a 408."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        transport.clear()
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_keepalive_request_that_behaves_is_not_cut(self) -> None:
        """A second request on a kept-alive connection gets a fresh head deadline, and an answer."""
        channel, transport = self.connect()
        for _ in range(3):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.clock.advance(30)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 3)
        self.assertFalse(transport.disconnecting)

    def test_content_length_over_limit_refused_before_body(self) -> None:
        """A Content-Length over the limit is answered 413 at once, without 100 Continue."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        self.assertNotIn(b"100 Continue", out)
        self.assertIn(b"Connection: close", out)
        self.assertEqual(self.resource.seen, [])

    def test_refused_body_is_read_then_connection_closed(self) -> None:
        """The refused body's bytes are drained (so the client sees the answer) and then the connection closes."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"0123456789")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.seen, [])

    def test_refused_body_cut_after_linger(self) -> None:
        """A client that keeps sending a refused body is cut after the linger time."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        channel.dataReceived(b"x" * 1000)
        self.clock.advance(6)
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_over_limit_refused_while_streaming(self) -> None:
        """A chunked body is refused with 413 the moment it crosses the limit."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        channel.dataReceived(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"10\r\n" + b"x" * 16 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))

    def test_malformed_json_is_a_body_error(self) -> None:
        """A body the sink cannot parse reaches the route as body_error, not an exception."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        error = request_state(self.resource.seen[0]).body_error
        self.assertEqual(error.code if error is not None else None, "bad_request")

    def test_connection_over_limit_gets_503_busy(self) -> None:
        """The connection past --max-connections is answered 503 busy with Retry-After and closed."""
        self.connect()
        self.connect()
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 503 "), out)
        self.assertIn(b"Retry-After: ", out)
        self.assertIn(b"Connection: close", out)
        self.assertIn(b'"busy"', out)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.site.connections.connections_rejected, 1)

    def test_health_answered_over_limit(self) -> None:
        """Over the limit, /api/health is still answered, then the connection closes."""
        self.connect()
        self.connect()
        channel, transport = self.connect()
        channel.dataReceived(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"Connection: close", transport.value())

    def test_closed_connections_free_their_place(self) -> None:
        """A closed connection leaves the registry, so the next one is under the limit."""
        first, _ = self.connect()
        self.connect()
        first.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        channel, _transport = self.connect()
        self.assertFalse(channel.over_limit)

    def test_refused_connections_do_not_hold_places(self) -> None:
        """A connection already refused (still closing) does not count: the next one after a close is admitted."""
        first, _ = self.connect()
        self.connect()
        refused, _ = self.connect()
        self.assertTrue(refused.over_limit)
        first.connectionLost(Failure(Exception("gone")))
        newcomer, _ = self.connect()
        self.assertFalse(newcomer.over_limit)
        refused.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.site.connections.admitted, 2)

    def test_drain_closes_idle_and_waits_for_busy(self) -> None:
        """Drain closes idle connections at once and fires when the last one is gone."""
        idle, idle_transport = self.connect()
        idle.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        busy, busy_transport = self.connect()
        busy.dataReceived(b"GET / HTTP/1.1\r\n")  # head in progress
        done = self.site.connections.drain()
        self.assertTrue(idle_transport.disconnecting)
        self.assertNoResult(done)
        idle.connectionLost(Exception("closed"))  # type: ignore[arg-type]
        busy.dataReceived(b"Host: x\r\n\r\n")
        self.assertTrue(busy_transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertTrue(busy_transport.disconnecting)
        busy.connectionLost(Exception("closed"))  # type: ignore[arg-type]
        self.successResultOf(done)


class _SpoolingSink(JsonSink):
    def temp_paths(self) -> list[str]:
        return ["/uploads/inkflow-x.part"]


class ActiveUploadsTests(TestCase):
    """
    The cleanup loop learns which temp files open requests hold.
    """

    def test_upload_in_progress_is_active(self) -> None:
        """A request still receiving its body reports its sink's temp files; once gone, nothing is active."""
        clock = Clock()
        site = InkFlowSite(Echo(), Settings.defaults(), clock, lambda *a: _SpoolingSink(1000))
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        assert channel is not None
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        self.assertEqual(site.connections.active_upload_paths(), {"/uploads/inkflow-x.part"})
        channel.connectionLost(Failure(Exception("gone")))
        self.assertEqual(site.connections.active_upload_paths(), set())


class _Pausing(Echo):
    """
    Stands for a transport whose send buffer fills on the first answer.
    """

    def render(self, request: Any) -> bytes:
        if not self.seen:
            request.channel.pauseProducing()
        return super().render(request)


class HostileClientTests(_Connections, TestCase):
    """
    Progress-based deadlines in both directions, and strict framing, for slow and malformed clients.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = Settings.defaults(header_timeout=10.0, idle_timeout=60.0, body_timeout=10.0, write_timeout=30.0)
        self.resource = Echo()
        self.site = InkFlowSite(self.resource, self.settings, self.clock, sink_for)

    def test_stalled_chunked_body_gets_408_after_body_timeout(self) -> None:
        """A chunked head and then nothing: 408 after --body-timeout, then the connection is cut."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Time-out\r\n"), transport.value())
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_stalled_after_chunk_size_line_gets_408(self) -> None:
        """A chunk-size line and then silence is cut after --body-timeout, not minutes later."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\nab")
        self.clock.advance(10.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())

    def test_body_bytes_keep_the_body_timeout_away(self) -> None:
        """A body byte every few seconds resets the progress deadline (within the overall one)."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
        for byte in (b"{", b"}"):
            self.clock.advance(4)
            channel.dataReceived(byte)
        self.assertEqual(transport.value(), b"")

    def test_overall_body_deadline_comes_from_the_chosen_sink(self) -> None:
        """Trickling a small sink's body byte by byte is cut once the sink's own deadline passes."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            self.clock.advance(5)
            channel.dataReceived(b"1\r\nx\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())

    def test_client_not_reading_is_aborted_after_write_timeout(self) -> None:
        """Once the transport is full, --write-timeout without the client reading aborts the connection."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        channel.pauseProducing()  # the transport's send buffer is full
        self.clock.advance(29)
        channel.resumeProducing()  # the client read some: progress
        channel.pauseProducing()
        self.clock.advance(29)
        self.assertFalse(transport.disconnected)
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)

    def test_idle_close_that_does_not_complete_is_aborted(self) -> None:
        """The idle timer's close is followed by an abort when the connection does not go away."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(61)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.clock.advance(31)
        self.assertTrue(transport.disconnected)

    def test_pipelined_requests_wait_while_an_answer_is_buffered(self) -> None:
        """With the send buffer full, the next pipelined request waits (and reading stops) until it drains."""
        self.resource = _Pausing()
        self.site = InkFlowSite(self.resource, self.settings, self.clock, sink_for)
        channel, transport = self.connect()
        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        self.assertEqual(len(self.resource.seen), 1)
        self.assertEqual(transport.producerState, "paused")
        channel.resumeProducing()
        self.assertEqual(len(self.resource.seen), 3)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 3)

    def test_429_has_its_reason_phrase(self) -> None:
        """A raw 429 says Too Many Requests, not Unknown Status."""
        from inkflow.web.responses import raw_error_response

        raw = raw_error_response(ApiError.retry_later("rate_limited", 3), "r")
        self.assertTrue(raw.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"))

    def test_transfer_encoding_identity_is_400(self) -> None:
        """Transfer-Encoding other than chunked is refused with the JSON 400."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
        self.assertEqual(self.resource.seen, [])

    def test_folded_header_line_is_400(self) -> None:
        """A folded (obs-fold) header line is refused with the JSON 400."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
        self.assertIn(b'"bad_request"', transport.value())

    def test_http11_without_host_is_400(self) -> None:
        """HTTP/1.1 without a Host header is refused with the JSON 400."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())

    def test_duplicate_host_is_400(self) -> None:
        """Two Host headers are refused with the JSON 400."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())

    def test_http10_without_host_is_answered(self) -> None:
        """HTTP/1.0 needs no Host."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 200 "), transport.value())

    def test_sink_is_chosen_from_the_decoded_path(self) -> None:
        """The sink chooser sees /api/chat for /api/%63hat, as routing does."""
        seen: list[bytes] = []

        def recording(method: bytes, path: bytes, headers: http.Headers, length: int | None) -> BodySink | None:
            seen.append(path)
            return JsonSink(1000)

        self.site = InkFlowSite(self.resource, self.settings, self.clock, recording)
        channel, _ = self.connect()
        channel.dataReceived(b"POST /api/%63hat?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(seen, [b"/api/chat"])


class BodyRateTests(TestCase):
    """
    The minimum body rate is checked as the bytes come.
    """

    def test_trickle_into_a_large_sink_is_cut_after_the_grace(self) -> None:
        """One byte every 5 s into a sink that takes megabytes is cut soon after --header-timeout, not minutes later."""
        clock = Clock()
        settings = Settings.defaults(header_timeout=10.0, body_timeout=10.0)
        site = InkFlowSite(Echo(), settings, clock, lambda *a: JsonSink(50_000_000))
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n\r\n")
        for _ in range(3):
            clock.advance(5)
            channel.dataReceived(b"x")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())

    def test_fast_body_is_not_cut(self) -> None:
        """A body that keeps up with the minimum rate is received."""
        clock = Clock()
        settings = Settings.defaults(header_timeout=10.0, body_timeout=10.0)
        resource = Echo()
        site = InkFlowSite(resource, settings, clock, lambda *a: DiscardSink(50_000_000))
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        channel.makeConnection(transport)
        size = 64 * 1024 * 30
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(30):
            clock.advance(1)
            channel.dataReceived(b"x" * 64 * 1024)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:80])

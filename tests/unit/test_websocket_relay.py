"""
Tests for the C{/chat} relay's pure parts: L{inkflow.n8n.executions} (the
bounded, expiring executionId map), the upstream socket URL, and a
L{Relay} between two fake wires on a L{Clock}.  Reactor-free.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from inkflow.n8n.executions import ExecutionMap, started_execution
from inkflow.web.websocket import ChatSockets, Relay, upstream_socket_url
from tests.unit.test_websocket_wire import captured_log


class ExecutionMapTests(TestCase):
    """
    executionId -> upstream index.
    """

    def test_started_execution(self) -> None:
        """Only {"executionStarted": true, "executionId"} answers name an execution."""
        self.assertEqual(started_execution({"executionStarted": True, "executionId": 42}), "42")
        self.assertEqual(started_execution({"executionStarted": True, "executionId": "a1"}), "a1")
        for body in ({"executionStarted": False, "executionId": 1}, {"output": "x"}, [1], {"executionStarted": True}):
            self.assertIsNone(started_execution(body))

    def test_remember_and_expire(self) -> None:
        """An entry lives ttl seconds after its last use."""
        clock = Clock()
        m = ExecutionMap(clock, ttl=10)
        self.assertEqual(m.note_answer({"executionStarted": True, "executionId": "7"}, 1), "7")
        clock.advance(9)
        self.assertEqual(m.lookup("7"), 1)
        clock.advance(9)
        self.assertEqual(m.lookup("7"), 1)  # the lookup at 9 s kept it
        clock.advance(10.1)
        self.assertIsNone(m.lookup("7"))
        self.assertEqual(len(m), 0)

    def test_bounded(self) -> None:
        """Over max_entries the least recently used go first."""
        m = ExecutionMap(Clock(), max_entries=2)
        m.remember("a", 0)
        m.remember("b", 1)
        m.lookup("a")
        m.remember("c", 1)
        self.assertEqual((m.lookup("a"), m.lookup("b"), m.lookup("c")), (0, None, 1))


class UrlTests(TestCase):
    """
    Where the socket goes.
    """

    def test_upstream_url(self) -> None:
        """The webhook's origin, ws/wss for http/https, /chat, the browser's query; never credentials."""
        self.assertEqual(
            upstream_socket_url("http://n8n:5678/webhook/abc/chat", b"sessionId=s&executionId=1"),
            "ws://n8n:5678/chat?sessionId=s&executionId=1",
        )
        self.assertEqual(upstream_socket_url("https://u:p@n8n.example/webhook/x", b""), "wss://n8n.example/chat")


class FakeWire:
    """
    Stands in for a L{Wire}: what the relay sends, how it closes, whether it is read.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[Any, bool]] = []
        self.closed_with: int | None = None
        self.close_code: int | None = None
        self.reading = True
        self.bytes_in = 0
        self.bytes_out = 0

    def send_chunk(self, data: Any, fin: bool) -> None:
        self.sent.append((data, fin))

    def close(self, code: int, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = code

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class RelayTests(TestCase):
    """
    L{Relay}: fragments both ways as they arrive, early ones held, the cap
    by counting, backpressure, idleness, close codes, drain, log lines.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sockets = ChatSockets()
        self.relay = Relay(self.sockets, self.clock, 90, 1000, address="10.0.0.9", request_id="r1")
        self.browser, self.upstream = FakeWire(), FakeWire()
        self.relay.upstream.wire = self.upstream  # type: ignore[assignment]

    def open(self) -> None:
        self.relay.browser_opened(self.browser)  # type: ignore[arg-type]

    def from_browser(self, data: Any, fin: bool = True) -> None:
        self.relay.browser.chunk(self.browser, data, fin)  # type: ignore[arg-type]

    def from_upstream(self, data: Any, fin: bool = True) -> None:
        self.relay.upstream.chunk(self.upstream, data, fin)  # type: ignore[arg-type]

    def test_early_chunks_held_until_the_browser_is_open(self) -> None:
        """n8n's first fragments wait for the browser's side (n8n not read meanwhile), then go in order."""
        self.from_upstream("n8n|heart", fin=False)
        self.from_upstream("beat")
        self.assertEqual(self.browser.sent, [])
        self.assertFalse(self.upstream.reading)
        self.open()
        self.assertEqual(self.browser.sent, [("n8n|heart", False), ("beat", True)])
        self.assertTrue(self.upstream.reading)
        self.assertEqual(self.sockets.snapshot(), {"open": 1, "opened_total": 1})

    def test_fragments_pass_as_they_arrive(self) -> None:
        """Each fragment goes on at once, unchanged, text and bytes, both ways: nothing is reassembled."""
        self.open()
        self.from_browser("שלום ", fin=False)
        self.assertEqual(self.upstream.sent, [("שלום ", False)])
        self.from_browser("עולם")
        self.from_upstream(b"\x00\x01")
        self.assertEqual(self.upstream.sent, [("שלום ", False), ("עולם", True)])
        self.assertEqual(self.browser.sent, [(b"\x00\x01", True)])

    def test_cap_counts_a_message_across_fragments(self) -> None:
        """--websocket-max-message counts a message's fragments: past it both sides close 1009; the count restarts per message."""
        self.open()
        for _ in range(3):
            self.from_browser("x" * 400)  # whole messages: each under the cap
        self.from_browser("x" * 400, fin=False)
        self.from_browser("x" * 400, fin=False)
        self.assertIsNone(self.browser.closed_with)
        self.from_browser("x" * 201, fin=False)
        self.assertEqual((self.browser.closed_with, self.upstream.closed_with), (1009, 1009))
        self.assertEqual(len(self.upstream.sent), 5)

    def test_a_full_send_buffer_stops_reading_both_sides(self) -> None:
        """Either side's send buffer full (a client not reading, pongs included): neither side is read until it drains."""
        self.open()
        for side in (self.relay.browser, self.relay.upstream):
            producer = self.relay.producer_for(side)
            producer.pauseProducing()
            self.assertEqual((self.browser.reading, self.upstream.reading), (False, False))
            producer.resumeProducing()
            self.assertEqual((self.browser.reading, self.upstream.reading), (True, True))
        browser, upstream = self.relay.producer_for(self.relay.browser), self.relay.producer_for(self.relay.upstream)
        browser.pauseProducing()
        upstream.pauseProducing()
        browser.resumeProducing()
        self.assertEqual((self.browser.reading, self.upstream.reading), (False, False))
        upstream.resumeProducing()
        self.assertEqual((self.browser.reading, self.upstream.reading), (True, True))

    def test_idle_timeout(self) -> None:
        """No fragment from the browser for idle_timeout: both sides closed (1000); its traffic resets it."""
        self.open()
        self.clock.advance(80)
        self.from_browser("n8n|heartbeat-ack")
        self.clock.advance(80)
        self.assertIsNone(self.browser.closed_with)
        self.clock.advance(11)
        self.assertEqual((self.browser.closed_with, self.upstream.closed_with), (1000, 1000))

    def test_idle_is_measured_on_the_browser(self) -> None:
        """Only the browser's traffic keeps the socket: n8n's heartbeats alone do not."""
        self.open()
        for _ in range(4):
            self.clock.advance(25)
            self.from_upstream("n8n|heartbeat")
        self.assertEqual((self.browser.closed_with, self.upstream.closed_with), (1000, 1000))

    def test_close_code_passed_on(self) -> None:
        """n8n closing with a code closes the browser with it."""
        self.open()
        self.upstream.close_code = 4001
        self.relay.upstream.lost(self.upstream)  # type: ignore[arg-type]
        self.assertEqual(self.browser.closed_with, 4001)

    def test_upstream_end_without_status_is_1000(self) -> None:
        """n8n's close frame without a status (1005): the browser's side gets 1000, not 1011."""
        self.open()
        self.upstream.close_code = 1005
        self.relay.upstream.lost(self.upstream)  # type: ignore[arg-type]
        self.assertEqual(self.browser.closed_with, 1000)

    def test_upstream_dropped_without_close_is_1011(self) -> None:
        """n8n's socket dropped without any close frame: 1011."""
        self.open()
        self.relay.upstream.lost(self.upstream)  # type: ignore[arg-type]
        self.assertEqual(self.browser.closed_with, 1011)

    def test_drain_closes_1001(self) -> None:
        """close_all: every open relay is closed with 1001; a closed browser leaves the registry."""
        self.open()
        self.sockets.close_all()
        self.assertEqual((self.browser.closed_with, self.upstream.closed_with), (1001, 1001))
        self.relay.browser.lost(self.browser)  # type: ignore[arg-type]
        self.assertEqual(self.sockets.open, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_opened_and_access_lines(self) -> None:
        """An "opened" line with address and request id; one access line per session with duration, bytes and close code."""
        events = captured_log(self)
        self.open()
        self.clock.advance(2.5)
        self.browser.bytes_in, self.browser.bytes_out = 120, 3400
        self.browser.close_code = 1000
        self.relay.browser.lost(self.browser)  # type: ignore[arg-type]
        self.relay.upstream.lost(self.upstream)  # type: ignore[arg-type]
        opened = [e for e in events if "opened" in e.get("log_format", "")]
        self.assertEqual([(e["address"], e["request_id"]) for e in opened], [("10.0.0.9", "r1")])
        lines = [e for e in events if e.get("log_namespace") == "inkflow.access"]
        self.assertEqual(len(lines), 1)
        got = {k: lines[0][k] for k in ("address", "request_id", "duration", "bytes_in", "bytes_out", "close_code")}
        self.assertEqual(
            got,
            {
                "address": "10.0.0.9",
                "request_id": "r1",
                "duration": 2.5,
                "bytes_in": 120,
                "bytes_out": 3400,
                "close_code": 1000,
            },
        )

"""
Tests for the C{/chat} relay's pure parts: L{inkflow.n8n.executions} (the
bounded, expiring executionId map), the upstream socket URL, the Origin check,
and a L{Relay} between two fake wires on a L{Clock}.  Reactor-free.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from wsproto.connection import ConnectionState

from inkflow.n8n.executions import ExecutionMap, started_execution
from inkflow.web.websocket import ChatSockets, Relay, origin_allowed, upstream_socket_url
from tests.unit.helpers import pinned


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


class UrlAndOriginTests(TestCase):
    """
    Where the socket goes, and who may open it.
    """

    def test_upstream_url(self) -> None:
        """The webhook's origin, ws/wss for http/https, /chat, the browser's query; never credentials."""
        self.assertEqual(
            upstream_socket_url("http://n8n:5678/webhook/abc/chat", b"sessionId=s&executionId=1"),
            "ws://n8n:5678/chat?sessionId=s&executionId=1",
        )
        self.assertEqual(upstream_socket_url("https://u:p@n8n.example/webhook/x", b""), "wss://n8n.example/chat")

    def test_origin(self) -> None:
        """Absent, the request's own, or listed: allowed; anything else is not."""
        allowed = frozenset({"https://shop.example"})
        self.assertTrue(origin_allowed(None, b"inkflow.example", allowed))
        self.assertTrue(origin_allowed(b"https://inkflow.example", b"inkflow.example", allowed))
        self.assertTrue(origin_allowed(b"https://shop.example", b"inkflow.example", allowed))
        self.assertFalse(origin_allowed(b"https://evil.example", b"inkflow.example", allowed))
        self.assertFalse(origin_allowed(b"https://inkflow.example:8443", b"inkflow.example", allowed))
        self.assertFalse(origin_allowed(b"null", b"inkflow.example", allowed))


class FakeTransport:
    def __init__(self) -> None:
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True


class FakeWire:
    """
    Stands in for a wire protocol: what the relay sends and how it closes.
    """

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.closed_with: int | None = None
        self.transport: FakeTransport | None = FakeTransport()
        self._wsconn = self
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None

    def sendTextMessage(self, text: str) -> None:
        self.sent.append(text)

    def sendBytesMessage(self, data: bytes) -> None:
        self.sent.append(data)

    def loseConnection(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code
        self.state = ConnectionState.CLOSED


class RelayTests(TestCase):
    """
    L{Relay}: messages both ways, early messages held, idle timeout, close codes, drain.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sockets = ChatSockets()
        self.relay = Relay(self.sockets, self.clock, idle_timeout=90)
        self.browser, self.upstream = FakeWire(), FakeWire()
        self.relay.upstream.negotiationStarted(self.upstream)  # type: ignore[arg-type]
        self.relay.browser.negotiationStarted(self.browser)  # type: ignore[arg-type]

    def test_early_messages_held_until_the_browser_is_open(self) -> None:
        """n8n's first messages wait for the browser's side, then go in order."""
        self.relay.upstream.textMessageReceived("n8n|heartbeat")
        self.assertEqual(self.browser.sent, [])
        self.relay.browser_opened()
        self.assertEqual(self.browser.sent, ["n8n|heartbeat"])
        self.assertEqual(self.sockets.snapshot(), {"open": 1, "opened_total": 1})

    def test_both_ways(self) -> None:
        """Text and bytes pass unchanged in both directions."""
        self.relay.browser_opened()
        self.relay.browser.textMessageReceived("n8n|heartbeat-ack")
        self.relay.upstream.bytesMessageReceived(b"\x00\x01")
        self.assertEqual(self.upstream.sent, ["n8n|heartbeat-ack"])
        self.assertEqual(self.browser.sent, [b"\x00\x01"])

    def test_idle_timeout(self) -> None:
        """No message either way for idle_timeout: both sides closed (1000); any message resets it."""
        self.relay.browser_opened()
        self.clock.advance(80)
        self.relay.upstream.textMessageReceived("n8n|heartbeat")
        self.clock.advance(80)
        self.assertIsNone(self.browser.closed_with)
        self.clock.advance(11)
        self.assertEqual((self.browser.closed_with, self.upstream.closed_with), (1000, 1000))

    def test_close_code_passed_on(self) -> None:
        """n8n closing with a code closes the browser with it; a drop without a close is 1011."""
        self.relay.browser_opened()
        self.upstream.close_code = 4001
        self.relay.upstream.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.browser.closed_with, 4001)
        other = Relay(self.sockets, self.clock, 90)
        b, u = FakeWire(), FakeWire()
        other.browser.negotiationStarted(b)  # type: ignore[arg-type]
        other.upstream.negotiationStarted(u)  # type: ignore[arg-type]
        other.browser_opened()
        other.upstream.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(b.closed_with, 1011)

    def test_drain_closes_1001(self) -> None:
        """close_all: every open relay is closed with 1001; a closed browser leaves the registry."""
        self.relay.browser_opened()
        self.sockets.close_all()
        self.assertEqual((self.browser.closed_with, self.upstream.closed_with), (1001, 1001))
        self.relay.browser.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.sockets.open, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RelayFindingTests(TestCase):
    """
    Findings of the hostile-clients review, pinned on the relay.
    """

    setUp = RelayTests.setUp

    @pinned("n8n ending its socket without a close status closes the browser with 1011")
    def test_upstream_end_without_status_is_1000(self) -> None:
        """n8n's close frame without a status (1005): the browser's side gets 1000, not 1011."""
        self.relay.browser_opened()
        self.upstream.close_code = 1005
        self.relay.upstream.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.browser.closed_with, 1000)

    @pinned("n8n's heartbeat keeps an idle browser's socket open")
    def test_idle_is_measured_on_the_browser(self) -> None:
        """Only the browser's traffic keeps the socket: n8n's heartbeats alone do not."""
        self.relay.browser_opened()
        for _ in range(4):
            self.clock.advance(25)
            self.relay.upstream.textMessageReceived("n8n|heartbeat")
        self.assertEqual((self.browser.closed_with, self.upstream.closed_with), (1000, 1000))

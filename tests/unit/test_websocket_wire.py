"""
L{inkflow.web.websocket.wire}: one WebSocket connection at the frame level
(wsproto over an in-memory transport), and the accepted socket's life cycle
through the resource: no Deferred left failing unhandled.  Reactor-free.
"""

from __future__ import annotations

import gc
from typing import Any, cast

from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason

from inkflow.web.websocket.wire import Wire, WireFactory, passed_on_code
from tests.unit.test_websocket_upgrade import Harness, upgrade_head


class Recorder:
    """
    A L{WireHandler} that records.
    """

    def __init__(self) -> None:
        self.chunks: list[tuple[Any, bool]] = []
        self.lost_count = 0

    def chunk(self, wire: Wire, data: Any, fin: bool) -> None:
        self.chunks.append((data, fin))

    def lost(self, wire: Wire) -> None:
        self.lost_count += 1


def server_wire() -> tuple[Wire, Recorder, StringTransport, Connection]:
    handler = Recorder()
    wire = Wire(Connection(ConnectionType.SERVER), handler)
    transport = StringTransport()
    wire.makeConnection(transport)
    return wire, handler, transport, Connection(ConnectionType.CLIENT)


class WireTests(TestCase):
    def test_a_frame_is_handed_on_as_it_arrives(self) -> None:
        """Half of one 1 MB frame is handed on before the rest has come: no reassembly."""
        wire, handler, _, client = server_wire()
        frame = bytes(client.send(BytesMessage(b"a" * 1_000_000)))
        wire.dataReceived(frame[:500_000])
        self.assertEqual(len(handler.chunks), 1)
        self.assertFalse(handler.chunks[0][1])
        wire.dataReceived(frame[500_000:])
        self.assertEqual(sum(len(c) for c, _ in handler.chunks), 1_000_000)
        self.assertTrue(handler.chunks[-1][1])
        self.assertEqual(wire.bytes_in, len(frame))

    def test_send_chunk_writes_fragments(self) -> None:
        """send_chunk writes a frame per fragment: the peer reads one text message."""
        wire, _, transport, client = server_wire()
        wire.send_chunk("שלום ", False)
        wire.send_chunk("עולם", True)
        client.receive_data(transport.value())
        text = "".join(e.data for e in client.events() if isinstance(e, TextMessage))
        self.assertEqual(text, "שלום עולם")
        self.assertEqual(wire.bytes_out, len(transport.value()))

    def test_ping_is_answered(self) -> None:
        """A ping is answered with a pong (which counts as written: the relay's backpressure sees it)."""
        wire, handler, transport, client = server_wire()
        wire.dataReceived(bytes(client.send(Ping(b"p"))))
        client.receive_data(transport.value())
        self.assertEqual([type(e) for e in client.events()], [Pong])
        self.assertEqual(handler.chunks, [])

    def test_close_without_status(self) -> None:
        """A close frame without a status: close_code 1005, the close answered, the connection closed."""
        wire, _, transport, client = server_wire()
        wire.dataReceived(bytes(client.send(CloseConnection(CloseReason.NO_STATUS_RCVD))))
        self.assertEqual(wire.close_code, 1005)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(passed_on_code(wire.close_code), 1000)

    def test_close_codes_passed_on(self) -> None:
        """Codes passed on: a peer's own code kept; 1005 is 1000; a drop (None, 1006) is 1011."""
        self.assertEqual(
            [passed_on_code(c) for c in (1000, 1001, 4000, 1005, None, 1006, 999)],
            [1000, 1001, 4000, 1000, 1011, 1011, 1000],
        )

    def test_client_factory_is_quiet(self) -> None:
        """The relay's own client factory logs no "Starting factory" / "Stopping factory" lines."""
        events = captured_log(self)
        factory = WireFactory(lambda: Wire(Connection(ConnectionType.CLIENT), Recorder()))
        factory.doStart()
        factory.doStop()
        self.assertEqual([e for e in events if "factory" in e.get("log_format", "").lower()], [])


class LifeCycleTests(TestCase):
    """
    An accepted socket, through the resource, to its end.
    """

    def accepted(self) -> tuple[Harness, Wire, StringTransport, int]:
        """
        A socket accepted (its upgrade's status: 0, no HTTP answer) with n8n's side connected to C{StringTransport}.
        """
        h = Harness()
        upstream_transport = StringTransport()
        upstream = Wire(Connection(ConnectionType.CLIENT), Recorder())

        def connect(reactor: Any, url: str, handler: Any) -> Any:
            upstream.handler = handler
            upstream.makeConnection(upstream_transport)
            return succeed(upstream)

        h.resource.connect = connect
        status, _ = h.request(upgrade_head())
        return h, upstream, upstream_transport, status

    def test_browser_not_reading_stops_both_sides_being_read(self) -> None:
        """
        The browser's send buffer full (the transport pauses the channel, as
        when pongs back up): neither the browser nor n8n is read until it drains.
        """
        h, _, upstream_transport, _ = self.accepted()
        channel = h.last_channel
        channel.pauseProducing()  # what the transport does when its buffer is full
        self.assertEqual((h.last_transport.producerState, upstream_transport.producerState), ("paused", "paused"))
        channel.resumeProducing()
        self.assertEqual((h.last_transport.producerState, upstream_transport.producerState), ("producing", "producing"))
        assert upstream_transport.producer is not None
        upstream_transport.producer.pauseProducing()  # n8n not reading
        self.assertEqual(h.last_transport.producerState, "paused")

    def test_closed_socket_leaves_no_unhandled_deferred(self) -> None:
        """The browser and n8n sockets opened and closed, then gc: no "Unhandled error in Deferred"."""
        events = captured_log(self)
        h, upstream, upstream_transport, status = self.accepted()
        self.assertEqual(status, 0)  # no HTTP answer: the upgrade
        channel = h.last_channel
        self.assertIn(b"101 Switching Protocols", h.last_transport.value())
        self.assertEqual(h.resource.sockets.open, 1)
        browser = Connection(ConnectionType.CLIENT)
        channel.dataReceived(bytes(browser.send(TextMessage("hi"))))
        self.assertTrue(upstream_transport.value())  # the browser's first message went to n8n at once
        channel.connectionLost(Failure(ConnectionError("browser gone")))
        upstream.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(h.resource.sockets.open, 0)
        gc.collect()
        unhandled = [e for e in events if "Unhandled" in str(e.get("log_format", "")) or e.get("log_failure")]
        self.assertEqual(unhandled, [])


def captured_log(test: TestCase) -> list[LogEvent]:
    """
    Every log event emitted until C{test} ends.
    """
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return events

"""
One test per private Twisted part InkFlow uses (L{inkflow.web.twisted_hooks},
its web and its client section): a Twisted upgrade that moves one of them
fails here, by name.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import _WrappingFactory
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import http, server
from twisted.web._newclient import HTTP11ClientProtocol, Request
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.static import Data

from inkflow.web import twisted_hooks
from inkflow.web.channel import InkFlowChannel
from tests.support.pools import connection_factory
from tests.unit.helpers import collector_off


class _Spy(http.HTTPChannel):
    """
    A stock channel that records what the hooks read while a head is parsed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[tuple[bytes, bytes], bytes]] = []

    def allHeadersReceived(self) -> None:
        self.seen.append((twisted_hooks.request_line(self), twisted_hooks.request_version(self)))
        super().allHeadersReceived()


def _connect(channel: http.HTTPChannel) -> StringTransport:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    channel.requestFactory = server.Request
    site = server.Site(Data(b"", "text/plain"))
    channel.site = site  # type: ignore[attr-defined]
    channel.makeConnection(transport)
    return transport


class TwistedHooksTests(TestCase):
    """
    Each private attribute or method behaves as InkFlow assumes.
    """

    def test_request_line_reads_command_and_path(self) -> None:
        """C{_command} and C{_path} hold the method and raw target while the head is parsed."""
        channel = _Spy()
        _connect(channel)
        channel.dataReceived(b"POST /api/%63hat?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n")
        self.assertEqual(channel.seen[0][0], (b"POST", b"/api/%63hat?x=1"))

    def test_request_version_reads_version(self) -> None:
        """C{_version} holds the request's HTTP version while the head is parsed."""
        channel = _Spy()
        _connect(channel)
        channel.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(channel.seen[0][1], b"HTTP/1.0")

    def test_is_disconnected_follows_connection_lost(self) -> None:
        """C{Request._disconnected} turns true when the connection is lost."""
        channel = http.HTTPChannel()
        _connect(channel)
        request = server.Request(channel)
        self.assertFalse(twisted_hooks.is_disconnected(request))
        request.connectionLost(Failure(Exception("gone")))
        self.assertTrue(twisted_hooks.is_disconnected(request))

    def test_waiting_for_transport_follows_pause_and_resume(self) -> None:
        """C{_waitingForTransport} is set by the transport's pauseProducing and cleared by resumeProducing."""
        channel = http.HTTPChannel()
        _connect(channel)
        self.assertFalse(twisted_hooks.waiting_for_transport(channel))
        channel.pauseProducing()
        self.assertTrue(twisted_hooks.waiting_for_transport(channel))
        channel.resumeProducing()
        self.assertFalse(twisted_hooks.waiting_for_transport(channel))

    def test_bad_request_method_is_what_twisted_calls_on_bad_framing(self) -> None:
        """twisted.web answers a bad Content-Length through the method InkFlowChannel overrides."""
        self.assertTrue(callable(getattr(http.HTTPChannel, twisted_hooks.BAD_REQUEST_METHOD, None)))
        self.assertIn(twisted_hooks.BAD_REQUEST_METHOD, vars(InkFlowChannel))
        calls: list[bool] = []

        class Recording(http.HTTPChannel):
            pass

        setattr(Recording, twisted_hooks.BAD_REQUEST_METHOD, lambda self: calls.append(True))
        channel = Recording()
        _connect(channel)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        self.assertEqual(calls, [True])

    def test_respond_bad_request_answers_with_twisteds_bare_400_path(self) -> None:
        """C{respond_bad_request} reaches twisted.web's own bad-request answer: a plain channel sends its bare 400 and closes."""
        channel = http.HTTPChannel()
        transport = _connect(channel)
        twisted_hooks.respond_bad_request(channel)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_inkflow_channel_calls_the_bad_request_answer_only_through_the_hook(self) -> None:
        """InkFlowChannel's framing checks call the private method through the hook, never by name."""
        import inspect

        from inkflow.web import channel as channel_module

        source = inspect.getsource(channel_module)
        self.assertNotIn("." + twisted_hooks.BAD_REQUEST_METHOD + "(", source)

    def test_finish_body_method_calls_all_content_received(self) -> None:
        """The end of a body goes through C{_finishRequestBody} to the public C{allContentReceived}."""
        self.assertTrue(callable(getattr(http.HTTPChannel, twisted_hooks.FINISH_BODY_METHOD, None)))
        calls: list[bool] = []

        class Recording(http.HTTPChannel):
            def allContentReceived(self) -> None:
                calls.append(True)

        channel = Recording()
        _connect(channel)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        self.assertEqual(calls, [True])

    def test_reason_phrase_covers_codes_twisted_lacks(self) -> None:
        """Reason phrases come from twisted.web.http.RESPONSES, and 429 is not 'Unknown Status'."""
        self.assertEqual(twisted_hooks.reason_phrase(404), http.RESPONSES[404])
        self.assertEqual(twisted_hooks.reason_phrase(429), b"Too Many Requests")
        self.assertEqual(twisted_hooks.reason_phrase(599), b"Error")

    def test_hold_input_stops_the_line_parser_between_requests(self) -> None:
        """C{LineReceiver.paused} keeps pipelined requests unparsed until released and fed."""
        seen: list[bytes] = []

        class Recording(http.HTTPChannel):
            def allHeadersReceived(self) -> None:
                seen.append(twisted_hooks.request_line(self)[1])
                twisted_hooks.hold_input(self, True)
                super().allHeadersReceived()

        channel = Recording()
        _connect(channel)
        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(seen, [b"/1"])
        twisted_hooks.hold_input(channel, False)
        channel.dataReceived(b"")
        self.assertEqual(seen, [b"/1", b"/2"])

    def test_take_over_connection_hands_bytes_and_end_to_the_protocol(self) -> None:
        """
        C{_protocolUpgradeForWebsockets}: the protocol gets the channel's
        transport and every later byte; at the end its connectionLost runs,
        then the channel's own (its bookkeeping).
        """
        self.assertTrue(callable(getattr(http.HTTPChannel, twisted_hooks.UPGRADE_METHOD, None)))
        ended: list[str] = []

        class Channel(http.HTTPChannel):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                ended.append("channel")
                super().connectionLost(reason)

        class Taker(Protocol):
            def __init__(self) -> None:
                self.data: list[bytes] = []

            def dataReceived(self, data: bytes) -> None:
                self.data.append(data)

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                ended.append("protocol")

        channel = Channel()
        transport = _connect(channel)
        taker = Taker()
        twisted_hooks.take_over_connection(channel, taker)
        self.assertIs(taker.transport, transport)
        channel.dataReceived(b"\x81\x00")
        self.assertEqual(taker.data, [b"\x81\x00"])
        channel.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(ended, ["protocol", "channel"])


def _start_and_stop(factory: Factory) -> list[LogEvent]:
    """
    Start and stop C{factory} as a connection does; what it logged.
    """
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        factory.doStart()
        factory.doStop()
    finally:
        globalLogPublisher.removeObserver(observer)
    return events


class ClientHooksTests(TestCase):
    """
    The client section: each private part of twisted.web.client behaves as
    InkFlow's n8n pool assumes.
    """

    def test_the_pool_opens_connections_with_its_factory_class(self) -> None:
        """
        C{HTTPConnectionPool._factory} is the class a new connection's
        factory is built from, a C{_HTTP11ClientFactory}; stock, it logs.
        """
        self.assertIs(HTTPConnectionPool._factory, _HTTP11ClientFactory)
        stock = connection_factory(HTTPConnectionPool(MemoryReactorClock()))
        self.assertIsInstance(stock, _HTTP11ClientFactory)
        self.assertTrue(stock.noisy)

    def test_quiet_pool_connections_do_not_log(self) -> None:
        """
        After L{quiet_pool}, the pool's connections are opened by a quiet
        C{_HTTP11ClientFactory}: starting and stopping it logs nothing.
        """
        factory = connection_factory(twisted_hooks.quiet_pool(HTTPConnectionPool(MemoryReactorClock())))
        self.assertIsInstance(factory, _HTTP11ClientFactory)
        events = _start_and_stop(factory)
        self.assertEqual(events, [])

    def test_a_stock_factory_logs_what_quiet_pool_silences(self) -> None:
        """
        The lines L{quiet_pool} silences exist: a stock factory logs
        "Starting factory" and "Stopping factory".
        """
        factory = connection_factory(HTTPConnectionPool(MemoryReactorClock()))
        events = _start_and_stop(factory)
        texts = [formatEvent(event) for event in events]
        self.assertTrue(any(t.startswith("Starting factory") for t in texts), texts)
        self.assertTrue(any(t.startswith("Stopping factory") for t in texts), texts)

    def test_treq_client_is_not_unwrapped(self) -> None:
        """
        The n8n client takes the pool's agent itself: nothing in InkFlow
        reads treq's private C{HTTPClient._agent}.
        """
        root = Path(__file__).resolve().parents[2] / "inkflow"
        readers = [p.name for p in root.rglob("*.py") if "._agent" in p.read_text().replace("self._agent", "")]
        self.assertEqual(readers, [])


_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'e\r\n{"type":"end"}\r\n0\r\n\r\n'
)


def _one_chunked_exchange(protocol: HTTP11ClientProtocol) -> weakref.ref[Any]:
    """
    One request and its chunked answer, read to the end, on C{protocol};
    a weak reference to the answer's parser.
    """
    protocol.makeConnection(StringTransport())
    answered = protocol.request(
        Request(b"POST", b"/webhook/chat", Headers({b"Host": [b"n8n.test"]}), None, persistent=True)
    )
    head = _CHUNKED.index(b"\r\n\r\n") + 4
    protocol.dataReceived(_CHUNKED[:head])
    parser = weakref.ref(protocol._parser)
    response = cast(Any, answered.result)
    response.deliverBody(Protocol())
    protocol.dataReceived(_CHUNKED[head:])
    return parser


class ClientCycleTests(TestCase):
    """
    The pool's connections leave no reference cycle behind: at 2,000
    streams a burst left tens of thousands of objects for the garbage
    collector, whose generation-1 pass then stopped the server for most of
    a second.
    """

    def pool_protocol(self) -> HTTP11ClientProtocol:
        factory = connection_factory(twisted_hooks.quiet_pool(HTTPConnectionPool(MemoryReactorClock())))
        return cast(HTTP11ClientProtocol, factory.buildProtocol(None))

    def test_stock_parser_and_chunked_decoder_refer_to_each_other(self) -> None:
        """
        Twisted's own: a chunked answer read to the end leaves its parser in
        a cycle with its decoder (the decoder's C{finishCallback} is the
        parser's method).  When this fails, Twisted has fixed it and
        L{twisted_hooks._ClientProtocol._disconnectParser} can go.
        """
        with collector_off():
            parser = _one_chunked_exchange(HTTP11ClientProtocol())
            self.assertIsNotNone(parser())

    def test_pool_protocol_frees_a_finished_parser(self) -> None:
        """
        On the pool's connections a finished answer's parser is freed by
        reference counting.
        """
        with collector_off():
            parser = _one_chunked_exchange(self.pool_protocol())
            self.assertIsNone(parser())

    def test_stock_connector_keeps_its_lost_transport(self) -> None:
        """
        Twisted's own: a TCP connector keeps its transport after the
        connection is lost, and the transport its connector (a cycle).  When
        this fails, L{twisted_hooks._ClientProtocol.connectionLost} need not
        clear it.
        """
        connector = tcp.Connector.__new__(tcp.Connector)
        connector.factory = ClientFactory()
        connector.factoryStarted = 0
        connector.transport = cast(Any, transport := object())
        connector.connectionLost(Failure(ConnectionDone()))
        self.assertIs(connector.transport, transport)

    def test_pool_protocol_lets_the_connector_go_of_its_transport(self) -> None:
        """
        When a pool connection is lost, its connector no longer refers to
        the transport (which refers to the connector).
        """
        protocol = self.pool_protocol()
        transport = StringTransport()
        connector = SimpleNamespace(transport=transport)
        cast(Any, transport).connector = connector
        protocol.makeConnection(transport)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(connector.transport)


class _Connector:
    """
    What an endpoint's factory sees of a TCP connector.
    """

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.transport: Any = None

    def getDestination(self) -> Any:
        return IPv4Address("TCP", "127.0.0.1", 5678)

    def stopConnecting(self) -> None:
        pass


def _connected_through_an_endpoint(protocol_factory: Any) -> tuple[Any, weakref.ref[Any]]:
    """
    What an endpoint builds to connect C{protocol_factory}, as after a TCP
    connection was made: its connector (the transport set on it and it on
    the transport) and a weak reference to the endpoint's wrapping factory.
    """
    wrapping = _WrappingFactory(protocol_factory)
    connector = _Connector(wrapping)
    wrapping.startedConnecting(connector)
    wrapper = wrapping.buildProtocol(None)
    transport = StringTransport()
    cast(Any, transport).connector = connector
    connector.transport = transport
    wrapper.makeConnection(transport)
    return wrapper, weakref.ref(wrapping)


class EndpointCycleTests(TestCase):
    """
    The endpoint's wrapping factory of a pool connection is freed by
    reference counting once the connection is lost.
    """

    def test_stock_wrapping_factory_stays_in_cycles(self) -> None:
        """
        Twisted's own: an endpoint's C{_WrappingFactory} keeps its connector
        (whose factory it is) and its fired Deferred (whose canceller is its
        method) after the connection is lost.  When this fails,
        L{twisted_hooks._ClientProtocol.connectionLost} need not let go of
        them.
        """
        with collector_off():
            wrapper, wrapping = _connected_through_an_endpoint(ClientFactory.forProtocol(Protocol))
            wrapper.connectionLost(Failure(ConnectionDone()))
            del wrapper
            self.assertIsNotNone(wrapping())

    def test_pool_connection_lets_the_wrapping_factory_go(self) -> None:
        """
        A lost pool connection leaves its endpoint's wrapping factory to
        reference counting.
        """
        factory = connection_factory(twisted_hooks.quiet_pool(HTTPConnectionPool(MemoryReactorClock())))
        with collector_off():
            wrapper, wrapping = _connected_through_an_endpoint(factory)
            wrapper.connectionLost(Failure(ConnectionDone()))
            del wrapper, factory
            self.assertIsNone(wrapping())

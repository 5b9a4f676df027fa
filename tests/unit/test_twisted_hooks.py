"""
One test per twisted.web private hook InkFlow uses (L{inkflow.web.twisted_hooks}):
a Twisted upgrade that moves one of them fails here, by name.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import http, server
from twisted.web.static import Data

from inkflow.web import twisted_hooks
from inkflow.web.channel import InkFlowChannel


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

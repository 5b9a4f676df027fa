"""
C{--max-connections-per-ip}: the open connections of one client address
(keyed like the rate limit), counted in the registry
(L{inkflow.web.connections.Connections.claim}) when the connection opens or,
behind a trusted proxy, from each request's head; over the cap a polite
C{503 too_many_connections_from_address} with C{Retry-After}, while other
addresses are served.  C{StringTransport} and C{Clock}, no network.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from inkflow.settings import ConfigError, Settings, load_settings
from inkflow.web.channel import InkFlowChannel
from inkflow.web.connections import Connections
from inkflow.web.site import InkFlowSite
from tests.unit.test_channel import Echo, sink_for


class _Claimant:
    def __init__(self, idle: bool = False) -> None:
        self.idle = idle
        self.closed = False

    def is_idle(self) -> bool:
        return self.idle

    def close_when_idle(self) -> None:
        self.closed = True


class ClaimTests(TestCase):
    """
    The registry's count per address.
    """

    def test_an_address_holds_at_most_the_limit_others_unaffected(self) -> None:
        """At the limit an address's next connection is refused; another address's is counted."""
        connections = Connections()
        held = [_Claimant() for _ in range(3)]
        self.assertEqual([connections.claim(c, "10.0.0.1", 3) for c in held], [True] * 3)
        self.assertFalse(connections.claim(_Claimant(), "10.0.0.1", 3))
        self.assertTrue(connections.claim(_Claimant(), "10.0.0.2", 3))
        self.assertEqual((connections.held_by("10.0.0.1"), connections.address_rejected), (3, 1))

    def test_an_idle_connection_makes_room_for_its_address(self) -> None:
        """At the limit, the address's oldest idle kept-alive connection is closed and the newcomer counted."""
        connections = Connections()
        busy, idle = _Claimant(), _Claimant(idle=True)
        connections.claim(busy, "a", 2)
        connections.claim(idle, "a", 2)
        newcomer = _Claimant()
        self.assertTrue(connections.claim(newcomer, "a", 2))
        self.assertEqual((idle.closed, busy.closed, connections.held_by("a")), (True, False, 2))

    def test_a_closed_connection_frees_its_place_and_the_key(self) -> None:
        """release_address (and gone) uncount; an address with none left is forgotten."""
        connections = Connections()
        c = _Claimant()
        connections.claim(c, "a", 1)
        connections.release_address(c)
        connections.release_address(c)  # idempotent
        self.assertEqual(connections.held_by("a"), 0)
        self.assertEqual(connections._by_address, {})
        self.assertTrue(connections.claim(_Claimant(), "a", 1))

    def test_a_connection_moves_to_the_address_of_its_request(self) -> None:
        """A proxy's kept-alive connection carrying another client's request is counted under that client."""
        connections = Connections()
        c = _Claimant()
        connections.claim(c, "a", 5)
        connections.claim(c, "b", 5)
        self.assertEqual((connections.held_by("a"), connections.held_by("b")), (0, 1))

    def test_zero_is_off(self) -> None:
        """--max-connections-per-ip 0 counts nothing and refuses nothing."""
        connections = Connections()
        self.assertTrue(all(connections.claim(_Claimant(), "a", 0) for _ in range(100)))
        self.assertEqual(connections.held_by("a"), 0)


class SettingsTests(TestCase):
    def test_default_is_a_quarter_of_max_connections_at_least_eight(self) -> None:
        """auto: 12 at the default 50, 8 at 20, never above --max-connections; a number or 0 as given."""
        self.assertEqual(Settings.defaults().connections_per_ip, 12)
        self.assertEqual(Settings.defaults(max_connections=20).connections_per_ip, 8)
        self.assertEqual(Settings.defaults(max_connections=5).connections_per_ip, 5)
        self.assertEqual(Settings.defaults(max_connections=400).connections_per_ip, 100)
        self.assertEqual(Settings.defaults(max_connections_per_ip=0).connections_per_ip, 0)
        self.assertEqual(Settings.defaults(max_connections_per_ip=3).connections_per_ip, 3)

    def test_auto_zero_and_numbers_from_every_source(self) -> None:
        """ "auto" (any case) is the derived default; 0 and numbers as given; junk is one line naming the option."""
        self.assertIsNone(load_settings(flags={"max-connections-per-ip": "Auto"}).max_connections_per_ip)
        self.assertEqual(load_settings(environ={"INKFLOW_MAX_CONNECTIONS_PER_IP": "0"}).connections_per_ip, 0)
        self.assertEqual(load_settings(flags={"max-connections-per-ip": "20"}).connections_per_ip, 20)
        with self.assertRaises(ConfigError) as raised:
            load_settings(flags={"max-connections-per-ip": "many"})
        self.assertIn("--max-connections-per-ip", str(raised.exception))
        self.assertIn("auto or", str(raised.exception))


class ChannelTests(TestCase):
    """
    The cap at the channel: one address holding its places, another served.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self._site: InkFlowSite | None = None

    @property
    def settings(self) -> Settings:
        return Settings.defaults(max_connections=50, max_connections_per_ip=3, header_timeout=10.0)

    @property
    def site(self) -> InkFlowSite:
        if self._site is None:
            self._site = InkFlowSite(Echo(), self.settings, self.clock, sink_for)
        return self._site

    def connect(self, host: str = "10.0.0.1", xff: bool = False) -> tuple[InkFlowChannel, StringTransport]:
        peer = IPv6Address("TCP", host, 5000) if ":" in host else IPv4Address("TCP", host, 5000)
        channel = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport

    def hold(self, host: str = "10.0.0.1", n: int = 3) -> list[InkFlowChannel]:
        """C{n} connections from C{host}, each with a body still arriving (busy, not idle)."""
        held = []
        for _ in range(n):
            channel, _ = self.connect(host)
            channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
            held.append(channel)
        return held

    def answer(self, transport: StringTransport) -> tuple[int, dict[str, object] | None, bytes]:
        out = transport.value()
        try:
            body = json.loads(out.split(b"\r\n\r\n", 1)[1])
        except ValueError:
            body = None
        return int(out[9:12]), body, out

    def test_over_the_cap_is_a_polite_503_while_another_address_is_served(self) -> None:
        """The 4th connection of an address holding 3: 503 too_many_connections_from_address, Retry-After; others 200."""
        self.hold()
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body, out = self.answer(transport)
        self.assertEqual(status, 503)
        assert body is not None
        self.assertEqual(body["error"]["code"], "too_many_connections_from_address")  # type: ignore[index]
        self.assertIn(b"Retry-After: ", out)
        self.assertTrue(transport.disconnecting)
        other, other_transport = self.connect("10.0.0.2")
        other.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.answer(other_transport)[0], 200)

    def test_silent_sockets_count_and_the_extra_one_is_answered_within_a_second(self) -> None:
        """Sockets that never send a head count too; the extra one gets the 503 after 1 s, not a 408 after 10 s."""
        for _ in range(3):
            self.connect()
        _channel, transport = self.connect()
        self.clock.advance(1.1)
        status, body, _ = self.answer(transport)
        assert body is not None
        self.assertEqual((status, body["error"]["code"]), (503, "too_many_connections_from_address"))  # type: ignore[index]

    def test_health_is_answered_over_the_cap(self) -> None:
        """Over the cap, /api/health is still answered (then the connection closes)."""
        self.hold()
        channel, transport = self.connect()
        channel.dataReceived(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, out = self.answer(transport)
        self.assertEqual(status, 200)
        self.assertIn(b"Connection: close", out)

    def test_a_closed_connection_lets_the_address_in_again(self) -> None:
        """When one of the held connections closes, the address's next connection is served."""
        held = self.hold()
        held[0].connectionLost(Failure(Exception("gone")))
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.answer(transport)[0], 200)
        self.assertEqual(self.site.connections.held_by("10.0.0.1"), 3)

    def test_idle_kept_alive_connections_make_room_for_their_address(self) -> None:
        """An address with 3 idle kept-alive connections gets a 4th; the oldest idle one is closed."""
        idle = []
        for _ in range(3):
            channel, transport = self.connect()
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(transport)
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.answer(transport)[0], 200)
        self.assertEqual([t.disconnecting for t in idle], [True, False, False])
        self.assertEqual(self.site.connections.held_by("10.0.0.1"), 3)

    def test_ipv6_addresses_of_one_64_share_a_cap(self) -> None:
        """Two addresses of the same IPv6 /64 count as one client (as in the rate limit)."""
        self.hold("2001:db8::1", 2)
        self.hold("2001:db8::2", 1)
        channel, transport = self.connect("2001:db8::3")
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.answer(transport)[0], 503)

    def test_through_a_trusted_proxy_each_request_counts_for_its_client(self) -> None:
        """Behind --trusted-proxy, the proxy's connections are counted per X-Forwarded-For client, not per proxy."""
        self.site.settings = self.settings.replace(trusted_proxy=("10.9.0.0/16",))
        for _ in range(3):
            channel, _ = self.connect("10.9.0.1")
            channel.dataReceived(
                b"POST /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 10\r\n\r\n{"
            )
        channel, transport = self.connect("10.9.0.1")
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
        self.assertEqual(self.answer(transport)[0], 503)
        channel, transport = self.connect("10.9.0.1")
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.8\r\n\r\n")
        self.assertEqual(self.answer(transport)[0], 200)

    def test_a_connection_over_its_address_cap_takes_no_global_place(self) -> None:
        """Refused for its address, a connection leaves its --max-connections place to others at once."""
        self.hold()
        for _ in range(5):
            self.connect()
        self.assertEqual(self.site.connections.admitted, 3)
        channel, _ = self.connect("10.0.0.2")
        self.assertFalse(channel.over_limit or channel.over_address)

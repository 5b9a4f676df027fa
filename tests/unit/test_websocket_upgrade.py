"""
The C{/chat} WebSocket's upgrade path, driven through a real twisted.web
channel over an in-memory transport: refusals are JSON, the handshake is
strict, the Origin rule is the chat's, upgrades are rate limited, the query
reaches n8n unchanged.  Reactor-free (a L{Clock}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web import http, server

from inkflow.settings import load_settings
from inkflow.state.base import StateConfig
from inkflow.state.chat import SharedExecutions
from inkflow.state.memory import MemoryState
from inkflow.web.websocket import ChatSocketResource, ChatSockets

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_head(target: bytes = b"/chat?executionId=1", version: bytes = b"HTTP/1.1", **extra: bytes) -> bytes:
    headers = {
        b"Host": b"site.example",
        b"Upgrade": b"websocket",
        b"Connection": b"Upgrade",
        b"Sec-WebSocket-Key": KEY,
        b"Sec-WebSocket-Version": b"13",
    }
    lines = [b"GET " + target + b" " + version]
    for name, value in headers.items():
        if name.decode().replace("-", "_").lower() not in extra:
            lines.append(name + b": " + value)
    for key, value in extra.items():
        lines.append(key.replace("_", "-").encode() + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Harness:
    """
    A L{ChatSocketResource} behind a stock L{server.Site}; C{connect}
    records where it was asked to go and never answers.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.settings = load_settings(
            flags={"webhook": ["http://n8n.example:5678/webhook/abc/chat"], "cors-origin": ["https://shop.example"]}
        )
        self.urls: list[str] = []
        self.resource = ChatSocketResource(
            self.settings,
            self.clock,
            SharedExecutions(MemoryState(self.clock, StateConfig())),
            ChatSockets(),
            draining=lambda: False,
            connect=self.connect,
            **kwargs,
        )

    def connect(self, reactor: Any, url: str, *args: Any) -> Deferred[Any]:
        self.urls.append(url)
        return Deferred()

    def request(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        site = server.Site(self.resource)
        channel = http.HTTPChannel()
        channel.site = site  # type: ignore[attr-defined]
        channel.requestFactory = server.Request
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 5000))
        channel.makeConnection(transport)
        self.last_channel, self.last_transport = channel, transport
        channel.dataReceived(raw)
        out = transport.value()
        if not out or out.startswith(b"HTTP/1.1 101"):
            return 0, {}
        head, _, body = out.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if b"chunked" in head.lower():
            body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        return status, json.loads(body) if body.strip() else {}


class UpgradeRefusalTests(TestCase):
    """
    What is refused before any upgrade, as JSON.
    """

    def assertRefused(self, raw: bytes, status: int, code: str, harness: Harness | None = None) -> None:
        h = harness or Harness()
        before = list(h.urls)
        got = h.request(raw)
        self.assertEqual((got[0], got[1].get("error", {}).get("code")), (status, code))
        self.assertEqual(h.urls, before)

    def test_del_byte_in_target_is_400(self) -> None:
        """A DEL byte in the request target: 400 bad_request, never a 500."""
        self.assertRefused(upgrade_head(b"/chat?executionId=1&x=\x7f"), 400, "bad_request")

    def test_http_10_upgrade_is_400(self) -> None:
        """WebSockets need HTTP/1.1: an HTTP/1.0 upgrade is 400."""
        self.assertRefused(upgrade_head(version=b"HTTP/1.0"), 400, "bad_request")

    def test_two_keys_are_400(self) -> None:
        """Exactly one Sec-WebSocket-Key: two (even equal) are 400."""
        raw = upgrade_head().replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n")
        self.assertRefused(raw, 400, "bad_request")

    def test_malformed_key_is_400(self) -> None:
        """A key that is not 16 bytes in base64 is 400."""
        for key in (b"short", b"not base64 at all!!!!!!!", b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA"):
            self.assertRefused(upgrade_head(sec_websocket_key=key), 400, "bad_request")

    def test_missing_key_is_400(self) -> None:
        """No key at all is 400."""
        raw = upgrade_head().replace(b"Sec-WebSocket-Key: " + KEY + b"\r\n", b"")
        self.assertRefused(raw, 400, "bad_request")

    def test_non_http_origin_is_403(self) -> None:
        """An Origin that is not http(s) is refused, as for chat."""
        self.assertRefused(upgrade_head(origin=b"chrome-extension://site.example"), 403, "forbidden_origin")

    def test_cross_site_fetch_is_403(self) -> None:
        """Sec-Fetch-Site: cross-site without a listed Origin is refused, as for chat."""
        self.assertRefused(upgrade_head(sec_fetch_site=b"cross-site"), 403, "forbidden_origin")

    def test_default_ports_are_the_own_origin(self) -> None:
        """Host with :443 (or :80) and an Origin without a port: the request's own origin."""
        for host, origin in (
            (b"site.example:443", b"https://site.example"),
            (b"site.example:80", b"http://site.example"),
        ):
            h = Harness()
            self.assertEqual(h.request(upgrade_head(host=host, origin=origin)), (0, {}))
            self.assertEqual(len(h.urls), 1)

    def test_upgrades_are_rate_limited(self) -> None:
        """Past the limit an upgrade is 429 rate_limited, before n8n is asked."""
        clock = Clock()
        h = Harness(rate_take=MemoryState(clock, StateConfig(rate_limit=2)).rate_take)
        h.request(upgrade_head())
        h.request(upgrade_head())
        self.assertEqual(len(h.urls), 2)
        self.assertRefused(upgrade_head(), 429, "rate_limited", h)

    def test_query_passed_unchanged(self) -> None:
        """n8n 2.41's token and every other parameter reach n8n as the browser wrote them."""
        h = Harness()
        query = b"sessionId=s%20x&executionId=34&isPublic=true&token=970493fc%2Bab"
        h.request(upgrade_head(b"/chat?" + query))
        self.assertEqual(h.urls, ["ws://n8n.example:5678/chat?" + query.decode()])

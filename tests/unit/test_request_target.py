"""
The request target as the channel reads it (RFC 9112 3.2): the absolute
form for InkFlow's own host is served like the origin form, another host is
a JSON 400; a DEL, a control or a non-ASCII byte in any target is a JSON 400,
never a 500.  Driven through the real site and routes over a
C{StringTransport}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from tests.unit.test_routes import FakeForwarder, make_app

CHAT = b'{"message":"hi"}'


class RequestTargetTests(TestCase):
    def exchange(self, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any] | None, bytes]:
        """
        Send one request on a new connection to the real site; its status,
        its JSON body (C{None} when not JSON) and the raw answer.
        """
        _, stub = make_app(self, FakeForwarder({"output": "שלום"}))
        site = stub.agent.site
        peer = IPv4Address("TCP", "127.0.0.1", 5000)
        channel = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 8000))
        channel.makeConnection(transport)
        with capturedLogs() as events:
            channel.dataReceived(head + b"\r\n" + body)
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.error], [])
        out = transport.value()
        status = int(out[9:12])
        try:
            parsed = json.loads(out.split(b"\r\n\r\n", 1)[1])
        except ValueError:
            parsed = None
        return status, parsed, out

    def chat_head(self, target: bytes, host: bytes = b"inkflow.test") -> bytes:
        return (
            b"POST " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(CHAT)).encode() + b"\r\n"
        )

    def test_absolute_form_for_the_own_host_is_served(self) -> None:
        """POST http://<Host>/api/chat is the chat route (RFC 9112 3.2.2: a server must accept the absolute form)."""
        status, body, _ = self.exchange(self.chat_head(b"http://inkflow.test/api/chat"), CHAT)
        self.assertEqual((status, body and body["output"]), (200, "שלום"))

    def test_absolute_form_keeps_the_query_and_default_port(self) -> None:
        """http://host:80/api/health?x=1 with Host: host is /api/health."""
        status, body, _ = self.exchange(b"GET http://inkflow.test:80/api/health?x=1 HTTP/1.1\r\nHost: INKFLOW.test\r\n")
        self.assertEqual((status, body and body["status"]), (200, "ok"))

    def test_absolute_form_for_another_host_is_a_json_400(self) -> None:
        """http://evil.example/... on a connection whose Host is InkFlow's: 400 bad_request (InkFlow is no proxy)."""
        status, body, _ = self.exchange(self.chat_head(b"http://evil.example/api/chat"), CHAT)
        self.assertEqual((status, body and body["error"]["code"]), (400, "bad_request"))

    def test_absolute_form_with_another_scheme_is_a_json_400(self) -> None:
        """ftp://inkflow.test/api/health: 400 bad_request."""
        status, body, _ = self.exchange(b"GET ftp://inkflow.test/api/health HTTP/1.1\r\nHost: inkflow.test\r\n")
        self.assertEqual((status, body and body["error"]["code"]), (400, "bad_request"))

    def test_del_byte_in_any_target_is_a_json_400(self) -> None:
        """A DEL byte in the path or the query of any target (chat, health, a file, /chat): 400 bad_request JSON."""
        for target in (b"/api/chat\x7f", b"/api/health?x=\x7f", b"/\x7f", b"/chat?token=\x7f"):
            status, body, _ = self.exchange(b"GET " + target + b" HTTP/1.1\r\nHost: inkflow.test\r\n")
            self.assertEqual((status, body and body["error"]["code"]), (400, "bad_request"), target)

    def test_del_byte_in_a_websocket_upgrade_target_is_a_json_400(self) -> None:
        """An upgrade to /chat?\\x7f is refused by the channel before the WebSocket resource sees it."""
        head = (
            b"GET /chat?t=\x7f HTTP/1.1\r\nHost: inkflow.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )
        status, body, _ = self.exchange(head)
        self.assertEqual((status, body and body["error"]["code"]), (400, "bad_request"))

    def test_control_and_high_bytes_in_a_target_are_json_400s(self) -> None:
        """C0 controls and bytes over 0x7e (what Twisted lets through: 0x7f-0xb0) are 400 bad_request JSON."""
        for target in (b"/\x01", b"/api/\x80", b"/api/health?\xb0", b"/\x1b[31m"):
            status, body, _ = self.exchange(b"GET " + target + b" HTTP/1.1\r\nHost: inkflow.test\r\n")
            self.assertEqual((status, body and body["error"]["code"]), (400, "bad_request"), target)

    def test_absolute_form_without_host_names_the_listening_address(self) -> None:
        """HTTP/1.0 with no Host: the absolute form is accepted for the address connected to, else 400."""
        status, body, _ = self.exchange(b"GET http://127.0.0.1:8000/api/health HTTP/1.0\r\n")
        self.assertEqual((status, body and body["status"]), (200, "ok"))
        status, body, _ = self.exchange(b"GET http://127.0.0.1:9999/api/health HTTP/1.0\r\n")
        self.assertEqual((status, body and body["error"]["code"]), (400, "bad_request"))

    def test_user_information_is_refused_and_an_empty_path_is_the_root(self) -> None:
        """http://user@host/ (user information) is a 400; http://host with no path is "/" (the page)."""
        status, body, _ = self.exchange(b"GET http://me@inkflow.test/api/health HTTP/1.1\r\nHost: inkflow.test\r\n")
        self.assertEqual((status, body and body["error"]["code"]), (400, "bad_request"))
        status, body, _ = self.exchange(b"GET http://inkflow.test HTTP/1.1\r\nHost: inkflow.test\r\n")
        self.assertEqual(status, 200)  # the page: "/" for an empty path

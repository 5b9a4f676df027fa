"""
Tests for the @n8n/chat widget's options: C{--chat-input-key},
C{--chat-session-key}, C{--cors-allow-header}, C{--forward-header}, the
breaker settings and a client's C{Idempotency-Key} on the way to n8n.
Reactor-free.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from inkflow.chat import ChatBody, ChatMessage, UploadedFile, forwarded_headers, parse_chat
from inkflow.errors import ApiError
from inkflow.settings import ConfigError, load_settings
from inkflow.web.uploads import MultipartSink
from tests.unit.test_forward import ForwarderTestsMixin, parse_multipart, refuse, respond
from tests.unit.test_uploads import BOUNDARY, CONTENT_TYPE, SinkTestCase, body, field, file_part


def parse(fields: dict[str, Any], **keys: str) -> ChatMessage:
    return parse_chat(ChatBody(fields=fields), request_id="r", max_chars=100, max_files=5, **keys)


class OptionTests(TestCase):
    """
    The new options parse, validate and default as documented.
    """

    def test_defaults(self) -> None:
        """The widget's own defaults, 600 s of replay, the breaker's 5 / 30 s, a 90 s WebSocket idle timeout."""
        s = load_settings()
        self.assertEqual((s.chat_input_key, s.chat_session_key), ("chatInput", "sessionId"))
        self.assertEqual((s.cors_allow_header, s.forward_header), ((), ()))
        self.assertEqual(s.idempotency_ttl, 600.0)
        self.assertEqual((s.breaker_failures, s.breaker_cooldown), (5, 30.0))
        self.assertEqual((s.websocket_idle_timeout, s.websocket_max_message), (90.0, 0))
        self.assertGreater(s.websocket_message_limit, s.max_files * s.max_file_size * 4 // 3)
        self.assertEqual(s.replace(websocket_max_message=1000).websocket_message_limit, 1000)

    def test_from_flags_and_environment(self) -> None:
        """Repeatable header options take a comma list in the environment."""
        s = load_settings(
            flags={"chat-input-key": "question", "forward-header": ["X-Tenant"]},
            environ={
                "INKFLOW_CHAT_SESSION_KEY": "conversation",
                "INKFLOW_CORS_ALLOW_HEADER": "X-Widget-Token,X-Tenant",
                "INKFLOW_BREAKER_FAILURES": "2",
                "INKFLOW_BREAKER_COOLDOWN": "1.5",
                "INKFLOW_IDEMPOTENCY_TTL": "0",
            },
        )
        self.assertEqual((s.chat_input_key, s.chat_session_key), ("question", "conversation"))
        self.assertEqual(s.cors_allow_header, ("X-Widget-Token", "X-Tenant"))
        self.assertEqual(s.forward_header, ("X-Tenant",))
        self.assertEqual((s.breaker_failures, s.breaker_cooldown, s.idempotency_ttl), (2, 1.5, 0.0))

    def test_bad_values_name_the_option(self) -> None:
        """Each bad value stops start-up with one line naming its option."""
        cases = {
            "chat-input-key": "has space",
            "chat-session-key": "metadata",
            "cors-allow-header": "Bad Header",
            "forward-header": "Content-Length",
            "breaker-failures": "0",
            "breaker-cooldown": "-1",
            "idempotency-ttl": "forever",
            "websocket-max-message": "-1",
        }
        for name, value in cases.items():
            with self.assertRaises(ConfigError) as raised:
                load_settings(flags={name: [value] if name.endswith("header") else value})
            self.assertIn(f"--{name}", str(raised.exception))

    def test_keys_must_differ(self) -> None:
        """The message and the session cannot share a field."""
        with self.assertRaises(ConfigError) as raised:
            load_settings(flags={"chat-input-key": "x", "chat-session-key": "x"})
        self.assertIn("--chat-session-key", str(raised.exception))

    def test_cookie_and_authorization_only_when_named(self) -> None:
        """Cookie and Authorization may be forwarded, but only by name; hop-by-hop headers never."""
        s = load_settings(flags={"forward-header": ["Authorization", "Cookie"]})
        self.assertEqual(s.forward_header, ("Authorization", "Cookie"))
        for name in ("Connection", "Host", "Idempotency-Key", "Upgrade", "Proxy-Authorization"):
            with self.assertRaises(ConfigError):
                load_settings(flags={"forward-header": [name]})


class ChatKeyTests(TestCase):
    """
    L{parse_chat} reads the configured keys and the message carries them to n8n.
    """

    def test_custom_keys_read(self) -> None:
        """With custom keys the message and the session come from those fields."""
        m = parse({"question": "שלום", "conversation": "abc"}, input_key="question", session_key="conversation")
        self.assertEqual((m.text, m.session_id, m.session_generated), ("שלום", "abc", False))

    def test_plain_names_still_accepted(self) -> None:
        """C{message} and C{sessionId} still work under custom keys (InkFlow's own page sends them)."""
        m = parse({"message": "hi", "sessionId": "s1"}, input_key="question", session_key="conversation")
        self.assertEqual((m.text, m.session_id), ("hi", "s1"))

    def test_custom_key_wins(self) -> None:
        """When both are present the configured key is the message."""
        m = parse({"question": "a", "message": "b"}, input_key="question")
        self.assertEqual(m.text, "a")

    def test_default_chat_input_not_read_under_custom_key(self) -> None:
        """Under a custom input key, C{chatInput} is just another field: the message is missing."""
        with self.assertRaises(ApiError) as raised:
            parse({"chatInput": "hi"}, input_key="question")
        self.assertEqual(raised.exception.code, "bad_request")

    def test_bad_session_names_the_key(self) -> None:
        """A bad session id is refused, naming the configured field."""
        with self.assertRaises(ApiError) as raised:
            parse({"question": "a", "conversation": "no spaces"}, input_key="question", session_key="conversation")
        self.assertIn("conversation", raised.exception.detail or "")

    def test_upstream_uses_the_keys(self) -> None:
        """n8n receives the message and the session under the configured names, in JSON and multipart."""
        m = parse({"question": "a", "conversation": "s"}, input_key="question", session_key="conversation")
        self.assertEqual(set(m.upstream_json()), {"action", "conversation", "question", "metadata"})
        self.assertEqual(m.upstream_json()["question"], "a")
        self.assertEqual([n for n, _ in m.upstream_fields()], ["action", "conversation", "question", "metadata"])
        self.assertEqual(json.loads(m.upstream_fields()[3][1])["source"], "inkflow")

    def test_forwarded_headers_only_named(self) -> None:
        """Only the named client headers are picked, values kept; others (cookies included) never."""
        headers = Headers({b"X-Tenant": [b"t1"], b"Cookie": [b"a=b"], b"Authorization": [b"Bearer x"]})
        self.assertEqual(forwarded_headers(headers.getRawHeaders, ("X-Tenant", "X-Missing")), (("X-Tenant", "t1"),))


class MultipartKeyTests(SinkTestCase):
    """
    The multipart sink under custom keys.
    """

    def test_custom_fields_received(self) -> None:
        """The custom message field gets the message limit; parse_chat reads it."""
        settings = self.make_settings(chat_input_key="question", chat_session_key="conversation", max_message_chars=10)
        long = "א" * 10
        got = self.feed(
            MultipartSink(settings, CONTENT_TYPE),
            [body(field("question", long), field("conversation", "c1"), boundary=BOUNDARY)],
        )
        m = parse_chat(got, request_id="r", max_chars=10, max_files=5, input_key="question", session_key="conversation")
        self.assertEqual((m.text, m.session_id), (long, "c1"))

    def test_custom_fields_unique(self) -> None:
        """A repeated custom message or session field is a bad request, like the defaults."""
        settings = self.make_settings(chat_input_key="question", chat_session_key="conversation")
        for name in ("question", "conversation"):
            e = self.feed_error(MultipartSink(settings, CONTENT_TYPE), [body(field(name, "a"), field(name, "b"))])
            self.assertEqual(e.code, "bad_request")

    def test_files_with_custom_keys(self) -> None:
        """Files still arrive as files under custom keys."""
        settings = self.make_settings(chat_input_key="question")
        got = self.feed(
            MultipartSink(settings, CONTENT_TYPE), [body(field("question", "see"), file_part(b"hello", "a.txt"))]
        )
        self.assertEqual((got.fields["question"], len(got.files)), ("see", 1))
        got.cleanup()


class ForwarderKeyTests(ForwarderTestsMixin, TestCase):
    """
    What the Forwarder sends for the widget's options.
    """

    def widget_message(self, **changes: Any) -> ChatMessage:
        m = parse({"question": "שלום", "conversation": "s-1"}, input_key="question", session_key="conversation")
        return m.with_client(changes.get("key"), changes.get("headers", ()))

    def test_json_under_custom_keys(self) -> None:
        """The JSON body carries the configured names."""
        forwarder = self.make()
        self.agent.default = respond(read=True)
        self.successResultOf(self.send(forwarder, self.widget_message()))
        sent = json.loads(self.agent.calls[0].sent)
        self.assertEqual((sent["question"], sent["conversation"]), ("שלום", "s-1"))
        self.assertNotIn("chatInput", sent)

    def test_multipart_under_custom_keys(self) -> None:
        """The multipart fields carry the configured names."""
        forwarder = self.make()
        self.agent.default = respond(read=True)
        m = self.widget_message()
        folder = tempfile.mkdtemp(prefix="inkflow-test-keys-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "a.txt")
        with open(path, "wb") as f:
            f.write(b"hi")
        m = dataclasses.replace(m, files=(UploadedFile(path, "a.txt", "text/plain", 2),))
        d = self.send(forwarder, m)
        self.flush()
        self.successResultOf(d)
        call = self.agent.calls[0]
        fields, files = parse_multipart(call.header("Content-Type") or "", call.sent)
        self.assertEqual((fields["question"], fields["conversation"]), ("שלום", "s-1"))
        self.assertEqual(len(files), 1)

    def test_client_idempotency_key_sent_on_every_attempt(self) -> None:
        """A client's key replaces the generated one, the same on every attempt."""
        forwarder = self.make(webhook=("http://a.test/w", "http://b.test/w"))
        self.agent.script.append(respond(503, b""))
        self.successResultOf(self.send(forwarder, self.widget_message(key="client-key:1")))
        self.assertEqual([c.header("Idempotency-Key") for c in self.agent.calls], ["client-key:1"] * 2)

    def test_forward_headers_sent(self) -> None:
        """Named client headers go to n8n along with InkFlow's own."""
        forwarder = self.make()
        self.successResultOf(self.send(forwarder, self.widget_message(headers=(("X-Tenant", "t1"),))))
        call = self.agent.calls[0]
        self.assertEqual(call.header("X-Tenant"), "t1")
        self.assertTrue(call.header("X-N8N-Auth"))

    def test_breaker_thresholds_from_settings(self) -> None:
        """--breaker-failures opens the breaker; --breaker-cooldown half-opens it."""
        forwarder = self.make(retries=0, breaker_failures=2, breaker_cooldown=7.0)
        self.agent.default = refuse
        for _ in range(2):
            self.failureResultOf(self.send(forwarder), ApiError)
        self.assertEqual(forwarder.upstreams()[0]["state"], "open")
        self.clock.advance(6.9)
        self.assertEqual(forwarder.upstreams()[0]["state"], "open")
        self.clock.advance(0.2)
        self.assertEqual(forwarder.upstreams()[0]["state"], "half_open")

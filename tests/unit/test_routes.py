"""
The Klein routes of L{inkflow.web.routes}, unit-tested through the real
L{inkflow.web.site.InkFlowSite} over an in-memory transport
(L{tests.support.site_treq.SiteTreq}): the same head check, body path and
request state as in production, no network.
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from inkflow.chat import ChatMessage
from inkflow.errors import ApiError
from inkflow.health import HealthReporter, SiteStats
from inkflow.n8n.client import ForwardResult
from inkflow.n8n.demo import DemoResponder
from inkflow.settings import Settings
from inkflow.snapshot import UpstreamSnapshot
from inkflow.state.base import StateConfig
from inkflow.state.chat import SharedExecutions, SharedIdempotentChat
from inkflow.state.memory import MemoryState
from inkflow.web.admission import ChatQueue
from inkflow.web.connections import Connections
from inkflow.web.handler import ChatHandler
from inkflow.web.page import PageFiles
from inkflow.web.routes import InkFlowApp
from inkflow.web.site import InkFlowSite
from inkflow.web.staticfiles import StaticFiles
from inkflow.web.stream import StreamAnswers
from inkflow.web.websocket import ChatSocketResource, ChatSockets
from tests.support.site_treq import SiteTreq
from tests.unit.helpers import temp_path


class FakeProcess:
    def read(self) -> dict[str, Any]:
        return {
            "memory": {"rss_bytes": 1, "vms_bytes": 1, "percent": 0.0},
            "cpu_percent": 0.0,
            "open_files": 0,
            "threads": 1,
        }


class FakeForwarder:
    """
    Answers every chat with a scripted value, recording the messages.
    """

    def __init__(self, answer: Any = None, error: ApiError | None = None, raw: bytes | None = None) -> None:
        self.answer = answer if answer is not None else {"output": "שלום"}
        self.error = error
        self.raw = raw
        self.messages: list[ChatMessage] = []

    def forward(self, message: ChatMessage, deadline: float, *, stream: bool = False) -> defer.Deferred[ForwardResult]:
        self.messages.append(message)
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed(ForwardResult(body=self.answer, status=200, attempts=1, url_index=0, raw=self.raw))

    def upstreams(self) -> list[UpstreamSnapshot]:
        return [
            {
                "url": "http://127.0.0.1:9/webhook/chat",
                "state": "closed",
                "consecutive_failures": 0,
                "requests_total": 0,
                "failures_total": 0,
                "last_error": None,
            }
        ]


def make_app(
    test: TestCase,
    forwarder: FakeForwarder | None = None,
    site_stats: SiteStats | None = None,
    **overrides: Any,
) -> tuple[InkFlowApp, Any]:
    """
    The routes with their collaborators, as the composition root builds
    them, behind a real site; and a treq client for that site.

    @param site_stats: the connection figures health reads (the site's own
        when C{None}).
    """
    clock = Clock()
    settings = Settings.defaults(upload_dir=temp_path(test), **overrides)
    connections = Connections()
    queue = ChatQueue(settings.max_concurrent, settings.queue_size, settings.queue_timeout, clock)
    streams = StreamAnswers(clock, idle_timeout=settings.stream_idle_timeout, stream_timeout=settings.stream_timeout)
    state = MemoryState(clock, StateConfig(idempotency_ttl=settings.idempotency_ttl, rate_limit=settings.rate_limit))
    idempotency = SharedIdempotentChat(
        state, settings.chat_input_key, settings.chat_session_key, client=lambda r: r.getClientAddress().host
    )
    reporter = HealthReporter(
        settings,
        clock,
        site=(lambda: site_stats) if site_stats is not None else connections.stats,
        queue=queue,
        process=FakeProcess().read,  # type: ignore[arg-type]
        upstreams=forwarder.upstreams if forwarder is not None else None,
        streams=streams.registry.snapshot,
    )
    chat = ChatHandler(
        settings,
        clock,
        forwarder=forwarder,
        demo=DemoResponder(),
        queue=queue,
        streams=streams,
        executions=SharedExecutions(state),
        idempotency=idempotency,
    )
    app = InkFlowApp(
        settings,
        clock,
        chat=chat,
        idempotency=idempotency,
        rate_take=state.rate_take,
        reporter=reporter,
        static=PageFiles.from_settings(StaticFiles(settings.static_dir), settings),
        chat_socket=ChatSocketResource(
            settings, clock, SharedExecutions(state), ChatSockets(), draining=lambda: connections.draining
        ),
    )
    site = InkFlowSite(
        app.resource(),
        settings,
        clock,
        app.sink_for,
        admit_head=app.admit_head,
        connections=connections,
        cors_for=app.cors_for,
    )
    return app, SiteTreq(site)


class RouteTests(TestCase):
    """
    Each route answers a plain request.
    """

    def get(self, stub: Any, path: str) -> tuple[int, Any]:
        response = self.successResultOf(stub.get("http://inkflow.test" + path))
        body = self.successResultOf(response.content())
        return response.code, json.loads(body)

    def post(self, stub: Any, value: Any, **headers: str) -> tuple[int, Any, Any]:
        response = self.successResultOf(
            stub.post(
                "http://inkflow.test/api/chat",
                data=json.dumps(value).encode(),
                headers={"Content-Type": "application/json", **headers},
            )
        )
        return response.code, response.headers, json.loads(self.successResultOf(response.content()))

    def test_health(self) -> None:
        """GET /api/health answers the snapshot."""
        _, stub = make_app(self)
        code, body = self.get(stub, "/api/health")
        self.assertEqual((code, body["status"], body["mode"]), (200, "ok", "demo"))

    def test_ready(self) -> None:
        """GET /api/ready answers ready."""
        _, stub = make_app(self)
        self.assertEqual(self.get(stub, "/api/ready"), (200, {"ready": True}))

    def test_unknown_api_path_is_json_404(self) -> None:
        """An unknown API path is the contract's JSON 404, with a request id."""
        _, stub = make_app(self)
        code, body = self.get(stub, "/api/nope")
        self.assertEqual((code, body["error"]["code"]), (404, "not_found"))
        self.assertTrue(body["error"]["requestId"])

    def test_chat_in_demo_mode(self) -> None:
        """POST /api/chat with JSON is answered by the demo responder, with the session id."""
        _, stub = make_app(self)
        code, headers, body = self.post(stub, {"message": "שלום", "sessionId": "abc"})
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("X-Session-ID"), ["abc"])
        self.assertIn("output", body)

    def test_chat_with_a_fake_forwarder(self) -> None:
        """POST /api/chat forwards the validated message and answers n8n's JSON as is."""
        forwarder = FakeForwarder({"output": "תשובה"})
        _, stub = make_app(self, forwarder)
        code, _, body = self.post(stub, {"chatInput": "hi", "sessionId": "s-1", "action": "sendMessage"})
        self.assertEqual((code, body), (200, {"output": "תשובה"}))
        self.assertEqual([(m.text, m.session_id) for m in forwarder.messages], [("hi", "s-1")])

    def test_chat_passes_n8n_bytes_through(self) -> None:
        """
        n8n's JSON, when it may be sent unchanged, is answered byte for byte
        (with its length and the JSON type); with a generated session id it
        is written again with C{sessionId} added.
        """
        raw = b'{ "output" : "\xd7\xa9", "n": 1 }'
        _, stub = make_app(self, FakeForwarder({"output": "ש", "n": 1}, raw=raw))
        response = self.successResultOf(
            stub.post(
                "http://inkflow.test/api/chat",
                data=b'{"message": "hi", "sessionId": "s-1"}',
                headers={"Content-Type": "application/json"},
            )
        )
        self.assertEqual(self.successResultOf(response.content()), raw)
        self.assertEqual(response.length, len(raw))
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json; charset=utf-8"])
        _, headers, body = self.post(stub, {"message": "hi"})
        self.assertEqual(body, {"output": "ש", "n": 1, "sessionId": headers.getRawHeaders("X-Session-ID")[0]})

    def test_chat_answered_line_only_at_debug(self) -> None:
        """
        The per-chat "answered" line is debug (the access line records every
        answer), and not even built below C{--log-level debug}.
        """
        for level, expected in (("info", []), ("debug", [LogLevel.debug])):
            _, stub = make_app(self, FakeForwarder(), log_level=level)
            with capturedLogs() as events:
                self.assertEqual(self.post(stub, {"message": "hi", "sessionId": "s"})[0], 200)
            answered = [e["log_level"] for e in events if "answered" in e.get("log_format", "")]
            self.assertEqual(answered, expected)

    def test_chat_upstream_error_is_json(self) -> None:
        """A forwarder failure becomes the contract's JSON error."""
        _, stub = make_app(self, FakeForwarder(error=ApiError("upstream_error")))
        code, _, body = self.post(stub, {"message": "hi"})
        self.assertEqual((code, body["error"]["code"]), (502, "upstream_error"))

    def test_chat_bad_body_is_400(self) -> None:
        """A JSON body that is not an object is a 400 from the same sink the real request uses."""
        _, stub = make_app(self, FakeForwarder())
        code, _, body = self.post(stub, [1, 2])
        self.assertEqual((code, body["error"]["code"]), (400, "bad_request"))

    def test_chat_get_is_405_with_allow(self) -> None:
        """GET /api/chat is 405 with Allow."""
        _, stub = make_app(self)
        response = self.successResultOf(stub.get("http://inkflow.test/api/chat"))
        self.assertEqual(response.code, 405)
        self.assertIn("POST", response.headers.getRawHeaders("Allow")[0])


class HostileInputTests(TestCase):
    """
    No 500 from input, no cross-site chat, health without secrets.
    """

    def request(self, stub: Any, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, Any, Any]:
        response = self.successResultOf(
            stub.request(method, "http://inkflow.test" + path, data=body or None, headers=headers or None)
        )
        raw = self.successResultOf(response.content())
        return response.code, response.headers, json.loads(raw) if raw else None

    def chat(
        self, stub: Any, value: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        body = raw if raw is not None else json.dumps(value if value is not None else {"message": "hi"}).encode()
        return self.request(stub, "POST", "/api/chat", body, **{"Content-Type": "application/json", **(headers or {})})

    def test_foreign_origin_is_403(self) -> None:
        """A present Origin that is neither allow-listed nor the request's own is 403 forbidden_origin."""
        forwarder = FakeForwarder()
        _, stub = make_app(self, forwarder, cors_origin=("https://shop.example",))
        code, _, body = self.chat(stub, headers={"Origin": "https://evil.example"})
        self.assertEqual((code, body["error"]["code"]), (403, "forbidden_origin"))
        self.assertTrue(body["error"]["message"] and body["error"]["message_en"])
        self.assertEqual(forwarder.messages, [])

    def test_sec_fetch_site_cross_site_is_403(self) -> None:
        """Sec-Fetch-Site: cross-site is refused even without an Origin."""
        _, stub = make_app(self, FakeForwarder())
        code, _, body = self.chat(stub, headers={"Sec-Fetch-Site": "cross-site"})
        self.assertEqual((code, body["error"]["code"]), (403, "forbidden_origin"))

    def test_own_and_allowed_origins_and_none_pass(self) -> None:
        """The request's own origin, an allow-listed one, and no Origin at all are answered."""
        _, stub = make_app(self, FakeForwarder(), cors_origin=("https://shop.example",))
        self.assertEqual(self.chat(stub, headers={"Origin": "http://inkflow.test"})[0], 200)
        self.assertEqual(self.chat(stub, headers={"Origin": "https://shop.example"})[0], 200)
        self.assertEqual(self.chat(stub)[0], 200)

    def test_doubled_slash_in_an_api_path_is_a_json_404(self) -> None:
        """/api//health is the contract's 404, not a redirect turned into a 500."""
        _, stub = make_app(self)
        code, _, body = self.request(stub, "GET", "/api//health")
        self.assertEqual((code, body["error"]["code"]), (404, "not_found"))

    def test_chat_is_answered_without_kleins_router(self) -> None:
        """
        POST /api/chat (the hot route) is dispatched by the root resource:
        answered with Klein's URL map out of use; the other spellings of
        the path and the other routes still go through Klein.
        """
        app, stub = make_app(self)
        binds: list[str] = []
        bind = app.app.url_map.bind

        def counted(*a: Any, **kw: Any) -> Any:
            binds.append(kw.get("path_info", ""))
            return bind(*a, **kw)

        self.patch(app.app.url_map, "bind", counted)
        code, _, body = self.chat(stub, {"message": "שלום", "sessionId": "abc"})
        self.assertEqual((code, binds), (200, []))
        self.assertIn("output", body)
        code, _, body = self.request(stub, "POST", "/api/chat/")
        self.assertEqual((code, body["error"]["code"]), (404, "not_found"))
        self.assertEqual(self.request(stub, "GET", "/api/ready")[0], 200)
        self.assertEqual(binds, ["/api/chat/", "/api/ready"])

    def test_deeply_nested_metadata_string_is_400(self) -> None:
        """metadata given as a JSON string nested 2,000 deep is a 400."""
        _, stub = make_app(self, FakeForwarder())
        code, _, body = self.chat(stub, {"message": "hi", "metadata": "[" * 2000 + "]" * 2000})
        self.assertEqual((code, body["error"]["code"]), (400, "bad_request"))

    def test_lone_surrogate_in_the_message_is_400(self) -> None:
        """A lone surrogate (valid JSON escape, not text) in the message is a 400."""
        _, stub = make_app(self, FakeForwarder())
        code, _, body = self.chat(stub, raw=b'{"message": "a\\ud800b"}')
        self.assertEqual((code, body["error"]["code"]), (400, "bad_request"))

    def test_non_finite_numbers_in_metadata_are_400(self) -> None:
        """NaN, Infinity and 1e999 are not JSON: 400, in the body and in a metadata string."""
        forwarder = FakeForwarder()
        _, stub = make_app(self, forwarder)
        for raw in (b'{"message":"hi","metadata":{"a":NaN}}', b'{"message":"hi","metadata":{"a":1e999}}'):
            self.assertEqual(self.chat(stub, raw=raw)[0], 400, raw)
        self.assertEqual(self.chat(stub, {"message": "hi", "metadata": '{"a": Infinity}'})[0], 400)
        self.assertEqual(forwarder.messages, [])

    def test_session_id_with_a_trailing_newline_is_400(self) -> None:
        """A sessionId with a trailing newline is refused."""
        forwarder = FakeForwarder()
        _, stub = make_app(self, forwarder)
        self.assertEqual(self.chat(stub, {"message": "hi", "sessionId": "abc\n"})[0], 400)
        self.assertEqual(forwarder.messages, [])

    def test_infinite_answer_is_502(self) -> None:
        """An n8n answer that is not finite JSON is a 502, never Infinity."""
        _, stub = make_app(self, FakeForwarder({"output": float("inf")}))
        code, _, body = self.chat(stub)
        self.assertEqual((code, body["error"]["code"]), (502, "upstream_error"))

    def test_deeply_nested_answer_is_502(self) -> None:
        """An n8n answer nested too deeply to write is a 502."""
        deep: Any = []
        for _ in range(5000):
            deep = [deep]
        _, stub = make_app(self, FakeForwarder({"output": deep}))
        code, _, body = self.chat(stub)
        self.assertEqual((code, body["error"]["code"]), (502, "upstream_error"))

    def test_error_bodies_carry_a_top_level_message(self) -> None:
        """Errors are {"message": <Hebrew>, "error": {...}}."""
        _, stub = make_app(self)
        _, _, body = self.request(stub, "GET", "/api/nope")
        self.assertEqual(body["message"], body["error"]["message"])

    def test_health_shows_upstreams_without_paths(self) -> None:
        """Upstreams are index and scheme://host:port only."""
        forwarder = FakeForwarder()  # its upstream is http://127.0.0.1:9/webhook/chat
        _, stub = make_app(self, forwarder)
        _, _, body = self.request(stub, "GET", "/api/health")
        self.assertEqual(body["upstreams"][0]["url"], "http://127.0.0.1:9")
        self.assertEqual(body["upstreams"][0]["index"], 0)

    def test_public_health_is_status_only_with_an_admin_listener(self) -> None:
        """With --admin-listen, the public health says only its status and /metrics is not public."""
        app, stub = make_app(self, admin_listen="tcp:9100:interface=127.0.0.1")
        code, _, body = self.request(stub, "GET", "/api/health")
        self.assertEqual((code, body), (200, {"status": "ok"}))
        self.assertEqual(self.request(stub, "GET", "/metrics")[0], 404)
        admin = StubTreq(app.admin_resource())
        code, _, body = self.request(admin, "GET", "/api/health")
        self.assertEqual((code, body["mode"]), (200, "demo"))

    def test_full_connection_table_is_not_ready_and_degraded(self) -> None:
        """While every connection place is taken, readiness is 503 and health degraded."""
        _, stub = make_app(self, site_stats=SiteStats(50, 3, 0, False))
        code, _, body = self.request(stub, "GET", "/api/ready")
        self.assertEqual((code, body), (503, {"ready": False, "reason": "connections_full"}))
        self.assertEqual(self.request(stub, "GET", "/api/health")[2]["status"], "degraded")


class RateLimitFromTheHeadTests(TestCase):
    """
    A client over its limit gets 429 before any body byte.
    """

    def test_429_is_answered_from_the_head(self) -> None:
        """Over the limit, a POST head with a large Content-Length is answered 429 with Retry-After at once."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from inkflow.web.site import InkFlowSite

        app, _ = make_app(self, rate_limit=1)
        site = InkFlowSite(app.resource(), app.settings, app.clock, app.sink_for, admit_head=app.admit_head)
        heads = []
        for length in (15, 4_000_000):
            channel = site.buildProtocol(IPv4Address("TCP", "198.51.100.7", 5000))
            transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.7", 5000))
            channel.makeConnection(transport)
            channel.dataReceived(
                b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % length
            )
            if length == 15:
                channel.dataReceived(b'{"message":"a"}')
            heads.append(transport.value())
        self.assertTrue(heads[0].startswith(b"HTTP/1.1 200 "), heads[0])
        self.assertTrue(heads[1].startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), heads[1])
        self.assertIn(b"Retry-After: ", heads[1])


class SharedRateLimitTests(TestCase):
    """
    With a shared state (the workers' parent, Redis) the rate limit's answer
    comes after the head: the body is read meanwhile, a refusal cuts a body
    still coming, and once the body is in the route answers it before anything
    goes to n8n.
    """

    def connect(self, answers: list[Deferred[float]]) -> Any:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from inkflow.web.site import InkFlowSite

        app, _ = make_app(self)

        def later(bucket: str) -> Deferred[float]:
            d: Deferred[float] = Deferred()
            answers.append(d)
            return d

        app.rate_take = later
        site = InkFlowSite(app.resource(), app.settings, app.clock, app.sink_for, admit_head=app.admit_head)
        channel = site.buildProtocol(IPv4Address("TCP", "198.51.100.7", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.7", 5000))
        channel.makeConnection(transport)
        return channel, transport

    def post(self, channel: Any, length: int, body: bytes) -> None:
        channel.dataReceived(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % length + body
        )

    def test_allowed_later_is_answered(self) -> None:
        """The body arrives before the shared answer: nothing is answered until it allows; then 200."""
        answers: list[Deferred[float]] = []
        channel, transport = self.connect(answers)
        self.post(channel, 15, b'{"message":"a"}')
        self.assertEqual((len(answers), transport.value()), (1, b""))
        answers[0].callback(0.0)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())

    def test_refused_after_the_body_is_a_429(self) -> None:
        """The body is in, then the shared state refuses: 429 rate_limited with Retry-After, n8n never asked."""
        answers: list[Deferred[float]] = []
        channel, transport = self.connect(answers)
        self.post(channel, 15, b'{"message":"a"}')
        answers[0].callback(12.5)
        head = transport.value()
        self.assertTrue(head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), head)
        self.assertIn(b"Retry-After: 13\r\n", head)
        self.assertIn(b'"rate_limited"', head)

    def test_client_gone_before_the_answer_ends_quietly(self) -> None:
        """The client leaves while the shared state has not answered: nothing runs, nothing is logged as an error."""
        from twisted.python.failure import Failure

        answers: list[Deferred[float]] = []
        channel, _ = self.connect(answers)
        self.post(channel, 15, b'{"message":"a"}')
        with capturedLogs() as events:
            channel.connectionLost(Failure(ConnectionError("client gone")))
            answers[0].callback(0.0)
        errors = [e for e in events if e["log_level"] in (LogLevel.error, LogLevel.critical)]
        self.assertEqual(errors, [])

    def test_refused_while_the_body_streams_cuts_it(self) -> None:
        """A refusal that arrives while the body is still coming answers 429 at once; the rest is not read."""
        answers: list[Deferred[float]] = []
        channel, transport = self.connect(answers)
        self.post(channel, 50_000, b"x" * 1000)
        self.assertEqual(transport.value(), b"")
        answers[0].callback(3.0)
        head = transport.value()
        self.assertTrue(head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), head)
        channel.dataReceived(b"x" * 1000)  # read and dropped: nothing more is answered
        self.assertEqual(transport.value(), head)


class WholeServerTests(TestCase):
    """
    Under C{--workers N} a worker answers C{/metrics} and C{/api/health} for
    the whole server (the parent merges them); its own figures when the parent
    does not answer.
    """

    class Page:
        content_type = b"text/plain; version=0.0.4"

        def render(self) -> bytes:
            return b"own 1\n"

    class View:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

        def scrape(self) -> Deferred[bytes]:
            return defer.succeed(b"merged 2\n") if self.ok else defer.fail(RuntimeError("gone"))

        def server_health(self) -> Deferred[dict[str, Any]]:
            if not self.ok:
                return defer.fail(RuntimeError("gone"))
            return defer.succeed({"totals": {"queue": {"processed_total": 9}}, "workers": {"0": {}, "1": {}}})

    def get(self, stub: Any, path: str) -> bytes:
        response = self.successResultOf(stub.get("http://inkflow.test" + path))
        body: bytes = self.successResultOf(response.content())
        return body

    def test_metrics_and_health_are_the_servers(self) -> None:
        """The parent answers: /metrics is the merged text, health has the server's totals and workers."""
        app, stub = make_app(self)
        app.metrics, app.server_view = self.Page(), self.View(True)
        self.assertEqual(self.get(stub, "/metrics"), b"merged 2\n")
        server = json.loads(self.get(stub, "/api/health"))["server"]
        self.assertEqual((server["totals"]["queue"]["processed_total"], sorted(server["workers"])), (9, ["0", "1"]))

    def test_parent_away_answers_for_this_worker(self) -> None:
        """The parent does not answer: /metrics is this worker's own text, health says why the server part is missing."""
        app, stub = make_app(self)
        app.metrics, app.server_view = self.Page(), self.View(False)
        self.assertEqual(self.get(stub, "/metrics"), b"own 1\n")
        health = json.loads(self.get(stub, "/api/health"))
        self.assertEqual((health["status"], health["server"]), ("ok", {"error": "gone"}))


class UnexpectedErrorTests(TestCase):
    """
    Anything unexpected is a generic JSON 500, logged once.
    """

    def test_unexpected_error_is_a_generic_500_logged_once(self) -> None:
        """A forwarder bug is answered 500 internal_error without details, and logged exactly once."""

        class Broken(FakeForwarder):
            def forward(
                self, message: ChatMessage, deadline: float, *, stream: bool = False
            ) -> defer.Deferred[ForwardResult]:
                raise RuntimeError("secret detail")

        _, stub = make_app(self, Broken())
        response = self.successResultOf(
            stub.post(
                "http://inkflow.test/api/chat", data=b'{"message":"hi"}', headers={"Content-Type": "application/json"}
            )
        )
        body = self.successResultOf(response.content())
        self.assertEqual(response.code, 500)
        self.assertEqual(json.loads(body)["error"]["code"], "internal_error")
        self.assertNotIn(b"secret detail", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def multipart_chat(message: str = "hi", fill: int = 0) -> tuple[bytes, str]:
    """
    A multipart chat body with one small PNG (its last 64 bytes C{fill}), and
    its Content-Type.
    """
    boundary = "inkflowRouteTestBoundary"
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes([fill]) * 64
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n\r\n{message}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


class BodyOwnerTests(TestCase):
    """
    A request's body has one owner, the request: its spooled files are gone
    when it ends, whatever answered it.
    """

    def app_with_uploads(self) -> tuple[InkFlowApp, Any]:
        app, stub = make_app(self, FakeForwarder())
        os.makedirs(app.settings.upload_dir, mode=0o700)
        return app, stub

    def send(self, stub: Any, headers: dict[bytes, list[bytes]]) -> int:
        body, content_type = multipart_chat()
        response = self.successResultOf(
            stub.request(
                "POST",
                "http://inkflow.test/api/chat",
                data=body,
                headers={b"Content-Type": [content_type.encode()], **headers},
            )
        )
        self.successResultOf(response.content())
        return int(response.code)

    def test_answered_chat_leaves_no_upload(self) -> None:
        """A multipart chat answered by the route: no spooled file is left."""
        app, stub = self.app_with_uploads()
        self.assertEqual(self.send(stub, {}), 200)
        self.assertEqual(os.listdir(app.settings.upload_dir), [])

    def test_websocket_upgrade_on_a_multipart_chat_leaves_no_upload(self) -> None:
        """A multipart chat with Upgrade: websocket (not a route: answered by an early exit) leaves no file."""
        app, stub = self.app_with_uploads()
        self.assertEqual(self.send(stub, {b"Upgrade": [b"websocket"], b"Connection": [b"Upgrade"]}) // 100, 4)
        self.assertEqual(os.listdir(app.settings.upload_dir), [])

    def test_non_utf8_host_on_a_multipart_chat_leaves_no_upload(self) -> None:
        """A multipart chat answered 400 for a Host that is not UTF-8 leaves no file."""
        app, stub = self.app_with_uploads()
        self.assertEqual(self.send(stub, {b"Host": [b"inkflow\xff.test"]}), 400)
        self.assertEqual(os.listdir(app.settings.upload_dir), [])


class IdempotencyAtTheRouteTests(TestCase):
    """
    The Idempotency-Key at the chat route, with the body the site parsed:
    the fingerprint is computed from the real body.
    """

    def post(self, stub: Any, message: str, key: str = "key-1") -> tuple[int, Any, Any]:
        response = self.successResultOf(
            stub.post(
                "http://inkflow.test/api/chat",
                data=json.dumps({"message": message, "sessionId": "s-1"}).encode(),
                headers={"Content-Type": "application/json", "Idempotency-Key": key},
            )
        )
        return response.code, response.headers, json.loads(self.successResultOf(response.content()))

    def test_same_key_same_message_is_replayed(self) -> None:
        """The same key with the same message: n8n asked once, the second answer replayed."""
        forwarder = FakeForwarder({"output": "once"})
        _, stub = make_app(self, forwarder)
        self.assertEqual(self.post(stub, "hi")[0], 200)
        code, headers, body = self.post(stub, "hi")
        self.assertEqual((code, body), (200, {"output": "once"}))
        self.assertEqual(headers.getRawHeaders("Idempotent-Replayed"), ["true"])
        self.assertEqual(len(forwarder.messages), 1)

    def test_same_key_other_message_is_a_mismatch(self) -> None:
        """The same key with another message is 422 idempotency_mismatch: the fingerprint saw the body."""
        forwarder = FakeForwarder()
        _, stub = make_app(self, forwarder)
        self.assertEqual(self.post(stub, "hi")[0], 200)
        code, _, body = self.post(stub, "something else")
        self.assertEqual((code, body["error"]["code"]), (422, "idempotency_mismatch"))
        self.assertEqual(len(forwarder.messages), 1)

    def post_file(self, stub: Any, fill: int, key: str = "key-f") -> tuple[int, Any]:
        data, content_type = multipart_chat("same text", fill)
        response = self.successResultOf(
            stub.post(
                "http://inkflow.test/api/chat",
                data=data,
                headers={"Content-Type": content_type, "Idempotency-Key": key},
            )
        )
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_same_key_same_file_bytes_is_replayed(self) -> None:
        """The same key, text and file bytes: n8n asked once."""
        forwarder = FakeForwarder({"output": "once"})
        _, stub = make_app(self, forwarder)
        first = self.post_file(stub, 1)
        self.assertEqual((first[0], first[1]["output"]), (200, "once"))
        self.assertEqual(self.post_file(stub, 1), first)
        self.assertEqual(len(forwarder.messages), 1)

    def test_same_key_same_file_name_and_size_other_bytes_is_a_mismatch(self) -> None:
        """The same key, text, file name and size but other bytes: 422 idempotency_mismatch, never the first answer."""
        forwarder = FakeForwarder({"output": "first"})
        _, stub = make_app(self, forwarder)
        self.assertEqual(self.post_file(stub, 1)[0], 200)
        code, body = self.post_file(stub, 2)
        self.assertEqual((code, body["error"]["code"]), (422, "idempotency_mismatch"))
        self.assertEqual(len(forwarder.messages), 1)


def _cors_fields(pairs: Any) -> dict[str, str]:
    """
    The CORS fields of an answer (C{Access-Control-*} and C{Vary}), names in
    lower case, from (name, value) pairs.
    """
    return {
        name.lower(): value
        for name, value in pairs
        if name.lower().startswith("access-control-") or name.lower() == "vary"
    }


def _raw_cors(answer: bytes) -> dict[str, str]:
    """
    The CORS fields of a raw HTTP answer written to a transport.
    """
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return _cors_fields(line.split(": ", 1) for line in head.split("\r\n")[1:])


class EarlyRefusalCorsTests(TestCase):
    """
    A refusal given before the chat route runs (from the request head, while
    the body streams, by a deadline, over a connection limit) carries the
    CORS headers the route's own error answers carry when the Origin is a
    --cors-origin, so an embed on that origin reads the JSON error instead of
    an opaque network error; another origin gets none.
    """

    SHOP = "https://shop.example"
    PEER = "198.51.100.7"

    def make(self, **overrides: Any) -> tuple[InkFlowApp, Any]:
        settings: dict[str, Any] = {
            "cors_origin": (self.SHOP,),
            "max_files": 1,
            "max_file_size": 1000,
            "max_message_chars": 100,
            "max_connections_per_ip": 0,
            **overrides,
        }
        return make_app(self, FakeForwarder(), **settings)

    def route_cors(self, stub: Any) -> dict[str, str]:
        """
        The CORS fields of the route's own error answer to the listed origin
        (a 400 for a JSON body that is not an object).
        """
        response = self.successResultOf(
            stub.post(
                "http://inkflow.test/api/chat",
                data=b"[1]",
                headers={"Content-Type": "application/json", "Origin": self.SHOP},
            )
        )
        self.assertEqual(response.code, 400)
        self.successResultOf(response.content())
        cors = _cors_fields(
            (name.decode(), value.decode()) for name, values in response.headers.getAllRawHeaders() for value in values
        )
        self.assertEqual(cors["access-control-allow-origin"], self.SHOP)
        return cors

    def post(self, stub: Any, body: bytes, origin: str, content_type: str = "application/json") -> tuple[int, Any, Any]:
        response = self.successResultOf(
            stub.post(
                "http://inkflow.test/api/chat",
                data=body,
                headers={"Content-Type": content_type, "Origin": origin},
            )
        )
        raw = self.successResultOf(response.content())
        pairs = (
            (name.decode(), value.decode()) for name, values in response.headers.getAllRawHeaders() for value in values
        )
        return response.code, _cors_fields(pairs), json.loads(raw)

    def connect(self, stub: Any) -> tuple[Any, Any]:
        """
        A raw connection to the site behind C{stub} (for answers a treq
        client cannot provoke: deadlines, limits, framing).
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        peer = IPv4Address("TCP", self.PEER, 5000)
        channel = stub.agent.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport

    def head(self, origin: str, method: bytes = b"POST", extra: bytes = b"Content-Length: 15\r\n") -> bytes:
        return (
            method + b" /api/chat HTTP/1.1\r\nHost: inkflow.test\r\nContent-Type: application/json\r\n"
            b"Origin: " + origin.encode() + b"\r\n" + extra + b"\r\n"
        )

    def answered(self, answer: bytes, status: int) -> dict[str, str]:
        """
        The CORS fields of a raw answer, once it is checked to be C{status}.
        """
        self.assertTrue(answer.startswith(b"HTTP/1.1 %d " % status), answer[:200])
        return _raw_cors(answer)

    def test_413_from_content_length(self) -> None:
        """A Content-Length over the limit is refused 413 from the head, with the route's CORS headers."""
        _, stub = self.make()
        route = self.route_cors(stub)
        code, cors, body = self.post(stub, b"x" * 70_000, self.SHOP)
        self.assertEqual((code, body["error"]["code"]), (413, "too_large"))
        self.assertEqual(cors, route)
        # Another origin is refused by the Origin rule, with no CORS header.
        code, cors, body = self.post(stub, b"x" * 70_000, "https://evil.example")
        self.assertEqual((code, body["error"]["code"]), (403, "forbidden_origin"))
        self.assertNotIn("access-control-allow-origin", cors)

    def test_415_from_the_head(self) -> None:
        """A content type chat does not take (text/plain: no preflight) is refused 415 with the route's CORS headers."""
        _, stub = self.make()
        route = self.route_cors(stub)
        code, cors, body = self.post(stub, b"hello", self.SHOP, "text/plain")
        self.assertEqual((code, body["error"]["code"]), (415, "unsupported_type"))
        self.assertEqual(cors, route)

    def test_413_while_the_body_streams(self) -> None:
        """A chunked body refused 413 the moment it crosses the limit carries the route's CORS headers."""
        _, stub = self.make()
        route = self.route_cors(stub)
        channel, transport = self.connect(stub)
        channel.dataReceived(self.head(self.SHOP, extra=b"Transfer-Encoding: chunked\r\n"))
        channel.dataReceived(b"%x\r\n" % 70_000 + b"x" * 70_000 + b"\r\n")
        self.assertEqual(self.answered(transport.value(), 413), route)

    def test_503_over_the_connection_limit(self) -> None:
        """Over --max-connections, chat is refused 503 busy with the route's CORS headers; another origin gets none."""
        _, stub = self.make(max_connections=1)
        route = self.route_cors(stub)
        held, _ = self.connect(stub)
        held.dataReceived(b"GET / HTTP/1.1\r\n")  # holds the one place
        answers = []
        for origin in (self.SHOP, "https://evil.example"):
            channel, transport = self.connect(stub)
            channel.dataReceived(self.head(origin) + b'{"message":"a"}')
            answers.append(transport.value())
        cors0 = self.answered(answers[0], 503)
        self.assertIn(b'"busy"', answers[0])
        self.assertIn(b"Retry-After: ", answers[0])
        self.assertEqual(cors0, route)
        cors1 = self.answered(answers[1], 503)
        self.assertNotIn("access-control-allow-origin", cors1)

    def test_503_over_the_address_cap(self) -> None:
        """Over --max-connections-per-ip, chat is refused 503 with the route's CORS headers."""
        _, stub = self.make(max_connections_per_ip=1)
        route = self.route_cors(stub)
        held, _ = self.connect(stub)
        held.dataReceived(b"GET / HTTP/1.1\r\n")  # busy, not idle: it keeps its place
        channel, transport = self.connect(stub)
        channel.dataReceived(self.head(self.SHOP) + b'{"message":"a"}')
        answer = transport.value()
        self.assertEqual(self.answered(answer, 503), route)
        self.assertIn(b'"too_many_connections_from_address"', answer)

    def test_408_while_the_body_is_late(self) -> None:
        """A body that stops coming is answered 408 with the route's CORS headers."""
        app, stub = self.make()
        route = self.route_cors(stub)
        channel, transport = self.connect(stub)
        channel.dataReceived(self.head(self.SHOP, extra=b"Content-Length: 100\r\n") + b'{"message"')
        cast(Clock, app.clock).advance(app.settings.body_timeout + 1)
        self.assertEqual(self.answered(transport.value(), 408), route)

    def test_400_for_a_malformed_chunk(self) -> None:
        """A chunked body that cannot be parsed is answered 400 with the route's CORS headers."""
        _, stub = self.make()
        route = self.route_cors(stub)
        channel, transport = self.connect(stub)
        channel.dataReceived(self.head(self.SHOP, extra=b"Transfer-Encoding: chunked\r\n") + b"zz\r\n")
        self.assertEqual(self.answered(transport.value(), 400), route)

    def test_400_for_a_host_that_is_not_utf8(self) -> None:
        """A request answered 400 before routing (a Host that is not UTF-8) carries the route's CORS headers."""
        _, stub = self.make()
        route = self.route_cors(stub)
        channel, transport = self.connect(stub)
        channel.dataReceived(self.head(self.SHOP).replace(b"inkflow.test", b"ink\xffflow") + b'{"message":"a"}')
        self.assertEqual(self.answered(transport.value(), 400), route)

    def test_429_from_the_head(self) -> None:
        """The rate limit's 429, decided from the head, carries the route's CORS headers."""
        _, stub = self.make(rate_limit=2)
        route = self.route_cors(stub)  # takes the first token
        self.assertEqual(self.post(stub, b'{"message":"a"}', self.SHOP)[0], 200)
        code, cors, body = self.post(stub, b'{"message":"a"}', self.SHOP)
        self.assertEqual((code, body["error"]["code"]), (429, "rate_limited"))
        self.assertEqual(cors, route)

    def test_429_decided_while_the_body_streams(self) -> None:
        """The shared rate limit's refusal that cuts a body still coming carries the route's CORS headers."""
        app, stub = self.make()
        route = self.route_cors(stub)
        answers: list[Deferred[float]] = []

        def later(bucket: str) -> Deferred[float]:
            d: Deferred[float] = Deferred()
            answers.append(d)
            return d

        app.rate_take = later
        channel, transport = self.connect(stub)
        channel.dataReceived(self.head(self.SHOP, extra=b"Content-Length: 50000\r\n") + b"x" * 1000)
        answers[0].callback(3.0)
        self.assertEqual(self.answered(transport.value(), 429), route)

    def test_preflight_refused_from_the_head(self) -> None:
        """A preflight refused from its head (a body over what OPTIONS takes) carries the preflight's CORS headers."""
        _, stub = self.make()
        channel, transport = self.connect(stub)
        channel.dataReceived(
            self.head(self.SHOP, b"OPTIONS", b"Access-Control-Request-Method: POST\r\nContent-Length: 100000\r\n")
        )
        self.assertEqual(self.answered(transport.value(), 413)["access-control-allow-origin"], self.SHOP)

    def test_preflight_is_answered_over_the_connection_limit(self) -> None:
        """
        Over --max-connections the chat's preflight is answered (a browser
        fails any preflight that is not a 2xx, CORS headers or not), so the
        embed's POST is sent and reads its 503 busy; the connection closes.
        """
        _, stub = self.make(max_connections=1)
        held, _ = self.connect(stub)
        held.dataReceived(b"GET / HTTP/1.1\r\n")
        channel, transport = self.connect(stub)
        channel.dataReceived(self.head(self.SHOP, b"OPTIONS", b"Access-Control-Request-Method: POST\r\n"))
        answer = transport.value()
        self.assertEqual(self.answered(answer, 204)["access-control-allow-origin"], self.SHOP)
        self.assertIn(b"Connection: close", answer)

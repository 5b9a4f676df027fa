"""
The Klein routes of L{inkflow.web.routes}, unit-tested through
C{treq.testing.StubTreq(app.resource())}: plain twisted.web requests, no
InkFlow request or channel, no network.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from inkflow.chat import ChatMessage
from inkflow.errors import ApiError
from inkflow.n8n.client import ForwardResult
from inkflow.settings import Settings
from inkflow.web.admission import ChatQueue, RateLimiter
from inkflow.web.routes import InkFlowApp
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

    def __init__(self, answer: Any = None, error: ApiError | None = None) -> None:
        self.answer = answer if answer is not None else {"output": "שלום"}
        self.error = error
        self.messages: list[ChatMessage] = []

    def forward(self, message: ChatMessage, deadline: float) -> defer.Deferred[ForwardResult]:
        self.messages.append(message)
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed(ForwardResult(body=self.answer, status=200, attempts=1, url_index=0))

    def upstreams(self) -> list[dict[str, Any]]:
        return [{"url": "http://127.0.0.1:9", "state": "closed"}]


def make_app(test: TestCase, forwarder: FakeForwarder | None = None, **overrides: Any) -> tuple[InkFlowApp, Any]:
    clock = Clock()
    settings = Settings.defaults(upload_dir=temp_path(test), **overrides)
    app = InkFlowApp(
        settings,
        clock,
        forwarder=forwarder,
        queue=ChatQueue(settings.max_concurrent, settings.queue_size, settings.queue_timeout, clock),
        rate_limiter=RateLimiter(settings.rate_limit, clock),
        process_metrics=FakeProcess(),  # type: ignore[arg-type]
        site_stats=lambda: (0, 0, False),
    )
    return app, StubTreq(app.resource())


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

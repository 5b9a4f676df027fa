"""
Tests for L{inkflow.web.state}: one request state, reached through one
function, for InkFlow's request and for any other.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from inkflow.errors import ApiError
from inkflow.settings import Settings
from inkflow.web.bodies import JsonSink
from inkflow.web.site import InkFlowSite
from inkflow.web.state import RequestState, request_state


class _Seen:
    isLeaf = True

    def __init__(self) -> None:
        self.states: list[RequestState] = []

    def render(self, request: object) -> bytes:
        self.states.append(request_state(request))
        return b"ok"

    def getChildWithDefault(self, name: bytes, request: object) -> _Seen:
        return self

    def putChild(self, path: bytes, child: object) -> None:
        pass


class RequestStateTests(TestCase):
    def test_any_request_gets_one_state_with_its_id_sent(self) -> None:
        """A plain request gets a state on first use, the same one after, its id sent as X-Request-ID."""
        request = DummyRequest([b""])
        state = request_state(request)
        self.assertIs(request_state(request), state)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"X-Request-ID"), [state.request_id.encode()])

    def test_take_body_raises_the_body_error_or_no_body(self) -> None:
        """take_body: the body error if any, else 400 when there is no body."""
        state = RequestState("id")
        state.body_error = ApiError("too_large")
        self.assertEqual(self.assertRaises(ApiError, state.take_body).code, "too_large")
        self.assertEqual(self.assertRaises(ApiError, RequestState("id").take_body).code, "bad_request")

    def test_inkflow_request_fills_its_state_from_head_and_body(self) -> None:
        """InkFlow's request: admitted by the head check, the sink's limit, the parsed body, the id it sent."""
        resource = _Seen()
        site = InkFlowSite(
            resource,  # type: ignore[arg-type]
            Settings.defaults(),
            Clock(),
            lambda *a: JsonSink(1000),
            admit_head=lambda request, method, path: None,
        )
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(
            b'POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"message":1}'
        )
        (state,) = resource.states
        self.assertEqual((state.admitted, state.body_limit, state.body_error), (True, 1000, None))
        self.assertIn(b"X-Request-Id: " + state.request_id.encode(), transport.value())
        # The request has finished: it let go of its body.
        self.assertIsNone(state.body)

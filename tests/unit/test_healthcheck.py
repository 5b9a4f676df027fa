"""
Tests for L{inkflow.tools.healthcheck}: the URL rule, the timeout rule, and
the client against an in-memory server (L{treq.testing.RequestTraversalAgent})
and a refusing agent, on a L{Clock}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from inkflow.tools.healthcheck import HealthCheckFailed, HealthClient, health_url, probe_timeout


class Answer(Resource):
    """
    Answers every GET with a fixed status and body; records the paths asked.
    """

    isLeaf = True

    def __init__(self, status: int = 200, body: bytes = b'{"status": "ok"}', hang: bool = False) -> None:
        super().__init__()
        self.status, self.body, self.hang = status, body, hang
        self.paths: list[bytes] = []
        self.headers: list[dict[bytes, Sequence[bytes]]] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.paths.append(request.path)
        self.headers.append(dict(request.requestHeaders.getAllRawHeaders()))
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return self.body


@implementer(IAgent)
class RefusingAgent:
    def request(
        self, method: bytes, uri: bytes, headers: object = None, bodyProducer: object = None
    ) -> Deferred[IResponse]:
        return fail(ConnectionRefusedError())


class HealthURLTests(TestCase):
    """
    L{health_url}: a base URL means its /api/health.
    """

    def test_base_url(self) -> None:
        """No path, or just /, is the server's health URL."""
        self.assertEqual(health_url("http://h:8000"), "http://h:8000/api/health")
        self.assertEqual(health_url("http://h:8000/"), "http://h:8000/api/health")
        self.assertEqual(health_url("https://h/?x=1"), "https://h/api/health?x=1")

    def test_any_other_path_is_kept(self) -> None:
        """A path is taken as given."""
        self.assertEqual(health_url("http://h:8000/api/health"), "http://h:8000/api/health")
        self.assertEqual(health_url("http://h/custom/health"), "http://h/custom/health")


class ProbeTimeoutTests(TestCase):
    """
    L{probe_timeout}: the one timeout rule.
    """

    def test_rule(self) -> None:
        """80% of the interval, capped at 5 s; 5 s for a single check."""
        self.assertEqual(probe_timeout(1.0), 0.8)
        self.assertEqual(probe_timeout(100.0), 5.0)
        self.assertEqual(probe_timeout(None), 5.0)


class HealthClientTests(TestCase):
    """
    L{HealthClient} over an in-memory server.
    """

    def client(self, resource: Resource, clock: Clock | None = None) -> HealthClient:
        return HealthClient(clock or Clock(), 2.0, user_agent="inkflow-test", agent=RequestTraversalAgent(resource))

    def test_reads_the_health_object(self) -> None:
        """A 200 with a JSON object: the dict; the User-Agent is sent."""
        resource = Answer(body=json.dumps({"status": "ok", "pid": 7}).encode())
        client = self.client(resource)
        self.assertEqual(self.successResultOf(client.health("http://h/api/health")), {"status": "ok", "pid": 7})
        self.assertEqual(resource.paths, [b"/api/health"])
        self.assertEqual(resource.headers[0][b"User-Agent"], [b"inkflow-test"])

    def test_answers_that_are_not_a_health_object(self) -> None:
        """Non-2xx, non-JSON, a JSON array: each its own one-line failure."""
        for resource, message in (
            (Answer(500, b"{}"), "HTTP 500 Internal Server Error"),
            (Answer(200, b"<html>"), "health answer is not JSON"),
            (Answer(200, b"[1, 2]"), "health answer is not a JSON object"),
            (Answer(200, b" " * (1024 * 1024 + 1)), "health answer is larger than 1 MiB"),
        ):
            client = self.client(resource)
            failure = self.failureResultOf(client.health("http://h/api/health"), HealthCheckFailed)
            self.assertEqual(str(failure.value), message)

    def test_get_gives_any_status(self) -> None:
        """get: the status and body, whatever the status."""
        client = self.client(Answer(503, b"{}"))
        answer = self.successResultOf(client.get("http://h/api/health"))
        self.assertEqual((answer.code, answer.status_line()), (503, "HTTP 503 Service Unavailable"))

    def test_no_answer_in_time(self) -> None:
        """A server that never answers: failure after the timeout, not before."""
        clock = Clock()
        client = self.client(Answer(hang=True), clock)
        d = client.health("http://h/api/health")
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, HealthCheckFailed)
        self.assertEqual(str(failure.value), "no answer within 2s")

    def test_connection_refused(self) -> None:
        """Nothing listening: "connection refused"."""
        client = HealthClient(Clock(), 2.0, user_agent="t", agent=RefusingAgent())
        failure = self.failureResultOf(client.health("http://h/api/health"), HealthCheckFailed)
        self.assertEqual(str(failure.value), "connection refused")

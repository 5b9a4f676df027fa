"""
A JSON client of a streaming workflow (L{inkflow.n8n.joined}): the attempt's
time bounds only the wait for n8n's first line; then the stream deadlines
(C{--stream-idle-timeout}, C{--stream-timeout}) do.  On a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from inkflow.errors import ApiError
from inkflow.n8n.client import ForwardResult
from inkflow.n8n.stream import KEEPALIVE_LINE
from tests.unit.test_forward import URL_A, URL_B, ForwarderTestsMixin, message
from tests.unit.test_stream_relay import StreamResponse, line, streaming

#: The defaults of the options involved.
TIMEOUTS = {"attempt_timeout": 30.0, "request_timeout": 60.0, "stream_idle_timeout": 120.0, "stream_timeout": 600.0}


class JoinedStreamTests(ForwarderTestsMixin, TestCase):
    def start(self, **overrides: Any) -> tuple[Any, StreamResponse, Deferred[Any]]:
        forwarder = self.make(**{**TIMEOUTS, **overrides})
        response = StreamResponse()
        self.agent.default = streaming(response)
        d = ensureDeferred(forwarder.forward(message(), self.clock.seconds() + 60.0))
        return forwarder, response, d

    def test_a_45_second_stream_is_answered_in_full(self) -> None:
        """
        Lines every 10 s for 45 s, past C{--attempt-timeout} (30 s) and
        C{--request-timeout} (60 s is not reached, but 30 s is): the JSON
        client gets the whole answer joined, and the attempt counts as one
        success.
        """
        forwarder, response, d = self.start()
        response.send(line("begin"))
        for i in range(4):
            self.clock.advance(10.0)
            response.send(line("item", f"חלק {i} "))
            self.assertNoResult(d)
        self.clock.advance(5.0)
        response.send(line("item", "סוף") + line("end"))
        self.assertNoResult(d)
        response.end()
        result = self.successResultOf(d)
        self.assertIsInstance(result, ForwardResult)
        self.assertEqual(result.body, {"output": "חלק 0 חלק 1 חלק 2 חלק 3 סוף"})
        self.assertEqual([o[1] for o in self.observed], ["ok"])
        self.assertEqual(forwarder.upstreams()[0]["consecutive_failures"], 0)

    def test_longer_than_the_request_timeout_too(self) -> None:
        """
        Once the first line is in, C{--request-timeout} does not cut the
        joined stream either (as for a streaming client after the commit).
        """
        _, response, d = self.start()
        response.send(line("begin"))
        for _ in range(9):
            self.clock.advance(10.0)
            response.send(line("item", "x"))
        response.send(line("end"))
        response.end()
        self.assertEqual(self.successResultOf(d).body, {"output": "x" * 9})

    def test_the_first_line_is_still_under_the_attempt_timeout(self) -> None:
        """
        Headers at once, no line within C{--attempt-timeout}: 504, n8n's
        connection dropped, no retry.
        """
        _, response, d = self.start()
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_timeout")
        self.assertTrue(response.transport.stopped)
        self.assertEqual(len(self.agent.calls), 1)

    def test_silence_after_the_first_line_is_the_idle_timeout(self) -> None:
        """
        n8n goes quiet for C{--stream-idle-timeout} after its first line:
        504 C{upstream_timeout}, n8n's connection dropped, no retry.
        """
        forwarder, response, d = self.start(webhook=(URL_A, URL_B), stream_idle_timeout=15.0)
        response.send(line("begin"))
        self.clock.advance(10.0)
        response.send(line("item", "a"))
        self.clock.advance(14.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_timeout")
        self.assertTrue(response.transport.stopped)
        self.assertEqual(len(self.agent.calls), 1)
        self.assertEqual(forwarder.upstreams()[0]["last_error"], "stream idle_timeout")

    def test_part_of_a_line_is_progress(self) -> None:
        """
        A byte from n8n restarts the idle clock even before its line is
        complete.
        """
        _, response, d = self.start(stream_idle_timeout=15.0)
        whole = line("item", "ארוך")
        response.send(line("begin"))
        self.clock.advance(10.0)
        response.send(whole[:8])
        self.clock.advance(10.0)
        response.send(whole[8:] + line("end"))
        response.end()
        self.assertEqual(self.successResultOf(d).body, {"output": "ארוך"})

    def test_n8n_keepalive_lines_are_progress_and_not_text(self) -> None:
        """
        n8n's own C{{"type":"keepalive"}} lines (2.41 writes one after 30 s of
        silence) keep the stream alive and are not part of the answer.
        """
        _, response, d = self.start(stream_idle_timeout=35.0)
        response.send(line("begin") + line("item", "לפני "))
        for _ in range(3):
            self.clock.advance(30.0)
            response.send(KEEPALIVE_LINE)
        response.send(line("item", "אחרי") + line("end"))
        response.end()
        self.assertEqual(self.successResultOf(d).body, {"output": "לפני אחרי"})

    def test_stream_timeout_while_lines_flow(self) -> None:
        """
        C{--stream-timeout} bounds the whole joined stream, from its first
        line, even while lines keep coming.
        """
        _, response, d = self.start(stream_timeout=40.0)
        response.send(line("begin"))
        for _ in range(3):
            self.clock.advance(10.0)
            response.send(line("item", "x"))
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_timeout")
        self.assertTrue(response.transport.stopped)

    def test_n8n_drops_the_stream(self) -> None:
        """
        n8n drops the connection after its first line: 502, counted against
        its breaker, not retried (the workflow runs).
        """
        forwarder, response, d = self.start(webhook=(URL_A, URL_B))
        response.send(line("begin") + line("item", "חצי"))
        self.clock.advance(40.0)
        response.drop()
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_error")
        self.assertEqual(forwarder.upstreams()[0]["consecutive_failures"], 1)
        self.assertEqual(len(self.agent.calls), 1)

    def test_over_the_answer_cap(self) -> None:
        """
        More than the answer cap of lines: 502, n8n's connection dropped.
        """
        _, response, d = self.start(max_response_bytes=1000)
        response.send(line("begin"))
        self.clock.advance(35.0)
        response.send(line("item", "x" * 600))
        self.assertNoResult(d)
        response.send(line("item", "y" * 600))
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_error")
        self.assertTrue(response.transport.stopped)

    def test_client_leaves_mid_stream(self) -> None:
        """
        The client goes away after the first line: n8n's connection is
        dropped and no deadline is left behind.
        """
        _, response, d = self.start()
        response.send(line("begin"))
        self.clock.advance(35.0)
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(response.transport.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_only_error_lines_after_a_long_wait(self) -> None:
        """
        A long stream of error lines only is still the workflow's error (502).
        """
        _, response, d = self.start()
        response.send(line("begin"))
        self.clock.advance(45.0)
        response.send(line("error", "node failed"))
        response.end()
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_error")

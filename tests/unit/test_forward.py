"""
Tests for L{inkflow.n8n.client}: the n8n Forwarder, reactor-free.

The agent is L{FakeAgent}, an in-memory L{IAgent} scripted per call
(answer, refuse, hang...), and time is a L{Clock}.  Uploaded files are
real temp files, read through a L{Cooperator} driven by the same clock.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import tracemalloc
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IAddress, IHostnameResolver, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    URI,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from zope.interface import implementer

from inkflow import __version__
from inkflow.chat import ChatMessage, UploadedFile
from inkflow.errors import ApiError
from inkflow.n8n.client import (
    POOL_IDLE_TIMEOUT,
    Forwarder,
    ForwardResult,
    make_agent,
)
from inkflow.n8n.names import RESOLUTION_TTL, CachingResolver
from inkflow.n8n.pool import Endpoints
from inkflow.settings import Settings
from tests.support.pools import connection_factory

URL_A = "http://n8n-a.test:5678/webhook/chat"
URL_B = "http://n8n-b.test:5678/webhook/chat"
URL_C = "http://n8n-c.test:5678/webhook/chat"
SECRET = "s3cret-header-value"


# --- fakes


class FakeBodyTransport:
    """
    What a response body protocol gets as its transport (like twisted.web's
    C{TransportProxyProducer}: no C{abortConnection}).
    """

    def __init__(self) -> None:
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.stopped = True


@implementer(IResponse)
class FakeResponse:
    """
    An L{IResponse} delivering C{body} at once, or only C{partial} of it and
    then nothing (a stalled body).
    """

    version = (b"HTTP", 1, 1)
    previousResponse = None
    request = None

    def __init__(
        self, code: int, body: bytes, headers: dict[str, str], stall: bool = False, length: Any = None
    ) -> None:
        self.code = code
        self.phrase = b"Phrase"
        self.headers = Headers({k: [v] for k, v in headers.items()})
        self.body = body
        self.stall = stall
        self.length = (len(body) if not stall else UNKNOWN_LENGTH) if length is None else length
        self.transport = FakeBodyTransport()

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(self.transport)
        if self.stall:
            protocol.dataReceived(self.body[: len(self.body) // 2])
            return
        if self.body:
            protocol.dataReceived(self.body)
        if not self.transport.stopped:
            protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response


@dataclass
class Call:
    """
    One request the fake agent received.
    """

    method: bytes
    uri: bytes
    headers: Headers
    body: Any
    cancelled: bool = False
    sent: bytes = b""
    response: Any = None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


Handler = Callable[[Call], "Deferred[Any]"]


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def read_body(call: Call) -> Deferred[bytes]:
    """
    Run the call's body producer into memory.
    """
    consumer = _Collect()
    d = call.body.startProducing(consumer)

    def done(_: object) -> bytes:
        call.sent = bytes(consumer.data)
        return call.sent

    return d.addCallback(done)


@implementer(IAgent)
class FakeAgent:
    """
    An L{IAgent} answering each call with the next scripted handler (the
    default answers 200 JSON).
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.script: deque[Handler] = deque()
        self.default: Handler = respond()

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None) -> Any:
        call = Call(method, uri, headers or Headers(), bodyProducer)
        self.calls.append(call)
        handler = self.script.popleft() if self.script else self.default
        return handler(call)

    def urls(self) -> list[str]:
        return [c.uri.decode("ascii") for c in self.calls]


def respond(
    status: int = 200,
    body: bytes = b'{"output": "hi"}',
    headers: dict[str, str] | None = None,
    stall: bool = False,
    length: Any = None,
    read: bool = False,
) -> Handler:
    """
    Answer with C{status} and C{body} (after reading the request body if
    C{read}).
    """
    if headers is None:
        headers = {"Content-Type": "application/json; charset=utf-8"}

    def handle(call: Call) -> Deferred[Any]:
        response = call.response = FakeResponse(status, body, headers, stall=stall, length=length)
        if read:
            return read_body(call).addCallback(lambda _: response)
        return succeed(response)

    return handle


def refuse(call: Call) -> Deferred[Any]:
    return fail(ConnectionRefusedError())


def lost(call: Call) -> Deferred[Any]:
    return fail(ResponseNeverReceived([Failure(ConnectionDone())]))


def transmission_failed(call: Call) -> Deferred[Any]:
    return fail(RequestTransmissionFailed([Failure(ConnectionDone())]))


def hang(call: Call) -> Deferred[Any]:
    """
    Never answer; when cancelled, fail like twisted.web's client does.
    """

    def cancel(d: Deferred[Any]) -> None:
        call.cancelled = True
        d.errback(ResponseNeverReceived([Failure(CancelledError())]))

    return Deferred(cancel)


# --- helpers


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook": (URL_A,),
        "webhook_header": (("X-N8N-Auth", SECRET),),
        "attempt_timeout": 10.0,
        "request_timeout": 60.0,
    }
    values.update(overrides)
    return Settings.defaults(**values)


def message(request_id: str = "req-1", files: tuple[UploadedFile, ...] = (), text: str = "שלום") -> ChatMessage:
    return ChatMessage(
        request_id=request_id,
        session_id="session-1",
        action="sendMessage",
        text=text,
        metadata={"page": "home"},
        files=files,
    )


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


class ForwarderTestsMixin:
    """
    Builds a L{Forwarder} over a L{FakeAgent} and a L{Clock}.
    """

    clock: Clock
    agent: FakeAgent
    observed: list[tuple[int, str, float]]
    events: list[dict[str, Any]]

    def make(self, random: Callable[[], float] | None = None, **overrides: Any) -> Forwarder:
        self.clock = Clock()
        self.agent = FakeAgent()
        self.observed = []
        self.events = []
        options = {
            k: overrides.pop(k) for k in ("failure_threshold", "cooldown", "max_response_bytes") if k in overrides
        }
        cooperator = Cooperator(scheduler=lambda f: self.clock.callLater(0, f), started=True)
        forwarder = Forwarder(
            settings(**overrides),
            self.agent,
            self.clock,
            random or fixed(0.5),
            observer=lambda *a: self.observed.append(a),
            cooperator=cooperator,
            **options,
        )
        forwarder.log = Logger(namespace="test", observer=cast(ILogObserver, self.events.append))
        return forwarder

    def send(self, forwarder: Forwarder, msg: ChatMessage | None = None, timeout: float = 60.0) -> Deferred[Any]:
        return ensureDeferred(forwarder.forward(msg or message(), self.clock.seconds() + timeout))

    def flush(self) -> None:
        """
        Run everything due now (cooperator steps, zero-delay calls).
        """
        for _ in range(10_000):
            now = self.clock.seconds()
            if not any(c.getTime() <= now for c in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise AssertionError("the clock never settled")


# --- tests


class ForwardRequestTests(ForwarderTestsMixin, TestCase):
    """
    What the Forwarder sends to n8n.
    """

    def test_json_body_and_headers(self) -> None:
        """
        A message without files is POSTed as the contract's JSON with
        X-Request-ID, Idempotency-Key, InkFlow's User-Agent and the configured
        webhook headers.
        """
        forwarder = self.make()
        self.agent.default = respond(read=True)
        self.successResultOf(self.send(forwarder))
        [call] = self.agent.calls
        self.assertEqual(call.method, b"POST")
        self.assertEqual(call.uri.decode(), URL_A)
        self.assertEqual(
            json.loads(call.sent),
            {
                "action": "sendMessage",
                "sessionId": "session-1",
                "chatInput": "שלום",
                "metadata": {"page": "home", "requestId": "req-1", "source": "inkflow"},
            },
        )
        self.assertEqual(call.header("Content-Type"), "application/json; charset=utf-8")
        self.assertEqual(call.header("X-Request-ID"), "req-1")
        self.assertTrue(call.header("Idempotency-Key"))
        self.assertEqual(call.header("User-Agent"), f"InkFlow/{__version__}")
        self.assertEqual(call.header("X-N8N-Auth"), SECRET)
        self.assertIsNone(call.header("Cookie"))

    def test_generated_key_is_the_request_id(self) -> None:
        """
        Without a client key, the Idempotency-Key is the (unguessable)
        request id: one random draw per chat, not two.
        """
        forwarder = self.make()
        self.successResultOf(self.send(forwarder, message("0123abcd")))
        self.assertEqual(self.agent.calls[0].header("Idempotency-Key"), "0123abcd")

    def test_idempotency_key_differs_per_message(self) -> None:
        """
        Two messages get two different Idempotency-Keys.
        """
        forwarder = self.make()
        self.successResultOf(self.send(forwarder, message("a")))
        self.successResultOf(self.send(forwarder, message("b")))
        keys = {c.header("Idempotency-Key") for c in self.agent.calls}
        self.assertEqual(len(keys), 2)

    def test_multipart_body(self) -> None:
        """
        A message with files is POSTed as multipart with the fields action,
        sessionId, chatInput, metadata (a JSON string) and one C{files} part
        per file with its name, type and exact bytes.
        """
        forwarder = self.make()
        uploads = (
            self.upload("תמונה.png", b"\x89PNG" + bytes(range(256)) * 300, "image/png"),
            self.upload("a.txt", b"hi"),
        )
        self.agent.default = respond(read=True)
        d = self.send(forwarder, message(files=uploads))
        self.flush()
        self.successResultOf(d)
        [call] = self.agent.calls
        fields, files = parse_multipart(call.header("Content-Type") or "", call.sent)
        self.assertEqual(fields["action"], "sendMessage")
        self.assertEqual(fields["sessionId"], "session-1")
        self.assertEqual(fields["chatInput"], "שלום")
        self.assertEqual(json.loads(fields["metadata"]), {"page": "home", "requestId": "req-1", "source": "inkflow"})
        self.assertEqual(
            files,
            [
                ("files", "תמונה.png", "image/png", sha(b"\x89PNG" + bytes(range(256)) * 300)),
                ("files", "a.txt", "text/plain", sha(b"hi")),
            ],
        )
        self.assertNoOpenFile(uploads)

    def test_files_reopened_for_each_attempt(self) -> None:
        """
        Each attempt sends the whole files again (they are reopened: the
        producer closed them after the first attempt).
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        uploads = (self.upload("a.bin", os.urandom(200_000), "application/pdf"),)
        self.agent.script.extend([respond(503, b"", read=True), respond(read=True)])
        d = self.send(forwarder, message(files=uploads))
        self.flush()
        self.assertEqual(self.successResultOf(d).attempts, 2)
        digests = [parse_multipart(c.header("Content-Type") or "", c.sent)[1][0][3] for c in self.agent.calls]
        with open(uploads[0].path, "rb") as f:
            expected = sha(f.read())
        self.assertEqual(digests, [expected, expected])
        self.assertNoOpenFile(uploads)

    def test_files_closed_after_timeout(self) -> None:
        """
        Files opened for an attempt that timed out are closed.
        """
        forwarder = self.make(attempt_timeout=1.0)
        uploads = (self.upload("a.txt", b"x" * 10),)
        self.agent.default = hang
        d = self.send(forwarder, message(files=uploads))
        self.clock.advance(1.0)
        self.failureResultOf(d, ApiError)
        self.assertNoOpenFile(uploads)

    def test_missing_upload(self) -> None:
        """
        An upload that vanished from disk is an internal error, and nothing is
        sent.
        """
        forwarder = self.make()
        gone = UploadedFile(os.path.join(self.scratch(), "gone"), "a.txt", "text/plain", 3)
        failure = self.failureResultOf(self.send(forwarder, message(files=(gone,))), ApiError)
        self.assertEqual(failure.value.code, "internal_error")
        self.assertEqual(self.agent.calls, [])

    def test_answered_attempt_logged_at_debug_only(self) -> None:
        """
        An answered attempt is logged (at debug) only when C{--log-level} is
        debug: otherwise its event is not even built.
        """
        forwarder = self.make()
        self.successResultOf(self.send(forwarder))
        self.assertEqual(self.events, [])
        forwarder = self.make(log_level="debug")
        self.successResultOf(self.send(forwarder))
        self.assertEqual([(e["log_level"], e["outcome"]) for e in self.events], [(LogLevel.debug, "ok")])

    def test_logs_hold_no_secrets(self) -> None:
        """
        Neither header values nor URL credentials or query strings appear in
        the logs, even for failed attempts.
        """
        url = "http://user:pa55word@n8n-a.test/webhook/chat?token=qu3ry"
        forwarder = self.make(webhook=(url,), retries=1)
        self.agent.default = refuse
        d = self.send(forwarder)
        self.clock.advance(10)
        self.failureResultOf(d, ApiError)
        self.assertTrue(self.events)
        for event in self.events:
            shown = formatEvent(event) + repr({k: v for k, v in event.items() if not k.startswith("log_")})
            for secret in (SECRET, "pa55word", "qu3ry", "user:"):
                self.assertNotIn(secret, shown)
        self.assertTrue(any(e.get("request_id") == "req-1" for e in self.events))

    def upload(self, name: str, data: bytes, content_type: str = "text/plain") -> UploadedFile:
        path = os.path.join(self.scratch(), f"upload-{name}")
        with open(path, "wb") as f:
            f.write(data)
        return UploadedFile(path=path, filename=name, content_type=content_type, size=len(data))

    def scratch(self) -> str:
        """
        A private temp folder removed after the test (not C{mktemp}, which
        writes under the working directory when run by pytest).
        """
        folder = tempfile.mkdtemp(prefix="inkflow-test-forward-")
        self.addCleanup(shutil.rmtree, folder, True)
        return folder

    def assertNoOpenFile(self, uploads: tuple[UploadedFile, ...]) -> None:
        if not os.path.isdir("/proc/self/fd"):  # pragma: no cover
            return
        paths = {os.path.abspath(u.path) for u in uploads}
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            self.assertNotIn(target, paths)


class ForwardResponseTests(ForwarderTestsMixin, TestCase):
    """
    How n8n's answers map to results and errors.
    """

    def test_json_passed_through(self) -> None:
        """
        A 2xx JSON body is returned as is, with its status, the attempt count
        and the URL index.
        """
        forwarder = self.make()
        self.agent.default = respond(201, b'{"output": "\xd7\xa9", "extra": [1, 2]}')
        result = self.successResultOf(self.send(forwarder))
        self.assertEqual(
            result, ForwardResult(body={"output": "ש", "extra": [1, 2]}, status=201, attempts=1, url_index=0)
        )

    def test_json_bytes_kept_when_exact(self) -> None:
        """
        n8n's JSON bytes come with the value when they may be sent unchanged;
        not when re-encoding would change or refuse them (a surrogate escape,
        a number beyond a float's range, a byte-order mark, UTF-16), nor for
        text made into C{{"output"}}.
        """
        forwarder = self.make()
        exact = b'{"output": "\xd7\xa9", "n": [1.5, 2]}'
        self.agent.default = respond(body=exact)
        result = self.successResultOf(self.send(forwarder))
        self.assertEqual((result.body, result.raw), ({"output": "ש", "n": [1.5, 2]}, exact))
        for body, value in (
            (b'{"output": "\\ud83d\\ude00"}', {"output": "\U0001f600"}),
            (b'{"output": 1e999}', {"output": float("inf")}),
            (b'\xef\xbb\xbf{"output": "x"}', {"output": "x"}),
            ('{"output": "x"}'.encode("utf-16-le"), {"output": "x"}),
            (b"not json {", {"output": "not json {"}),
        ):
            self.agent.default = respond(body=body)
            result = self.successResultOf(self.send(forwarder))
            self.assertEqual((result.body, result.raw), (value, None), body)

    def test_any_json_value(self) -> None:
        """
        Any JSON value (list, string, number) is passed through.
        """
        forwarder = self.make()
        for raw, value in ((b"[1, 2]", [1, 2]), (b'"text"', "text"), (b"42", 42), (b"null", None)):
            self.agent.default = respond(body=raw)
            self.assertEqual(self.successResultOf(self.send(forwarder)).body, value)

    def test_text_becomes_output(self) -> None:
        """
        A 2xx text body becomes C{{"output": text}}, decoded with its charset.
        """
        forwarder = self.make()
        self.agent.default = respond(body="שלום".encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
        self.assertEqual(self.successResultOf(self.send(forwarder)).body, {"output": "שלום"})
        self.agent.default = respond(body=b"42", headers={"Content-Type": "text/plain"})
        self.assertEqual(self.successResultOf(self.send(forwarder)).body, {"output": "42"})

    def test_non_json_with_json_type(self) -> None:
        """
        A body labelled JSON that is not JSON is passed on as text.
        """
        forwarder = self.make()
        self.agent.default = respond(body=b"not json {")
        self.assertEqual(self.successResultOf(self.send(forwarder)).body, {"output": "not json {"})

    def test_binary_is_unusable(self) -> None:
        """
        A 2xx binary body that is not text is an upstream error.
        """
        forwarder = self.make()
        self.agent.default = respond(body=b"\xff\xd8\xff\xe0", headers={"Content-Type": "image/jpeg"})
        self.assertEqual(self.failureResultOf(self.send(forwarder), ApiError).value.code, "upstream_error")

    def test_empty_2xx_is_an_error_and_not_retried(self) -> None:
        """
        An empty 2xx body (the workflow failed before its Respond node) is a
        502 upstream_error, after exactly one attempt.
        """
        forwarder = self.make(webhook=(URL_A, URL_B), retries=3)
        self.agent.default = respond(200, b"")
        error = self.failureResultOf(self.send(forwarder), ApiError).value
        self.assertEqual((error.status, error.code), (502, "upstream_error"))
        self.assertEqual(len(self.agent.calls), 1)
        self.agent.default = respond(200, b"  \r\n")
        self.failureResultOf(self.send(forwarder), ApiError)
        self.assertEqual(len(self.agent.calls), 2)

    def test_body_over_cap(self) -> None:
        """
        A body over the cap is a 502 (not retried) and the connection is
        dropped.
        """
        forwarder = self.make(max_response_bytes=100, retries=2)
        self.agent.default = respond(body=b'"' + b"x" * 200 + b'"', length=UNKNOWN_LENGTH)
        error = self.failureResultOf(self.send(forwarder), ApiError).value
        self.assertEqual(error.code, "upstream_error")
        self.assertEqual(len(self.agent.calls), 1)

    def test_declared_length_over_cap(self) -> None:
        """
        A C{Content-Length} over the cap fails at once without reading.
        """
        forwarder = self.make(max_response_bytes=100)
        self.agent.default = respond(body=b"{}", length=10_000)
        self.assertEqual(self.failureResultOf(self.send(forwarder), ApiError).value.code, "upstream_error")

    def test_asks_for_identity_encoding(self) -> None:
        """
        InkFlow asks n8n for an uncompressed answer (C{Accept-Encoding:
        identity}): its answer cap counts the bytes as they come.
        """
        forwarder = self.make()
        self.successResultOf(self.send(forwarder))
        self.assertEqual(self.agent.calls[0].headers.getRawHeaders(b"Accept-Encoding"), [b"identity"])

    def test_gzip_answer_is_not_inflated(self) -> None:
        """
        A gzip answer (sent although InkFlow asked for identity) is a 502,
        not retried, and is never inflated: a 50 MB bomb in 50 KB allocates
        nothing near its inflated size.
        """
        forwarder = self.make(webhook=(URL_A, URL_B), retries=2)
        bomb = gzip.compress(b"0" * (50 * 1024 * 1024), compresslevel=9)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        self.agent.default = respond(body=bomb, headers=headers)
        tracemalloc.start()
        try:
            error = self.failureResultOf(self.send(forwarder), ApiError).value
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual((error.status, error.code), (502, "upstream_error"))
        self.assertEqual(len(self.agent.calls), 1)
        self.assertLess(peak, 5 * 1024 * 1024)
        self.assertTrue(self.agent.calls[0].response.transport.stopped)
        # A streaming client's request the same.
        streamed = ensureDeferred(forwarder.forward(message(), self.clock.seconds() + 60.0, stream=True))
        self.assertEqual(self.failureResultOf(streamed, ApiError).value.code, "upstream_error")

    def test_encoded_error_status_still_counts(self) -> None:
        """
        A non-2xx answer in a content encoding is judged by its status (a 503
        moves on to the next URL); its body is not inflated.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.script.append(respond(503, gzip.compress(b"busy"), {"Content-Encoding": "gzip"}))
        self.assertEqual(self.successResultOf(self.send(forwarder)).url_index, 1)
        self.assertEqual(self.agent.urls(), [URL_A, URL_B])

    def test_500_not_retried_by_default(self) -> None:
        """
        n8n's 500 (workflow error) is final by default: the workflow ran.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.default = respond(500, b'{"message": "Error in workflow"}')
        error = self.failureResultOf(self.send(forwarder), ApiError).value
        self.assertEqual((error.status, error.code), (502, "upstream_error"))
        self.assertEqual(self.agent.urls(), [URL_A])

    def test_500_retried_when_opted_in(self) -> None:
        """
        With C{500} in C{retry_on}, a 500 moves on to the next URL.
        """
        forwarder = self.make(webhook=(URL_A, URL_B), retry_on=("connect", "500"))
        self.agent.script.append(respond(500, b"{}"))
        self.assertEqual(self.successResultOf(self.send(forwarder)).url_index, 1)

    def test_other_4xx_final(self) -> None:
        """
        A 4xx other than 404 and 429 (e.g. 401 bad header auth) is final.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.default = respond(401, b"{}")
        self.failureResultOf(self.send(forwarder), ApiError)
        self.assertEqual(len(self.agent.calls), 1)


class ForwardRetryTests(ForwarderTestsMixin, TestCase):
    """
    Retries, failover and backoff.
    """

    def test_failover_after_connect_failure(self) -> None:
        """
        A refused connection moves on to the next URL at once.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.script.append(refuse)
        result = self.successResultOf(self.send(forwarder))
        self.assertEqual((result.url_index, result.attempts), (1, 2))
        self.assertEqual(self.agent.urls(), [URL_A, URL_B])

    def test_dns_failure_is_connect(self) -> None:
        """
        A DNS failure counts as a connect failure (retried).
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.script.append(lambda call: fail(DNSLookupError("n8n-a.test")))
        self.assertEqual(self.successResultOf(self.send(forwarder)).url_index, 1)

    def test_exactly_retries_plus_one_attempts(self) -> None:
        """
        A URL answering 503 forever gets exactly C{retries + 1} attempts, all
        with one Idempotency-Key, then the caller gets 502.
        """
        forwarder = self.make(retries=3)
        self.agent.default = respond(503, b"")
        d = self.send(forwarder)
        self.clock.pump([0.5] * 40)
        error = self.failureResultOf(d, ApiError).value
        self.assertEqual((error.status, error.code), (502, "upstream_error"))
        self.assertEqual(len(self.agent.calls), 4)
        self.assertEqual(len({c.header("Idempotency-Key") for c in self.agent.calls}), 1)
        self.assertEqual(len({c.header("X-Request-ID") for c in self.agent.calls}), 1)

    def test_spread_over_urls(self) -> None:
        """
        Attempts go through the URLs in failover order and wrap around.
        """
        forwarder = self.make(webhook=(URL_A, URL_B, URL_C), retries=4)
        self.agent.default = respond(502, b"")
        d = self.send(forwarder)
        self.clock.pump([0.5] * 40)
        self.failureResultOf(d, ApiError)
        self.assertEqual(self.agent.urls(), [URL_A, URL_B, URL_C, URL_A, URL_B])

    def test_backoff_uses_injected_random(self) -> None:
        """
        Trying the same URL again waits C{random() * base}: nothing is sent
        before that.
        """
        forwarder = self.make(random=fixed(0.5), retries=1)
        self.agent.script.append(respond(503, b""))
        d = self.send(forwarder)
        self.assertEqual(len(self.agent.calls), 1)
        self.clock.advance(0.124)
        self.assertEqual(len(self.agent.calls), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(self.agent.calls), 2)
        self.assertEqual(self.successResultOf(d).attempts, 2)

    def test_retry_after_honoured(self) -> None:
        """
        A 429 with C{Retry-After: 2} delays the next attempt at that URL by
        2 seconds.
        """
        forwarder = self.make(retries=1)
        self.agent.script.append(respond(429, b"{}", headers={"Retry-After": "2"}))
        d = self.send(forwarder)
        self.clock.advance(1.9)
        self.assertEqual(len(self.agent.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).attempts, 2)

    def test_retry_after_beyond_deadline(self) -> None:
        """
        A C{Retry-After} past the deadline ends with 502 at once.
        """
        forwarder = self.make(retries=2)
        self.agent.script.append(respond(429, b"{}", headers={"Retry-After": "120"}))
        error = self.failureResultOf(self.send(forwarder, timeout=30.0), ApiError).value
        self.assertEqual(error.code, "upstream_error")
        self.assertEqual(len(self.agent.calls), 1)

    def test_404_moves_on(self) -> None:
        """
        n8n's 404 (webhook not registered) moves on to the next URL.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.script.append(respond(404, b'{"code": 404, "message": "not registered"}'))
        self.assertEqual(self.successResultOf(self.send(forwarder)).url_index, 1)

    def test_lost_response_not_retried(self) -> None:
        """
        A connection lost after the request was sent is not retried by
        default (n8n may have run the workflow).
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.script.append(lost)
        self.assertEqual(self.failureResultOf(self.send(forwarder), ApiError).value.code, "upstream_error")
        self.assertEqual(len(self.agent.calls), 1)

    def test_lost_response_retried_with_timeout(self) -> None:
        """
        With C{timeout} in C{retry_on}, a lost response is retried.
        """
        forwarder = self.make(webhook=(URL_A, URL_B), retry_on=("connect", "timeout"))
        self.agent.script.append(lost)
        self.assertEqual(self.successResultOf(self.send(forwarder)).url_index, 1)

    def test_transmission_failure_retried(self) -> None:
        """
        A request that failed while being sent counts as a connect failure:
        n8n never got the whole body, so it is retried.
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.script.append(transmission_failed)
        self.assertEqual(self.successResultOf(self.send(forwarder)).url_index, 1)

    def test_no_retry_after_deadline_during_backoff(self) -> None:
        """
        A backoff that would cross the deadline is not taken: 502.
        """
        forwarder = self.make(retries=2, random=fixed(0.99))
        self.agent.default = respond(503, b"")
        error = self.failureResultOf(self.send(forwarder, timeout=0.2), ApiError).value
        self.assertEqual(error.code, "upstream_error")
        self.assertEqual(len(self.agent.calls), 1)

    def test_observer_called_per_attempt(self) -> None:
        """
        The observer hears each attempt once with (url_index, outcome,
        seconds).
        """
        forwarder = self.make(webhook=(URL_A, URL_B))
        self.agent.script.append(refuse)
        self.successResultOf(self.send(forwarder))
        self.assertEqual(self.observed, [(0, "connect", 0.0), (1, "ok", 0.0)])


class ForwardTimeoutTests(ForwarderTestsMixin, TestCase):
    """
    Attempt timeouts, the overall deadline and cancellation.
    """

    def test_attempt_timeout_on_headers(self) -> None:
        """
        No headers within C{attempt_timeout}: the attempt is cancelled; a
        timeout is not retried by default, so the caller gets 504.
        """
        forwarder = self.make(webhook=(URL_A, URL_B), attempt_timeout=5.0)
        self.agent.script.append(hang)
        d = self.send(forwarder)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, ApiError).value
        self.assertEqual((error.status, error.code), (504, "upstream_timeout"))
        self.assertTrue(self.agent.calls[0].cancelled)
        self.assertEqual(len(self.agent.calls), 1)
        self.assertEqual(self.observed, [(0, "timeout", 5.0)])

    def test_attempt_timeout_covers_body(self) -> None:
        """
        Headers in time but a stalled body still hits C{attempt_timeout}, and
        the connection is dropped.
        """
        forwarder = self.make(attempt_timeout=5.0)
        self.agent.script.append(respond(stall=True))
        d = self.send(forwarder)
        self.clock.advance(5.0)
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_timeout")
        self.assertTrue(self.agent.calls[0].response.transport.stopped)

    def test_timeout_retried_when_opted_in(self) -> None:
        """
        With C{timeout} in C{retry_on}, a timed-out attempt moves on.
        """
        forwarder = self.make(webhook=(URL_A, URL_B), attempt_timeout=5.0, retry_on=("connect", "timeout"))
        self.agent.script.append(hang)
        d = self.send(forwarder)
        self.clock.advance(5.0)
        self.assertEqual(self.successResultOf(d).url_index, 1)

    def test_deadline_cancels_attempt(self) -> None:
        """
        The deadline cuts the attempt in flight short: 504 exactly at the
        deadline, even with a longer C{attempt_timeout}.
        """
        forwarder = self.make(attempt_timeout=30.0, retry_on=("connect", "timeout"))
        self.agent.default = hang
        d = self.send(forwarder, timeout=2.0)
        self.clock.advance(1.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_timeout")
        self.assertEqual(len(self.agent.calls), 1)
        self.assertTrue(self.agent.calls[0].cancelled)

    def test_deadline_already_passed(self) -> None:
        """
        A deadline already passed gives 504 without sending anything.
        """
        forwarder = self.make()
        d = self.send(forwarder, timeout=0.0)
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "upstream_timeout")
        self.assertEqual(self.agent.calls, [])

    def test_cancel_stops_everything(self) -> None:
        """
        Cancelling the forwarding (the client left) cancels the attempt in
        flight, starts no other, and does not count against the breaker.
        """
        forwarder = self.make(webhook=(URL_A, URL_B), retry_on=("connect", "timeout"))
        self.agent.default = hang
        d = self.send(forwarder)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(100)
        self.assertEqual(len(self.agent.calls), 1)
        self.assertTrue(self.agent.calls[0].cancelled)
        self.assertEqual(forwarder.upstreams()[0]["failures_total"], 0)
        self.assertEqual(self.observed, [(0, "cancelled", 0.0)])

    def test_cancel_during_backoff(self) -> None:
        """
        Cancelling during a backoff wait sends nothing more.
        """
        forwarder = self.make(retries=2)
        self.agent.default = respond(503, b"")
        d = self.send(forwarder)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(100)
        self.assertEqual(len(self.agent.calls), 1)


class ForwardBreakerTests(ForwarderTestsMixin, TestCase):
    """
    The circuit breakers as seen through the Forwarder.
    """

    def test_health_shape(self) -> None:
        """
        C{upstreams()} lists each URL, redacted, with its breaker state and
        counters.
        """
        forwarder = self.make(webhook=("https://u:p@n8n.test/webhook/x?token=t", URL_B), retries=0)
        self.agent.script.append(respond(503, b""))
        self.failureResultOf(self.send(forwarder), ApiError)
        self.assertEqual(
            forwarder.upstreams(),
            [
                {
                    "url": "https://n8n.test:443/webhook/x",
                    "state": "closed",
                    "consecutive_failures": 1,
                    "requests_total": 1,
                    "failures_total": 1,
                    "last_error": "HTTP 503",
                },
                {
                    "url": "http://n8n-b.test:5678/webhook/chat",
                    "state": "closed",
                    "consecutive_failures": 0,
                    "requests_total": 0,
                    "failures_total": 0,
                    "last_error": None,
                },
            ],
        )

    def test_open_breaker_fails_fast(self) -> None:
        """
        After C{failure_threshold} failures the only URL is open: the next
        message fails at once with 502 and nothing is sent; C{all_open()}.
        """
        forwarder = self.make(retries=0, failure_threshold=3, cooldown=30.0)
        self.agent.default = refuse
        for _ in range(3):
            self.failureResultOf(self.send(forwarder), ApiError)
        self.assertTrue(forwarder.all_open())
        self.assertEqual(forwarder.upstreams()[0]["state"], "open")
        error = self.failureResultOf(self.send(forwarder), ApiError).value
        self.assertEqual(error.code, "upstream_error")
        self.assertEqual(len(self.agent.calls), 3)

    def test_half_open_probe(self) -> None:
        """
        After the cool-down one probe goes through; its success closes the
        breaker.
        """
        forwarder = self.make(retries=0, failure_threshold=1, cooldown=30.0)
        self.agent.script.append(refuse)
        self.failureResultOf(self.send(forwarder), ApiError)
        self.clock.advance(30.0)
        self.assertFalse(forwarder.all_open())
        self.assertEqual(forwarder.upstreams()[0]["state"], "half_open")
        self.successResultOf(self.send(forwarder))
        self.assertEqual(forwarder.upstreams()[0]["state"], "closed")

    def test_only_one_probe(self) -> None:
        """
        While the half-open probe is in flight, other messages fail fast.
        """
        forwarder = self.make(retries=0, failure_threshold=1, cooldown=30.0)
        self.agent.script.extend([refuse, hang])
        self.failureResultOf(self.send(forwarder), ApiError)
        self.clock.advance(30.0)
        probe = self.send(forwarder)
        self.assertNoResult(probe)
        self.failureResultOf(self.send(forwarder), ApiError)
        self.assertEqual(len(self.agent.calls), 2)
        probe.cancel()
        self.failureResultOf(probe, CancelledError)

    def test_open_url_skipped(self) -> None:
        """
        An open URL is skipped while another is closed: the first attempt goes
        to the second URL.
        """
        forwarder = self.make(webhook=(URL_A, URL_B), retries=0, failure_threshold=1)
        self.agent.script.append(refuse)
        self.failureResultOf(self.send(forwarder), ApiError)
        result = self.successResultOf(self.send(forwarder))
        self.assertEqual(result.url_index, 1)
        self.assertEqual(self.agent.urls(), [URL_A, URL_B])

    def test_429_and_4xx_do_not_open(self) -> None:
        """
        429 and other 4xx answers do not count as failures; 404 does.
        """
        forwarder = self.make(retries=0, failure_threshold=2)
        for status in (429, 429, 400, 401):
            self.agent.script.append(respond(status, b"{}"))
            self.failureResultOf(self.send(forwarder), ApiError)
        self.assertEqual(forwarder.upstreams()[0]["failures_total"], 0)
        self.agent.script.extend([respond(404, b"{}"), respond(404, b"{}")])
        self.failureResultOf(self.send(forwarder), ApiError)
        self.failureResultOf(self.send(forwarder), ApiError)
        self.assertTrue(forwarder.all_open())


class MakeAgentTests(TestCase):
    """
    Tests for L{make_agent}.
    """

    def test_pool(self) -> None:
        """
        The agent has its own persistent pool sized for C{max_concurrent},
        dropping idle connections before n8n's 5 s keep-alive and never
        replaying a request.
        """
        agent, pool = make_agent(MemoryReactorClock(), settings(max_concurrent=25))
        self.assertTrue(IAgent.providedBy(agent))
        self.assertTrue(pool.persistent)
        self.assertGreaterEqual(pool.maxPersistentPerHost, 25)
        self.assertLess(pool.cachedConnectionTimeout, 5)
        self.assertEqual(pool.cachedConnectionTimeout, POOL_IDLE_TIMEOUT)
        self.assertFalse(pool.retryAutomatically)

    def test_endpoints_built_once(self) -> None:
        """
        The agent's endpoint for a webhook's scheme, host and port is built
        once and reused; https gets TLS; another scheme is refused.
        """
        endpoints = Endpoints(MemoryReactorClock(), 2.5)
        first = endpoints.endpointForURI(URI.fromBytes(URL_A.encode()))
        self.assertIs(endpoints.endpointForURI(URI.fromBytes(URL_A.encode() + b"?x=1")), first)
        self.assertIsInstance(first, HostnameEndpoint)
        self.assertIsNot(endpoints.endpointForURI(URI.fromBytes(URL_B.encode())), first)
        secure = endpoints.endpointForURI(URI.fromBytes(b"https://n8n.test/webhook/chat"))
        self.assertNotIsInstance(secure, HostnameEndpoint)
        self.assertRaises(SchemeNotSupported, endpoints.endpointForURI, URI.fromBytes(b"ftp://n8n.test/x"))

    def test_ip_literal_webhooks_connect_without_name_resolution(self) -> None:
        """
        A webhook at an IP address (n8n on the same host or network) is
        connected to directly: no name resolution in the thread pool and no
        address racing for each of the many connections a burst of streams
        opens.  A host name keeps the resolving endpoint.
        """
        reactor = MemoryReactorClock()
        endpoints = Endpoints(reactor, 2.5)
        four = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:5678/webhook/chat"))
        six = endpoints.endpointForURI(URI.fromBytes(b"http://[::1]:5678/webhook/chat"))
        self.assertIsInstance(four, TCP4ClientEndpoint)
        self.assertIsInstance(six, TCP6ClientEndpoint)
        four.connect(Factory.forProtocol(Protocol))
        host, port, _, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 5678, 2.5))
        self.assertIsInstance(endpoints.endpointForURI(URI.fromBytes(URL_A.encode())), HostnameEndpoint)

    def test_host_name_webhook_is_resolved_once_per_few_seconds(self) -> None:
        """
        A webhook at a host name (C{localhost}, a container's name) is
        resolved once and its addresses reused for a few seconds: a burst of
        streams opens a new n8n connection each, and each resolution was a
        hand-off to the thread pool.  After the few seconds it is resolved
        again (a container may come back at a new address).
        """
        reactor = MemoryReactorClock()
        asked: list[str] = []
        real = reactor.nameResolver

        class Counting:
            def resolveHostName(self, receiver: Any, hostName: str, *args: Any, **kwargs: Any) -> Any:
                asked.append(hostName)
                return real.resolveHostName(receiver, hostName, *args, **kwargs)

        reactor.nameResolver = Counting()  # type: ignore[assignment]
        endpoint = Endpoints(reactor, 2.5).endpointForURI(URI.fromBytes(URL_A.encode()))
        for _ in range(3):
            endpoint.connect(Factory.forProtocol(Protocol))
        reactor.advance(1)  # HostnameEndpoint's first attempt
        self.assertEqual(asked, ["n8n-a.test"])
        self.assertEqual([(c[0], c[1]) for c in reactor.tcpClients], [("127.0.0.1", 5678)] * 3)
        reactor.advance(RESOLUTION_TTL)
        endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(asked, ["n8n-a.test"] * 2)

    def test_resolver_reuses_an_answer_only_while_fresh_and_never_a_failure(self) -> None:
        """
        The caching resolver hands every receiver the addresses, began and
        complete, from its own lookup or the remembered one; an empty answer
        (a failed lookup) is asked again next time; another port is another
        lookup.
        """
        clock = Clock()
        answers: dict[str, list[IPv4Address]] = {"n8n": [IPv4Address("TCP", "10.0.0.7", 5678)], "gone": []}
        asked: list[tuple[str, int]] = []

        @implementer(IHostnameResolver)
        class Fake:
            def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, *rest: Any) -> Any:
                asked.append((hostName, portNumber))
                receiver.resolutionBegan(None)
                for address in answers[hostName]:
                    receiver.addressResolved(address)
                receiver.resolutionComplete()

        @implementer(IResolutionReceiver)
        class Receiver:
            def __init__(self) -> None:
                self.events: list[str] = []

            def resolutionBegan(self, resolution: Any) -> None:
                self.events.append("began")

            def addressResolved(self, address: IAddress) -> None:
                assert isinstance(address, IPv4Address)
                self.events.append(address.host)

            def resolutionComplete(self) -> None:
                self.events.append("complete")

        resolver = CachingResolver(Fake(), clock, ttl=5.0)
        receivers = [Receiver() for _ in range(6)]
        resolver.resolveHostName(receivers[0], "n8n", 5678)
        clock.advance(4.9)
        resolver.resolveHostName(receivers[1], "n8n", 5678)
        resolver.resolveHostName(receivers[2], "n8n", 80)
        clock.advance(0.2)
        resolver.resolveHostName(receivers[3], "n8n", 5678)
        resolver.resolveHostName(receivers[4], "gone", 5678)
        resolver.resolveHostName(receivers[5], "gone", 5678)
        self.assertEqual(asked, [("n8n", 5678), ("n8n", 80), ("n8n", 5678), ("gone", 5678), ("gone", 5678)])
        for receiver in receivers[:4]:
            self.assertEqual(receiver.events, ["began", "10.0.0.7", "complete"])
        self.assertEqual(receivers[5].events, ["began", "complete"])

    def test_agent_parses_each_webhook_url_once(self) -> None:
        """
        The n8n agent parses a webhook URL on its first request only; every
        request still goes to that URL's host and port with its path, and a
        URL of another scheme is still refused.
        """
        reactor = MemoryReactorClock()
        agent, _ = make_agent(reactor, settings())
        parsed: list[bytes] = []
        original = URI.fromBytes

        def counting(uri: bytes, defaultPort: int | None = None) -> URI:
            parsed.append(uri)
            return original(uri, defaultPort)

        self.patch(URI, "fromBytes", staticmethod(counting))
        url = b"http://127.0.0.1:5678/webhook/chat?x=1"
        for _ in range(3):
            agent.request(b"POST", url, Headers({b"Host": [b"127.0.0.1:5678"]}))
        self.assertEqual(parsed, [url])
        self.assertEqual([(c[0], c[1]) for c in reactor.tcpClients], [("127.0.0.1", 5678)] * 3)
        refused = agent.request(b"POST", b"ftp://127.0.0.1/x")
        self.failureResultOf(refused, SchemeNotSupported)

    def test_connections_are_not_logged(self) -> None:
        """
        The pool's connection factory does not log a line per n8n connection
        (many concurrent streams open many).
        """
        _, pool = make_agent(MemoryReactorClock(), settings())
        self.assertFalse(connection_factory(pool).noisy)

    def test_needs_a_webhook(self) -> None:
        """
        A Forwarder without webhook URLs is a programming error.
        """
        self.assertRaises(ValueError, Forwarder, settings(webhook=()), FakeAgent(), Clock())


# --- multipart parsing for the assertions


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[tuple[str, str, str, str]]]:
    """
    Parse a multipart body with the standard library's email parser: text
    fields, and (field, filename, content type, sha256) per file part.
    """
    raw = b"Content-Type: " + content_type.encode("ascii") + b"\r\n\r\n" + body
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert parsed.is_multipart()
    fields: dict[str, str] = {}
    files: list[tuple[str, str, str, str]] = []
    for part in parsed.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if filename is None:
            fields[str(name)] = payload.decode("utf-8")
        else:
            files.append((str(name), filename, part.get_content_type(), sha(payload)))
    return fields, files

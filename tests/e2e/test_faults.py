"""
End to end: the n8n fault matrix.  The real server (C{twistd -n inkflow})
forwards to a fake n8n whose answers are scripted per path, and every case is
checked against the contract: the client's status and error code, how many
attempts n8n saw (with one C{Idempotency-Key}), and the deadline.

Small timeouts (C{--attempt-timeout 0.5 --request-timeout 3}) keep the file
fast; four server processes serve every case:

  - C{proxy}: one webhook (C{/webhook/p}) on the fake;
  - C{failover}: a refused port, then C{/webhook/m1} and C{/webhook/m2};
  - C{down}: only a refused port (every attempt fails; its breaker opens);
  - C{unreachable}: a port whose SYNs are dropped, then C{/webhook/u}.

Cases already covered by C{test_chat.py} (500 not retried, 503 retried with
one key, 429 delta-seconds then success, empty 200, reset before headers,
refused + 404 + live failover, 504 at --request-timeout) are not repeated.
"""

from __future__ import annotations

import email.utils
import json
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as _reactor
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.support.fake_n8n import (
    FakeN8n,
    Reply,
    big,
    echo,
    empty,
    hang_body,
    json_reply,
    n8n_not_registered,
    slow,
    status_reply,
)
from tests.support.server import ServerProcess

reactor: Any = _reactor

ATTEMPT_TIMEOUT = 0.5
REQUEST_TIMEOUT = 3.0
TIMEOUTS = ("--attempt-timeout", str(ATTEMPT_TIMEOUT), "--request-timeout", str(REQUEST_TIMEOUT))
#: Slack for process scheduling on a busy CI machine, in seconds.
SLACK = 0.75
MB = 1024 * 1024


# --- a fault injector in front of the fake n8n ---------------------------------------


@dataclass(frozen=True)
class Attempt:
    """
    One request the fake n8n received.
    """

    path: str
    idempotency_key: str | None
    request_id: str | None


Fault = Callable[[Request], Any]


class FaultyWebhooks(Resource):
    """
    Wraps the fake n8n's resource: counts every attempt per path, and answers
    with a scripted fault the fake cannot produce itself (a reset in the
    middle of the body, an endless chunked body), else lets the fake answer.
    """

    isLeaf = True

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.attempts: list[Attempt] = []
        self.faults: dict[str, deque[Fault]] = {}

    def script(self, path: str, fault: Fault) -> None:
        self.faults.setdefault(path, deque()).append(fault)

    def seen(self, path: str) -> list[Attempt]:
        return [a for a in self.attempts if a.path == path]

    def render(self, request: Request) -> Any:
        path = request.path.decode("utf-8", "replace")
        header = request.getHeader
        key, rid = header(b"idempotency-key"), header(b"x-request-id")
        self.attempts.append(
            Attempt(path, key.decode() if key is not None else None, rid.decode() if rid is not None else None)
        )
        queue = self.faults.get(path)
        if queue:
            return queue.popleft()(request)
        return self.inner.render(request)


def reset_mid_body(request: Request) -> Any:
    """
    200 with a Content-Length of 1,000, 100 bytes of it, then a reset.
    """
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"1000")
    request.write(b'{"output": "' + b"x" * 88)
    transport: Any = request.channel.transport if request.channel is not None else None
    assert transport is not None
    reactor.callLater(0.05, transport.abortConnection)
    return NOT_DONE_YET


def chunked_answer(size: int) -> Fault:
    """
    A 200 JSON string of C{size} bytes without Content-Length (chunked).
    """

    def fault(request: Request) -> Any:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        piece = b"x" * (64 * 1024)
        request.write(b'"')
        for _ in range(size // len(piece)):
            if request.channel is None:
                break
            request.write(piece)
        if request.channel is not None:
            request.write(b'"')
            request.finish()
        return NOT_DONE_YET

    return fault


# --- fixtures ---------------------------------------------------------------------------


def refused_port() -> int:
    """
    A loopback port nothing listens on: connecting is refused at once.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def unreachable_port() -> Iterator[int]:
    """
    A loopback port whose SYNs are dropped, like a host that is down: a
    listener with a backlog of 0 that never accepts, its one queue slot taken.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    probe = socket.socket()
    probe.settimeout(0.2)
    try:
        with pytest.raises(TimeoutError):
            probe.connect(("127.0.0.1", port))
    finally:
        probe.close()
    yield port
    filler.close()
    listener.close()


@pytest.fixture(scope="module")
def faults(fake: FakeN8n) -> FaultyWebhooks:
    wrapper = FaultyWebhooks(fake.site.resource)
    fake.site.resource = wrapper
    return wrapper


def start(tmp_path_factory: pytest.TempPathFactory, *webhooks: str) -> ServerProcess:
    args: list[str] = []
    for url in webhooks:
        args += ["--webhook", url]
    uploads = tmp_path_factory.mktemp("uploads")
    return ServerProcess(*args, *TIMEOUTS, "--rate-limit", "0", "--upload-dir", str(uploads)).start()


@pytest.fixture(scope="module")
def proxy(faults: FaultyWebhooks, fake: FakeN8n, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start(tmp_path_factory, fake.url("/webhook/p"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def failover(
    faults: FaultyWebhooks, fake: FakeN8n, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    dead = f"http://127.0.0.1:{refused_port()}/webhook/dead"
    s = start(tmp_path_factory, dead, fake.url("/webhook/m1"), fake.url("/webhook/m2"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start(tmp_path_factory, f"http://127.0.0.1:{refused_port()}/webhook/down")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def unreachable(
    faults: FaultyWebhooks, fake: FakeN8n, unreachable_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    s = start(tmp_path_factory, f"http://127.0.0.1:{unreachable_port}/webhook/gone", fake.url("/webhook/u"))
    yield s
    s.stop()


# --- helpers ----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any
    took: float

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


async def chat(server: ServerProcess, message: str = "שלום", session: str = "faults") -> Answer:
    started = time.monotonic()
    response = await treq.post(
        server.url("/api/chat"),
        data=json.dumps({"message": message, "sessionId": session}).encode(),
        headers=Headers({b"Content-Type": [b"application/json"]}),
    )
    content = await response.content()
    took = time.monotonic() - started
    return Answer(response.code, response.headers, json.loads(content) if content else None, took)


async def health(server: ServerProcess) -> dict[str, Any]:
    response = await treq.get(server.url("/api/health"))
    value: dict[str, Any] = json.loads(await response.content())
    return value


def assert_error(answer: Answer, status: int, code: str) -> None:
    """
    The contract's error shape, with the request id of the X-Request-ID header.
    """
    assert answer.status == status, answer
    assert answer.code == code, answer
    error = answer.body["error"]
    assert set(error) == {"code", "message", "message_en", "requestId"}
    assert error["requestId"] == answer.headers.getRawHeaders("X-Request-ID")[0]


@pytest_twisted.async_fixture
async def closed_breaker(proxy: ServerProcess, fake: FakeN8n) -> None:
    """
    A success first, so the proxy's breaker starts each case closed with no
    failure counted (each case causes at most four failures in a row).
    """
    fake.script("/webhook/p", echo())
    answer = await chat(proxy)
    assert answer.status == 200, answer
    (upstream,) = (await health(proxy))["upstreams"]
    assert (upstream["state"], upstream["consecutive_failures"]) == ("closed", 0)


# --- one webhook: what is retried, what is not, and the deadline --------------------------


@pytest_twisted.ensureDeferred
async def test_reset_mid_body_is_502_without_retry(
    proxy: ServerProcess, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """Headers then a reset half-way through the body: n8n may have run, so one attempt and 502 upstream_error."""
    faults.script("/webhook/p", reset_mid_body)
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 502, "upstream_error")
    assert len(faults.seen("/webhook/p")) - before == 1
    assert answer.took < 1.0
    (upstream,) = (await health(proxy))["upstreams"]
    assert upstream["consecutive_failures"] == 1
    assert upstream["last_error"] == "connection closed during the answer"


@pytest_twisted.ensureDeferred
async def test_slow_headers_time_out_after_one_attempt(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """No header within --attempt-timeout: a timeout is not retried by default; 504 upstream_timeout at ~0.5 s."""
    fake.script("/webhook/p", slow(5.0))
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 504, "upstream_timeout")
    assert len(faults.seen("/webhook/p")) - before == 1
    assert ATTEMPT_TIMEOUT - 0.05 < answer.took < ATTEMPT_TIMEOUT + SLACK


@pytest_twisted.ensureDeferred
async def test_stalled_body_times_out_after_one_attempt(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """Headers and half a body, then silence: the attempt timeout covers the body too; one attempt, 504."""
    fake.script("/webhook/p", hang_body())
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 504, "upstream_timeout")
    assert len(faults.seen("/webhook/p")) - before == 1
    assert ATTEMPT_TIMEOUT - 0.05 < answer.took < ATTEMPT_TIMEOUT + SLACK


@pytest_twisted.ensureDeferred
async def test_inactive_webhook_alone_is_retried_then_502(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """n8n's 404 on the only URL: retries + 1 attempts with one Idempotency-Key, then 502 within the deadline."""
    fake.script("/webhook/p", *[n8n_not_registered("p")] * 3)
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 502, "upstream_error")
    assert "404" in answer.body["error"]["message_en"]
    attempts = faults.seen("/webhook/p")[before:]
    assert len(attempts) == 3
    assert len({a.idempotency_key for a in attempts}) == 1
    assert answer.took < REQUEST_TIMEOUT


@pytest_twisted.ensureDeferred
async def test_502_then_504_then_success_with_one_key(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """502 and 504 are retried (backoff on the one URL); the third answer is the client's, one key throughout."""
    fake.script("/webhook/p", status_reply(502), status_reply(504), json_reply({"output": "שלישי"}))
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert (answer.status, answer.body) == (200, {"output": "שלישי"})
    attempts = faults.seen("/webhook/p")[before:]
    assert len(attempts) == 3
    assert len({a.idempotency_key for a in attempts}) == 1
    assert {a.request_id for a in attempts} == {answer.headers.getRawHeaders("X-Request-ID")[0]}
    assert answer.took < REQUEST_TIMEOUT


@pytest_twisted.ensureDeferred
async def test_429_retry_after_as_http_date_is_honoured(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """A 429 whose Retry-After is an HTTP date two seconds ahead is waited out (>= 1 s), then the answer passes."""
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    fake.script("/webhook/p", status_reply(429, headers={"Retry-After": when}), json_reply({"output": "אחרי"}))
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert (answer.status, answer.body) == (200, {"output": "אחרי"})
    assert len(faults.seen("/webhook/p")) - before == 2
    assert 0.95 <= answer.took < REQUEST_TIMEOUT


@pytest_twisted.ensureDeferred
async def test_429_forever_is_502_within_the_deadline(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """429 with Retry-After: 1 every time: three attempts ~1 s apart, then 502 before --request-timeout; no breaker hit."""
    fake.script("/webhook/p", *[status_reply(429, headers={"Retry-After": "1"})] * 3)
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 502, "upstream_error")
    attempts = faults.seen("/webhook/p")[before:]
    assert len(attempts) == 3
    assert len({a.idempotency_key for a in attempts}) == 1
    assert 1.9 < answer.took < REQUEST_TIMEOUT
    (upstream,) = (await health(proxy))["upstreams"]
    assert upstream["consecutive_failures"] == 0  # a 429 means n8n is up


@pytest_twisted.ensureDeferred
async def test_429_asking_past_the_deadline_gives_up_at_once(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """Retry-After: 60 cannot be honoured within --request-timeout: 502 now, not a useless wait until 504."""
    fake.script("/webhook/p", status_reply(429, headers={"Retry-After": "60"}))
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 502, "upstream_error")
    assert len(faults.seen("/webhook/p")) - before == 1
    assert answer.took < 1.0


@pytest_twisted.ensureDeferred
async def test_text_answer_in_another_charset_is_wrapped(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """text/plain; charset=windows-1255 Hebrew becomes {"output": text}, decoded by its charset; one attempt."""
    body = "תשובה בעברית".encode("cp1255")
    fake.script("/webhook/p", Reply(body=body, headers={"Content-Type": "text/plain; charset=windows-1255"}))
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert (answer.status, answer.body) == (200, {"output": "תשובה בעברית"})
    assert len(faults.seen("/webhook/p")) - before == 1


@pytest_twisted.ensureDeferred
async def test_invalid_json_with_a_json_type_becomes_output_text(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """
    A 200 labelled application/json whose body is not JSON (cut short) is
    passed on as {"output": "<text>"}, as the contract's "a non-JSON body
    becomes {output}" reads; not a 502.  (Questionable: see docs/reliability.md.)
    """
    fake.script("/webhook/p", status_reply(200, b'{"output": "cut sho'))
    answer = await chat(proxy)
    assert (answer.status, answer.body) == (200, {"output": '{"output": "cut sho'})


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(empty(204), id="204-no-content"),
        pytest.param(status_reply(200, b" \r\n\t "), id="whitespace-only"),
        pytest.param(
            Reply(body=b"\xff\xfe\x00\x81" * 64, headers={"Content-Type": "application/octet-stream"}), id="binary"
        ),
        pytest.param(status_reply(302, headers={"Location": "http://127.0.0.1:9/elsewhere"}), id="redirect"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_unusable_answers_are_502_after_one_attempt(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None, reply: Reply
) -> None:
    """A 2xx with nothing usable, binary bytes, or a redirect (never followed): one attempt, 502 upstream_error."""
    fake.script("/webhook/p", reply)
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 502, "upstream_error")
    assert len(faults.seen("/webhook/p")) - before == 1


async def rss(server: ServerProcess) -> int:
    value: int = (await health(server))["memory"]["rss_bytes"]
    return value


@pytest_twisted.ensureDeferred
async def test_20mb_answer_is_502_and_memory_stays_flat(
    proxy: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """A 20 MB answer with Content-Length: refused unread, one attempt, 502; server RSS grows by less than 20 MB."""
    before_rss = await rss(proxy)
    fake.script("/webhook/p", big(20 * MB))
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 502, "upstream_error")
    assert "too large" in answer.body["error"]["message_en"]
    assert len(faults.seen("/webhook/p")) - before == 1
    grown = await rss(proxy) - before_rss
    print(f"RSS grew by {grown / MB:.1f} MB")
    assert grown < 20 * MB


@pytest_twisted.ensureDeferred
async def test_20mb_chunked_answer_is_cut_at_the_cap(
    proxy: ServerProcess, faults: FaultyWebhooks, closed_breaker: None
) -> None:
    """A 20 MB chunked answer (no length) is cut when it crosses the 10 MB cap: 502, RSS grows by less than 20 MB."""
    before_rss = await rss(proxy)
    faults.script("/webhook/p", chunked_answer(20 * MB))
    before = len(faults.seen("/webhook/p"))
    answer = await chat(proxy)
    assert_error(answer, 502, "upstream_error")
    assert len(faults.seen("/webhook/p")) - before == 1
    assert answer.took < REQUEST_TIMEOUT
    grown = await rss(proxy) - before_rss
    print(f"RSS grew by {grown / MB:.1f} MB")
    assert grown < 20 * MB


# --- several webhooks: failover and the circuit breaker ---------------------------------


@pytest_twisted.ensureDeferred
async def test_refused_first_webhook_fails_over_without_waiting(
    failover: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks
) -> None:
    """Nothing listens at the first URL: the next URL answers at once (failover is not backoff); health names the error."""
    fake.script("/webhook/m1", json_reply({"output": "m1"}))
    before = len(faults.seen("/webhook/m1"))
    answer = await chat(failover)
    assert (answer.status, answer.body) == (200, {"output": "m1"})
    assert len(faults.seen("/webhook/m1")) - before == 1
    assert answer.took < 0.3 + SLACK  # the refused connect is reported at HostnameEndpoint's 0.3 s tick
    dead, m1, _ = (await health(failover))["upstreams"]
    assert dead["failures_total"] >= 1 and dead["last_error"].startswith("connect")
    assert m1["consecutive_failures"] == 0


@pytest_twisted.ensureDeferred
async def test_inactive_webhook_fails_over_to_the_next(
    failover: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks
) -> None:
    """A refused URL, then n8n's 404 (inactive workflow), then a live URL: answered by the third, one key on both."""
    fake.script("/webhook/m1", n8n_not_registered("m1"))
    fake.script("/webhook/m2", json_reply({"output": "m2"}))
    before = len(faults.attempts)
    answer = await chat(failover)
    assert (answer.status, answer.body) == (200, {"output": "m2"})
    attempts = faults.attempts[before:]
    assert [a.path for a in attempts] == ["/webhook/m1", "/webhook/m2"]
    assert len({a.idempotency_key for a in attempts}) == 1


@pytest_twisted.ensureDeferred
async def test_breaker_opens_on_the_refused_webhook_and_it_is_skipped(
    failover: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks
) -> None:
    """After five failures the refused URL's breaker is open: health says so and later chats go straight to the next URL."""
    fake.set_default("/webhook/m1", json_reply({"output": "m1"}))
    try:
        for _ in range(6):
            if (await health(failover))["upstreams"][0]["state"] == "open":
                break
            assert (await chat(failover)).status == 200
        dead = (await health(failover))["upstreams"][0]
        assert dead["state"] == "open"
        assert dead["consecutive_failures"] >= 5
        tried = dead["requests_total"]
        for _ in range(3):
            answer = await chat(failover)
            assert (answer.status, answer.body) == (200, {"output": "m1"})
        after = await health(failover)
        assert after["upstreams"][0]["requests_total"] == tried  # skipped, not tried
        assert after["status"] == "ok"  # another URL is closed
        ready = await treq.get(failover.url("/api/ready"))
        assert ready.code == 200
        await ready.content()
    finally:
        fake.set_default("/webhook/m1", echo())


@pytest_twisted.ensureDeferred
async def test_refused_webhook_alone_is_502_after_every_attempt(down: ServerProcess) -> None:
    """The only URL refuses connections: retries + 1 connect attempts (safe to retry), then 502, well within the deadline."""
    answer = await chat(down)
    assert_error(answer, 502, "upstream_error")
    # Twisted's HostnameEndpoint reports a refused connect only at its next
    # 0.3 s attempt tick: 3 x 0.3 s, plus two jittered backoffs (< 0.25 + 0.5 s).
    assert answer.took < 3 * 0.3 + 0.75 + SLACK
    (upstream,) = (await health(down))["upstreams"]
    assert (upstream["requests_total"], upstream["failures_total"]) == (3, 3)


@pytest_twisted.ensureDeferred
async def test_open_breaker_fails_fast_and_is_not_ready(down: ServerProcess) -> None:
    """Once the only URL's breaker is open: 502 at once without an attempt; health degraded, ready 503."""
    for _ in range(4):
        if (await health(down))["upstreams"][0]["state"] == "open":
            break
        assert_error(await chat(down), 502, "upstream_error")
    before = await health(down)
    assert before["upstreams"][0]["state"] == "open"
    answer = await chat(down)
    assert_error(answer, 502, "upstream_error")
    assert answer.took < 0.25
    after = await health(down)
    assert after["upstreams"][0]["requests_total"] == before["upstreams"][0]["requests_total"]
    assert after["status"] == "degraded"
    ready = await treq.get(down.url("/api/ready"))
    assert ready.code == 503
    assert json.loads(await ready.content())["ready"] is False


@pytest_twisted.ensureDeferred
async def test_unreachable_first_webhook_fails_over(
    unreachable: ServerProcess, fake: FakeN8n, faults: FaultyWebhooks
) -> None:
    """
    The first URL's host is down (SYNs dropped, the request never left):
    that is a connect failure, safe to retry, so the next URL answers.
    """
    fake.script("/webhook/u", json_reply({"output": "u"}))
    answer = await chat(unreachable)
    assert (answer.status, answer.body) == (200, {"output": "u"}), answer
    assert answer.took < ATTEMPT_TIMEOUT + SLACK

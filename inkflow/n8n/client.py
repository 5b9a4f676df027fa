"""
The n8n client: forward one chat message to the webhook URLs, with retries,
failover, circuit breakers, timeouts and a bounded response.

The policy lives in L{inkflow.n8n.retry} and L{inkflow.n8n.breaker} (pure); this module
does the I/O.  Time and network are parameters: a L{Forwarder} takes an
L{IReactorTime} and a treq L{HTTPClient} (built by L{make_http_client} in
production, over a fake agent in tests), or the agent itself.

Requests go to the client's agent directly, not through C{HTTPClient.request}:
that wraps every request in a C{ContentDecoderAgent}, which asks n8n for gzip
and inflates the answer before InkFlow's answer cap can count it (a 400 KB
bomb cost 130 MB), plus a C{CookieAgent} and a response wrapper per request.
InkFlow asks for C{Accept-Encoding: identity} and refuses an encoded answer.
"""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.cookiejar import Cookie
from typing import Any, BinaryIO, Protocol, cast

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import task
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from inkflow import __version__
from inkflow.chat import ChatMessage
from inkflow.errors import ApiError, json_bytes
from inkflow.n8n.breaker import OPEN, CircuitBreaker
from inkflow.n8n.multipart import BytesProducer, MultipartStream
from inkflow.n8n.relay import StreamBody, open_body
from inkflow.n8n.response import (
    AttemptTimedOut,
    EncodedAnswer,
    classify_failure,
    decode_answer_exact,
    drop_body,
    is_encoded,
    read_capped,
    timed_out,
    wraps_cancel,
)
from inkflow.n8n.retry import (
    CANCELLED,
    CONNECT,
    EMPTY,
    INVALID,
    LOST,
    OK,
    STATUS,
    TIMEOUT,
    TOO_LARGE,
    WORKFLOW_ERROR,
    Outcome,
    RetryPolicy,
)
from inkflow.n8n.stream import StreamStart, bridge_body
from inkflow.settings import Settings, redact_url
from inkflow.snapshot import UpstreamSnapshot

__all__ = [
    "MAX_RESPONSE_BYTES",
    "AttemptObserver",
    "ForwardResult",
    "Forwarder",
    "StreamStart",
    "make_http_client",
]

#: The largest n8n answer read; a larger one is an C{upstream_error}.
MAX_RESPONSE_BYTES = 10 * 1024 * 1024

#: Seconds a pooled connection may stay idle: below n8n's C{Keep-Alive:
#: timeout=5}, so InkFlow never reuses a connection n8n is about to close.
POOL_IDLE_TIMEOUT = 4

#: The longest connect phase of one attempt, in seconds.
MAX_CONNECT_TIMEOUT = 5.0

USER_AGENT = f"InkFlow/{__version__}"

#: What InkFlow accepts from n8n, in order of preference.
ACCEPT = b"application/json, text/plain;q=0.9, */*;q=0.1"


class _Time(Protocol):
    """
    The part of L{IReactorTime} read here, spelled so that mypy (without the
    zope plugin) can check calls on it; the reactor and C{Clock} both fit.
    """

    def seconds(self) -> float: ...


#: Called once per attempt with (url_index, outcome label, seconds).
AttemptObserver = Callable[[int, str, float], None]


@dataclass(frozen=True)
class ForwardResult:
    """
    n8n's usable answer.

    @ivar body: the JSON value to send the client.
    @ivar status: the HTTP status to send the client (n8n's 2xx).
    @ivar attempts: how many attempts it took.
    @ivar url_index: which webhook URL answered.
    @ivar raw: n8n's own bytes for C{body}, when they may be sent unchanged
        (see L{inkflow.n8n.response.decode_answer_exact}); else C{None}.
    """

    body: Any
    status: int
    attempts: int
    url_index: int
    raw: bytes | None = field(default=None, compare=False, repr=False)


class _NoCookies(IndexableCookieJar):
    """
    A cookie jar that keeps nothing: a cookie n8n sets for one visitor must
    never travel with another visitor's message.
    """

    def set_cookie(self, cookie: Cookie) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


class _QuietFactory(_HTTP11ClientFactory):
    """
    twisted.web's connection factory without its "Starting factory" /
    "Stopping factory" log lines: two per n8n connection, which under many
    concurrent streams cost more than the streams' own logging.
    """

    noisy = False


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    The endpoints of twisted.web's agent (TCP for http, TLS for https), each
    built once per scheme, host and port: the agent asks for one on every
    request, and building a C{HostnameEndpoint} (IDNA-encoding its host)
    cost 4 % of a proxied chat.
    """

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._tls = BrowserLikePolicyForHTTPS()
        self._built: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._built.get(key)
        if endpoint is None:
            endpoint = self._built[key] = self._build(uri)
        return endpoint

    def _build(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._connect_timeout
        )
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


def make_http_client(reactor: Any, settings: Settings) -> tuple[HTTPClient, HTTPConnectionPool]:
    """
    Build the HTTP client for n8n over its own persistent connection pool
    (never treq's global one).

    @param reactor: provides C{IReactorTCP}, C{IReactorTime} and name
        resolution (the real reactor).
    @return: the client (the L{Forwarder} sends through its agent), and the
        pool (call C{closeCachedConnections()} on shutdown).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(settings.max_concurrent, 2)
    pool.cachedConnectionTimeout = POOL_IDLE_TIMEOUT
    pool.retryAutomatically = False  # a POST must never be replayed behind our back
    pool._factory = _QuietFactory
    # Strictly inside the attempt: a host that is down must fail as "connect"
    # (safe to fail over: nothing was sent) before the attempt timer calls it a
    # timeout (not retried by default: n8n may have run the workflow).
    connect_timeout = min(MAX_CONNECT_TIMEOUT, settings.attempt_timeout / 2)
    agent = Agent.usingEndpointFactory(reactor, _Endpoints(reactor, connect_timeout), pool=pool)
    return HTTPClient(cast(IAgent, agent), cookiejar=_NoCookies()), pool


@dataclass(frozen=True)
class _Target:
    """
    One webhook URL, ready to send to.

    @ivar url: the URL as sent (encoded as treq encodes it).
    @ivar headers: the headers every request to it carries (C{Host}, what
        InkFlow accepts, C{User-Agent}, C{--webhook-header}).
    """

    url: bytes
    headers: dict[bytes, list[bytes]]


def _target(url: str, extra_headers: tuple[tuple[str, str], ...]) -> _Target:
    encoded = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
    built = Headers()
    built.setRawHeaders(b"Accept", [ACCEPT])
    # An answer in a content encoding would be inflated before the cap counts it.
    built.setRawHeaders(b"Accept-Encoding", [b"identity"])
    built.setRawHeaders(b"User-Agent", [USER_AGENT.encode("ascii")])
    for name, value in extra_headers:
        built.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
    if not built.hasHeader(b"Host"):
        # Set here, the agent need not copy every request's headers to add it.
        built.setRawHeaders(b"Host", [_host_value(URI.fromBytes(encoded))])
    return _Target(encoded, {name: list(values) for name, values in built.getAllRawHeaders()})


def _host_value(uri: URI) -> bytes:
    """
    The C{Host} header for C{uri}, as twisted.web's agent writes it.
    """
    host = uri.host
    if isIPv6Address(host.decode("ascii")):
        host = b"[" + host + b"]"
    if (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%b:%d" % (host, uri.port)


class Forwarder:
    """
    Forwards chat messages to n8n, in failover order, with retries, circuit
    breakers and deadlines.

    @ivar urls: the webhook URLs, in failover order.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        client: HTTPClient | IAgent,
        clock: IReactorTime,
        random: Callable[[], float] = _random.random,
        *,
        observer: AttemptObserver | None = None,
        cooperator: task.Cooperator | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        failure_threshold: int | None = None,
        cooldown: float | None = None,
        base_delay: float = 0.25,
        max_delay: float = 5.0,
    ) -> None:
        """
        @param settings: C{webhook}, C{webhook_header}, C{attempt_timeout},
            C{retries}, C{retry_on}, the breaker options and C{log_level}
            are used.
        @param client: the HTTP client (see L{make_http_client}), whose agent
            requests are sent through; or that agent.
        @param clock: for timeouts and backoff waits.
        @param random: returns a float in M{[0, 1)}, for the backoff jitter.
        @param observer: called once per attempt with (url_index, outcome
            label, seconds), e.g. to count attempts in metrics.
        @param cooperator: schedules the reads of uploaded files (default:
            Twisted's global cooperator).
        """
        if not settings.webhook:
            raise ValueError("a Forwarder needs at least one webhook URL")
        self.urls: tuple[str, ...] = tuple(settings.webhook)
        self._shown_urls = tuple(redact_url(u) for u in self.urls)
        # Built once: the URL bytes as treq would send them, and the headers
        # every request to that URL carries.
        self._targets = tuple(_target(url, settings.webhook_header) for url in self.urls)
        self._attempt_timeout = settings.attempt_timeout
        # A debug line costs its event even when the observer drops it (3 %
        # of a proxied chat for two of them): written only at --log-level debug.
        self._debug = settings.log_level == "debug"
        self._agent: IAgent = client._agent if isinstance(client, HTTPClient) else client
        self._clock: _Time = clock
        self._timer = clock
        self._random = random
        self._observer = observer
        self._cooperator: task.Cooperator = cooperator if cooperator is not None else cast(task.Cooperator, task)
        self._max_response_bytes = max_response_bytes
        if failure_threshold is None:
            failure_threshold = settings.breaker_failures
        if cooldown is None:
            cooldown = settings.breaker_cooldown
        self._breakers = [CircuitBreaker(failure_threshold, cooldown) for _ in self.urls]
        self._policy = RetryPolicy(
            url_count=len(self.urls),
            retries=settings.retries,
            retry_on=frozenset(settings.retry_on),
            base_delay=base_delay,
            max_delay=max_delay,
        )

    # --- health

    def upstreams(self) -> list[UpstreamSnapshot]:
        """
        Each URL's breaker in the contract's health shape, URL redacted.
        """
        now = self._clock.seconds()
        return [
            UpstreamSnapshot(url=shown, **b.snapshot(now))
            for shown, b in zip(self._shown_urls, self._breakers, strict=True)
        ]

    def all_open(self) -> bool:
        """
        Whether every URL's breaker is open (none would take a request now).
        """
        now = self._clock.seconds()
        return all(b.state(now) == OPEN for b in self._breakers)

    # --- forwarding

    async def forward(
        self, message: ChatMessage, deadline: float, *, stream: bool = False
    ) -> ForwardResult | StreamStart:
        """
        Send C{message} to n8n and return its answer.

        A stream from n8n (a 2xx whose first line is a stream line) is read
        whole and joined (L{inkflow.n8n.stream.Bridge}) for a JSON client; for
        a streaming client (C{stream}) it is returned as a L{StreamStart} as
        soon as its first line is in.

        @param deadline: the C{clock.seconds()} value by which the caller must
            have its answer (for a stream: its first line); the attempt in
            flight is cancelled then.
        @param stream: the client wants a stream.
        @raise ApiError: C{upstream_error} (502) when every attempt failed or
            the answer is unusable; C{upstream_timeout} (504) when the deadline
            is reached or the last attempt timed out; C{internal_error} when
            an uploaded file cannot be read.
        """
        # The request id is unguessable and unique: the generated key (one random draw, not two).
        idempotency_key = message.idempotency_key or message.request_id
        plan = self._policy.plan(deadline)
        index = plan.start(self._available())
        if index is None:
            self.log.warn(
                "Not forwarding {request_id}: every webhook's circuit breaker is open",
                request_id=message.request_id,
            )
            raise ApiError("upstream_error", "every webhook is failing; try again shortly")
        while True:
            budget = plan.budget(self._clock.seconds(), self._attempt_timeout)
            if budget is None:
                raise ApiError("upstream_timeout")
            outcome, result = await self._attempt(message, idempotency_key, plan.attempt, index, budget, stream)
            if result is not None:
                return result
            now = self._clock.seconds()
            step = plan.next_step(outcome, now, self._random, self._available(now))
            if step is None:
                raise self._final_error(outcome, now >= deadline)
            self.log.info(
                "Retrying {request_id} at upstream {url_index} in {delay} s after {outcome}",
                request_id=message.request_id,
                url_index=step.url_index,
                delay=round(step.delay, 3),
                outcome=outcome.label,
            )
            if step.delay > 0:
                await task.deferLater(self._timer, step.delay, lambda: None)
            next_index = plan.advance(step, self._available())
            if next_index is None:
                raise self._final_error(outcome, False)
            index = next_index

    def _available(self, now: float | None = None) -> list[bool]:
        when = self._clock.seconds() if now is None else now
        return [b.allows(when) for b in self._breakers]

    def _final_error(self, outcome: Outcome, deadline_reached: bool) -> ApiError:
        if outcome.kind == TIMEOUT or deadline_reached:
            return ApiError("upstream_timeout")
        detail = {
            CONNECT: "could not reach n8n",
            LOST: "n8n closed the connection without a complete answer",
            EMPTY: "n8n answered with an empty body (the workflow failed before responding)",
            TOO_LARGE: "n8n's answer is too large",
            INVALID: "n8n's answer could not be used",
            WORKFLOW_ERROR: "the workflow reported an error",
        }.get(outcome.kind, f"n8n answered {outcome.status}")
        return ApiError("upstream_error", detail)

    def _headers(self, index: int, message: ChatMessage, idempotency_key: str, content_type: bytes) -> Headers:
        headers = Headers(self._targets[index].headers)
        headers.addRawHeader(b"Content-Type", content_type)
        headers.addRawHeader(b"X-Request-ID", message.request_id.encode("latin-1", "replace"))
        headers.addRawHeader(b"Idempotency-Key", idempotency_key.encode("ascii"))
        for name, value in message.forward_headers:
            headers.addRawHeader(name.encode("ascii"), value.encode("latin-1", "replace"))
        return headers

    def _body(self, message: ChatMessage, files: ExitStack) -> tuple[IBodyProducer, bytes]:
        """
        The body producer and content type for one attempt.  Files are opened
        afresh (the producer closes them when done) and registered on
        C{files} so they are closed whatever happens.
        """
        if not message.files:
            return cast(
                IBodyProducer, BytesProducer(json_bytes(message.upstream_json()))
            ), b"application/json; charset=utf-8"
        fields = message.upstream_fields()
        boundary = b"InkFlow" + uuid.uuid4().hex.encode("ascii")
        stream = files.enter_context(MultipartStream(boundary, fields, message.files))
        # One producer for the whole body.  (treq's MultiPartProducer nests a
        # producer per file; the transport's pauses reach them unevenly and a
        # body with two or more large files stalls for good: treq issue #323.)
        producer = FileBodyProducer(cast(BinaryIO, stream), cooperator=self._cooperator)
        return cast(IBodyProducer, producer), b"multipart/form-data; boundary=" + boundary

    async def _exchange(
        self, index: int, headers: Headers, producer: IBodyProducer, stream: bool
    ) -> tuple[int, Headers, bytes | StreamBody]:
        """
        One request and its whole (capped) response body; with C{stream}, a
        2xx body's opening only when it is a stream.

        @raise EncodedAnswer: a 2xx answer in a C{Content-Encoding} (InkFlow
            asked for identity); it is not read.
        """
        response = await self._agent.request(b"POST", self._targets[index].url, headers, producer)
        body: bytes | StreamBody
        if 200 <= response.code < 300 and is_encoded(response.headers):
            drop_body(response)
            raise EncodedAnswer()
        if stream and 200 <= response.code < 300:
            body = await open_body(response, self._max_response_bytes)
        else:
            body = await read_capped(response, self._max_response_bytes)
        return response.code, response.headers, body

    async def _attempt(
        self, message: ChatMessage, idempotency_key: str, attempt: int, index: int, budget: float, stream: bool = False
    ) -> tuple[Outcome, ForwardResult | StreamStart | None]:
        """
        One attempt at URL C{index}, bounded by C{budget} seconds for headers
        and body.  Accounts for it (breaker, observer, log) and returns how it
        ended and, on success, the result.

        @raise CancelledError: the caller cancelled the forwarding.
        """
        breaker = self._breakers[index]
        outcome = Outcome(CANCELLED)
        result: ForwardResult | StreamStart | None = None
        with ExitStack() as files:
            try:
                producer, content_type = self._body(message, files)
            except OSError as e:
                self.log.error(
                    "Cannot read an upload of {request_id}: {error}",
                    request_id=message.request_id,
                    error=type(e).__name__,
                )
                raise ApiError("internal_error", "an attached file could not be read") from None
            started = self._clock.seconds()
            breaker.begin(started)
            try:
                exchange = ensureDeferred(
                    self._exchange(
                        index, self._headers(index, message, idempotency_key, content_type), producer, stream
                    )
                )
                exchange.addTimeout(budget, self._timer, onTimeoutCancel=timed_out)
                try:
                    status, headers, body = await exchange
                except AttemptTimedOut:
                    outcome = Outcome(TIMEOUT, error="no answer in time")
                except CancelledError:
                    raise
                except Exception:
                    failure = Failure()
                    if wraps_cancel(failure):
                        raise CancelledError() from None
                    outcome = classify_failure(failure)
                    if outcome.kind == INVALID and not failure.check(EncodedAnswer):
                        self.log.failure(
                            "Unexpected error forwarding {request_id}",
                            failure=failure,
                            request_id=message.request_id,
                        )
                else:
                    outcome, result = self._interpret(status, headers, body, attempt, index)
            finally:
                self._account(message, attempt, index, outcome, self._clock.seconds() - started)
        return outcome, result

    def _interpret(
        self, status: int, headers: Headers, body: bytes | StreamBody, attempt: int, index: int
    ) -> tuple[Outcome, ForwardResult | StreamStart | None]:
        if isinstance(body, StreamBody):
            return Outcome(OK, status=status), StreamStart(
                body=body, attempts=attempt + 1, url_index=index, dropped=lambda error: self._dropped(index, error)
            )
        if not 200 <= status < 300:
            retry_after = headers.getRawHeaders(b"retry-after")
            return (
                Outcome(
                    STATUS,
                    status=status,
                    retry_after=retry_after[0].decode("latin-1") if retry_after else None,
                    error=f"HTTP {status}",
                ),
                None,
            )
        if not body.strip():
            return Outcome(EMPTY, status=status, error="empty answer"), None
        bridged = bridge_body(body)
        if bridged is not None:
            # A stream read whole, for a JSON client.
            if bridged.output is not None:
                value: Any = {"output": bridged.output}
            elif bridged.errors:
                return Outcome(WORKFLOW_ERROR, status=status, error="the workflow streamed an error"), None
            else:
                return Outcome(EMPTY, status=status, error="empty stream"), None
            return Outcome(OK, status=status), ForwardResult(
                body=value, status=status, attempts=attempt + 1, url_index=index
            )
        try:
            value, raw = decode_answer_exact(headers, body)
        except ValueError:
            return Outcome(INVALID, status=status, error="answer is not JSON or text"), None
        return Outcome(OK, status=status), ForwardResult(
            body=value, status=status, attempts=attempt + 1, url_index=index, raw=raw
        )

    def _dropped(self, index: int, error: str) -> None:
        """
        n8n dropped a committed stream: a failure for that URL's breaker.
        """
        self._breakers[index].record_failure(self._clock.seconds(), error)

    def _account(self, message: ChatMessage, attempt: int, index: int, outcome: Outcome, seconds: float) -> None:
        """
        Tell the breaker, the observer and the log how an attempt ended.
        """
        now = self._clock.seconds()
        breaker = self._breakers[index]
        if outcome.kind == CANCELLED:
            breaker.abandon(now)
        elif outcome.upstream_failed:
            breaker.record_failure(now, outcome.error or outcome.label)
        else:
            breaker.record_success(now)
        if self._observer is not None:
            try:
                self._observer(index, outcome.label, seconds)
            except Exception:
                self.log.failure("Attempt observer failed")
        if outcome.kind == OK and not self._debug:
            return
        fields = {
            "request_id": message.request_id,
            "attempt": attempt + 1,
            "url_index": index,
            "url": self._shown_urls[index],
            "outcome": outcome.label,
            "seconds": round(seconds, 3),
        }
        if outcome.kind == OK:
            self.log.debug(
                "n8n answered {request_id} (attempt {attempt}, upstream {url_index}) in {seconds} s", **fields
            )
        elif outcome.kind == CANCELLED:
            self.log.info(
                "Forwarding {request_id} cancelled during attempt {attempt} at upstream {url_index}", **fields
            )
        else:
            self.log.warn(
                "Attempt {attempt} of {request_id} at upstream {url_index} ({url}) failed: {outcome} after {seconds} s",
                error=outcome.error,
                **fields,
            )

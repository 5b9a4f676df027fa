"""
The n8n client: forward one chat message to the webhook URLs, with retries,
failover, circuit breakers, timeouts and a bounded response.

The policy lives in L{inkflow.n8n.retry} and L{inkflow.n8n.breaker} (pure); this module
does the I/O.  Time and network are parameters: a L{Forwarder} takes an
L{IReactorTime} and an L{IAgent} (built by L{make_agent} in production, a
fake agent in tests).

Requests go to a plain agent, not through treq's C{HTTPClient.request}: that
wraps every request in a C{ContentDecoderAgent}, which asks n8n for gzip and
inflates the answer before InkFlow's answer cap can count it (a 400 KB bomb
cost 130 MB), plus a C{CookieAgent} and a response wrapper per request.
InkFlow asks for C{Accept-Encoding: identity} and refuses an encoded answer.
"""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from twisted.internet import task
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    FileBodyProducer,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer

from inkflow.chat import ChatMessage
from inkflow.errors import ApiError, json_bytes
from inkflow.n8n.breaker import OPEN, CircuitBreaker
from inkflow.n8n.joined import StreamDeadline, join_stream
from inkflow.n8n.multipart import BytesProducer, MultipartStream
from inkflow.n8n.pool import POOL_IDLE_TIMEOUT, make_agent, target
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
from inkflow.n8n.stream import BridgeResult, StreamStart, bridge_body
from inkflow.settings import Settings, redact_url
from inkflow.snapshot import UpstreamSnapshot

__all__ = [
    "MAX_RESPONSE_BYTES",
    "POOL_IDLE_TIMEOUT",
    "AttemptObserver",
    "ForwardResult",
    "Forwarder",
    "StreamStart",
    "make_agent",
]

#: The largest n8n answer read; a larger one is an C{upstream_error}.
MAX_RESPONSE_BYTES = 10 * 1024 * 1024


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
        agent: IAgent,
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
        @param agent: sends the requests (see L{make_agent}).
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
        self._targets = tuple(target(url, settings.webhook_header) for url in self.urls)
        self._attempt_timeout = settings.attempt_timeout
        # A stream read whole for a JSON client, once its first line is in.
        self._stream_idle_timeout = settings.stream_idle_timeout
        self._stream_timeout = settings.stream_timeout
        # A debug line costs its event even when the observer drops it (3 %
        # of a proxied chat for two of them): written only at --log-level debug.
        self._debug = settings.log_level == "debug"
        self._agent = agent
        self._clock: IReactorTime = clock
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
        soon as its first line is in.  Either way the attempt's time bounds
        the wait for the first line; the rest of a joined stream is bounded
        by C{--stream-idle-timeout} and C{--stream-timeout}
        (L{inkflow.n8n.joined}).

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
        One request and its whole (capped) response body; a 2xx body's
        opening only when it is a stream.

        @raise EncodedAnswer: a 2xx answer in a C{Content-Encoding} (InkFlow
            asked for identity); it is not read.
        """
        response = await self._agent.request(b"POST", self._targets[index].url, headers, producer)
        body: bytes | StreamBody
        if 200 <= response.code < 300 and is_encoded(response.headers):
            drop_body(response)
            raise EncodedAnswer()
        if 200 <= response.code < 300 and (
            response.length is UNKNOWN_LENGTH or response.length <= self._max_response_bytes
        ):
            body = await open_body(response, self._max_response_bytes)
        else:
            body = await read_capped(response, self._max_response_bytes)
        return response.code, response.headers, body

    async def _attempt(
        self, message: ChatMessage, idempotency_key: str, attempt: int, index: int, budget: float, stream: bool = False
    ) -> tuple[Outcome, ForwardResult | StreamStart | None]:
        """
        One attempt at URL C{index}, bounded by C{budget} seconds for headers
        and body (for a stream: its first line; the rest of a stream joined
        for a JSON client by the stream deadlines).  Accounts for it (breaker,
        observer, log) and returns how it ended and, on success, the result.

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
                    answer: bytes | StreamBody | BridgeResult
                    status, headers, answer = await exchange
                    if isinstance(answer, StreamBody) and not stream:
                        answer = await join_stream(
                            answer,
                            self._timer,
                            idle_timeout=self._stream_idle_timeout,
                            stream_timeout=self._stream_timeout,
                            max_bytes=self._max_response_bytes,
                        )
                except StreamDeadline as e:
                    outcome = Outcome(TIMEOUT, error=f"stream {e.args[0]}")
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
                    outcome, result = self._interpret(status, headers, answer, attempt, index)
            finally:
                self._account(message, attempt, index, outcome, self._clock.seconds() - started)
        return outcome, result

    def _interpret(
        self, status: int, headers: Headers, body: bytes | StreamBody | BridgeResult, attempt: int, index: int
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
        if isinstance(body, BridgeResult):
            return self._bridged(body, status, attempt, index)
        if not body.strip():
            return Outcome(EMPTY, status=status, error="empty answer"), None
        bridged = bridge_body(body)
        if bridged is not None:
            return self._bridged(bridged, status, attempt, index)
        try:
            value, raw = decode_answer_exact(headers, body)
        except ValueError:
            return Outcome(INVALID, status=status, error="answer is not JSON or text"), None
        return Outcome(OK, status=status), ForwardResult(
            body=value, status=status, attempts=attempt + 1, url_index=index, raw=raw
        )

    def _bridged(
        self, bridged: BridgeResult, status: int, attempt: int, index: int
    ) -> tuple[Outcome, ForwardResult | None]:
        """
        A stream read whole, for a JSON client.
        """
        if bridged.output is not None:
            return Outcome(OK, status=status), ForwardResult(
                body={"output": bridged.output}, status=status, attempts=attempt + 1, url_index=index
            )
        if bridged.errors:
            return Outcome(WORKFLOW_ERROR, status=status, error="the workflow streamed an error"), None
        return Outcome(EMPTY, status=status, error="empty stream"), None

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

"""
Reading n8n's answer: a size-capped body reader, what an attempt's failure
means for the retry policy (L{inkflow.n8n.retry.Outcome}), and decoding a 2xx
body into the value sent to the client.
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    PotentialDataLoss,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from inkflow.n8n.retry import CONNECT, INVALID, LOST, TOO_LARGE, Outcome

__all__ = [
    "AttemptTimedOut",
    "BodyTooLarge",
    "EncodedAnswer",
    "classify_failure",
    "decode_answer",
    "decode_answer_exact",
    "drop_body",
    "drop_connection",
    "is_encoded",
    "read_capped",
    "timed_out",
    "wraps_cancel",
]


class BodyTooLarge(Exception):
    """
    The response body is over the limit.
    """


class EncodedAnswer(Exception):
    """
    n8n answered in a content encoding (gzip...) although InkFlow asked for
    identity: the answer is not read (inflating it could take any memory).
    """


class AttemptTimedOut(Exception):
    """
    The attempt did not finish (headers and body) in its time.
    """


def timed_out(result: object, timeout: float) -> Failure:
    """
    C{onTimeoutCancel} for an attempt: whatever cancelling produced
    (C{CancelledError}, or L{ResponseNeverReceived} wrapping it), it was a
    timeout.
    """
    return Failure(AttemptTimedOut(timeout))


class _CappedBody(Protocol):
    """
    Collects a response body up to C{limit} bytes, then gives up and drops
    the connection.
    """

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self.finished: Deferred[bytes] | None = finished
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self.size += len(data)
        if self.size > self.limit:
            finished, self.finished = self.finished, None
            self.chunks = []
            self.abort()
            finished.errback(BodyTooLarge())
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished is None:
            return
        finished, self.finished = self.finished, None
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self.chunks))
        else:
            finished.errback(reason)

    def abort(self) -> None:
        drop_connection(self.transport)


def drop_connection(transport: Any) -> None:
    """
    Drop the connection an answer's body arrives on (never back into the
    pool): abort it, or stop its producer where there is no abort (test
    transports).
    """
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.stopProducing()


def read_capped(response: IResponse, limit: int) -> Deferred[bytes]:
    """
    The body of C{response}, at most C{limit} bytes.  Cancelling drops the
    connection.

    @raise BodyTooLarge: (as a failure) the body is over C{limit}.
    """

    def cancel(d: Deferred[bytes]) -> None:
        protocol.finished = None
        protocol.abort()

    deliver = cast(Any, response).deliverBody
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        drop_body(response)
        return fail(BodyTooLarge())
    finished: Deferred[bytes] = Deferred(cancel)
    protocol = _CappedBody(finished, limit)
    deliver(protocol)
    return finished


def is_encoded(headers: Headers) -> bool:
    """
    Whether C{headers} name a content encoding other than identity.
    """
    values = headers.getRawHeaders(b"content-encoding")
    if not values:
        return False
    return any(coding.strip().lower() not in (b"", b"identity") for value in values for coding in value.split(b","))


def drop_body(response: IResponse) -> None:
    """
    Read nothing of C{response}'s body: drop the connection.
    """
    protocol = _CappedBody(Deferred(), 0)
    protocol.finished = None  # whatever arrives is ignored
    cast(Any, response).deliverBody(protocol)
    protocol.abort()


def wraps_cancel(failure: Failure) -> bool:
    """
    Whether C{failure} is, or wraps (as twisted.web's client does), a
    C{CancelledError}.
    """
    if failure.check(CancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or ()
    return any(isinstance(r, Failure) and r.check(CancelledError) for r in reasons)


def classify_failure(failure: Failure) -> Outcome:
    """
    Turn an attempt's failure into an L{Outcome}.

      - C{ConnectError} (refused, no route, connect timeout), C{DNSLookupError}
        and C{RequestNotSent}:
        L{CONNECT}, the request never left.
      - C{RequestTransmissionFailed}: L{CONNECT} too: the body was not fully
        sent, and n8n runs a webhook only after reading the whole body.
      - C{ResponseNeverReceived}, C{ResponseFailed}: L{LOST}: the request was
        sent, so n8n may have run the workflow.
      - anything else: L{INVALID} (not retried, not n8n's fault).
    """
    name = type(failure.value).__name__
    if failure.check(ConnectError, DNSLookupError, RequestNotSent):
        return Outcome(CONNECT, error=f"connect: {name}")
    if failure.check(RequestTransmissionFailed):
        return Outcome(CONNECT, error="connection failed while sending")
    if failure.check(ResponseNeverReceived):
        return Outcome(LOST, error="connection closed before the answer")
    if failure.check(ResponseFailed):
        return Outcome(LOST, error="connection closed during the answer")
    if failure.check(BodyTooLarge):
        return Outcome(TOO_LARGE, error="answer too large")
    if failure.check(EncodedAnswer):
        return Outcome(INVALID, error="answer in a content encoding")
    return Outcome(INVALID, error=f"unexpected: {name}")


def _media_type(headers: Headers) -> tuple[str, str | None]:
    """
    The media type (lower case) and charset of C{Content-Type}.
    """
    raw = headers.getRawHeaders(b"content-type")
    if not raw:
        return "", None
    value = raw[0].decode("latin-1")
    media, _, rest = value.partition(";")
    charset = None
    for param in rest.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset":
            charset = val.strip().strip("\"'") or None
    return media.strip().lower(), charset


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Infinite(Exception):
    """
    A number beyond a float's range: valid JSON text, but not sent as is.
    """


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (_INF, -_INF):
        raise _Infinite()
    return number


_INF = float("inf")
_DECODE = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_LOOSE_DECODE = json.JSONDecoder(parse_constant=_reject_constant)
#: A \uD800-\uDFFF escape: half of a surrogate pair (or a lone one).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_answer(headers: Headers, body: bytes) -> Any:
    """
    The value to send the client for a non-empty 2xx body: JSON as is, text
    as C{{"output": text}}.

    @raise ValueError: the body is neither JSON nor text.
    """
    return decode_answer_exact(headers, body)[0]


def decode_answer_exact(headers: Headers, body: bytes) -> tuple[Any, bytes | None]:
    """
    Like L{decode_answer}, and also C{body} itself when it is JSON that may
    be sent on unchanged: UTF-8, no surrogate escape, no number beyond a
    float's range (what re-encoding the value would refuse or change into
    something else).  The client then gets n8n's own bytes, and InkFlow
    spends no time writing them again.

    @return: the value, and the bytes to send (C{None}: encode the value).
    @raise ValueError: the body is neither JSON nor text.
    """
    media, charset = _media_type(headers)
    if media in ("", "application/json") or media.endswith("+json"):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        exact = text is not None and json.detect_encoding(body) == "utf-8" and not _SURROGATE_ESCAPE.search(body)
        try:
            if text is not None and exact:
                try:
                    return _DECODE.decode(text), body
                except _Infinite:
                    return _LOOSE_DECODE.decode(text), None
            return json.loads(body, parse_constant=_reject_constant), None
        except RecursionError:
            raise ValueError("nested too deeply") from None
        except ValueError:
            pass
    if media.startswith("text/") or media in ("", "application/json") or media.endswith(("+json", "+xml", "/xml")):
        try:
            text = body.decode(charset or "utf-8", errors="replace")
        except LookupError:  # an unknown charset
            text = body.decode("utf-8", errors="replace")
        return {"output": text}, None
    # Some other type: pass it on only if it is UTF-8 text.
    return {"output": body.decode("utf-8")}, None

"""
Responses with a computed body, as free functions usable with any
C{IRequest} (InkFlow's own request, Klein's, or the plain one
C{treq.testing.StubTreq} makes), and the raw answers written straight to a
transport before (or instead of) the normal request processing.

Each response function sets the status and headers and returns the bytes to
write (none for HEAD): Klein routes return them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.web.iweb import IRequest

from inkflow.errors import ApiError, json_bytes
from inkflow.web.state import request_state
from inkflow.web.twisted_hooks import reason_phrase

__all__ = [
    "CSP",
    "HSTS",
    "JSON_TYPE",
    "SECURITY_HEADERS",
    "bytes_response",
    "error_response",
    "json_response",
    "raw_error_response",
    "request_id",
    "set_headers",
    "set_status",
]

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Content-Security-Policy", CSP.encode()),
    (b"Referrer-Policy", b"strict-origin-when-cross-origin"),
    (b"X-Frame-Options", b"DENY"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
)

#: Sent on every response to a request that came over TLS (C{--listen ssl:...}): browsers then
#: use HTTPS for this host for a year.  Not on plain HTTP, where it means nothing (RFC 6797 7.2);
#: not includeSubDomains, which is the domain owner's decision.
HSTS = b"max-age=31536000"

JSON_TYPE = b"application/json; charset=utf-8"


def request_id(request: IRequest) -> str:
    """
    The request's id (from its L{inkflow.web.state.RequestState}): InkFlow's
    request carries one; any other request gets one here, sent back as
    C{X-Request-ID}.
    """
    return request_state(request).request_id


def set_headers(request: IRequest, headers: Mapping[str, str]) -> None:
    """
    Set C{headers} (names and values as text) on C{request}'s answer.
    """
    for name, value in headers.items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))


def set_status(request: IRequest, status: int) -> None:
    """
    Set C{status} with a proper reason phrase (Twisted's own list lacks 429).
    """
    request.setResponseCode(status, reason_phrase(status))


def bytes_response(request: IRequest, body: bytes, content_type: bytes, status: int = 200) -> bytes:
    set_status(request, status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


def json_response(request: IRequest, value: Any, status: int = 200) -> bytes:
    """
    C{value} as strict JSON (no NaN or Infinity).

    @raise ValueError: C{value} cannot be written as JSON (the caller decides
        which error that is).
    """
    return bytes_response(request, json_bytes(value), JSON_TYPE, status)


def error_response(request: IRequest, error: ApiError) -> bytes:
    """
    The contract's JSON error, with the error's own headers (C{Retry-After},
    C{Allow}); the connection closes after a 408, a 413 or an internal error.
    """
    set_headers(request, error.headers)
    if error.status in (408, 413) or error.code == "internal_error":
        request.setHeader(b"Connection", b"close")
    return json_response(request, error.body(request_id(request)), error.status)


def raw_error_response(
    error: ApiError, request_id: str | None, *, secure: bool = False, headers: Mapping[str, str] | None = None
) -> bytes:
    """
    A complete HTTP/1.1 error response with C{Connection: close}, for answers
    given before (or instead of) the normal request processing.

    @param secure: the connection is TLS (adds C{Strict-Transport-Security}).
    @param headers: more headers (the CORS headers of the request's route).
    """
    body = json_bytes(error.body(request_id))
    lines = [b"HTTP/1.1 %d %s" % (error.status, reason_phrase(error.status))]
    lines.extend(name + b": " + value for name, value in SECURITY_HEADERS)
    if secure:
        lines.append(b"Strict-Transport-Security: " + HSTS)
    lines.append(b"Content-Type: " + JSON_TYPE)
    lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Cache-Control: no-store")
    lines.append(b"Connection: close")
    if request_id:
        lines.append(b"X-Request-ID: " + request_id.encode())
    for name, value in (*error.headers.items(), *(headers or {}).items()):
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body

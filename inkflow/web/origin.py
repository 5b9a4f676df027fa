"""
The one Origin rule, for everything a browser may be made to do on another
site's behalf: C{POST /api/chat} (a multipart POST is a "simple" request,
sent cross-site without a preflight), the C{/chat} WebSocket (a browser
opens any WebSocket cross-site), and the CORS headers.  Pure: no reactor,
no twisted.web.

The rule, in order:

 1. no C{Origin} (curl, server-to-server): allowed, unless
    C{Sec-Fetch-Site: cross-site} says a browser sent it from another site;
 2. an C{Origin} that is not C{http}/C{https} (C{null}, C{file:}, an
    extension's scheme): refused;
 3. listed in C{--cors-origin}: allowed, whatever C{Sec-Fetch-Site} says
    (another site is what the list is for);
 4. C{Sec-Fetch-Site: cross-site}: refused;
 5. the request's own origin (its C{Host}, with either scheme: behind a
    proxy that ends TLS the browser says C{https} and InkFlow sees C{http}):
    allowed; anything else is refused.

Origins are compared as scheme, host and port in lower case, the scheme's
default port made explicit: C{Host: site.example:443} is the origin
C{https://site.example}, and C{https://shop.example:443} is the listed
C{https://shop.example}.

The CORS headers (L{cors_headers}) go to a listed origin only, on every
answer a route that takes cross-origin requests gives: its own, and a
refusal given before it runs (a 413 or 415 from the head, a 413 while the
body streams, a 408, a 503 over a connection limit, a 429), which a browser
would otherwise hide from the page.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence

from inkflow.errors import ApiError

__all__ = ["EXPOSED_HEADERS", "Verdict", "check_origin", "cors_headers", "judge_origin", "normalize_origin"]

_SCHEMES = ("http", "https")

#: The answer headers a listed origin's script may read.
EXPOSED_HEADERS = "X-Request-ID, X-Session-ID, Retry-After"


class Verdict(enum.Enum):
    """
    What the rule made of a request's C{Origin} (the value: why).
    """

    NONE = "no Origin"
    OWN = "the request's own origin"
    LISTED = "listed in --cors-origin"
    CROSS_SITE = "Sec-Fetch-Site is cross-site"
    FOREIGN = "the Origin is not allowed"

    @property
    def allowed(self) -> bool:
        return self in (Verdict.NONE, Verdict.OWN, Verdict.LISTED)


def _default_port(scheme: str) -> str:
    return "443" if scheme == "https" else "80"


def _host_port(scheme: str, netloc: str) -> str:
    """
    C{host:port} in lower case, the scheme's default port made explicit.
    """
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        host, _, rest = netloc.partition("]")
        host += "]"
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = netloc.partition(":")
    return f"{host}:{port or _default_port(scheme)}"


def normalize_origin(text: str) -> str | None:
    """
    C{scheme://host:port} for an http(s) origin (any case, a trailing slash,
    the default port implied or written), else C{None}.
    """
    scheme, sep, netloc = text.strip().lower().rstrip("/").partition("://")
    if not sep or scheme not in _SCHEMES or not netloc or "/" in netloc or "@" in netloc:
        return None
    return f"{scheme}://{_host_port(scheme, netloc)}"


def judge_origin(
    origin: bytes | None,
    fetch_site: bytes | None,
    host: bytes | None,
    secure: bool,
    allowed: Collection[str],
) -> Verdict:
    """
    The rule (see the module docstring) for a request's C{Origin},
    C{Sec-Fetch-Site} and C{Host} headers; C{allowed} is C{--cors-origin};
    C{secure}: the request came over TLS to InkFlow itself.
    """
    cross_site = (fetch_site or b"").strip().lower() == b"cross-site"
    if not origin:
        return Verdict.CROSS_SITE if cross_site else Verdict.NONE
    given = normalize_origin(origin.decode("latin-1"))
    if given is None:
        return Verdict.FOREIGN
    if given in {normalize_origin(a) for a in allowed}:
        return Verdict.LISTED
    if cross_site:
        return Verdict.CROSS_SITE
    if host:
        own = host.decode("latin-1")
        scheme, _, netloc = given.partition("://")
        if netloc in (_host_port(scheme, own), _host_port("https" if secure else "http", own)):
            return Verdict.OWN
    return Verdict.FOREIGN


def cors_headers(
    origin: bytes | None,
    fetch_site: bytes | None,
    host: bytes | None,
    secure: bool,
    allowed: Collection[str],
) -> dict[str, str]:
    """
    The CORS headers of an answer to a request with these headers (as for
    L{judge_origin}): none without an C{Origin} or without C{--cors-origin};
    else C{Vary: Origin} (the answer depends on it), and for a listed origin
    C{Access-Control-Allow-Origin} (the origin as sent) and
    C{Access-Control-Expose-Headers}.
    """
    if not origin or not allowed:
        return {}
    headers = {"Vary": "Origin"}
    if judge_origin(origin, fetch_site, host, secure, allowed) is Verdict.LISTED:
        headers["Access-Control-Allow-Origin"] = origin.decode("latin-1")
        headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return headers


def _first(values: Sequence[bytes] | None) -> bytes | None:
    return values[0] if values else None


def check_origin(
    origin: Sequence[bytes] | None,
    fetch_site: Sequence[bytes] | None,
    host: bytes | None,
    secure: bool,
    allowed: Collection[str],
) -> None:
    """
    Refuse a request a browser sent on another site's behalf (the headers'
    raw values, as C{Headers.getRawHeaders} gives them).

    @raise ApiError: 403 C{forbidden_origin}.
    """
    verdict = judge_origin(_first(origin), _first(fetch_site), host, secure, allowed)
    if not verdict.allowed:
        raise ApiError("forbidden_origin", verdict.value)

"""
The Origin check for state-changing routes: a browser must not be made to
post chats on another site's behalf (a multipart POST is a "simple" request,
sent cross-site without a preflight).  Pure: no reactor, no twisted.web.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from inkflow.errors import ApiError

__all__ = ["check_origin"]


def _default_port(scheme: str) -> str:
    return "443" if scheme == "https" else "80"


def _netloc(scheme: str, netloc: str) -> str:
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


def check_origin(
    origin: Sequence[bytes] | None,
    fetch_site: Sequence[bytes] | None,
    host: bytes | None,
    secure: bool,
    allowed: Collection[str],
) -> None:
    """
    Refuse a state-changing request a browser sent on another site's
    behalf: a present C{Origin} that is neither allow-listed (C{--cors-origin})
    nor the request's own origin, or C{Sec-Fetch-Site: cross-site} from an
    origin that is not allow-listed (the embed on the owner's site posts
    cross-site from an allow-listed origin).  No
    C{Origin} at all (curl, server-to-server) is allowed.

    The request's own origin is its C{Host} with either scheme: behind a
    proxy that ends TLS, the browser says C{https} and InkFlow sees C{http}.

    @raise ApiError: 403 C{forbidden_origin}.
    """
    text = origin[0].decode("latin-1").strip().lower().rstrip("/") if origin else None
    if text is not None and text in allowed:
        return  # the owner's own site (the embed), cross-site or not
    if fetch_site and fetch_site[0].strip().lower() == b"cross-site":
        raise ApiError("forbidden_origin", "Sec-Fetch-Site is cross-site")
    if text is None:
        return
    scheme, sep, netloc = text.partition("://")
    if sep and scheme in ("http", "https") and host:
        own_host = host.decode("latin-1")
        given = _netloc(scheme, netloc)
        if given in (_netloc(scheme, own_host), _netloc("https" if secure else "http", own_host)):
            return
    raise ApiError("forbidden_origin", "the Origin is not allowed")

"""
Webhook URLs fit to show: L{redact_url} for logs and the admin health,
L{origin_url} for anyone (the public health).  Pure string functions.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["origin_url", "redact_url"]


def redact_url(url: str) -> str:
    """
    A webhook URL fit to show: no credentials, no query string, no fragment.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"


def origin_url(url: str) -> str:
    """
    A webhook URL fit to show anyone: C{scheme://host:port} only.  In n8n the
    webhook path is the secret: whoever has it can post to n8n directly.
    """
    scheme, sep, rest = redact_url(url).partition("://")
    return scheme + sep + rest.split("/", 1)[0]

"""
Webhook URLs fit to show: L{redact_url} for logs and the admin health,
L{origin_url} for anyone (the public health).  Where Redis is (C{--redis}):
L{parse_redis_url}, and L{redacted_redis_url} to show it.  Pure string
functions (no Twisted), so the settings check the options at start-up and the
shared state connects with the same parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisAddress", "origin_url", "parse_redis_url", "redact_url", "redacted_redis_url"]


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


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is: C{redis://[user:password@]host:port/db},
    C{rediss://...} (TLS, the server's certificate checked against the
    system's trust), C{unix:///path/to/redis.sock?db=N}.
    """

    scheme: str
    host: str = "localhost"
    port: int = 6379
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def redacted(self) -> str:
        """
        The address without its password, fit for a log line.
        """
        if self.scheme == "unix":
            return f"unix://{self.path}?db={self.db}"
        user = f"{self.username or ''}:***@" if self.password else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}/{self.db}"


def parse_redis_url(text: str) -> RedisAddress:
    """
    @raise ValueError: not a redis://, rediss:// or unix:// URL.
    """
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError as e:
        raise ValueError(f"not a Redis URL: {e}") from None
    if url.scheme == "unix":
        path = url.path
        if not path.startswith("/"):
            raise ValueError("unix:///absolute/path/to/redis.sock[?db=N]")
        db_values = parse_qs(url.query).get("db", ["0"])
        return RedisAddress("unix", path=path, db=_db(db_values[0]), password=_unquote(url.password))
    if url.scheme not in ("redis", "rediss"):
        raise ValueError("redis://host:port/db, rediss://host:port/db or unix:///path")
    if not url.hostname:
        raise ValueError("a Redis URL needs a host")
    db = url.path.strip("/") or "0"
    return RedisAddress(
        url.scheme,
        host=url.hostname,
        port=port or 6379,
        db=_db(db),
        username=_unquote(url.username) or None,
        password=_unquote(url.password),
    )


def _db(text: str) -> int:
    if not text.isdigit() or int(text) > 10_000:
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


def _unquote(value: str | None) -> str | None:
    return unquote(value) if value is not None else None


def redacted_redis_url(text: str) -> str:
    """
    C{--redis} fit for a log line or C{--help}: the password hidden.
    """
    if not text:
        return ""
    try:
        return parse_redis_url(text).redacted()
    except ValueError:
        return "<invalid>"

"""
Where Redis is (C{--redis URL}), parsed; pure (no Twisted), so the settings
can check the option at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisAddress", "parse_redis_url", "redacted_redis_url", "redis_prefix_option", "redis_url_option"]


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


def redis_url_option(value: object) -> str:
    """
    The C{--redis} option's parser: empty (off) or a Redis URL.

    @raise ValueError: not a Redis URL.
    """
    text = str(value).strip()
    if text:
        parse_redis_url(text)
    return text


#: What a key prefix may hold.
_PREFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:{}/")


def redis_prefix_option(value: object) -> str:
    """
    The C{--redis-prefix} option's parser: 1-64 of letters, digits and
    C{_-.:{}/}.

    @raise ValueError: anything else.
    """
    text = str(value).strip()
    if not 1 <= len(text) <= 64 or not set(text) <= _PREFIX_CHARS:
        raise ValueError("1-64 of letters, digits and _ - . : { } /")
    return text

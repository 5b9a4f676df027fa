"""
The value parsers of the settings table (L{inkflow.settings.table}).

Each parser takes one raw value (a string from a flag or the environment, or a
TOML value) and returns the typed value, or raises C{ValueError} with a short
reason; the settings loader turns that into a one-line L{ConfigError} naming
the option.  Pure: no environment, no files, no reactor.  The operator tools
may use them too (this module imports nothing from the server).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString

from inkflow.n8n.retry import RETRY_ON_CHOICES
from inkflow.settings.urls import parse_redis_url, redact_url

__all__ = [
    "auto_or_int_in",
    "choice",
    "directory",
    "field_name",
    "flag",
    "forward_header",
    "header",
    "header_name",
    "int_in",
    "is_tcp_endpoint",
    "listen",
    "mime",
    "network",
    "optional_listen",
    "origin",
    "redis_prefix_option",
    "redis_url_option",
    "retry_on",
    "seconds",
    "webhook",
]


def int_in(low: int, high: int | None = None) -> Callable[[Any], int]:
    """
    An integer between C{low} and C{high} (inclusive; no upper bound when
    C{None}); C{_} separators allowed, booleans refused.
    """

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip().replace("_", "")
            if not re.fullmatch(r"[+-]?\d+", text):
                raise ValueError(f"expected an integer, got {value!r}")
            number = int(text)
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bound}, got {number}")
        return number

    return parse


def auto_or_int_in(low: int, high: int | None = None) -> Callable[[Any], int | None]:
    """
    C{auto} (L{None}: the value is derived from other options) or an integer
    between C{low} and C{high}.
    """
    number = int_in(low, high)

    def parse(value: Any) -> int | None:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return None
        try:
            return number(value)
        except ValueError as e:
            raise ValueError(f"auto or {e}") from None

    return parse


def seconds(low: float, high: float | None = None) -> Callable[[Any], float]:
    """
    A finite number of seconds between C{low} and C{high} (inclusive).
    """

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number of seconds")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {value!r}")
        if number < low or (high is not None and number > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise ValueError(f"must be {bound}, got {number:g}")
        return number

    return parse


def flag(value: Any) -> bool:
    """
    A boolean: 1/true/yes/on or 0/false/no/off (or empty).
    """
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def listen(value: Any) -> str:
    """
    A Twisted server endpoint description (checked, not built).
    """
    description = str(value).strip()
    if not description:
        raise ValueError("must not be empty")
    try:
        serverFromString(None, description)  # built, not listening: no reactor is used until listen()
    except Exception as e:  # Twisted raises several types here
        raise ValueError(f"not a valid Twisted endpoint: {description!r} ({e})") from None
    return description


def optional_listen(value: Any) -> str:
    """
    An endpoint description, or empty for none.
    """
    text = str(value).strip()
    return listen(text) if text else ""


def is_tcp_endpoint(description: str) -> bool:
    """
    Whether a valid endpoint description listens on TCP (what C{--workers}
    needs: one socket the workers share).
    """
    return isinstance(serverFromString(None, description), TCP4ServerEndpoint | TCP6ServerEndpoint)


def webhook(value: Any) -> str:
    """
    An http(s) URL with a host; errors show it redacted.
    """
    url = str(value).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {redact_url(url)!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"bad port in {redact_url(url)!r}") from None
    if parts.username is not None or parts.password is not None:
        # treq would not send them, every chat would fail; and a password in
        # a URL ends up in logs.  Never echoed.
        raise ValueError(
            f"user:password@ in {redact_url(url)!r} is not supported; "
            'send credentials with --webhook-header "Authorization: Basic <base64>"'
        )
    return url


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FORBIDDEN_UPSTREAM_HEADERS = {
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "x-request-id",
    "idempotency-key",
}


def header(value: Any) -> tuple[str, str]:
    """
    C{"Name: value"} as C{(name, value)}.  Errors never echo the value: it is
    usually a secret.
    """
    line = str(value)
    name, sep, rest = line.partition(":")
    name = name.strip()
    if not sep or not _HEADER_NAME.match(name):
        raise ValueError('expected "Name: value"')
    if name.lower() in _FORBIDDEN_UPSTREAM_HEADERS:
        raise ValueError(f"header {name!r} is set by InkFlow itself")
    rest = rest.strip()
    if any(c in rest for c in "\r\n\0"):
        raise ValueError(f"value of header {name!r} contains a control character")
    return (name, rest)


_FIELD_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Field names InkFlow gives a meaning of its own.
_RESERVED_FIELDS = {"action", "metadata", "files"}


def field_name(value: Any) -> str:
    """
    A chat field name (C{--chat-input-key}, C{--chat-session-key}).
    """
    text = str(value).strip()
    if not _FIELD_NAME.match(text):
        raise ValueError(f"expected 1-64 of A-Z a-z 0-9 _ . -, got {text!r}")
    if text in _RESERVED_FIELDS:
        raise ValueError(f"{text!r} is a field of its own")
    return text


def header_name(value: Any) -> str:
    """
    An HTTP header name (a token).
    """
    text = str(value).strip()
    if not _HEADER_NAME.match(text):
        raise ValueError(f"not a header name: {text!r}")
    return text


#: Headers never passed on from a client: hop-by-hop, framing, and those
#: InkFlow sets itself.
_NOT_FORWARDED = _FORBIDDEN_UPSTREAM_HEADERS | {
    "accept",
    "user-agent",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "expect",
}


def forward_header(value: Any) -> str:
    """
    A client header name that may be passed on to n8n (C{--forward-header}).
    """
    text = header_name(value)
    if text.lower() in _NOT_FORWARDED:
        raise ValueError(f"header {text!r} is never forwarded")
    return text


_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def mime(value: Any) -> str:
    """
    A media type such as C{image/png}, lower-cased.
    """
    media_type = str(value).strip().lower()
    if not _MIME.match(media_type):
        raise ValueError(f"not a media type: {media_type!r}")
    return media_type


def choice(*choices: str) -> Callable[[Any], str]:
    """
    One of C{choices}, case-insensitive.
    """

    def parse(value: Any) -> str:
        word = str(value).strip().lower()
        if word not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {word!r}")
        return word

    return parse


#: A C{--retry-on} word (the vocabulary is L{inkflow.n8n.retry.RETRY_ON_CHOICES}).
retry_on = choice(*RETRY_ON_CHOICES)


def network(value: Any) -> str:
    """
    An address or CIDR, normalised (C{10.0.0.1} is C{10.0.0.1/32}).
    """
    address = str(value).strip()
    if address.lower() == "unix":
        return "unix"  # every peer of a unix: listener (a local proxy)
    try:
        return str(ipaddress.ip_network(address, strict=False))
    except ValueError:
        raise ValueError(f"not an address or CIDR: {address!r}") from None


def origin(value: Any) -> str:
    """
    A browser origin (C{https://example.com}), lower-cased; C{*} refused.
    """
    shown = str(value).strip().rstrip("/")
    parts = urlsplit(shown)
    if shown == "*":
        raise ValueError("'*' is not allowed; list the origins")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise ValueError(f"expected an origin like https://example.com, got {shown!r}")
    return shown.lower()


def directory(value: Any) -> str:
    """
    A folder, made absolute (C{~} expanded); it need not exist yet.
    """
    path = str(value).strip()
    if not path:
        raise ValueError("must not be empty")
    return os.path.abspath(os.path.expanduser(path))


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

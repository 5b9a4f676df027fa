"""
The site owner's names and texts for the visitor's side: the page, its
C{<title>}, the embed (C{/embed.js}) and the accessibility statement.

They come from the C{[page]} table of the config file (C{--config FILE}),
each key also from C{INKFLOW_PAGE_<KEY>} in the environment (the environment
wins, as for every option).  The values are plain text (URLs for C{logo} and
C{statement_contact_url}); whoever writes them into a page escapes them
(L{inkflow.web.page}).

Pure: no reactor, no files, no environment of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PAGE_ENV_PREFIX", "PageConfig", "PageConfigError", "contrast_ratio", "page_config", "page_table"]

#: C{INKFLOW_} and C{PAGE_}: the environment's keys for the table.
PAGE_ENV_PREFIX = "INKFLOW_PAGE_"


class PageConfigError(ValueError):
    """
    A bad C{[page]} table: one line naming the key (the settings turn it
    into their C{ConfigError}).
    """


_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
# Control characters (tab and newline aside) have no place in a name or a greeting.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")

#: The most characters of one text (the greeting and notes may be longer than names).
MAX_NAME = 120
MAX_TEXT = 1000


@dataclass(frozen=True)
class PageConfig:
    """
    The C{[page]} table, validated.  The defaults are neutral: they name no
    product and show no command line.

    @ivar site_name: the owner's site or business; the page's C{<title>}.
    @ivar bot_name: the chat's name in its header and the launcher.
    @ivar greeting: the chat's first message.
    @ivar accent_color: C{#rgb} or C{#rrggbb}, dark enough for white text
        (contrast at least 4.5:1, WCAG AA).
    @ivar logo: an image URL (C{https://...}) or a path on this site
        (C{/assets/logo.svg}); none: a neutral mark.
    @ivar privacy_note: a line under the chat on what happens to messages.
    @ivar description: the page's C{<meta name="description">} and lead.
    @ivar statement_contact: who to contact about accessibility (a name,
        a phone number, an address); shown in the statement.
    @ivar statement_email: the accessibility contact's e-mail address.
    @ivar statement_date: when the statement was last reviewed (free text).
    """

    site_name: str = "האתר שלנו"
    bot_name: str = "העוזר הדיגיטלי"
    greeting: str = "שלום! במה אפשר לעזור?"
    accent_color: str = "#4338ca"
    logo: str = ""
    privacy_note: str = ""
    description: str = "צ'אט עם מענה מהיר לשאלות, עם אפשרות לצרף קבצים."
    statement_contact: str = ""
    statement_email: str = ""
    statement_date: str = ""

    def public(self) -> dict[str, str]:
        """
        The values the browser is given (the embed's configuration).
        """
        return {f.name: getattr(self, f.name) for f in fields(self)}


def contrast_ratio(color: str, other: str = "#ffffff") -> float:
    """
    The WCAG contrast ratio of two C{#rgb}/C{#rrggbb} colours.
    """

    def luminance(value: str) -> float:
        digits = value[1:]
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        channels = [int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    a, b = sorted((luminance(color), luminance(other)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def _text(limit: int, *, empty: bool = True) -> Any:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {type(value).__name__}")
        text = value.strip()
        if not text and not empty:
            raise ValueError("must not be empty")
        if len(text) > limit:
            raise ValueError(f"at most {limit} characters")
        if _CONTROL.search(text):
            raise ValueError("control characters are not allowed")
        return text

    return parse


def _color(value: Any) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value.strip()):
        raise ValueError(f"expected a colour like #4338ca, got {value!r}")
    color = value.strip().lower()
    ratio = contrast_ratio(color)
    if ratio < 4.5:
        raise ValueError(f"{color} is too light for white text (contrast {ratio:.2f}:1, at least 4.5:1 is needed)")
    return color


def _url(value: Any) -> str:
    """
    An absolute http(s) URL or a path on this site; nothing that could be
    script or leave an attribute.
    """
    text = _text(2000)(value)
    if not text:
        return ""
    if any(c in text for c in " \"'<>\\`\t\n"):
        raise ValueError("a URL has no spaces, quotes or angle brackets")
    if text.startswith("/") and not text.startswith("//"):
        return text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected https://... or a path starting with /, got {text!r}")
    return text


def _email(value: Any) -> str:
    text = _text(254)(value)
    if text and not re.fullmatch(r"[^@\s<>\"']+@[^@\s<>\"']+\.[^@\s<>\"']+", text):
        raise ValueError(f"expected an e-mail address, got {text!r}")
    return text


_PARSERS: dict[str, Any] = {
    "site_name": _text(MAX_NAME, empty=False),
    "bot_name": _text(MAX_NAME, empty=False),
    "greeting": _text(MAX_TEXT, empty=False),
    "accent_color": _color,
    "logo": _url,
    "privacy_note": _text(MAX_TEXT),
    "description": _text(MAX_TEXT),
    "statement_contact": _text(MAX_TEXT),
    "statement_email": _email,
    "statement_date": _text(MAX_NAME),
}


def page_table(data: Mapping[str, Any], where: str) -> Mapping[str, Any] | None:
    """
    The C{[page]} table of a parsed config file (C{None} when it has none).

    @raise PageConfigError: C{page} is not a table.
    """
    table = data.get("page")
    if table is not None and not isinstance(table, dict):
        raise PageConfigError(f"invalid value for --config: [page] in {where!r} is not a table")
    return table


def page_config(table: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> PageConfig:
    """
    The page's configuration from the config file's C{[page]} table and the
    C{INKFLOW_PAGE_*} environment variables (which win).

    @raise PageConfigError: one line naming the key (an unknown key, a bad value).
    """
    values: dict[str, str] = {}
    for key, raw in (table or {}).items():
        if key not in _PARSERS:
            raise PageConfigError(f"invalid value for --config: unknown key {key!r} in [page]")
        values[key] = _parse(key, raw, f"{key} in [page] (config file)")
    for name, raw in (environ or {}).items():
        if not name.startswith(PAGE_ENV_PREFIX):
            continue
        key = name[len(PAGE_ENV_PREFIX) :].lower()
        if key not in _PARSERS:
            raise PageConfigError(f"invalid value for {name}: no such [page] key")
        values[key] = _parse(key, raw, name)
    return PageConfig(**values)


def _parse(key: str, raw: Any, where: str) -> str:
    try:
        return str(_PARSERS[key](raw))
    except ValueError as e:
        raise PageConfigError(f"invalid value for {where}: {e}") from None

"""
The visitor's side in the site owner's name: the static folder's pages with
the C{[page]} table's names written in (escaped), C{/embed.js} with its
configuration, and C{/theme.css} with the accent colour.

  - An HTML file of the static folder may hold markers, C{{{page.KEY}}}: each
    becomes the key's value, HTML-escaped (a name with C{<} is text).  A few
    markers are small fragments built here from escaped values
    (C{{{page.logo_html}}}, C{{{page.privacy_html}}},
    C{{{page.contact_html}}}), and C{{{page.json}}} is the configuration as
    JSON that is safe inside a C{<script>} element.  A page without markers
    is served as it is.
  - C{/embed.js} is the static folder's C{embed.js} with C{"{{page.json}}"}
    replaced by the configuration and the chat's limits.
  - C{/theme.css}: the accent colour as custom properties.
  - The chat's scripts and styles (C{/assets/...}) are readable from any
    origin (C{Access-Control-Allow-Origin: *}): the embed imports them as
    modules from the host page.  They are public, carry no credentials.

Rendered bodies are made once per file version and kept with a strong ETag
taken from the rendered bytes, so a change of the file or of the
configuration is a new ETag; they are sent with C{no-cache} and a
C{Last-Modified} that is the later of the file's date and the time the
configuration was read (it is read at start-up, so a new configuration is
newer than anything a cache holds).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

from inkflow.page import PageConfig
from inkflow.web.staticfiles import StaticEntry, StaticFiles, not_modified, send_body

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = ["PageFiles", "Rendered", "page_json", "theme_css"]

_MARKER = re.compile(rb"\{\{page\.([a-z_]+)\}\}")
_JS_MARKER = b'"{{page.json}}"'

#: What the chat in the browser is told besides the names (the page asks /api/health instead).
_LIMIT_KEYS = ("max_file_size", "max_files", "max_message_chars", "allowed_types")


@dataclass(frozen=True)
class Rendered:
    body: bytes
    gzipped: bytes | None
    etag: str
    content_type: str
    #: Seconds since the epoch (whole seconds, as HTTP dates are).
    modified: int


def page_json(page: PageConfig, extra: Mapping[str, Any] | None = None) -> str:
    """
    The configuration as JSON that can stand inside a C{<script>} element or
    a script file: C{<}, C{>}, C{&} and the line separators escaped.
    """
    data: dict[str, Any] = dict(page.public())
    data.update(extra or {})
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def _darker(color: str, factor: float = 0.82) -> str:
    digits = color[1:]
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    channels = [round(int(digits[i : i + 2], 16) * factor) for i in (0, 2, 4)]
    return "#" + "".join(f"{c:02x}" for c in channels)


def theme_css(page: PageConfig) -> str:
    """
    The accent colour for the page (C{:root}) and the embed (C{:host}): the
    buttons, the visitor's bubbles and the links; the default colour leaves
    the stylesheets' own palette as it is.
    """
    accent = page.accent_color
    if accent == PageConfig.accent_color:
        return "/* the default palette (no accent_color in [page]) */\n"
    return f":root,\n:host {{\n  --ink-600: {accent};\n  --ink-700: {_darker(accent)};\n  --ink-800: {accent};\n}}\n"


def _fragments(page: PageConfig) -> dict[str, str]:
    esc = html.escape
    logo = (
        f'<img class="brand-logo" src="{esc(page.logo)}" alt="" width="32" height="32">'
        if page.logo
        else '<span class="brand-mark" aria-hidden="true"></span>'
    )
    privacy = f'<p class="privacy-note" dir="auto">{esc(page.privacy_note)}</p>' if page.privacy_note else ""
    contact: list[str] = []
    if page.statement_contact:
        contact.append(f'<li>רכז/ת הנגישות: <span dir="auto">{esc(page.statement_contact)}</span></li>')
    if page.statement_email:
        address = esc(page.statement_email)
        contact.append(f'<li>דואר אלקטרוני: <a href="mailto:{address}" dir="ltr">{address}</a></li>')
    if not contact:
        contact.append("<li>דרך הצ'אט באתר זה, או בכל דרך ההתקשרות המופיעה באתר.</li>")
    date = esc(page.statement_date) if page.statement_date else "—"
    return {
        "logo_html": logo,
        "privacy_html": privacy,
        "contact_html": "\n".join(contact),
        "statement_date_html": f'<span dir="auto">{date}</span>',
    }


def _gzip(body: bytes) -> bytes | None:
    if len(body) <= 256:
        return None
    packed = gzip.compress(body, compresslevel=9, mtime=0)
    return packed if len(packed) < len(body) else None


def _rendered(body: bytes, content_type: str, modified: int) -> Rendered:
    return Rendered(body, _gzip(body), '"' + hashlib.sha256(body).hexdigest()[:32] + '"', content_type, modified)


class PageFiles:
    """
    The static folder (L{StaticFiles}) with the owner's names written in.

    @param static: the static folder.
    @param page: the C{[page]} table.
    @param chat: what the embed is told about the chat: C{mode} and the
        limits (C{max_file_size}, C{max_files}, C{max_message_chars},
        C{allowed_types}).
    @param loaded: when the configuration was read (seconds since the epoch).
    """

    def __init__(
        self,
        static: StaticFiles,
        page: PageConfig,
        chat: Mapping[str, Any] | None = None,
        loaded: float | None = None,
    ) -> None:
        self.static = static
        self.loaded = int(time.time() if loaded is None else loaded)
        self.page = page
        self.chat = dict(chat or {})
        self._values: dict[bytes, bytes] = {
            key.encode(): html.escape(value).encode() for key, value in page.public().items()
        }
        self._values.update({key.encode(): value.encode() for key, value in _fragments(page).items()})
        self._values[b"json"] = page_json(page).encode()
        self._theme = _rendered(theme_css(page).encode(), "text/css; charset=utf-8", self.loaded)
        #: path -> (the file's ETag, its rendered form)
        self._cache: dict[str, tuple[str, Rendered]] = {}

    @classmethod
    def from_settings(cls, static: StaticFiles, settings: Settings) -> PageFiles:
        chat: dict[str, Any] = {key: getattr(settings, key) for key in _LIMIT_KEYS}
        chat["allowed_types"] = list(chat["allowed_types"])
        chat["mode"] = settings.mode
        return cls(static, settings.page, chat)

    def render(self, request: IRequest, url_path: bytes) -> bytes | int | None:
        """
        Like L{StaticFiles.render}: the answer, or C{None} when the path
        names nothing here.
        """
        if url_path == b"/theme.css":
            return self._respond(request, self._theme, public=True)
        if url_path.startswith(b"/assets/"):
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            return self.static.render(request, url_path)
        entry = self.static.lookup(url_path)
        if entry is None:
            return None
        if url_path == b"/embed.js":
            rendered = self._render(entry, self._embed)
            if rendered is None:
                return self.static.respond(request, entry)
            return self._respond(request, rendered, public=True)
        if entry.content_type.startswith("text/html"):
            rendered = self._render(entry, self._html)
            if rendered is not None:
                return self._respond(request, rendered)
        return self.static.respond(request, entry)

    def render_text(self, text: bytes) -> bytes:
        """
        An HTML body with its markers replaced (unknown markers stay).
        """
        return _MARKER.sub(lambda m: self._values.get(m.group(1), m.group(0)), text)

    def _html(self, body: bytes) -> bytes | None:
        return self.render_text(body) if b"{{page." in body else None

    def _embed(self, body: bytes) -> bytes | None:
        if _JS_MARKER not in body:
            return None
        return body.replace(_JS_MARKER, page_json(self.page, self.chat).encode(), 1)

    def _render(self, entry: StaticEntry, make: Callable[[bytes], bytes | None]) -> Rendered | None:
        if entry.body is None:
            return None  # too large to keep: served as it is
        cached = self._cache.get(entry.path)
        if cached is not None and cached[0] == entry.etag:
            return cached[1]
        body = make(entry.body)
        modified = max(self.loaded, entry.mtime_ns // 1_000_000_000)
        rendered = _rendered(body, entry.content_type, modified) if body is not None else None
        if rendered is not None:
            self._cache[entry.path] = (entry.etag, rendered)
        return rendered

    @staticmethod
    def _respond(request: IRequest, rendered: Rendered, *, public: bool = False) -> bytes:
        request.setHeader(b"Content-Type", rendered.content_type.encode())
        request.setHeader(b"ETag", rendered.etag.encode())
        request.setHeader(b"Last-Modified", formatdate(rendered.modified, usegmt=True).encode())
        request.setHeader(b"Cache-Control", b"no-cache")
        if public:
            # Read from the host pages of the embed.
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
        if rendered.gzipped is not None:
            request.setHeader(b"Vary", b"Accept-Encoding")
        if not_modified(request, rendered.etag, rendered.modified):
            request.setResponseCode(304)
            return b""
        return send_body(request, rendered.body, rendered.gzipped)

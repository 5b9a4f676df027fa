"""
What an uploaded file is, from its bytes, and a name safe to keep for it.
Pure: no reactor, no twisted.web.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

import filetype

__all__ = ["MAX_FILENAME_BYTES", "SNIFF_BYTES", "TextCheck", "sanitize_filename", "sniff_type"]

#: How many head bytes of a file decide its type (what C{filetype} reads).
SNIFF_BYTES = 8192
#: Bytes of a file name, UTF-8, after sanitising.
MAX_FILENAME_BYTES = 150
#: Types that are one of the allowed ones under another name.
_TYPE_ALIASES = {"image/apng": "image/png"}
#: Recognised formats that may be all printable text and still be that format.
_TEXT_LIKE_FORMATS = frozenset({"application/pdf"})


# --- type detection ---------------------------------------------------------

#: C0 controls that do not occur in text (tab, LF, VT, FF, CR and ESC do).
_BINARY_CONTROLS = bytes(c for c in range(32) if c not in (9, 10, 11, 12, 13, 27)) + b"\x7f"
_BINARY_CONTROL_CHARS = frozenset(chr(c) for c in _BINARY_CONTROLS)


def _looks_like_text(head: bytes, complete: bool) -> bool:
    """
    Whether C{head} is UTF-8 text, or UTF-16 text after a byte order mark,
    without NUL or other binary control characters.  When not C{complete}, a
    character cut at the end of C{head} is allowed.
    """
    if not head:
        return False
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        decoder = codecs.getincrementaldecoder("utf-16")("strict")
        try:
            text = decoder.decode(head, final=complete)
        except UnicodeDecodeError:
            return False
        return not any(ch in _BINARY_CONTROL_CHARS for ch in text)
    if len(head.translate(None, _BINARY_CONTROLS)) != len(head):
        return False
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        decoder.decode(head, final=complete)
    except UnicodeDecodeError:
        return False
    return True


class TextCheck:
    """
    Checks a file detected as C{text/plain} all the way, as it streams: every
    byte must keep it UTF-8 (or UTF-16 after a byte order mark) text without
    binary control characters, so 8 KiB of text cannot carry a binary.
    """

    def __init__(self, head: bytes) -> None:
        self._utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        self._decoder = codecs.getincrementaldecoder("utf-16" if self._utf16 else "utf-8")("strict")

    def feed(self, data: bytes, final: bool = False) -> bool:
        """
        Whether the text is still text after C{data} (C{final}: the file ends).
        """
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError:
            return False
        if self._utf16:
            return not any(ch in _BINARY_CONTROL_CHARS for ch in text)
        return len(data.translate(None, _BINARY_CONTROLS)) == len(data)


def sniff_type(head: bytes, *, complete: bool = False) -> str | None:
    """
    The type of a file from its first bytes: C{text/plain} when they are text
    (see L{_looks_like_text}) even if they begin like another format's short
    signature (C{"BMW..."} is not a bitmap), except that a PDF stays a PDF;
    else what C{filetype} recognises (APNG reported as C{image/png}); else
    C{None}.

    @param head: the first bytes (L{SNIFF_BYTES} are enough).
    @param complete: C{head} is the whole file, so a character cut at its end
        is an error rather than the edge of the sample.
    """
    head = bytes(head[:SNIFF_BYTES])
    if not head:
        return None
    try:
        kind = filetype.guess(head)
    except Exception:  # a matcher tripping over odd bytes is "unknown"
        kind = None
    mime = None if kind is None else _TYPE_ALIASES.get(str(kind.mime), str(kind.mime))
    if mime in _TEXT_LIKE_FORMATS:
        return mime
    if _looks_like_text(head, complete):
        # Several signatures are a few printable letters ("BM", "ID3",
        # "MZ"...): text that merely starts with them is still text.
        return "text/plain"
    return mime


# --- file names ---------------------------------------------------------------

_RESERVED = str.maketrans({c: "_" for c in '<>:"/\\|?*'})
_KEEP_FORMAT = frozenset("\u200c\u200d")  # ZWNJ, ZWJ: needed by some scripts and emoji
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
)


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def sanitize_filename(name: str) -> str:
    """
    A file name safe to show, store and send in a multipart header.

    Keeps letters of every script (Hebrew included), NFC-normalised; drops
    any path (C{/} and C{\\}), control, format and bidi-override characters;
    turns C{<>:"|?*} into C{_}; drops leading dots and spaces and trailing
    dots and spaces; prefixes Windows device names with C{_}; caps the result
    at L{MAX_FILENAME_BYTES} bytes of UTF-8, keeping a short extension.  An
    empty result is C{"file"}.
    """
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = []
    for ch in name:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and ch not in _KEEP_FORMAT):
            continue
        kept.append(" " if category == "Zs" else ch)
    name = "".join(kept).translate(_RESERVED)
    name = re.sub(r" {2,}", " ", name).lstrip(". ").rstrip(". ")
    if name.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        name = "_" + name
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and 0 < len(ext.encode("utf-8")) <= 16:
            ext = "." + ext
            name = _truncate_utf8(stem, MAX_FILENAME_BYTES - len(ext.encode("utf-8"))).rstrip(". ") + ext
        else:
            name = _truncate_utf8(name, MAX_FILENAME_BYTES).rstrip(". ")
    name = unicodedata.normalize("NFC", name)
    return name or "file"

"""
Multipart headers: C{Content-Type} boundaries and C{Content-Disposition}
parameters (RFC 7578, RFC 5987 extended values).  Pure.

Why not werkzeug's C{parse_options_header} (installed with Klein, and it
decodes RFC 5987 C{filename*}): measured (werkzeug 3.1.9, 2026-12) against
the cases of tests/unit/test_uploads.py, it passes the C{filename*} one and
fails four (tests/unit/test_part_headers.py keeps the measurement):

  - an undecodable C{filename*=bogus} becomes the file name C{bogus}
    instead of falling back to C{filename=};
  - a repeated C{name=} silently keeps the last one (which field was meant
    is ambiguous: InkFlow answers 400);
  - an unterminated quote silently drops every parameter (and
    C{boundary="x} passes as no boundary at all);
  - C{filename="C:\\Users\\me\\y.png"} as old browsers send it (single
    backslashes) loses them: C{C:Usersmey.png}, where InkFlow keeps the path
    and then drops it, leaving C{y.png}.

So this module stays.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from inkflow.errors import ApiError

__all__ = ["decode_header", "ext_value", "header_params", "parse_boundary"]

#: RFC 2046 bchars, plus a generous length (python-multipart allows 256).
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,199}[0-9A-Za-z'()+_,\-./:=?]")


# --- header parsing -------------------------------------------------------------


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """
    Split C{type; key=value; key="quoted"} into the lowercased first item and
    its parameters (keys lowercased).  Inside quotes only C{\\"} and C{\\\\}
    are escapes, so a Windows path sent by an old browser survives.

    @raise ValueError: an unterminated quote, a repeated parameter or a
        parameter without a name.
    """
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and rest[i] not in "=;":
            i += 1
        key = rest[start:i].strip().lower()
        val = ""
        if i < n and rest[i] == "=":
            i += 1
            while i < n and rest[i] in " \t":
                i += 1
            if i < n and rest[i] == '"':
                i += 1
                chars = []
                while True:
                    if i >= n:
                        raise ValueError("unterminated quoted string")
                    ch = rest[i]
                    if ch == "\\" and i + 1 < n and rest[i + 1] in '"\\':
                        chars.append(rest[i + 1])
                        i += 2
                    elif ch == '"':
                        i += 1
                        break
                    else:
                        chars.append(ch)
                        i += 1
                val = "".join(chars)
                while i < n and rest[i] != ";":
                    i += 1
            else:
                start = i
                while i < n and rest[i] != ";":
                    i += 1
                val = rest[start:i].strip()
        if not key:
            raise ValueError("parameter without a name")
        if key in params:
            raise ValueError(f"repeated parameter {key!r}")
        params[key] = val
    return main.strip().lower(), params


def decode_header(raw: bytes) -> str:
    """
    Browsers send UTF-8 in part headers; anything else is read as Latin-1.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def ext_value(value: str) -> str | None:
    """
    An RFC 5987 / 2231 extended value C{charset'lang'pct-encoded}, decoded;
    C{None} when it cannot be.
    """
    parts = value.split("'", 2)
    if len(parts) != 3:
        return None
    charset = parts[0].strip().lower()
    if charset not in ("utf-8", "iso-8859-1", "us-ascii"):
        return None
    try:
        return unquote_to_bytes(parts[2]).decode(charset)
    except (UnicodeDecodeError, LookupError):
        return None


def parse_boundary(content_type: bytes) -> bytes:
    """
    The boundary of a C{multipart/form-data} request Content-Type.

    @raise ApiError: C{unsupported_type} when it is not multipart/form-data,
        C{bad_request} when the boundary is missing or invalid.
    """
    try:
        main, params = header_params(content_type.decode("latin-1"))
    except ValueError:
        raise ApiError("bad_request", "the Content-Type header is malformed") from None
    if main != "multipart/form-data":
        raise ApiError("unsupported_type", "expected multipart/form-data")
    boundary = params.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise ApiError("bad_request", "the multipart boundary is missing or invalid")
    return boundary.encode("ascii")

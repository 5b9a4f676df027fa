"""
Typed errors that carry an HTTP status, a stable code and a client-safe message
in Hebrew and English, and the one place they become the contract's JSON body.

Pure: no reactor, no twisted.web.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["MESSAGES", "ApiError", "error_body", "json_bytes", "json_loads"]

#: code -> (status, Hebrew message, English message)
MESSAGES: dict[str, tuple[int, str, str]] = {
    "bad_request": (400, "הבקשה אינה תקינה.", "The request is malformed."),
    "too_many_files": (400, "צורפו יותר מדי קבצים.", "Too many files were attached."),
    "invalid_idempotency_key": (400, "מפתח ה-Idempotency-Key אינו תקין.", "The Idempotency-Key is not valid."),
    "unknown_execution": (404, "השיחה הזו אינה פעילה עוד.", "This conversation is no longer active."),
    "not_found": (404, "הכתובת לא נמצאה.", "Not found."),
    "chat_disabled": (404, "הצ'אט אינו זמין באתר זה.", "Chat is not available on this site."),
    "forbidden_origin": (
        403,
        "הבקשה נשלחה מאתר אחר ולכן נדחתה.",
        "The request came from another site and was refused.",
    ),
    "method_not_allowed": (405, "השיטה אינה נתמכת בכתובת זו.", "Method not allowed."),
    "request_timeout": (408, "הבקשה נשלחה לאט מדי.", "The request was sent too slowly."),
    "in_progress": (
        409,
        "ההודעה הזו עדיין בטיפול. נסו שוב בעוד רגע.",
        "This message is still being answered. Please try again shortly.",
    ),
    "too_large": (413, "הקובץ או ההודעה גדולים מדי.", "The file or message is too large."),
    "unsupported_type": (415, "סוג הקובץ או התוכן אינו נתמך.", "The file or content type is not supported."),
    "idempotency_mismatch": (
        422,
        "מפתח ה-Idempotency-Key כבר שימש להודעה אחרת.",
        "The Idempotency-Key was already used for another message.",
    ),
    "websocket_required": (426, "כתובת זו מיועדת לחיבור WebSocket.", "This address takes WebSocket connections only."),
    "rate_limited": (429, "נשלחו יותר מדי הודעות. נסו שוב בעוד רגע.", "Too many messages. Please try again shortly."),
    "internal_error": (500, "אירעה שגיאה פנימית.", "An internal error occurred."),
    "upstream_error": (502, "שירות הצ'אט אינו זמין כרגע.", "The chat service is unavailable right now."),
    "busy": (503, "השרת עמוס כרגע. נסו שוב בעוד רגע.", "The server is busy. Please try again shortly."),
    "too_many_connections_from_address": (
        503,
        "נפתחו יותר מדי חיבורים מהכתובת שלכם. סגרו לשוניות פתוחות או נסו שוב בעוד רגע.",
        "Too many connections are open from your address. Close other tabs or try again shortly.",
    ),
    "upstream_timeout": (504, "שירות הצ'אט לא הגיב בזמן.", "The chat service did not answer in time."),
}


class ApiError(Exception):
    """
    An error a client is told about.

    @ivar status: HTTP status code.
    @ivar code: stable machine-readable code (a key of L{MESSAGES}).
    @ivar detail: an optional English detail appended to the English message
        (must be safe to show: never a secret, never a path).
    @ivar headers: extra response headers, e.g. C{Retry-After} or C{Allow}.
    """

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        default_status, self.message_he, self.message_en = MESSAGES[code]
        self.code = code
        self.status = status if status is not None else default_status
        self.detail = detail
        self.headers = dict(headers or {})
        super().__init__(f"{self.status} {code}" + (f": {detail}" if detail else ""))

    @classmethod
    def retry_later(cls, code: str, retry_after: float, detail: str | None = None) -> ApiError:
        """
        A 429/503 carrying C{Retry-After} in whole seconds (at least 1).
        """
        seconds = max(1, int(retry_after + 0.999))
        return cls(code, detail, headers={"Retry-After": str(seconds)})

    def body(self, request_id: str | None) -> dict[str, object]:
        return error_body(self.code, request_id, self.detail, self.message_he, self.message_en)


def error_body(
    code: str,
    request_id: str | None,
    detail: str | None = None,
    message_he: str | None = None,
    message_en: str | None = None,
) -> dict[str, object]:
    """
    The contract's error shape, with the Hebrew text also at the top level
    (what @n8n/chat displays)::

        {"message", "error": {"code", "message", "message_en", "requestId"}}
    """
    _, default_he, default_en = MESSAGES.get(code, MESSAGES["internal_error"])
    english = message_en or default_en
    if detail:
        english = f"{english} ({detail})"
    hebrew = message_he or default_he
    return {
        "message": hebrew,
        "error": {
            "code": code,
            "message": hebrew,
            "message_en": english,
            "requestId": request_id,
        },
    }


def json_bytes(value: object) -> bytes:
    """
    Compact, strict UTF-8 JSON, Hebrew kept readable.

    @raise ValueError: C{value} is not JSON: NaN or an infinity, a lone
        surrogate (not text), nesting too deep to write, or a type JSON lacks.
    """
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except TypeError as e:
        raise ValueError(str(e)) from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is out of range")
    return number


#: One decoder for every call (C{json.loads} with hooks builds a new one each
#: time: 1.5 % of a new stream's CPU).
_STRICT = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def json_loads(raw: bytes | str) -> object:
    """
    Strict JSON: UTF-8, no NaN, Infinity or numbers beyond a float's range.

    @raise ValueError: anything else, nesting too deep to read included.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return _STRICT.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None

"""
Typed errors that carry an HTTP status, a stable code and a client-safe message
in Hebrew and English, and the one place they become the contract's JSON body.

Pure: no reactor, no twisted.web.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["MESSAGES", "ApiError", "error_body", "json_bytes"]

#: code -> (status, Hebrew message, English message)
MESSAGES: dict[str, tuple[int, str, str]] = {
    "bad_request": (400, "הבקשה אינה תקינה.", "The request is malformed."),
    "too_many_files": (400, "צורפו יותר מדי קבצים.", "Too many files were attached."),
    "invalid_idempotency_key": (400, "מפתח ה-Idempotency-Key אינו תקין.", "The Idempotency-Key is not valid."),
    "forbidden_origin": (403, "הבקשה נשלחה מאתר שאינו מורשה.", "Requests from this origin are not allowed."),
    "unknown_execution": (404, "השיחה הזו אינה פעילה עוד.", "This conversation is no longer active."),
    "not_found": (404, "הכתובת לא נמצאה.", "Not found."),
    "chat_disabled": (404, "הצ'אט אינו זמין באתר זה.", "Chat is not available on this site."),
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
    The contract's error shape::

        {"error": {"code", "message", "message_en", "requestId"}}
    """
    _, default_he, default_en = MESSAGES.get(code, MESSAGES["internal_error"])
    english = message_en or default_en
    if detail:
        english = f"{english} ({detail})"
    return {
        "error": {
            "code": code,
            "message": message_he or default_he,
            "message_en": english,
            "requestId": request_id,
        }
    }


def json_bytes(value: object) -> bytes:
    """
    Compact UTF-8 JSON, Hebrew kept readable.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

// Generated from inkflow/errors.py and the settings defaults by
//   python -m inkflow.web.page_messages > static/assets/messages.js
// Do not edit: tests/unit/test_page_messages.py checks it is current.

// The limits the page checks before sending, until /api/health reports the server's.
export const DEFAULT_LIMITS = Object.freeze({
  "max_file_size": 10485760,
  "max_files": 5,
  "max_message_chars": 4000,
  "allowed_types": [
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain"
  ]
});

// The Hebrew message for each error code the server answers with.
export const SERVER_MESSAGES = Object.freeze({
  "bad_request": "הבקשה אינה תקינה.",
  "too_many_files": "צורפו יותר מדי קבצים.",
  "invalid_idempotency_key": "מפתח ה-Idempotency-Key אינו תקין.",
  "unknown_execution": "השיחה הזו אינה פעילה עוד.",
  "not_found": "הכתובת לא נמצאה.",
  "chat_disabled": "הצ'אט אינו זמין באתר זה.",
  "forbidden_origin": "הבקשה נשלחה מאתר אחר ולכן נדחתה.",
  "method_not_allowed": "השיטה אינה נתמכת בכתובת זו.",
  "request_timeout": "הבקשה נשלחה לאט מדי.",
  "in_progress": "ההודעה הזו עדיין בטיפול. נסו שוב בעוד רגע.",
  "too_large": "הקובץ או ההודעה גדולים מדי.",
  "unsupported_type": "סוג הקובץ או התוכן אינו נתמך.",
  "idempotency_mismatch": "מפתח ה-Idempotency-Key כבר שימש להודעה אחרת.",
  "websocket_required": "כתובת זו מיועדת לחיבור WebSocket.",
  "rate_limited": "נשלחו יותר מדי הודעות. נסו שוב בעוד רגע.",
  "internal_error": "אירעה שגיאה פנימית.",
  "upstream_error": "שירות הצ'אט אינו זמין כרגע.",
  "busy": "השרת עמוס כרגע. נסו שוב בעוד רגע.",
  "too_many_connections_from_address": "נפתחו יותר מדי חיבורים מהכתובת שלכם. סגרו לשוניות פתוחות או נסו שוב בעוד רגע.",
  "upstream_timeout": "שירות הצ'אט לא הגיב בזמן."
});

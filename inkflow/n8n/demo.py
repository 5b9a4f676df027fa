"""
The built-in demo responder: what answers chat when no webhook is configured,
so the page works out of the box.  It never touches the network.
"""

from __future__ import annotations

from typing import Any

from inkflow.chat import ChatMessage

__all__ = ["DemoResponder"]

#: The longest echo quoted back.
ECHO_CHARS = 200


class DemoResponder:
    """
    Answers like an n8n Chat Trigger would, with a short Hebrew echo.
    """

    def answer(self, message: ChatMessage) -> dict[str, Any]:
        if message.action == "loadPreviousSession":
            return {"data": []}
        text = message.text.strip()
        if len(text) > ECHO_CHARS:
            text = text[:ECHO_CHARS] + "…"
        parts = []
        if text:
            parts.append(f"קיבלתי: «{text}»")
        if message.files:
            names = ", ".join(f.filename for f in message.files)
            count = "קובץ אחד" if len(message.files) == 1 else f"{len(message.files)} קבצים"
            parts.append(f"וגם {count}: {names}")
        parts.append("(זהו מענה הדגמה: לא הוגדר webhook של n8n.)")
        return {"output": " ".join(parts)}

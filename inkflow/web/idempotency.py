"""
A client's C{Idempotency-Key} on C{POST /api/chat}: the key checked
(L{parse_key}), what makes two requests the same request (L{fingerprint}) and
the response headers a replay carries over (L{REPLAYED_HEADERS}).

The keys in flight and the answers kept live in the shared state
(L{inkflow.state.base.SharedState}: one process, the C{--workers} parent or
Redis), and L{inkflow.state.chat.SharedIdempotentChat} wraps the chat route
with them:

 - no key: the route runs as before;
 - a key not seen (or expired): this request leads; it runs the route, and its
   answer (2xx, or an error) goes to every request that waited on the key; a
   2xx answer is stored for replay;
 - a key in flight: wait for the leader's answer and answer the same (its
   status, body, C{Content-Type} and C{X-Session-ID}); if the leader ends
   without an answer (its client left), the next waiter leads;
 - a key whose answer is stored: replay it (header C{Idempotent-Replayed: true});
 - a key whose answer is being streamed: 409 C{in_progress}; once the stream
   ends nothing is stored (a stream is not replayed) and the next request with
   the key is forwarded as usual.

A request with a known key but another message (another session, action,
text or files) is refused with 422 C{idempotency_mismatch}: a key names one
request, never a different one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from inkflow.chat import ChatBody, message_fields, session_fields
from inkflow.errors import ApiError

__all__ = ["KEY", "REPLAYED_HEADERS", "fingerprint", "parse_key"]

#: A client's key: 1-128 of A-Z a-z 0-9 _ - . :
KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Response headers a replay carries over.
REPLAYED_HEADERS = (b"Content-Type", b"X-Session-ID")


def parse_key(values: Sequence[bytes] | None) -> str | None:
    """
    The request's C{Idempotency-Key}, checked.

    @param values: the raw header values (C{None} when absent).
    @raise ApiError: 400 C{invalid_idempotency_key} for a key that is not
        1-128 of C{A-Za-z0-9_-.:}, or for more than one key.
    """
    if not values:
        return None
    if len(values) > 1:
        raise ApiError("invalid_idempotency_key", "send one Idempotency-Key")
    try:
        text = values[0].decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not KEY.match(text):
        raise ApiError("invalid_idempotency_key", "1-128 of A-Z a-z 0-9 _ - . :")
    return text


def fingerprint(body: ChatBody | None, input_key: str, session_key: str) -> str:
    """
    What makes two requests the same request: the session the client sent
    (none when it sent none), the action, the message, the metadata and each
    file's name, size and SHA-256 (computed while it was spooled): the same
    name and size with other bytes is another request.
    """
    fields = body.fields if body is not None else {}

    def first(names: tuple[str, ...]) -> Any:
        for name in names:
            if fields.get(name) is not None:
                return fields[name]
        return None

    value = {
        "action": fields.get("action"),
        "session": first(session_fields(session_key)),
        "message": first(message_fields(input_key)),
        "metadata": fields.get("metadata"),
        "files": [(f.filename, f.size, f.sha256) for f in body.files] if body is not None else [],
    }
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""
What a chat request carries, checked: the pure model shared by the request
parsing (L{inkflow.web.uploads}), the forwarder (L{inkflow.n8n.client}) and the demo
responder.  No reactor, no twisted.web.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from inkflow.errors import ApiError, json_bytes, json_loads

__all__ = [
    "DEFAULT_INPUT_KEY",
    "DEFAULT_SESSION_KEY",
    "ChatBody",
    "ChatMessage",
    "UploadedFile",
    "forwarded_headers",
    "new_request_id",
    "parse_chat",
    "parse_json_body",
]

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
DEFAULT_INPUT_KEY = "chatInput"
DEFAULT_SESSION_KEY = "sessionId"
ACTIONS = ("sendMessage", "loadPreviousSession")
#: Largest accepted C{metadata}, as JSON text.
MAX_METADATA_BYTES = 8 * 1024


@dataclass(frozen=True)
class UploadedFile:
    """
    One attached file, spooled to disk.

    @ivar path: the temp file holding the bytes.
    @ivar filename: the sanitised name (Hebrew kept; no path parts).
    @ivar content_type: the type detected from the bytes.
    @ivar size: bytes.
    @ivar sha256: the hex SHA-256 of the bytes, computed while they were
        spooled when the request carries an C{Idempotency-Key} (its
        fingerprint is the only reader); empty otherwise.
    """

    path: str
    filename: str
    content_type: str
    size: int
    sha256: str = ""


@dataclass
class ChatBody:
    """
    A request body as received: fields (strings, or any JSON value for a JSON
    body) and the files spooled to disk.  Owns the files until L{cleanup}.
    """

    fields: dict[str, Any] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def cleanup(self) -> None:
        """
        Remove every spooled file; safe to call more than once.
        """
        for f in self.files:
            try:
                os.unlink(f.path)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # the cleanup loop removes what is left


@dataclass(frozen=True)
class ChatMessage:
    """
    A validated chat request, ready to forward.
    """

    request_id: str
    session_id: str
    action: str
    text: str
    metadata: dict[str, Any]
    files: tuple[UploadedFile, ...] = ()
    session_generated: bool = False
    #: The field names n8n receives the message and the session under
    #: (C{--chat-input-key}, C{--chat-session-key}).
    input_key: str = DEFAULT_INPUT_KEY
    session_key: str = DEFAULT_SESSION_KEY
    #: A client's own C{Idempotency-Key}, sent to n8n instead of a generated one.
    idempotency_key: str | None = None
    #: Client headers passed on to n8n (C{--forward-header}), as (name, value).
    forward_headers: tuple[tuple[str, str], ...] = ()

    def upstream_json(self) -> dict[str, Any]:
        """
        The JSON body n8n receives (contract: C{action, sessionId, chatInput,
        metadata{requestId, source}}, the two keys as configured).
        """
        body: dict[str, Any] = {
            "action": self.action,
            self.session_key: self.session_id,
            self.input_key: self.text,
            "metadata": self.upstream_metadata(),
        }
        return body

    def upstream_fields(self) -> list[tuple[str, str]]:
        """
        The text fields of a multipart body to n8n, in order.
        """
        return [
            ("action", self.action),
            (self.session_key, self.session_id),
            (self.input_key, self.text),
            ("metadata", json_bytes(self.upstream_metadata()).decode("utf-8")),
        ]

    def with_client(
        self, idempotency_key: str | None, forward_headers: tuple[tuple[str, str], ...] = ()
    ) -> ChatMessage:
        """
        This message with the client's own C{Idempotency-Key} and the client
        headers to pass on (C{--forward-header}).
        """
        return replace(self, idempotency_key=idempotency_key, forward_headers=forward_headers)

    def upstream_metadata(self) -> dict[str, Any]:
        meta = dict(self.metadata)
        meta["requestId"] = self.request_id
        meta["source"] = "inkflow"
        return meta


def forwarded_headers(
    get: Callable[[bytes], Sequence[bytes] | None], names: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    """
    The client headers named by C{--forward-header}, as (name, value), in
    the order named; no other client header ever reaches n8n.

    @param get: returns a header's values (e.g. C{Headers.getRawHeaders}).
    """
    found: list[tuple[str, str]] = []
    for name in names:
        for value in get(name.encode("ascii")) or []:
            text = value.decode("latin-1")
            if not any(c in text for c in "\r\n\0"):
                found.append((name, text))
    return tuple(found)


#: Random bytes read from the OS at a time for request ids (256 ids).
_RANDOM_BATCH = 4096
_random = b""
_random_at = 0


def new_request_id() -> str:
    """
    A new request id: 32 hex digits from the OS's random source, like
    C{uuid4().hex}, unguessable (it is also the C{Idempotency-Key} n8n gets
    when the client sent none).  The bytes are read 4 KB at a time: one
    C{getrandom} call per 256 requests instead of one per request.
    """
    global _random, _random_at
    at = _random_at
    if at + 16 > len(_random):
        _random, at = os.urandom(_RANDOM_BATCH), 0
    _random_at = at + 16
    return _random[at : at + 16].hex()


def _forget_random() -> None:
    # A forked child must not hand out its parent's ids.
    global _random, _random_at
    _random, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def parse_json_body(raw: bytes) -> ChatBody:
    """
    Parse a JSON request body into a L{ChatBody}.

    @raise ApiError: 400 C{bad_request} for anything but a UTF-8 JSON object.
    """
    try:
        value = json_loads(raw)
    except ValueError as e:  # UnicodeDecodeError too
        raise ApiError("bad_request", f"the body is not valid UTF-8 JSON ({str(e)[:80]})") from None
    if not isinstance(value, dict):
        raise ApiError("bad_request", "the body must be a JSON object")
    return ChatBody(fields=value)


def _text_field(fields: dict[str, Any], *names: str) -> str | None:
    for name in names:
        if name in fields and fields[name] is not None:
            value = fields[name]
            if not isinstance(value, str):
                raise ApiError("bad_request", f"{name} must be a string")
            return value
    return None


def message_fields(input_key: str) -> tuple[str, ...]:
    """
    The fields read as the message, first found wins: the configured key,
    then the plain shape's C{message}.
    """
    return (input_key, "message") if input_key != "message" else ("message",)


def session_fields(session_key: str) -> tuple[str, ...]:
    """
    The fields read as the session id: the configured key, then C{sessionId}.
    """
    return (session_key, DEFAULT_SESSION_KEY) if session_key != DEFAULT_SESSION_KEY else (DEFAULT_SESSION_KEY,)


def parse_chat(
    body: ChatBody,
    *,
    request_id: str,
    max_chars: int,
    max_files: int,
    input_key: str = DEFAULT_INPUT_KEY,
    session_key: str = DEFAULT_SESSION_KEY,
) -> ChatMessage:
    """
    Validate a received body against the contract.

    Accepts the plain shape C{{"message", "sessionId"}} and the @n8n/chat
    widget's C{{"action", "sessionId", "chatInput", "metadata"}} (in JSON or as
    multipart fields, C{metadata} then being a JSON string).

    @param input_key: the widget's C{chatInputKey} (C{--chat-input-key}):
        the message is read from it, else from C{message}.
    @param session_key: the widget's C{chatSessionKey} (C{--chat-session-key}):
        the session id is read from it, else from C{sessionId}.
    @raise ApiError: C{bad_request} or C{too_many_files}.
    """
    fields = body.fields
    if len(body.files) > max_files:
        raise ApiError("too_many_files", f"at most {max_files} files")

    action = _text_field(fields, "action") or "sendMessage"
    if action not in ACTIONS:
        raise ApiError("bad_request", f"action must be one of {', '.join(ACTIONS)}")

    session = _text_field(fields, *session_fields(session_key))
    generated = False
    if session is None or session == "":
        if action == "loadPreviousSession":
            raise ApiError("bad_request", f"{session_key} is required to load a session")
        session = uuid.uuid4().hex
        generated = True
    elif not SESSION_ID.fullmatch(session):
        raise ApiError("bad_request", f"{session_key} must be 1-128 of A-Z a-z 0-9 _ -")

    text = _text_field(fields, *message_fields(input_key))
    if action == "sendMessage":
        if text is None or not text.strip():
            if not body.files:
                raise ApiError("bad_request", "message is missing")
            text = text or ""
        if len(text) > max_chars:
            raise ApiError("bad_request", f"message is longer than {max_chars} characters")
        if "\x00" in text:
            raise ApiError("bad_request", "message contains a NUL character")
    else:
        text = ""
        if body.files:
            raise ApiError("bad_request", "loadPreviousSession takes no files")

    metadata = fields.get("metadata")
    if metadata is None or metadata == "":
        metadata = {}
    elif isinstance(metadata, str):
        if len(metadata.encode("utf-8")) > MAX_METADATA_BYTES:
            raise ApiError("bad_request", "metadata is too large")
        try:
            metadata = json_loads(metadata)
        except ValueError:
            raise ApiError("bad_request", "metadata is not valid JSON") from None
    if not isinstance(metadata, dict):
        raise ApiError("bad_request", "metadata must be a JSON object")
    try:
        metadata_size = len(json_bytes(metadata))
    except ValueError:
        raise ApiError("bad_request", "metadata is not valid JSON") from None
    if metadata_size > MAX_METADATA_BYTES:
        raise ApiError("bad_request", "metadata is too large")

    message = ChatMessage(
        request_id=request_id,
        session_id=session,
        action=action,
        text=text,
        metadata=metadata,
        files=tuple(body.files),
        session_generated=generated,
        input_key=input_key,
        session_key=session_key,
    )
    try:
        # What n8n will receive must be writable: no lone surrogate anywhere.
        json_bytes(message.upstream_json())
    except ValueError:
        raise ApiError("bad_request", "the message is not valid Unicode text") from None
    return message

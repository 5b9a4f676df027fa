"""
n8n's streamed answers, the pure part: no reactor, no I/O.

n8n (Response Mode "Streaming") answers 200 with newline-delimited JSON, one
object per line::

    {"type": "begin" | "item" | "end" | "error", "content"?: ..., "metadata":
     {"nodeId", "nodeName", "itemIndex", "runIndex", "timestamp"}}

This module has what InkFlow does with such a body:

 - L{LineSplitter}: bytes in, complete lines out, at most one unfinished line
   kept, a maximum line length (split on C{b"\\n"}, so a UTF-8 character cut
   across two chunks is never split);
 - L{is_stream_line}: whether a line is one of n8n's stream objects (how
   InkFlow tells a streaming workflow from a JSON one);
 - L{Bridge}: a whole stream turned into the JSON client's C{{"output"}};
 - L{synthesize}: a JSON answer turned into begin / item / end lines for a
   streaming client;
 - L{error_line}, L{KEEPALIVE_LINE}: the lines InkFlow writes itself.

The client's side (what a client asks for, the response headers, the relay
and the registry of streams) is in L{inkflow.web.stream}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CAUSES",
    "ERROR_TEXT",
    "KEEPALIVE_LINE",
    "MAX_LINE_BYTES",
    "MAX_STREAM_BYTES",
    "STREAM_TYPES",
    "Bridge",
    "BridgeResult",
    "LineSplitter",
    "LineTooLong",
    "error_line",
    "first_line",
    "is_keepalive",
    "is_stream_line",
    "metadata",
    "parse_stream_line",
    "synthesize",
]

#: The line types of n8n's stream.
STREAM_TYPES = frozenset({"begin", "item", "end", "error"})

#: The longest line relayed (bytes, newline excluded); a longer one ends the
#: stream with an error line.  An n8n line is one token or one item: 1 MiB is
#: far above any of them, and bounds what InkFlow holds per stream.
MAX_LINE_BYTES = 1024 * 1024

#: The most bytes relayed in one streamed answer; then an error line.
MAX_STREAM_BYTES = 64 * 1024 * 1024

#: What InkFlow writes after a quiet spell, so that proxies keep the
#: connection (@n8n/chat ignores any type it does not know).
KEEPALIVE_LINE = b'{"type":"keepalive"}\n'

#: The Hebrew texts of InkFlow's error lines, by cause.
ERROR_TEXT = {
    "upstream_dropped": "החיבור לשירות נקטע באמצע התשובה. אפשר לנסות שוב.",
    "idle_timeout": "השירות הפסיק לענות באמצע התשובה. אפשר לנסות שוב.",
    "stream_timeout": "התשובה ארכה זמן רב מדי ונעצרה. אפשר לנסות שוב.",
    "too_large": "התשובה ארוכה מדי ונעצרה.",
    "drain": "השרת עובר הפעלה מחדש והתשובה נעצרה. אפשר לנסות שוב בעוד רגע.",
}

#: How a committed stream ended (the label of the metrics).
COMPLETE = "complete"
UPSTREAM_DROPPED = "upstream_dropped"
IDLE_TIMEOUT = "idle_timeout"
STREAM_TIMEOUT = "stream_timeout"
TOO_LARGE = "too_large"
CLIENT_LEFT = "client_left"
DRAIN = "drain"
CAUSES = (COMPLETE, UPSTREAM_DROPPED, IDLE_TIMEOUT, STREAM_TIMEOUT, TOO_LARGE, CLIENT_LEFT, DRAIN)

NODE_ID = "inkflow"
NODE_NAME = "InkFlow"


class LineTooLong(ValueError):
    """
    A line is longer than the splitter's limit.
    """


class LineSplitter:
    """
    Splits a byte stream into lines.

    Holds at most one unfinished line (at most C{max_line} bytes); the lines
    it returns are complete, without their C{b"\\n"} (a C{b"\\r"} before it is
    kept: lines are passed on unchanged).
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._pending = b""

    @property
    def pending(self) -> int:
        """
        How many bytes of an unfinished line are held.
        """
        return len(self._pending)

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data}; return the lines it completed.

        @raise LineTooLong: a line (complete or not) is over C{max_line}.
        """
        if b"\n" not in data:
            if len(self._pending) + len(data) > self.max_line:
                self._pending = b""
                raise LineTooLong(self.max_line)
            self._pending += data
            return []
        parts = (self._pending + data).split(b"\n") if self._pending else data.split(b"\n")
        self._pending = parts.pop()
        if len(self._pending) > self.max_line or any(len(p) > self.max_line for p in parts):
            self._pending = b""
            raise LineTooLong(self.max_line)
        return parts

    def finish(self) -> bytes | None:
        """
        The end of the stream: the unfinished line left, if any and not blank.
        """
        rest, self._pending = self._pending, b""
        return rest if rest.strip() else None


def parse_stream_line(line: bytes) -> dict[str, Any] | None:
    """
    The JSON object of one of n8n's stream lines, or C{None} when C{line} is
    not one (not JSON, not an object, or a C{type} outside L{STREAM_TYPES}).
    """
    stripped = line.strip()
    if not stripped.startswith(b"{") or b'"type"' not in stripped:
        return None  # (cheap: a JSON answer is not parsed twice)
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict) and value.get("type") in STREAM_TYPES:
        return value
    return None


def is_stream_line(line: bytes) -> bool:
    """
    Whether C{line} is one of n8n's stream objects (type begin, item, end or
    error).
    """
    return parse_stream_line(line) is not None


def is_keepalive(line: bytes) -> bool:
    """
    Whether C{line} is a keepalive (newer n8n sends C{{"type":"keepalive"}}
    every 30 s): it says nothing about what the answer is.
    """
    stripped = line.strip()
    if not stripped.startswith(b"{") or b"keepalive" not in stripped:
        return False
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and value.get("type") == "keepalive"


def first_line(body: bytes) -> bytes | None:
    """
    The first complete line of C{body} that is neither blank nor a keepalive,
    or its last line when no newline ends it; C{None} for a blank body.
    """
    start = 0
    size = len(body)
    while start <= size:
        end = body.find(b"\n", start)
        line = body[start:] if end < 0 else body[start:end]
        if line.strip() and not is_keepalive(line):
            return line
        if end < 0:
            return None
        start = end + 1
    return None


def metadata(now: float) -> dict[str, Any]:
    """
    The C{metadata} of a line InkFlow writes itself (n8n's shape; C{nodeId}
    C{"inkflow"}, C{timestamp} in milliseconds).
    """
    return {"nodeId": NODE_ID, "nodeName": NODE_NAME, "itemIndex": 0, "runIndex": 0, "timestamp": int(now * 1000)}


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def error_line(content: str, now: float) -> bytes:
    """
    The error line InkFlow writes when a committed stream fails (newline
    included).
    """
    return _line({"type": "error", "content": content, "metadata": metadata(now)})


def answer_text(answer: Any) -> str:
    """
    What @n8n/chat shows of a JSON answer: C{output ?? text ?? message}; else
    the JSON itself.
    """
    if isinstance(answer, dict):
        for key in ("output", "text", "message"):
            value = answer.get(key)
            if value is not None:
                return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if isinstance(answer, str):
        return answer
    return json.dumps(answer, ensure_ascii=False)


def synthesize(answer: Any, now: float) -> bytes:
    """
    A JSON answer as a stream: C{begin}, one C{item} with the text shown, and
    C{end} (newlines included), with InkFlow's own metadata.
    """
    meta = metadata(now)
    return (
        _line({"type": "begin", "metadata": meta})
        + _line({"type": "item", "content": answer_text(answer), "metadata": meta})
        + _line({"type": "end", "metadata": meta})
    )


@dataclass
class BridgeResult:
    """
    What a whole stream amounts to for a JSON client.

    @ivar output: the item contents joined (C{None} when no item came).
    @ivar errors: the contents of the error lines.
    @ivar lines: how many stream lines were read.
    """

    output: str | None
    errors: list[str]
    lines: int


@dataclass
class Bridge:
    """
    Reads a whole stream for a client that wants JSON.

    Item contents are joined per (nodeId, runIndex), the runs in first-seen
    order, separated by a blank line; lines that are not stream lines are
    ignored.
    """

    runs: dict[tuple[Any, Any], list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lines: int = 0

    def feed(self, line: bytes) -> None:
        value = parse_stream_line(line)
        if value is None:
            return
        self.lines += 1
        meta = value.get("metadata")
        key = (meta.get("nodeId"), meta.get("runIndex")) if isinstance(meta, dict) else (None, None)
        kind = value["type"]
        if kind == "item":
            content = value.get("content")
            if content is None:
                return
            text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            self.runs.setdefault(key, []).append(text)
        elif kind == "begin":
            self.runs.setdefault(key, [])
        elif kind == "error":
            content = value.get("content")
            self.errors.append(content if isinstance(content, str) else "")

    def feed_all(self, lines: Iterable[bytes]) -> Bridge:
        for line in lines:
            self.feed(line)
        return self

    def result(self) -> BridgeResult:
        texts = ["".join(parts) for parts in self.runs.values() if parts]
        return BridgeResult(output="\n\n".join(texts) if texts else None, errors=list(self.errors), lines=self.lines)


def bridge_body(body: bytes) -> BridgeResult | None:
    """
    A whole 2xx body read as a stream, or C{None} when its first line is not
    a stream line (a JSON or text answer).
    """
    line = first_line(body)
    if line is None or not is_stream_line(line):
        return None
    return Bridge().feed_all(body.split(b"\n")).result()


@dataclass(frozen=True)
class StreamStart:
    """
    n8n streams its answer: its first line is in, nothing has reached the
    client yet.  Relaying it (L{inkflow.web.stream.StreamRelay}) is the commit
    point: from then on no retry and no failover.

    @ivar body: n8n's live response body (a L{inkflow.n8n.relay.StreamBody}),
        paused, holding the lines read so far.
    @ivar attempts: how many attempts it took.
    @ivar url_index: which webhook URL answered.
    @ivar dropped: call when n8n itself drops the stream, to count it
        against that URL's circuit breaker (the attempt counted a success).
    """

    body: Any
    attempts: int
    url_index: int
    dropped: Callable[[str], None]

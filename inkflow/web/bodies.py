"""
Request bodies, read as they arrive.

A L{BodySink} is fed the body chunk by chunk while it streams in (from
C{Request.handleContentChunk}) and turned into a L{ChatBody} at the end.  Sinks
are pure (no reactor, no twisted.web): they raise L{ApiError} the moment a
limit is crossed so the request layer can answer at once.
"""

from __future__ import annotations

from typing import Protocol

from inkflow.chat import ChatBody, parse_json_body
from inkflow.errors import ApiError

__all__ = ["BodySink", "DiscardSink", "JsonSink"]


class BodySink(Protocol):
    """
    Receives one request body.
    """

    def write(self, data: bytes) -> None:
        """
        Take the next chunk.

        @raise ApiError: a limit was crossed or the body is malformed; the
            sink has already released what it held.
        """

    def close(self) -> ChatBody:
        """
        The body is complete: return what it carried (the caller then owns
        any spooled files and must call L{ChatBody.cleanup}).

        @raise ApiError: the body is malformed or incomplete; the sink has
            already released what it held.
        """

    @property
    def limit(self) -> int:
        """
        The most body bytes this sink takes (the body deadline is computed
        from it).
        """
        ...

    def discard(self) -> None:
        """
        The request was abandoned (client gone, request rejected, server
        stopping): release everything, remove temp files.  Idempotent.
        """


class _CountingSink:
    """
    Counts what is written against C{limit}: over it, everything is
    discarded and the write is refused (C{too_large}).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0

    @property
    def limit(self) -> int:
        return self._limit

    def _count(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self.discard()
            raise ApiError("too_large", self._too_large())

    def _too_large(self) -> str:
        raise NotImplementedError

    def discard(self) -> None:
        pass


class JsonSink(_CountingSink):
    """
    A JSON body, kept in memory up to C{limit} bytes.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._chunks: list[bytes] = []

    def _too_large(self) -> str:
        return f"a JSON body may have at most {self._limit} bytes"

    def write(self, data: bytes) -> None:
        self._count(data)
        self._chunks.append(data)

    def close(self) -> ChatBody:
        raw = b"".join(self._chunks)
        self._chunks = []
        return parse_json_body(raw)

    def discard(self) -> None:
        self._chunks = []


class DiscardSink(_CountingSink):
    """
    For routes that take no body: accept up to C{limit} bytes and drop them.
    """

    def __init__(self, limit: int = 64 * 1024) -> None:
        super().__init__(limit)

    def _too_large(self) -> str:
        return "this route takes no request body"

    def write(self, data: bytes) -> None:
        self._count(data)

    def close(self) -> ChatBody:
        return ChatBody()

"""
Request bodies sent to n8n: the small JSON body, and the whole
multipart/form-data body read from the uploaded files as it is sent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, BinaryIO, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from inkflow.chat import UploadedFile

__all__ = ["BytesProducer", "MultipartStream"]


@implementer(IBodyProducer)
class BytesProducer:
    """
    A small in-memory body written at once (the JSON message).
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        cast(Any, consumer).write(self.body)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


def _quote(value: str) -> bytes:
    """
    A multipart header parameter value: UTF-8 as browsers send it, quotes and
    backslashes escaped, line breaks dropped.
    """
    cleaned = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
    return b'"' + cleaned.encode("utf-8") + b'"'


class MultipartStream:
    """
    A read-only, seekable file over a whole multipart/form-data body: the
    framing in memory, each uploaded file read from disk as it is reached.
    Opens its files afresh (one stream per attempt) and closes them all in
    L{close}.
    """

    def __init__(self, boundary: bytes, fields: Sequence[tuple[str, str]], uploads: Sequence[UploadedFile]) -> None:
        self._handles: list[BinaryIO] = []
        self._segments: list[bytes | BinaryIO] = []
        self._sizes: list[int] = []
        try:
            for name, value in fields:
                self._add(
                    b"--"
                    + boundary
                    + b"\r\nContent-Disposition: form-data; name="
                    + _quote(name)
                    + b"\r\n\r\n"
                    + value.encode("utf-8")
                    + b"\r\n"
                )
            for upload in uploads:
                self._add(
                    b"--"
                    + boundary
                    + b'\r\nContent-Disposition: form-data; name="files"; filename='
                    + _quote(upload.filename)
                    + b"\r\nContent-Type: "
                    + upload.content_type.encode("ascii")
                    + b"\r\n\r\n"
                )
                handle = open(upload.path, "rb")  # noqa: SIM115 - closed in close()
                self._handles.append(handle)
                self._segments.append(handle)
                self._sizes.append(os.fstat(handle.fileno()).st_size)
                self._add(b"\r\n")
            self._add(b"--" + boundary + b"--\r\n")
        except BaseException:
            self.close()
            raise
        self._total = sum(self._sizes)
        self._pos = 0

    def _add(self, data: bytes) -> None:
        self._segments.append(data)
        self._sizes.append(len(data))

    def __enter__(self) -> MultipartStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, size: int = -1) -> bytes:
        """
        Up to C{size} bytes (all that is left when negative) from the current
        position; fewer only at the end of the body.
        """
        if size < 0 or size > self._total - self._pos:
            size = self._total - self._pos
        out: list[bytes] = []
        while size > 0:
            chunk = self._read_segment(size)
            out.append(chunk)
            size -= len(chunk)
        return b"".join(out)

    def _read_segment(self, size: int) -> bytes:
        offset = self._pos
        for segment, length in zip(self._segments, self._sizes, strict=True):
            if offset >= length:
                offset -= length
                continue
            want = min(size, length - offset)
            if isinstance(segment, bytes):
                chunk = segment[offset : offset + want]
            else:
                segment.seek(offset)
                chunk = segment.read(want)
                if len(chunk) != want:
                    raise OSError("an uploaded file changed size while it was being sent")
            self._pos += want
            return chunk
        raise OSError("read past the end of the multipart body")  # pragma: no cover - read() bounds size

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._total}[whence]
        self._pos = max(0, min(self._total, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []

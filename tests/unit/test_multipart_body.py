"""
Tests for L{inkflow.n8n.multipart.MultipartStream}: the multipart body sent to n8n,
produced by one C{FileBodyProducer} so back-pressure cannot stall it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from python_multipart.multipart import MultipartParser
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer

from inkflow.chat import UploadedFile
from inkflow.n8n.multipart import MultipartStream
from tests.unit.helpers import temp_path


class PausingConsumer:
    """
    A consumer like a transport whose buffer is always full: it pauses the
    producer on every write and resumes it a moment later.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: list[bytes] = []
        self.producer: Any = None
        self.pauses = 0

    def write(self, data: bytes) -> None:
        self.data.append(data)
        if self.producer is not None:
            self.pauses += 1
            self.producer.pauseProducing()
            self.clock.callLater(0.01, self.producer.resumeProducing)


def parse(body: bytes, boundary: bytes) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Fields and (filename, content type, sha256) of the files in a multipart body."""
    fields: dict[str, str] = {}
    files: list[tuple[str, str, str]] = []
    parts: list[dict[str, Any]] = []
    header = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": b""})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].lower()] = header["value"]
        header["field"] = header["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    parser.write(body)
    parser.finalize()
    for part in parts:
        disposition = part["headers"][b"content-disposition"].decode("utf-8")
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        if "filename=" in disposition:
            filename = disposition.split('filename="', 1)[1].rsplit('"', 1)[0]
            files.append(
                (filename, part["headers"][b"content-type"].decode(), hashlib.sha256(part["data"]).hexdigest())
            )
        else:
            fields[name] = part["data"].decode("utf-8")
    return fields, files


class MultipartStreamTests(TestCase):
    """
    The body is complete and exact, whatever the consumer's back-pressure.
    """

    def setUp(self) -> None:
        folder = temp_path(self)
        os.makedirs(folder)
        self.blobs = [os.urandom(300_000 + i) for i in range(3)]
        self.uploads = []
        for i, blob in enumerate(self.blobs):
            path = os.path.join(folder, f"inkflow-{i}.part")
            with open(path, "wb") as f:
                f.write(blob)
            self.uploads.append(UploadedFile(path, f'תמונה "{i}".png', "image/png", len(blob)))
        self.fields = [("action", "sendMessage"), ("chatInput", "שלום\r\nעולם")]

    def test_length_is_known_and_exact(self) -> None:
        """The stream's length (what Content-Length says) is the number of bytes it reads."""
        with MultipartStream(b"B0UNDARY", self.fields, self.uploads) as stream:
            end = stream.seek(0, os.SEEK_END)
            stream.seek(0)
            body = stream.read()
        self.assertEqual(len(body), end)
        self.assertTrue(body.endswith(b"--B0UNDARY--\r\n"))

    def test_body_completes_under_constant_back_pressure(self) -> None:
        """Produced through a consumer that pauses on every write, three files arrive whole, in order, named."""
        clock = Clock()
        cooperator = Cooperator(scheduler=lambda f: clock.callLater(0, f), started=True)
        consumer = PausingConsumer(clock)
        with MultipartStream(b"B0UNDARY", self.fields, self.uploads) as stream:
            producer = FileBodyProducer(stream, cooperator=cooperator, readSize=65536)
            consumer.producer = producer
            done: Deferred[None] = producer.startProducing(consumer)
            for _ in range(10_000):
                if done.called:
                    break
                clock.advance(0.01)
            self.successResultOf(done)
        self.assertGreater(consumer.pauses, 10)
        fields, files = parse(b"".join(consumer.data), b"B0UNDARY")
        self.assertEqual(fields, {"action": "sendMessage", "chatInput": "שלום\r\nעולם"})
        self.assertEqual(
            files,
            [(f'תמונה \\"{i}\\".png', "image/png", hashlib.sha256(b).hexdigest()) for i, b in enumerate(self.blobs)],
        )

    def test_close_closes_every_file(self) -> None:
        """Leaving the stream closes the files it opened."""
        with MultipartStream(b"B", self.fields, self.uploads) as stream:
            handles = list(stream._handles)
        self.assertTrue(all(h.closed for h in handles))

    def test_missing_file_closes_the_others(self) -> None:
        """A file gone before the attempt raises, and the ones already opened are closed."""
        missing = UploadedFile("/nonexistent/inkflow-x.part", "x.png", "image/png", 1)
        opened: list[Any] = []
        real_open = open

        def spy(*args: Any, **kwargs: Any) -> Any:
            handle = real_open(*args, **kwargs)
            opened.append(handle)
            return handle

        import builtins

        self.patch(builtins, "open", spy)
        self.assertRaises(FileNotFoundError, MultipartStream, b"B", self.fields, [self.uploads[0], missing])
        self.assertTrue(opened and all(h.closed for h in opened))

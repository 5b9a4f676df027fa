"""
Tests for L{inkflow.web.uploads}: streaming multipart bodies, file names, type
sniffing, and that no temp file outlives a failed or abandoned body.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import stat
import tempfile
import tracemalloc
import unicodedata
from collections.abc import Iterator, Sequence

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, TestCase

from inkflow.chat import ChatBody
from inkflow.errors import ApiError
from inkflow.settings import Settings
from inkflow.web.uploads import (
    MAX_FIELDS,
    MAX_FILENAME_BYTES,
    SNIFF_BYTES,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    MultipartSink,
    sanitize_filename,
    sniff_type,
)

BOUNDARY = b"----inkflowTestBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = b"multipart/form-data; boundary=" + BOUNDARY


def payload(magic: bytes, size: int, seed: int = 0) -> bytes:
    """
    C{size} bytes starting with C{magic}, the rest pseudo-random.
    """
    rest = random.Random(seed).randbytes(max(0, size - len(magic)))
    return (magic + rest)[:size]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG_MAGIC = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
GIF_MAGIC = b"GIF89a"
PDF_MAGIC = b"%PDF-1.7\n"
WEBP_MAGIC = b"RIFF\x00\x10\x00\x00WEBPVP8 "
EXE_MAGIC = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"


def field(name: str, value: bytes | str) -> bytes:
    """
    One text part.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    return b'Content-Disposition: form-data; name="' + name.encode("utf-8") + b'"\r\n\r\n' + value


def file_part(
    content: bytes,
    filename: bytes | str = "photo.png",
    name: str = "files",
    content_type: bytes = b"image/png",
    extra: bytes = b"",
) -> bytes:
    """
    One file part, the file name sent as raw UTF-8 like browsers do.
    """
    if isinstance(filename, str):
        filename = filename.encode("utf-8")
    return (
        b'Content-Disposition: form-data; name="'
        + name.encode("utf-8")
        + b'"; filename="'
        + filename
        + b'"\r\nContent-Type: '
        + content_type
        + b"\r\n"
        + extra
        + b"\r\n"
        + content
    )


def body(*parts: bytes, boundary: bytes = BOUNDARY) -> bytes:
    """
    A complete multipart body made of C{parts}.
    """
    out = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return out + b"--" + boundary + b"--\r\n"


def chunkings(data: bytes, seed: int = 1) -> Iterator[tuple[str, list[bytes]]]:
    """
    C{data} cut in several ways: whole, one byte at a time (when small),
    fixed odd sizes and random sizes.
    """
    yield "whole", [data]
    if len(data) <= 64 * 1024:
        yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for size in (7, 1000, 65536):
        yield f"fixed-{size}", [data[i : i + size] for i in range(0, len(data), size)]
    rng = random.Random(seed)
    for round_ in range(3):
        chunks, i = [], 0
        while i < len(data):
            step = rng.choice([1, 2, 3, rng.randint(1, 100), rng.randint(1, 20000)])
            chunks.append(data[i : i + step])
            i += step
        yield f"random-{round_}", chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: str) -> str:
    with open(path, "rb") as f:
        return sha(f.read())


class SinkTestCase(TestCase):
    """
    Helpers: a fresh upload folder and settings per test (and per
    hypothesis example).
    """

    def tempdir(self) -> str:
        """
        A new absolute temp folder, removed after the test.  (Not
        C{self.mktemp()}: under pytest that is relative to the current
        folder, so it would litter the checkout.)
        """
        path = tempfile.mkdtemp(prefix="inkflow-test-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def make_settings(self, **overrides: object) -> Settings:
        self.upload_dir = os.path.join(self.tempdir(), "uploads")
        return Settings.defaults(upload_dir=self.upload_dir, **overrides)

    def sink(self, settings: Settings | None = None, content_type: bytes = CONTENT_TYPE) -> MultipartSink:
        return MultipartSink(settings or self.make_settings(), content_type)

    def leftovers(self) -> list[str]:
        if not os.path.isdir(self.upload_dir):
            return []
        return sorted(os.listdir(self.upload_dir))

    def feed(self, sink: MultipartSink, chunks: Sequence[bytes]) -> ChatBody:
        for chunk in chunks:
            sink.write(chunk)
        return sink.close()

    def feed_error(self, sink: MultipartSink, chunks: Sequence[bytes]) -> ApiError:
        """
        Feed C{chunks} and close, expecting an L{ApiError}; return it.
        """
        try:
            for chunk in chunks:
                sink.write(chunk)
            sink.close()
        except ApiError as e:
            return e
        raise AssertionError("no ApiError was raised")


class SanitizeFilenameTests(TestCase):
    """
    L{sanitize_filename}.
    """

    def test_path_parts_stripped(self) -> None:
        """
        Only the last path component survives, for / and \\ separators.
        """
        self.assertEqual(sanitize_filename("../../etc/passwd"), "passwd")
        self.assertEqual(sanitize_filename("C:\\Users\\me\\report.pdf"), "report.pdf")
        self.assertEqual(sanitize_filename("a/b\\c/d.txt"), "d.txt")

    def test_hebrew_kept(self) -> None:
        """
        Hebrew letters and spaces in a name are kept as they are.
        """
        self.assertEqual(sanitize_filename("דוח שנתי 2024.pdf"), "דוח שנתי 2024.pdf")

    def test_nfc(self) -> None:
        """
        A decomposed name is NFC-normalised.
        """
        decomposed = unicodedata.normalize("NFD", "café.txt")
        self.assertNotEqual(decomposed, "café.txt")
        self.assertEqual(sanitize_filename(decomposed), "café.txt")

    def test_controls_and_bidi_removed(self) -> None:
        """
        Control characters, newlines and bidi overrides (which can disguise
        an extension) are removed.
        """
        self.assertEqual(sanitize_filename("invoice\u202egnp.exe"), "invoicegnp.exe")
        self.assertEqual(sanitize_filename("a\r\nContent-Type: x.txt"), "aContent-Type_ x.txt")
        self.assertEqual(sanitize_filename("\u2066x\u2069\x00y\x7f.txt"), "xy.txt")

    def test_reserved_characters_replaced(self) -> None:
        """
        Characters reserved on common file systems or in headers become _.
        """
        self.assertEqual(sanitize_filename('a<b>c:"d|e?f*.txt'), "a_b_c__d_e_f_.txt")

    def test_leading_dots_stripped(self) -> None:
        """
        Leading dots (hidden files, ..) and trailing dots and spaces are removed.
        """
        self.assertEqual(sanitize_filename(".htaccess"), "htaccess")
        self.assertEqual(sanitize_filename("...name.txt. . "), "name.txt")

    def test_device_names(self) -> None:
        """
        Windows device names are prefixed so they stay ordinary files.
        """
        self.assertEqual(sanitize_filename("con.txt"), "_con.txt")
        self.assertEqual(sanitize_filename("LPT1"), "_LPT1")

    def test_empty_becomes_file(self) -> None:
        """
        A name with nothing left becomes "file".
        """
        for name in ("", "/", "..", "dir/", "\u202e\x00", "  . "):
            self.assertEqual(sanitize_filename(name), "file", name)

    def test_long_name_capped_keeping_extension(self) -> None:
        """
        A long name is cut to at most MAX_FILENAME_BYTES of UTF-8, on a
        character boundary, keeping its extension.
        """
        result = sanitize_filename("ש" * 200 + ".pdf")
        self.assertLessEqual(len(result.encode("utf-8")), MAX_FILENAME_BYTES)
        self.assertTrue(result.endswith(".pdf"))
        self.assertTrue(result.startswith("ששש"))
        no_ext = sanitize_filename("x" * 400)
        self.assertEqual(no_ext, "x" * MAX_FILENAME_BYTES)

    @given(st.text())
    @hsettings(max_examples=300, deadline=None, database=None)
    def test_property_safe(self, name: str) -> None:
        """
        For any name: non-empty, no separators, no controls, within the cap,
        stable when sanitised again.
        """
        result = sanitize_filename(name)
        self.assertTrue(result)
        self.assertLessEqual(len(result.encode("utf-8")), MAX_FILENAME_BYTES)
        for bad in '/\\\r\n\x00"':
            self.assertNotIn(bad, result)
        self.assertFalse(result.startswith("."))
        self.assertFalse(any(unicodedata.category(c) in ("Cc", "Cs") for c in result))
        self.assertEqual(sanitize_filename(result), result)


class SniffTypeTests(TestCase):
    """
    L{sniff_type}: the type from the bytes.
    """

    def test_images_and_pdf(self) -> None:
        """
        The allowed binary types are recognised by their magic bytes.
        """
        self.assertEqual(sniff_type(payload(PNG_MAGIC, 500)), "image/png")
        self.assertEqual(sniff_type(payload(JPEG_MAGIC, 500)), "image/jpeg")
        self.assertEqual(sniff_type(payload(GIF_MAGIC, 500)), "image/gif")
        self.assertEqual(sniff_type(payload(WEBP_MAGIC, 500)), "image/webp")
        self.assertEqual(sniff_type(payload(PDF_MAGIC, 500)), "application/pdf")

    def test_apng_is_png(self) -> None:
        """
        An animated PNG counts as image/png.
        """
        apng = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x08acTL" + b"\x00" * 12
        self.assertEqual(sniff_type(apng), "image/png")

    def test_executable(self) -> None:
        """
        A Windows executable is recognised as one.
        """
        self.assertEqual(sniff_type(payload(EXE_MAGIC, 500)), "application/x-msdownload")

    def test_text(self) -> None:
        """
        UTF-8 text (Hebrew included, with or without a BOM) and UTF-16 text
        with a BOM are text/plain.
        """
        self.assertEqual(sniff_type("שלום עולם\nhello\ttab\r\n".encode()), "text/plain")
        self.assertEqual(sniff_type(b"\xef\xbb\xbfwith bom"), "text/plain")
        self.assertEqual(sniff_type("\ufeffשלום".encode("utf-16-le")), "text/plain")
        self.assertEqual(sniff_type("\ufeffשלום".encode("utf-16-be")), "text/plain")

    def test_not_text(self) -> None:
        """
        NUL bytes, other binary controls, invalid UTF-8, UTF-16 without a BOM
        and nothing at all are not text.
        """
        self.assertIsNone(sniff_type(b"abc\x00def"))
        self.assertIsNone(sniff_type(b"abc\x01def"))
        self.assertIsNone(sniff_type(b"abc\xff\xfedef"))
        self.assertIsNone(sniff_type("שלום".encode("utf-16-le")))
        self.assertIsNone(sniff_type("\ufeffa\x00b".encode("utf-16-le")))
        self.assertIsNone(sniff_type(b""))

    def test_text_beats_short_signatures(self) -> None:
        """
        Text that merely starts like a bitmap, an MP3 or an executable is
        text; a PDF signature still makes a PDF.
        """
        for text in (b"BMW annual report\n", b"ID3 tag notes", b"MZ is a postcode area"):
            self.assertEqual(sniff_type(text), "text/plain", text)
        self.assertEqual(sniff_type(b"%PDF-1.4 all printable"), "application/pdf")

    def test_cut_character(self) -> None:
        """
        A multi-byte character cut at the end of a sample is fine, but not at
        the end of a complete file.
        """
        cut = "שלום".encode()[:-1]
        self.assertEqual(sniff_type(cut), "text/plain")
        self.assertIsNone(sniff_type(cut, complete=True))


class ConstructionTests(SinkTestCase):
    """
    L{MultipartSink}'s Content-Type checks.
    """

    def test_missing_boundary(self) -> None:
        """
        multipart/form-data without a boundary is a bad_request.
        """
        for value in (b"multipart/form-data", b"multipart/form-data; charset=utf-8", b"multipart/form-data; boundary="):
            e = self.assertRaises(ApiError, self.sink, content_type=value)
            self.assertEqual(e.code, "bad_request")

    def test_invalid_boundary(self) -> None:
        """
        A boundary with forbidden characters or over the length cap is a
        bad_request.
        """
        for value in (b"a\rb", b'"a;b"', b"x" * 300, b'"ends-in-space "', b'"unterminated', b"a\x00b"):
            e = self.assertRaises(ApiError, self.sink, content_type=b"multipart/form-data; boundary=" + value)
            self.assertEqual(e.code, "bad_request", value)

    def test_not_multipart(self) -> None:
        """
        Another media type is unsupported_type.
        """
        e = self.assertRaises(ApiError, self.sink, content_type=b"application/json")
        self.assertEqual(e.code, "unsupported_type")

    def test_quoted_boundary_and_case(self) -> None:
        """
        A quoted boundary and an upper-case media type are accepted.
        """
        sink = self.sink(content_type=b'Multipart/Form-Data; charset=utf-8; boundary="' + BOUNDARY + b'"')
        result = self.feed(sink, [body(field("message", "hi"))])
        self.assertEqual(result.fields, {"message": "hi"})

    def test_nothing_created(self) -> None:
        """
        Constructing a sink creates no folder and no file.
        """
        self.sink()
        self.assertFalse(os.path.exists(self.upload_dir))


class RoundTripTests(SinkTestCase):
    """
    Fields and files arrive intact whatever the chunking.
    """

    def test_fields_and_files_intact(self) -> None:
        """
        Every chunking gives the same fields and byte-identical files, with
        their detected types, sizes and sanitised names.
        """
        settings = self.make_settings(max_file_size=200_000)
        files = [
            ("תמונה.png", payload(PNG_MAGIC, 20_000, 1), "image/png"),
            ("scan.pdf", payload(PDF_MAGIC, 9_000, 2), "application/pdf"),
            ("notes.txt", ("שורה\r\n" * 3000).encode(), "text/plain"),
            ("anim.gif", payload(GIF_MAGIC, 100, 3), "image/gif"),
        ]
        data = body(
            field("message", "שלום, מה שלומך?"),
            field("sessionId", "abc_DEF-123"),
            *(file_part(content, name) for name, content, _ in files),
            field("metadata", '{"k": "ו"}'),
        )
        for label, chunks in chunkings(data):
            result = self.feed(MultipartSink(settings, CONTENT_TYPE), chunks)
            self.assertEqual(
                result.fields,
                {"message": "שלום, מה שלומך?", "sessionId": "abc_DEF-123", "metadata": '{"k": "ו"}'},
                label,
            )
            self.assertEqual(len(result.files), len(files), label)
            for uploaded, (name, content, ctype) in zip(result.files, files, strict=True):
                self.assertEqual(uploaded.filename, name, label)
                self.assertEqual(uploaded.content_type, ctype, label)
                self.assertEqual(uploaded.size, len(content), label)
                self.assertEqual(file_sha(uploaded.path), sha(content), label)
            result.cleanup()
            self.assertEqual(self.leftovers(), [], label)

    def test_each_file_carries_the_sha256_of_its_bytes(self) -> None:
        """Every chunking gives each file the sha256 of its bytes, computed while it was spooled."""
        settings = self.make_settings(max_file_size=200_000)
        contents = [payload(PNG_MAGIC, 70_000, 4), ("שורה\r\n" * 50).encode()]
        data = body(field("message", "x"), *(file_part(c, f"f{i}") for i, c in enumerate(contents)))
        for label, chunks in chunkings(data):
            result = self.feed(MultipartSink(settings, CONTENT_TYPE), chunks)
            self.assertEqual([f.sha256 for f in result.files], [sha(c) for c in contents], label)
            result.cleanup()

    def test_files_are_not_hashed_unless_asked(self) -> None:
        """Without hash_files (a request with no Idempotency-Key) no digest is computed: sha256 is empty."""
        data = body(field("message", "x"), file_part(payload(PNG_MAGIC, 70_000, 4), "f0"))
        result = self.feed(MultipartSink(self.make_settings(), CONTENT_TYPE, hash_files=False), [data])
        self.assertEqual([f.sha256 for f in result.files], [""])
        result.cleanup()

    def test_widget_fields(self) -> None:
        """
        The @n8n/chat widget's fields (chatInput, action) come through, and
        unknown fields are kept too.
        """
        result = self.feed(
            self.sink(),
            [
                body(
                    field("action", "sendMessage"), field("chatInput", "hello"), field("extra", "x"), field("empty", "")
                )
            ],
        )
        self.assertEqual(result.fields, {"action": "sendMessage", "chatInput": "hello", "extra": "x", "empty": ""})
        self.assertEqual(result.files, [])

    def test_boundary_like_content(self) -> None:
        """
        File bytes that look almost like the boundary (CR LF -- and a prefix
        of it) are kept as data.
        """
        tricky = b"hello\r\n--" + BOUNDARY[:-1] + b"X\r\n--\r\n" + b"\r\n--" + BOUNDARY[:10] + b" tail\n"
        data = body(file_part(tricky, "t.txt", content_type=b"text/plain"))
        for label, chunks in chunkings(data):
            result = self.feed(MultipartSink(self.make_settings(), CONTENT_TYPE), chunks)
            self.assertEqual(file_sha(result.files[0].path), sha(tricky), label)
            result.cleanup()

    def test_hebrew_filename_raw_utf8(self) -> None:
        """
        A Hebrew name sent as raw UTF-8 in filename= survives.
        """
        result = self.feed(self.sink(), [body(file_part(payload(PNG_MAGIC, 300), "צילום מסך.png"))])
        self.assertEqual(result.files[0].filename, "צילום מסך.png")
        result.cleanup()

    def test_filename_star(self) -> None:
        """
        An RFC 5987 filename* is decoded and preferred over filename=.
        """
        part = (
            b'Content-Disposition: form-data; name="files"; filename="fallback.png"; filename*=UTF-8\'\''
            b"%D7%A7%D7%95%D7%91%D7%A5.png\r\n\r\n" + payload(PNG_MAGIC, 300)
        )
        result = self.feed(self.sink(), [body(part)])
        self.assertEqual(result.files[0].filename, "קובץ.png")
        result.cleanup()

    def test_bad_filename_star_falls_back(self) -> None:
        """
        An undecodable filename* falls back to filename=.
        """
        part = (
            b'Content-Disposition: form-data; name="files"; filename="fallback.png"; filename*=bogus\r\n\r\n'
            + payload(PNG_MAGIC, 300)
        )
        result = self.feed(self.sink(), [body(part)])
        self.assertEqual(result.files[0].filename, "fallback.png")
        result.cleanup()

    def test_path_parts_stripped(self) -> None:
        """
        Path parts in a sent file name (either separator) are dropped.
        """
        data = body(
            file_part(payload(PNG_MAGIC, 300), "../../etc/x.png"),
            file_part(payload(PNG_MAGIC, 300), b"C:\\Users\\me\\y.png"),
        )
        result = self.feed(self.sink(), [data])
        self.assertEqual([f.filename for f in result.files], ["x.png", "y.png"])
        result.cleanup()

    def test_empty_file_input_ignored(self) -> None:
        """
        An empty part with an empty file name (no file picked) is ignored and
        not counted against max_files.
        """
        settings = self.make_settings(max_files=1)
        data = body(
            field("message", "hi"),
            file_part(b"", "", content_type=b"application/octet-stream"),
            file_part(payload(PNG_MAGIC, 300), "a.png"),
            file_part(b"", "", content_type=b"application/octet-stream"),
        )
        result = self.feed(self.sink(settings), [data])
        self.assertEqual([f.filename for f in result.files], ["a.png"])
        result.cleanup()

    def test_any_field_name_with_filename_is_a_file(self) -> None:
        """
        A part with a file name is a file whatever its field name; a "files"
        part without one is a file named "file".
        """
        data = body(
            file_part(payload(PNG_MAGIC, 300), "a.png", name="attachment"),
            field("files", "plain words"),
        )
        result = self.feed(self.sink(), [data])
        self.assertEqual(
            [(f.filename, f.content_type) for f in result.files], [("a.png", "image/png"), ("file", "text/plain")]
        )
        self.assertEqual(result.fields, {})
        result.cleanup()

    def test_declared_type_ignored_for_text(self) -> None:
        """
        A text file sent as application/octet-stream with a .bin name is
        text/plain, and its name is left alone.
        """
        data = body(file_part("שלום\n".encode(), "data.bin", content_type=b"application/octet-stream"))
        result = self.feed(self.sink(), [data])
        self.assertEqual(result.files[0].content_type, "text/plain")
        self.assertEqual(result.files[0].filename, "data.bin")
        result.cleanup()

    def test_temp_files_named_and_private(self) -> None:
        """
        Temp files live in the upload folder (created with mode 0700) with
        the recognisable prefix and suffix.
        """
        result = self.feed(self.sink(), [body(file_part(payload(PNG_MAGIC, 300)))])
        path = result.files[0].path
        self.assertEqual(os.path.dirname(path), self.upload_dir)
        self.assertTrue(os.path.basename(path).startswith(TEMP_PREFIX))
        self.assertTrue(path.endswith(TEMP_SUFFIX))
        self.assertEqual(stat.S_IMODE(os.stat(self.upload_dir).st_mode) & 0o077, 0)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode) & 0o077, 0)
        result.cleanup()

    def test_preamble_epilogue_and_transfer_encoding(self) -> None:
        """
        Leading CRLFs, an epilogue after the final boundary and an identity
        Content-Transfer-Encoding are accepted.
        """
        data = (
            b"\r\n"
            + body(
                file_part(
                    b"text here", "t.txt", content_type=b"text/plain", extra=b"Content-Transfer-Encoding: binary\r\n"
                )
            )
            + b"epilogue, ignored"
        )
        result = self.feed(self.sink(), [data])
        self.assertEqual(result.files[0].size, 9)
        result.cleanup()

    def test_close_twice(self) -> None:
        """
        A second close returns the same body.
        """
        sink = self.sink()
        first = self.feed(sink, [body(field("message", "hi"))])
        self.assertIs(sink.close(), first)

    def test_memory_stays_flat(self) -> None:
        """
        A 9 MB file is spooled without holding more than a small buffer.
        """
        settings = self.make_settings()
        sink = self.sink(settings)
        content_rng = random.Random(5)
        tracemalloc.start()
        try:
            sink.write(b"--" + BOUNDARY + b"\r\n" + file_part(PNG_MAGIC))
            chunk = content_rng.randbytes(64 * 1024)
            for _ in range(9 * 16):
                sink.write(chunk)
            sink.write(b"\r\n--" + BOUNDARY + b"--\r\n")
            result = sink.close()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(result.files[0].size, len(PNG_MAGIC) + 9 * 1024 * 1024)
        self.assertLess(peak, 1024 * 1024)
        result.cleanup()


class LimitTests(SinkTestCase):
    """
    Limits are enforced while the body streams in, and every temp file is
    removed when one is crossed.
    """

    def test_too_many_files(self) -> None:
        """
        The (max_files+1)-th file part is refused as soon as its headers are
        in, before any of its bytes, and the earlier files are removed.
        """
        settings = self.make_settings(max_files=2)
        sink = self.sink(settings)
        prefix = b"".join(
            b"--" + BOUNDARY + b"\r\n" + file_part(payload(PNG_MAGIC, 500, i)) + b"\r\n" for i in range(2)
        )
        sink.write(prefix)
        self.assertEqual(len(self.leftovers()), 2)
        third = b"--" + BOUNDARY + b"\r\n" + file_part(b"")
        e = self.assertRaises(ApiError, sink.write, third + b"\x89")
        self.assertEqual(e.code, "too_many_files")
        self.assertEqual(e.status, 400)
        self.assertEqual(self.leftovers(), [])

    def test_too_many_files_any_chunking(self) -> None:
        """
        Too many files is too_many_files whatever the chunking, with no temp
        file left.
        """
        settings = self.make_settings(max_files=3)
        data = body(*(file_part(payload(PNG_MAGIC, 2000, i)) for i in range(4)))
        for label, chunks in chunkings(data):
            e = self.feed_error(MultipartSink(settings, CONTENT_TYPE), chunks)
            self.assertEqual(e.code, "too_many_files", label)
            self.assertEqual(self.leftovers(), [], label)

    def test_no_files_allowed(self) -> None:
        """
        With max_files=0 any file is too many, but an empty file input is fine.
        """
        settings = self.make_settings(max_files=0)
        e = self.feed_error(self.sink(settings), [body(file_part(payload(PNG_MAGIC, 300)))])
        self.assertEqual(e.code, "too_many_files")
        result = self.feed(self.sink(settings), [body(field("message", "x"), file_part(b"", ""))])
        self.assertEqual(result.files, [])

    def test_oversize_file_at_the_crossing_byte(self) -> None:
        """
        A file is refused with too_large on the byte that crosses the limit,
        and its temp file is removed at once.
        """
        settings = self.make_settings(max_file_size=1000)
        sink = self.sink(settings)
        sink.write(b"--" + BOUNDARY + b"\r\n" + file_part(b"a" * 1000, "big.txt", content_type=b"text/plain"))
        self.assertEqual(len(self.leftovers()), 1)
        e = self.assertRaises(ApiError, sink.write, b"a")
        self.assertEqual(e.code, "too_large")
        self.assertEqual(e.status, 413)
        self.assertEqual(self.leftovers(), [])

    def test_file_at_the_limit(self) -> None:
        """
        A file of exactly max_file_size bytes is accepted.
        """
        settings = self.make_settings(max_file_size=1000)
        result = self.feed(self.sink(settings), [body(file_part(b"a" * 1000, "ok.txt"))])
        self.assertEqual(result.files[0].size, 1000)
        result.cleanup()

    def test_oversize_any_chunking(self) -> None:
        """
        An oversize file after a good one is too_large whatever the chunking,
        and neither temp file is left.
        """
        settings = self.make_settings(max_file_size=5000)
        data = body(file_part(payload(PNG_MAGIC, 4000, 1)), file_part(payload(PNG_MAGIC, 5001, 2)))
        for label, chunks in chunkings(data):
            e = self.feed_error(MultipartSink(settings, CONTENT_TYPE), chunks)
            self.assertEqual(e.code, "too_large", label)
            self.assertEqual(self.leftovers(), [], label)

    def test_body_over_max_body_size(self) -> None:
        """
        A body over settings.max_body_size is too_large, even made of
        preamble bytes that hold no file.
        """
        settings = self.make_settings(max_files=0, max_message_chars=10)
        sink = self.sink(settings)
        e = self.assertRaises(ApiError, sink.write, b"\r" * (settings.max_body_size + 1))
        self.assertEqual(e.code, "too_large")

    def test_exe_renamed_png(self) -> None:
        """
        An executable named .png and declared image/png is unsupported_type
        (checked on the bytes), and its temp file is removed.
        """
        data = body(
            field("message", "look"), file_part(payload(EXE_MAGIC, 3000), "cute-cat.png", content_type=b"image/png")
        )
        for label, chunks in chunkings(data):
            e = self.feed_error(MultipartSink(self.make_settings(), CONTENT_TYPE), chunks)
            self.assertEqual(e.code, "unsupported_type", label)
            self.assertEqual(e.status, 415, label)
            self.assertEqual(self.leftovers(), [], label)

    def test_type_decided_early(self) -> None:
        """
        A big file of a refused type is stopped once SNIFF_BYTES are in, not
        at its end.
        """
        sink = self.sink()
        sink.write(b"--" + BOUNDARY + b"\r\n" + file_part(b"", "x.png"))
        sink.write(payload(EXE_MAGIC, SNIFF_BYTES - 1))
        e = self.assertRaises(ApiError, sink.write, b"\x00" * 100)
        self.assertEqual(e.code, "unsupported_type")
        self.assertEqual(self.leftovers(), [])

    def test_type_not_in_allowed_types(self) -> None:
        """
        A recognised type that is not in allowed_types is refused.
        """
        settings = self.make_settings(allowed_types=("image/png",))
        e = self.feed_error(self.sink(settings), [body(file_part(payload(PDF_MAGIC, 500), "a.pdf"))])
        self.assertEqual(e.code, "unsupported_type")
        e = self.feed_error(self.sink(settings), [body(file_part(b"just text", "a.txt"))])
        self.assertEqual(e.code, "unsupported_type")

    def test_unknown_binary(self) -> None:
        """
        Bytes of no known type that are not text are unsupported_type.
        """
        e = self.feed_error(self.sink(), [body(file_part(b"\x00\x01\x02\x03" * 50, "blob.txt"))])
        self.assertEqual(e.code, "unsupported_type")
        self.assertEqual(self.leftovers(), [])

    def test_empty_named_file(self) -> None:
        """
        A named file with no bytes is a bad_request, and nothing is left.
        """
        e = self.feed_error(self.sink(), [body(file_part(b"", "empty.txt"))])
        self.assertEqual(e.code, "bad_request")
        self.assertEqual(self.leftovers(), [])

    def test_message_too_long(self) -> None:
        """
        A message over max_message_chars*4 bytes is refused while streaming.
        """
        settings = self.make_settings(max_message_chars=10)
        e = self.feed_error(self.sink(settings), [body(field("message", "x" * 41))])
        self.assertEqual(e.code, "bad_request")
        result = self.feed(self.sink(settings), [body(field("message", "ש" * 20))])
        self.assertEqual(result.fields["message"], "ש" * 20)

    def test_other_field_caps(self) -> None:
        """
        sessionId and unknown fields are capped at a few KB, metadata at 8 KB.
        """
        for name, size in (("sessionId", 5000), ("other", 5000), ("metadata", 9000)):
            e = self.feed_error(self.sink(), [body(field(name, "x" * size))])
            self.assertEqual(e.code, "bad_request", name)

    def test_too_many_fields(self) -> None:
        """
        More than MAX_FIELDS text fields is a bad_request.
        """
        data = body(*(field(f"f{i}", "v") for i in range(MAX_FIELDS + 1)))
        e = self.feed_error(self.sink(), [data])
        self.assertEqual(e.code, "bad_request")
        result = self.feed(self.sink(), [body(*(field(f"f{i}", "v") for i in range(MAX_FIELDS)))])
        self.assertEqual(len(result.fields), MAX_FIELDS)

    def test_too_many_parts(self) -> None:
        """
        Endless ignored empty file inputs are capped too.
        """
        data = body(*(file_part(b"", "") for _ in range(MAX_FIELDS + 10)))
        e = self.feed_error(self.sink(), [data])
        self.assertEqual(e.code, "bad_request")

    def test_repeated_known_field(self) -> None:
        """
        A repeated message (or sessionId) is ambiguous: bad_request; a
        repeated unknown field keeps its last value.
        """
        e = self.feed_error(self.sink(), [body(field("message", "a"), field("message", "b"))])
        self.assertEqual(e.code, "bad_request")
        result = self.feed(self.sink(), [body(field("tag", "a"), field("tag", "b"))])
        self.assertEqual(result.fields, {"tag": "b"})

    def test_bad_utf8_field(self) -> None:
        """
        A text field that is not UTF-8 is a bad_request.
        """
        e = self.feed_error(self.sink(), [body(field("message", b"\xff\xfe bad"))])
        self.assertEqual(e.code, "bad_request")

    def test_part_headers_capped(self) -> None:
        """
        Oversized part headers (one long line, or many lines) are a bad_request.
        """
        long_line = b'Content-Disposition: form-data; name="message"; x="' + b"y" * 5000 + b'"\r\n\r\nhi'
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(9))
        many_lines = many + b'Content-Disposition: form-data; name="message"\r\n\r\nhi'
        for data in (body(long_line), body(many_lines)):
            for label, chunks in chunkings(data):
                e = self.feed_error(self.sink(), chunks)
                self.assertEqual(e.code, "bad_request", label)


class MalformedTests(SinkTestCase):
    """
    Malformed, truncated and boundary-less bodies are bad_request and leave
    no temp file.
    """

    def assertBadRequest(self, data: bytes, settings: Settings | None = None) -> None:
        for label, chunks in chunkings(data):
            e = self.feed_error(MultipartSink(settings or self.make_settings(), CONTENT_TYPE), chunks)
            self.assertEqual(e.code, "bad_request", label)
            self.assertEqual(self.leftovers(), [], label)

    def test_garbage(self) -> None:
        """
        Bytes that are not multipart at all.
        """
        self.assertBadRequest(b"this is not multipart at all")

    def test_empty_body(self) -> None:
        """
        An empty body.
        """
        e = self.feed_error(self.sink(), [])
        self.assertEqual(e.code, "bad_request")

    def test_other_boundary(self) -> None:
        """
        A body framed with a boundary other than the declared one.
        """
        self.assertBadRequest(body(field("message", "hi"), boundary=b"somethingElse"))

    def test_truncated_in_file(self) -> None:
        """
        A body cut inside a file: close() is a bad_request and the partial
        file is removed.
        """
        data = body(field("message", "x"), file_part(payload(PNG_MAGIC, 20_000)))
        for cut in (len(data) // 2, len(data) - 10, len(data) - 3):
            self.assertBadRequest(data[:cut])

    def test_truncated_after_files(self) -> None:
        """
        A body missing only its final boundary: the complete files are
        removed as well.
        """
        data = body(file_part(payload(PNG_MAGIC, 500, 1)), file_part(payload(PNG_MAGIC, 500, 2)))
        self.assertBadRequest(data[: -len(b"--" + BOUNDARY + b"--\r\n")])

    def test_no_content_disposition(self) -> None:
        """
        A part without Content-Disposition, or without a name.
        """
        self.assertBadRequest(body(b"Content-Type: text/plain\r\n\r\nhi"))
        self.assertBadRequest(body(b"Content-Disposition: form-data\r\n\r\nhi"))
        self.assertBadRequest(body(b'Content-Disposition: attachment; name="x"\r\n\r\nhi'))

    def test_malformed_disposition(self) -> None:
        """
        An unterminated quote or a repeated parameter in Content-Disposition.
        """
        self.assertBadRequest(body(b'Content-Disposition: form-data; name="message\r\n\r\nhi'))
        self.assertBadRequest(body(b'Content-Disposition: form-data; name="a"; name="b"\r\n\r\nhi'))
        self.assertBadRequest(
            body(b'Content-Disposition: form-data; name="a"\r\nContent-Disposition: form-data; name="b"\r\n\r\nhi')
        )

    def test_bad_header_syntax(self) -> None:
        """
        Header lines the parser refuses.
        """
        self.assertBadRequest(body(b'Bad Header: x\r\nContent-Disposition: form-data; name="m"\r\n\r\nhi'))
        self.assertBadRequest(body(b": empty\r\n\r\nhi"))

    def test_base64_transfer_encoding(self) -> None:
        """
        A base64 Content-Transfer-Encoding is refused.
        """
        self.assertBadRequest(body(file_part(b"aGVsbG8=", "a.txt", extra=b"Content-Transfer-Encoding: base64\r\n")))

    def test_garbage_after_boundary(self) -> None:
        """
        A boundary line followed by junk instead of CRLF.
        """
        self.assertBadRequest(b"--" + BOUNDARY + b"XX\r\n" + field("message", "hi") + b"\r\n--" + BOUNDARY + b"--\r\n")


class DiscardTests(SinkTestCase):
    """
    L{MultipartSink.discard} and what happens after an error.
    """

    def test_discard_mid_file(self) -> None:
        """
        discard() while a file is streaming removes it and the finished ones.
        """
        sink = self.sink()
        sink.write(b"--" + BOUNDARY + b"\r\n" + file_part(payload(PNG_MAGIC, 500)) + b"\r\n")
        sink.write(b"--" + BOUNDARY + b"\r\n" + file_part(payload(PNG_MAGIC, 20_000)))
        self.assertEqual(len(self.leftovers()), 2)
        sink.discard()
        self.assertEqual(self.leftovers(), [])
        sink.discard()
        self.assertEqual(self.leftovers(), [])

    def test_close_after_discard(self) -> None:
        """
        After discard() the sink refuses to produce a body, and further
        writes are refused.
        """
        sink = self.sink()
        sink.write(b"--" + BOUNDARY + b"\r\n")
        sink.discard()
        self.assertRaises(ApiError, sink.close)
        self.assertRaises(ApiError, sink.write, b"more")

    def test_discard_after_close_keeps_files(self) -> None:
        """
        After a successful close() the files belong to the ChatBody: discard()
        leaves them, ChatBody.cleanup() removes them.
        """
        sink = self.sink()
        result = self.feed(sink, [body(file_part(payload(PNG_MAGIC, 500)))])
        sink.discard()
        self.assertTrue(os.path.exists(result.files[0].path))
        result.cleanup()
        self.assertEqual(self.leftovers(), [])

    def test_discard_after_error(self) -> None:
        """
        discard() after an error is harmless.
        """
        sink = self.sink()
        self.assertRaises(ApiError, sink.write, b"junk")
        sink.discard()
        sink.discard()
        self.assertEqual(self.leftovers(), [])

    def test_error_repeats(self) -> None:
        """
        After an error, write() and close() raise the same error again.
        """
        settings = self.make_settings(max_file_size=10)
        sink = self.sink(settings)
        first = self.assertRaises(ApiError, sink.write, b"--" + BOUNDARY + b"\r\n" + file_part(b"a" * 50))
        self.assertIs(self.assertRaises(ApiError, sink.write, b"x"), first)
        self.assertIs(self.assertRaises(ApiError, sink.close), first)

    def test_disk_error_is_internal_error(self) -> None:
        """
        When the upload folder cannot be created the sink raises a 500
        internal_error (an ApiError, never OSError).
        """
        base = self.tempdir()
        blocker = os.path.join(base, "not-a-dir")
        with open(blocker, "w") as f:
            f.write("x")
        settings = Settings.defaults(upload_dir=os.path.join(blocker, "uploads"))
        sink = MultipartSink(settings, CONTENT_TYPE)
        e = self.feed_error(sink, [body(file_part(payload(PNG_MAGIC, 300)))])
        self.assertEqual(e.code, "internal_error")
        self.assertEqual(e.status, 500)

    def test_world_writable_upload_dir_refused(self) -> None:
        """
        An upload folder anyone can write to is refused (500), and no file is
        put in it.
        """
        settings = self.make_settings()
        os.makedirs(self.upload_dir)
        os.chmod(self.upload_dir, 0o777)
        e = self.feed_error(self.sink(settings), [body(file_part(payload(PNG_MAGIC, 300)))])
        self.assertEqual(e.code, "internal_error")
        self.assertEqual(self.leftovers(), [])

    def test_foreign_upload_dir_refused(self) -> None:
        """
        An upload folder owned by another user is refused (500).
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root to give a folder away")
        settings = self.make_settings()
        os.makedirs(self.upload_dir, mode=0o700)
        os.chown(self.upload_dir, 54321, -1)
        e = self.feed_error(self.sink(settings), [body(file_part(payload(PNG_MAGIC, 300)))])
        self.assertEqual(e.code, "internal_error")
        self.assertEqual(self.leftovers(), [])

    def test_parser_complaints_not_logged(self) -> None:
        """
        python-multipart's warnings about a malformed body (client-controlled)
        do not reach the stdlib root logger or stderr.
        """
        records: list[logging.LogRecord] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        handler = Collect()
        root = logging.getLogger()
        root.addHandler(handler)
        self.addCleanup(root.removeHandler, handler)
        e = self.feed_error(self.sink(), [b"--" + BOUNDARY + b"XX\r\n"])
        self.assertEqual(e.code, "bad_request")
        self.assertEqual(records, [])

    def test_write_after_close(self) -> None:
        """
        Writing after a successful close is an ApiError, and the files stay.
        """
        sink = self.sink()
        result = self.feed(sink, [body(file_part(payload(PNG_MAGIC, 300)))])
        self.assertRaises(ApiError, sink.write, b"more")
        self.assertTrue(os.path.exists(result.files[0].path))
        result.cleanup()


def _valid_body_parts() -> st.SearchStrategy[list[bytes]]:
    texts = st.text(max_size=30).map(lambda t: field("message", t))
    files = st.sampled_from([PNG_MAGIC, PDF_MAGIC, EXE_MAGIC, b"text ", b"\x00"]).flatmap(
        lambda magic: st.binary(max_size=3000).map(lambda rest: file_part(magic + rest, "f.png"))
    )
    return st.lists(st.one_of(texts, files, st.just(file_part(b"", ""))), max_size=7)


class PropertyTests(SinkTestCase):
    """
    For any bytes: only ApiError comes out, and discard leaves nothing.
    """

    def check_body(self, settings: Settings, data: bytes, cuts: list[int]) -> None:
        sink = MultipartSink(settings, CONTENT_TYPE)
        pieces, last = [], 0
        for cut in sorted(c % (len(data) + 1) for c in cuts):
            pieces.append(data[last:cut])
            last = cut
        pieces.append(data[last:])
        result: ChatBody | None = None
        try:
            for piece in pieces:
                sink.write(piece)
            result = sink.close()
        except ApiError:
            self.assertEqual(self.leftovers(), [])
        if result is not None:
            for f in result.files:
                self.assertTrue(os.path.exists(f.path))
                self.assertIn(f.content_type, settings.allowed_types)
            self.assertEqual(len(result.files), len(self.leftovers()))
            sink.discard()
            self.assertEqual(len(result.files), len(self.leftovers()))
            result.cleanup()
        sink.discard()
        self.assertEqual(self.leftovers(), [])

    @given(st.binary(max_size=4000), st.lists(st.integers(min_value=0), max_size=20))
    @hsettings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    def test_arbitrary_bytes(self, data: bytes, cuts: list[int]) -> None:
        """
        Arbitrary bytes, arbitrarily chunked: success or ApiError, never
        anything else, and no temp file after discard.
        """
        settings = self.make_settings(max_file_size=2000, max_files=3)
        self.check_body(settings, b"--" + BOUNDARY + b"\r\n" + data, cuts)
        self.check_body(settings, data, cuts)

    @given(
        _valid_body_parts(),
        st.lists(st.integers(min_value=0), max_size=20),
        st.integers(min_value=0),
        st.sampled_from(["keep", "truncate", "flip", "insert"]),
        st.binary(min_size=1, max_size=8),
    )
    @hsettings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    def test_mutated_bodies(self, parts: list[bytes], cuts: list[int], where: int, how: str, junk: bytes) -> None:
        """
        Real bodies, then cut, corrupted or extended anywhere: success or
        ApiError only, and no temp file after discard.
        """
        settings = self.make_settings(max_file_size=2500, max_files=3)
        data = body(*parts)
        at = where % (len(data) + 1)
        if how == "truncate":
            data = data[:at]
        elif how == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]
        elif how == "insert":
            data = data[:at] + junk + data[at:]
        self.check_body(settings, data, cuts)

    @given(st.lists(st.binary(min_size=1, max_size=3000), max_size=4), st.lists(st.integers(min_value=0), max_size=30))
    @hsettings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    def test_text_files_round_trip(self, contents: list[bytes], cuts: list[int]) -> None:
        """
        Any file contents arrive byte for byte, however the body is cut
        (made PNGs so they are always accepted).
        """
        settings = self.make_settings(max_file_size=4000, max_files=4)
        files = [PNG_MAGIC + c for c in contents]
        data = body(field("message", "m"), *(file_part(c, f"{i}.png") for i, c in enumerate(files)))
        sink = MultipartSink(settings, CONTENT_TYPE)
        last = 0
        for cut in sorted(c % (len(data) + 1) for c in cuts):
            sink.write(data[last:cut])
            last = cut
        sink.write(data[last:])
        result = sink.close()
        self.assertEqual([file_sha(f.path) for f in result.files], [sha(c) for c in files])
        self.assertEqual([f.size for f in result.files], [len(c) for c in files])
        result.cleanup()
        self.assertEqual(self.leftovers(), [])


class UploadTypeAndFolderTests(SinkTestCase):
    """
    The type check on an upload's bytes (a file dressed as text), and the
    check of the upload folder.
    """

    def test_text_then_binary_is_refused(self) -> None:
        """8 KiB of text and then an ELF binary is not text/plain."""
        content = b"a" * SNIFF_BYTES + b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64
        error = self.feed_error(self.sink(), [body(file_part(content, "notes.txt", content_type=b"text/plain"))])
        self.assertEqual(error.code, "unsupported_type")

    def test_long_utf8_text_cut_at_chunk_edges_is_text(self) -> None:
        """Long UTF-8 text, cut mid-character by the chunking, is still text/plain."""
        content = ("שלום עולם " * 3000).encode("utf-8")
        data = body(file_part(content, "notes.txt", content_type=b"text/plain"))
        chunks = [data[i : i + 777] for i in range(0, len(data), 777)]
        got = self.feed(self.sink(), chunks)
        self.assertEqual(got.files[0].content_type, "text/plain")
        got.cleanup()

    def test_group_writable_upload_folder_is_refused(self) -> None:
        """An upload folder writable by its group is refused, by the one rule."""
        settings = self.make_settings()
        os.makedirs(self.upload_dir, mode=0o700)
        os.chmod(self.upload_dir, 0o770)
        error = self.feed_error(self.sink(settings), [body(file_part(b"hello", "a.txt", content_type=b"text/plain"))])
        self.assertEqual(error.code, "internal_error")

    def test_one_rule_for_the_upload_folder(self) -> None:
        """Group/other-writable is refused, readable is a warning, private is fine."""
        from inkflow.web.uploads import upload_dir_problem

        folder = self.tempdir()
        for mode, verdict in ((0o700, None), (0o755, "warn"), (0o775, "refuse"), (0o777, "refuse")):
            os.chmod(folder, mode)
            problem = upload_dir_problem(folder)
            self.assertEqual(problem and problem[0], verdict, oct(mode))

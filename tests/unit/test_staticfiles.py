"""
Tests for L{inkflow.web.staticfiles}: safe lookups, validators, gzip.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from inkflow.web.staticfiles import StaticFiles
from tests.unit.helpers import temp_path


class StaticFilesTests(TestCase):
    """
    One folder with a page, an asset, a dot-file and a subfolder; a secret beside it.
    """

    def setUp(self) -> None:
        base = Path(temp_path(self)).resolve()
        self.root = base / "static"
        (self.root / "assets").mkdir(parents=True)
        (self.root / "index.html").write_text('<html lang="he" dir="rtl">' + "שלום " * 200, encoding="utf-8")
        (self.root / "assets" / "app.js").write_text("console.log(1);\n" * 100)
        (self.root / ".env").write_text("SECRET=1")
        (base / "secret.txt").write_text("outside")
        os.symlink(base / "secret.txt", self.root / "link.txt")
        self.now = 100.0
        self.files = StaticFiles(str(self.root), monotonic=lambda: self.now)

    def request(self, headers: dict[bytes, bytes] | None = None, method: bytes = b"GET") -> Any:
        r = DummyRequest([b""])
        r.method = method
        for k, v in (headers or {}).items():
            r.requestHeaders.setRawHeaders(k, [v])
        return r

    def test_resolve_refuses_escapes(self) -> None:
        """Dot segments, dot-files, encoded separators, NUL and outward symlinks resolve to nothing."""
        for segments in (
            [b".."],
            [b"..", b"secret.txt"],
            [b"assets", b"..", b"..", b"secret.txt"],
            [b".env"],
            [b"assets/../../secret.txt"],
            [b"..\\secret.txt"],
            [b"index.html\x00"],
            [b"link.txt"],
            [b"assets"],
            [b"\xff"],
        ):
            self.assertIsNone(self.files.resolve(segments), segments)

    def test_resolve_finds_files_and_folder_index(self) -> None:
        """Plain paths resolve, and a trailing slash means the folder's index.html."""
        self.assertEqual(self.files.resolve([b"assets", b"app.js"]), str(self.root / "assets" / "app.js"))
        self.assertEqual(self.files.resolve([b""]), str(self.root / "index.html"))

    def test_etag_gives_304(self) -> None:
        """A matching If-None-Match gets 304 with an empty body."""
        first = self.request()
        self.files.render(first, b"/index.html")
        etag = first.responseHeaders.getRawHeaders(b"ETag", [b""])[0]
        again = self.request({b"If-None-Match": etag})
        self.assertEqual(self.files.render(again, b"/index.html"), b"")
        self.assertEqual(again.responseCode, 304)

    def test_gzip_when_accepted(self) -> None:
        """Text is gzipped for a client that accepts gzip, and is the same once unzipped."""
        plain = self.files.render(self.request(), b"/assets/app.js")
        r = self.request({b"Accept-Encoding": b"br, gzip;q=0.8"})
        packed = self.files.render(r, b"/assets/app.js")
        assert isinstance(packed, bytes)
        self.assertEqual(r.responseHeaders.getRawHeaders(b"Content-Encoding"), [b"gzip"])
        self.assertEqual(gzip.decompress(packed), plain)

    def test_no_gzip_when_refused(self) -> None:
        """gzip;q=0 means no gzip."""
        r = self.request({b"Accept-Encoding": b"gzip;q=0"})
        self.files.render(r, b"/assets/app.js")
        self.assertIsNone(r.responseHeaders.getRawHeaders(b"Content-Encoding"))

    def test_head_has_no_body(self) -> None:
        """HEAD sets Content-Length but returns no body."""
        r = self.request(method=b"HEAD")
        self.assertEqual(self.files.render(r, b"/index.html"), b"")
        self.assertNotEqual(r.responseHeaders.getRawHeaders(b"Content-Length"), [b"0"])

    def test_html_revalidates_assets_cache(self) -> None:
        """The page says no-cache; assets may be cached."""
        page, asset = self.request(), self.request()
        self.files.render(page, b"/index.html")
        self.files.render(asset, b"/assets/app.js")
        self.assertEqual(page.responseHeaders.getRawHeaders(b"Cache-Control"), [b"no-cache"])
        self.assertIn(b"max-age", asset.responseHeaders.getRawHeaders(b"Cache-Control", [b""])[0])

    def test_changed_file_is_reloaded(self) -> None:
        """A file changed on disk is served anew, with a new ETag, once it is checked again."""
        r1 = self.request()
        self.files.render(r1, b"/assets/app.js")
        path = self.root / "assets" / "app.js"
        path.write_text("changed();\n")
        os.utime(path, ns=(1, 1))
        self.now += 1.5
        r2 = self.request()
        self.assertEqual(self.files.render(r2, b"/assets/app.js"), b"changed();\n")
        self.assertNotEqual(r1.responseHeaders.getRawHeaders(b"ETag"), r2.responseHeaders.getRawHeaders(b"ETag"))


class LookupTests(TestCase):
    """
    The hot-path lookup by URL: remembered, revalidated at most once a second, still safe.
    """

    def setUp(self) -> None:
        self.root = Path(temp_path(self)).resolve()
        (self.root / "assets").mkdir(parents=True)
        (self.root / "index.html").write_text("<html>one</html>")
        (self.root / "assets" / "a.js").write_text("1;")
        self.now = 100.0
        self.files = StaticFiles(str(self.root), monotonic=lambda: self.now)

    def test_root_and_encoded_paths(self) -> None:
        """/ is the page; percent-encoded names resolve; traversal and dot-files do not."""
        page = self.files.lookup(b"/")
        assert page is not None
        self.assertEqual(page.body, b"<html>one</html>")
        self.assertIsNotNone(self.files.lookup(b"/assets/%61.js"))
        for bad in (b"/../index.html", b"/assets/..%2f..%2findex.html", b"/%2e%2e/x", b"/.hidden", b"/assets"):
            self.assertIsNone(self.files.lookup(bad), bad)

    def test_changes_seen_within_a_second(self) -> None:
        """A changed file is served from the cache until a second has passed, then anew."""
        self.files.lookup(b"/")
        (self.root / "index.html").write_text("<html>two!</html>")
        self.now += 0.5
        first = self.files.lookup(b"/")
        assert first is not None
        self.assertEqual(first.body, b"<html>one</html>")
        self.now += 0.6
        second = self.files.lookup(b"/")
        assert second is not None
        self.assertEqual(second.body, b"<html>two!</html>")

    def test_deleted_file_is_forgotten(self) -> None:
        """A file removed from disk is not served once revalidated."""
        self.assertIsNotNone(self.files.lookup(b"/assets/a.js"))
        (self.root / "assets" / "a.js").unlink()
        self.now += 2
        self.assertIsNone(self.files.lookup(b"/assets/a.js"))


class LargeStaticFileTests(TestCase):
    """
    Files over the cache limit are streamed from disk, not held in memory.
    """

    def setUp(self) -> None:
        self.root = Path(temp_path(self)).resolve()
        self.root.mkdir()
        self.content = bytes(range(256)) * 40  # 10,240 bytes
        (self.root / "big.bin").write_bytes(self.content)
        (self.root / "index.html").write_text("<html></html>")
        self.files = StaticFiles(str(self.root), max_cached_size=1000)

    def request(self, headers: dict[bytes, bytes] | None = None) -> Any:
        r = DummyRequest([b""])
        r.method = b"GET"
        for k, v in (headers or {}).items():
            r.requestHeaders.setRawHeaders(k, [v])
        return r

    def test_spellings_share_one_entry_without_a_body(self) -> None:
        """Every spelling of a large file's URL finds one entry, which keeps no body."""
        spellings = [b"/big.bin", b"/%62ig.bin", b"/b%69g.bin", b"/bi%67.bin", b"/%62%69%67.bin"]
        entries = {id(self.files.lookup(s)) for s in spellings}
        self.assertEqual(len(entries), 1)
        entry = self.files.lookup(b"/big.bin")
        assert entry is not None
        self.assertIsNone(entry.body)

    def test_large_file_is_streamed(self) -> None:
        """A large file is sent from disk by a producer, whole."""
        from twisted.web.server import NOT_DONE_YET

        r = self.request()
        self.assertEqual(self.files.render(r, b"/big.bin"), NOT_DONE_YET)
        self.assertEqual(b"".join(r.written), self.content)

    def test_large_file_range(self) -> None:
        """A Range request for a large file gets 206 and those bytes."""
        r = self.request({b"Range": b"bytes=10-19"})
        self.files.render(r, b"/big.bin")
        self.assertEqual((r.responseCode, b"".join(r.written)), (206, self.content[10:20]))

    def test_large_file_revalidates_with_304(self) -> None:
        """A large file has an ETag; sending it back gets 304 without reading the file."""
        r = self.request()
        self.files.render(r, b"/big.bin")
        etag = r.responseHeaders.getRawHeaders(b"ETag")[0]
        r2 = self.request({b"If-None-Match": etag})
        self.assertEqual(self.files.render(r2, b"/big.bin"), b"")
        self.assertEqual(r2.responseCode, 304)

"""
The page and its assets, served from memory.

Files under the static folder up to C{max_cached_size} are read once (and
again when their size or modification time changes), with a strong ETag,
Last-Modified and, for text, a gzip form made once.  Larger files are never
held in memory: their entry keeps only the validators (an ETag from size,
modification time and inode), and each GET streams them from disk with
twisted.web's static producers, C{Range} included.  Entries are keyed by the
resolved file, so every spelling of a URL shares one.  Lookups refuse anything that could leave the folder:
empty, C{.} or C{..} segments, dot-files, encoded slashes or backslashes, NUL,
symlinks pointing outside.  Folders are never listed.

Pure apart from reading files: the request object is only used through its
header methods.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote_to_bytes

from twisted.web import server, static
from twisted.web.iweb import IRequest

__all__ = ["StaticEntry", "StaticFiles", "not_modified", "send_body"]

#: Files larger than this are not cached (they are streamed from disk).
MAX_CACHED_SIZE = 4 * 1024 * 1024
#: A C{Range} header twisted.web's producers are given (else it is ignored).
_RANGE = re.compile(rb"bytes=[0-9, -]{1,200}")
#: How often a cached URL's file is checked for changes on disk, in seconds.
REVALIDATE_SECONDS = 1.0
#: URLs remembered by L{StaticFiles.lookup}.
MAX_REMEMBERED_URLS = 1024

TEXT_TYPES = (
    "text/",
    "application/javascript",
    "application/json",
    "image/svg+xml",
    "application/manifest+json",
    "application/xml",
)

EXTRA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".map": "application/json",
}


@dataclass(frozen=True)
class StaticEntry:
    path: str
    size: int
    mtime_ns: int
    content_type: str
    etag: str
    last_modified: str
    #: C{None} for a file over the cache limit: streamed from disk.
    body: bytes | None
    gzipped: bytes | None


def _content_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in EXTRA_TYPES:
        return EXTRA_TYPES[ext]
    guessed, _ = mimetypes.guess_type(path)
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith("text/"):
        return guessed + "; charset=utf-8"
    return guessed


def _is_text(content_type: str) -> bool:
    return content_type.startswith(TEXT_TYPES)


def _safe_segment(segment: bytes | str) -> str | None:
    if isinstance(segment, bytes):
        try:
            segment = segment.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not segment or segment.startswith(".") or any(c in segment for c in "/\\\0"):
        return None
    if any(ord(c) < 32 for c in segment):
        return None
    return segment


class StaticFiles:
    """
    Serves one folder.

    @param root: the folder.
    @param cache_control: C{Cache-Control} for assets; HTML pages always get
        C{no-cache} so a new page is seen at once.
    """

    def __init__(
        self,
        root: str,
        cache_control: str = "public, max-age=3600",
        monotonic: Callable[[], float] = time.monotonic,
        max_cached_size: int = MAX_CACHED_SIZE,
    ) -> None:
        self.root = os.path.realpath(root)
        self.max_cached_size = max_cached_size
        self.cache_control = cache_control
        self._cache: dict[str, StaticEntry] = {}
        self._monotonic = monotonic
        #: URL path -> (entry, when it was last checked on disk)
        self._urls: OrderedDict[bytes, tuple[StaticEntry, float]] = OrderedDict()

    def lookup(self, url_path: bytes) -> StaticEntry | None:
        """
        The file a URL path (as sent, percent-encoded) names, for the hot
        path: remembered per URL and checked on disk at most once a second.
        """
        now = self._monotonic()
        known = self._urls.get(url_path)
        if known is not None and now - known[1] < REVALIDATE_SECONDS:
            return known[0]
        segments = [unquote_to_bytes(s) for s in url_path[1:].split(b"/")] if url_path != b"/" else [b"index.html"]
        path = self.resolve(segments)
        entry = self.entry(path) if path is not None else None
        if entry is None:
            self._urls.pop(url_path, None)
            return None
        self._urls[url_path] = (entry, now)
        self._urls.move_to_end(url_path)
        while len(self._urls) > MAX_REMEMBERED_URLS:
            self._urls.popitem(last=False)
        return entry

    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.root, "index.html"))

    def resolve(self, segments: Sequence[bytes | str]) -> str | None:
        """
        The file a URL path names, or C{None} when it names nothing servable.
        A trailing empty segment (C{/examples/}) means the folder's index.html.
        """
        parts: list[str] = []
        for i, raw in enumerate(segments):
            if raw in (b"", "") and i == len(segments) - 1:
                parts.append("index.html")
                continue
            safe = _safe_segment(raw)
            if safe is None:
                return None
            parts.append(safe)
        if not parts:
            parts = ["index.html"]
        candidate = os.path.realpath(os.path.join(self.root, *parts))
        if not candidate.startswith(self.root + os.sep):
            return None
        if os.path.isdir(candidate):
            return None  # no listings; /folder (no slash) is not the index either
        if not os.path.isfile(candidate):
            return None
        return candidate

    def entry(self, path: str) -> StaticEntry | None:
        """
        The cached entry for C{path}, refreshed when the file changed.
        """
        try:
            st = os.stat(path)
        except OSError:
            self._cache.pop(path, None)
            return None
        cached = self._cache.get(path)
        if cached is not None and cached.size == st.st_size and cached.mtime_ns == st.st_mtime_ns:
            return cached
        content_type = _content_type(path)
        if st.st_size > self.max_cached_size:
            # Validators only: the bytes stay on disk.
            tag = hashlib.sha256(b"%d:%d:%d" % (st.st_size, st.st_mtime_ns, st.st_ino)).hexdigest()[:32]
            entry = StaticEntry(
                path=path,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                content_type=content_type,
                etag=f'"{tag}"',
                last_modified=formatdate(st.st_mtime, usegmt=True),
                body=None,
                gzipped=None,
            )
            self._cache[path] = entry
            return entry
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            return None
        gzipped = None
        if _is_text(content_type) and len(body) > 256:
            packed = gzip.compress(body, compresslevel=9, mtime=0)
            if len(packed) < len(body):
                gzipped = packed
        entry = StaticEntry(
            path=path,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            content_type=content_type,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            last_modified=formatdate(st.st_mtime, usegmt=True),
            body=body,
            gzipped=gzipped,
        )
        self._cache[path] = entry
        return entry

    def render(self, request: IRequest, url_path: bytes) -> bytes | int | None:
        """
        Answer C{request} with the file C{url_path} (as sent, percent-encoded)
        names: sets status and headers, returns the body (empty for HEAD and
        304).  C{None} when there is no such file (the caller answers 404).
        """
        entry = self.lookup(url_path)
        if entry is None:
            return None
        return self.respond(request, entry)

    def respond(self, request: IRequest, entry: StaticEntry) -> bytes | int:
        is_html = entry.content_type.startswith("text/html")
        request.setHeader(b"Content-Type", entry.content_type.encode())
        request.setHeader(b"ETag", entry.etag.encode())
        request.setHeader(b"Last-Modified", entry.last_modified.encode())
        request.setHeader(b"Cache-Control", b"no-cache" if is_html else self.cache_control.encode())
        if entry.gzipped is not None:
            request.setHeader(b"Vary", b"Accept-Encoding")

        if not_modified(request, entry.etag, int(entry.mtime_ns // 1_000_000_000)):
            request.setResponseCode(304)
            return b""

        if entry.body is None:
            return self._stream(request, entry)
        return send_body(request, entry.body, entry.gzipped)

    @staticmethod
    def _stream(request: IRequest, entry: StaticEntry) -> bytes | int:
        """
        Send a large file from disk with twisted.web's producers (which also
        answer C{Range} with 206 or 416).
        """
        request.setHeader(b"Accept-Ranges", b"bytes")
        byte_range = request.getHeader(b"Range")
        if byte_range is not None and not _RANGE.fullmatch(byte_range):
            request.requestHeaders.removeHeader(b"Range")  # malformed: the whole file
        resource = static.File(entry.path)
        resource.type, resource.encoding = entry.content_type, None
        try:
            handle = open(entry.path, "rb")  # noqa: SIM115 - the producer closes it
        except OSError:
            return b""
        producer = resource.makeProducer(request, handle)
        if request.method == b"HEAD":
            handle.close()
            return b""
        producer.start()
        return server.NOT_DONE_YET


def not_modified(request: IRequest, etag: str, modified: int) -> bool:
    """
    Whether C{request}'s C{If-None-Match} (else C{If-Modified-Since}) says
    it holds the version with C{etag}, last modified at C{modified} (whole
    seconds since the epoch): a 304.
    """
    inm = request.getHeader(b"If-None-Match")
    if inm is not None:
        text = inm.decode("latin-1") if isinstance(inm, bytes) else inm
        tags = {t.strip().removeprefix("W/") for t in text.split(",")}
        return etag in tags or "*" in tags
    ims = request.getHeader(b"If-Modified-Since")
    if ims is not None:
        text = ims.decode("latin-1") if isinstance(ims, bytes) else ims
        try:
            since = parsedate_to_datetime(text).timestamp()
        except (TypeError, ValueError, IndexError):
            return False
        return modified <= since
    return False


def send_body(request: IRequest, body: bytes, gzipped: bytes | None) -> bytes:
    """
    The body of a 200 from memory: gzipped when there is a gzipped copy and
    the client accepts it, with its C{Content-Length}; nothing for C{HEAD}.
    """
    if gzipped is not None and _accepts_gzip(request.getHeader(b"Accept-Encoding")):
        body = gzipped
        request.setHeader(b"Content-Encoding", b"gzip")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    if request.method == b"HEAD":
        return b""
    return body


def _accepts_gzip(header: str | bytes | None) -> bool:
    if not header:
        return False
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    for item in text.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False

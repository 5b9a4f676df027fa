"""
Streaming C{multipart/form-data} bodies: text fields kept in memory (capped),
files written straight to temp files in C{settings.upload_dir}.

L{MultipartSink} is a L{inkflow.web.bodies.BodySink}: the request layer feeds it
the body chunk by chunk (from C{Request.handleContentChunk}) and calls
L{MultipartSink.close} at the end.  It is pure: no reactor, no twisted.web.
Memory stays flat whatever the upload size: only the text fields and the
first L{SNIFF_BYTES} of the file being received are held.

Decisions (see also the contract's C{POST /api/chat}):

  - A part is a file when its C{Content-Disposition} has a C{filename} (or
    C{filename*}) parameter, whatever its field name, or when its field name
    is C{files}.  Files are forwarded as C{files} whatever name they came
    under.  A file part with an empty (or no) file name and no bytes is what
    a browser sends when no file was picked: it is ignored and not counted.
  - A file with a name but no bytes is a C{bad_request} ("empty file"): it
    has no type to detect, and n8n could do nothing with it.
  - The type is taken from the bytes only (L{sniff_type}); the part's
    C{Content-Type} and the file name are ignored.  APNG counts as
    C{image/png}.  Anything valid UTF-8 (or UTF-16 with a BOM) without NUL or
    other C0 control characters (tab, newlines, form feed and escape are
    allowed) is C{text/plain}, HTML and SVG included (forwarded as
    C{text/plain}, never as markup), and so is text that happens to start
    with a short signature such as C{"BM"} or C{"ID3"}; only a PDF signature
    wins over text.  The type is decided after L{SNIFF_BYTES} or at the end
    of the file, whichever comes first.
  - Text fields: C{message}/C{chatInput} (or C{--chat-input-key}) up to C{max_message_chars * 4}
    bytes, C{metadata} up to L{inkflow.chat.MAX_METADATA_BYTES}, any other
    field up to L{MAX_OTHER_FIELD_BYTES}; at most L{MAX_FIELDS} fields; each
    must be UTF-8.  Over a cap, repeated C{message}/C{chatInput}/C{sessionId}/
    C{action}/C{metadata}, or bad UTF-8: C{bad_request}.  A repeated unknown
    field keeps its last value.
  - Part headers: at most 8 per part, 4 KB per line (python-multipart's own
    limits) and L{MAX_PART_HEADER_BYTES} in all.  C{Content-Transfer-Encoding}
    other than 7bit/8bit/binary is a C{bad_request} (RFC 7578 deprecates it).
  - The whole body is also capped at C{settings.max_body_size}
    (C{too_large}), in case the request layer could not check it up front.
  - After an error every later L{MultipartSink.write} and
    L{MultipartSink.close} raises the same L{ApiError} again (like
    L{inkflow.web.bodies.JsonSink}); a failure to write to disk is a 500
    C{internal_error}, logged.
  - The upload folder is created with mode 0700 when missing; one owned by
    another user or writable by everyone is refused (500, logged), since the
    default lives in the shared temp folder under a predictable name.
  - Each file's SHA-256 is computed as its bytes are spooled (no second
    read): the idempotency fingerprint covers the bytes, not only the name
    and size.
  - Temp files are named C{TEMP_PREFIX + random + TEMP_SUFFIX} (created with
    C{O_EXCL}, mode 0600, in a folder created with mode 0700) and keep that
    name after a successful close, when they belong to the L{ChatBody}: the
    cleanup loop must only remove ones older than a request can live.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from typing import BinaryIO

from python_multipart.multipart import MultipartParser
from twisted.logger import Logger

from inkflow.chat import MAX_METADATA_BYTES, ChatBody, UploadedFile, message_fields, session_fields
from inkflow.errors import ApiError
from inkflow.paths import TEMP_PREFIX, TEMP_SUFFIX
from inkflow.settings import Settings
from inkflow.web.filetypes import MAX_FILENAME_BYTES, SNIFF_BYTES, TextCheck, sanitize_filename, sniff_type
from inkflow.web.part_headers import decode_header, ext_value, header_params, parse_boundary

__all__ = [
    "MAX_FIELDS",
    "MAX_FILENAME_BYTES",
    "MAX_OTHER_FIELD_BYTES",
    "MAX_PART_HEADER_BYTES",
    "SNIFF_BYTES",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "MultipartSink",
    "parse_boundary",
    "sanitize_filename",
    "sniff_type",
    "upload_dir_problem",
]

log = Logger()

#: Text fields per body.
MAX_FIELDS = 50
#: Bytes of a text field other than message/chatInput/metadata.
MAX_OTHER_FIELD_BYTES = 4096
#: Bytes of all header lines of one part together.
MAX_PART_HEADER_BYTES = 8192

_FILE_FIELD = "files"
_IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")

#: python-multipart reports every malformed body on the stdlib logger, which
#: without a handler prints to stderr: a client could fill the logs.  The
#: sink reports the error itself (400 bad_request), so that logger is muted.
_PARSER_LOG = logging.getLogger("inkflow.uploads.python_multipart")
_PARSER_LOG.addHandler(logging.NullHandler())
_PARSER_LOG.propagate = False


# --- the upload folder


def upload_dir_problem(folder: str) -> tuple[str, str] | None:
    """
    The one rule for the upload folder (checked at start and before the
    first file of each request): C{("refuse", why)} when another user owns it
    or its group or others may write to it (they could swap or read files
    mid-request); C{("warn", why)} when they may only read or list it;
    C{None} when it is private.  A missing folder is C{("refuse", why)}.
    """
    try:
        info = os.stat(folder)
    except OSError as e:
        return "refuse", f"it cannot be read ({e.strerror})"
    if not hasattr(os, "geteuid"):
        # Windows: no owner uid, no mode bits (access is by ACL; the default
        # folder is under the user's own temp folder).
        return None
    mode = info.st_mode & 0o777
    if info.st_uid != os.geteuid():
        return "refuse", f"it belongs to uid {info.st_uid}"
    if mode & 0o022:
        return "refuse", f"its group or others may write to it (mode {mode:o})"
    if mode & 0o055:
        return "warn", f"its group or others may read it (mode {mode:o}); chmod 700 keeps uploads private"
    return None


# --- the sink ----------------------------------------------------------------------


class _Part:
    """
    The part being received: its headers, then its field value or file.
    """

    def __init__(self, hash_files: bool) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.field_name = b""
        self.field_value = b""
        self.kind = ""  # "field", "file" or "maybe-file" (no name: ignored if empty)
        self.name = ""
        self.filename = ""
        self.limit = 0
        self.value = bytearray()
        # file state
        self.path: str | None = None
        self.stream: BinaryIO | None = None
        self.size = 0
        self.head = bytearray()
        self.detected: str | None = None
        self.text: TextCheck | None = None
        self.digest = hashlib.sha256() if hash_files else None


class MultipartSink:
    """
    A C{multipart/form-data} body, parsed while it streams in.

    @raise ApiError: at construction, when C{content_type} (the raw request
        header) is not multipart/form-data with a valid boundary.
    """

    def __init__(self, settings: Settings, content_type: bytes, *, hash_files: bool = True) -> None:
        self._settings = settings
        self._hash_files = hash_files
        self._allowed = frozenset(settings.allowed_types)
        # The message and session fields as configured (--chat-input-key,
        # --chat-session-key), and the plain shape's names.
        self._message_fields = frozenset(message_fields(settings.chat_input_key))
        self._unique_fields = self._message_fields | {
            *session_fields(settings.chat_session_key),
            "action",
            "metadata",
        }
        boundary = parse_boundary(content_type)
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )
        self._parser.logger = _PARSER_LOG
        self._part: _Part | None = None
        self._fields: dict[str, str] = {}
        self._field_count = 0
        self._part_count = 0
        self._dir_checked = False
        self._files: list[UploadedFile] = []
        self._paths: list[str] = []  # every temp file made, removed unless handed over
        self._received = 0
        self._ended = False
        self._error: ApiError | None = None
        self._body: ChatBody | None = None

    # --- BodySink

    @property
    def limit(self) -> int:
        return self._settings.max_body_size

    def write(self, data: bytes) -> None:
        """
        Parse the next chunk; file bytes go to disk as they come.

        @raise ApiError: C{too_large}, C{too_many_files}, C{unsupported_type}
            or C{bad_request}; every temp file is already removed.
        """
        if self._error is not None:
            raise self._error
        if self._body is not None:
            raise ApiError("internal_error", "the body was already complete")
        self._received += len(data)
        if self._received > self._settings.max_body_size:
            raise self._fail(ApiError("too_large", f"the body may have at most {self._settings.max_body_size} bytes"))
        self._feed(data)

    def close(self) -> ChatBody:
        """
        The body is complete: return its fields and files (the caller then
        owns the files).

        @raise ApiError: C{bad_request} when the body stopped before its final
            boundary; every temp file is already removed.
        """
        if self._error is not None:
            raise self._error
        if self._body is not None:
            return self._body
        if not self._ended:
            raise self._fail(ApiError("bad_request", "the multipart body is incomplete"))
        self._body = ChatBody(fields=dict(self._fields), files=list(self._files))
        self._paths = []
        return self._body

    def temp_paths(self) -> list[str]:
        """
        The temp files this sink holds right now (for the cleanup loop, which
        must never remove a file a request still uses).
        """
        return list(self._paths)

    def discard(self) -> None:
        """
        Remove every temp file not yet handed over; idempotent.  After a
        successful L{close} the files belong to the L{ChatBody} and stay.
        """
        if self._body is not None or self._error is not None:
            self._release()
            return
        self._fail(ApiError("bad_request", "the request was abandoned"))

    # --- internals

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except ApiError as e:
            raise self._fail(e) from None
        except OSError as e:
            log.error(
                "Could not spool an upload to {upload_dir}: {error}",
                upload_dir=self._settings.upload_dir,
                error=e.strerror or str(e),
                errno=e.errno,
            )
            raise self._fail(ApiError("internal_error", "the upload could not be stored")) from None
        except Exception:
            # python-multipart's FormParserError / MultipartParseError (or any
            # other surprise caused by the bytes): the body is malformed.
            raise self._fail(ApiError("bad_request", "the multipart body is malformed")) from None

    def _fail(self, error: ApiError) -> ApiError:
        """
        Remember C{error}, release everything; return the error to raise.
        """
        if self._error is None:
            self._error = error
        self._release()
        return self._error

    def _release(self) -> None:
        part = self._part
        if part is not None and part.stream is not None:
            with contextlib.suppress(OSError):
                part.stream.close()
            part.stream = None
        self._part = None
        for path in self._paths:
            with contextlib.suppress(OSError):  # gone already, or the cleanup loop will find it
                os.unlink(path)
        self._paths = []
        if self._body is None:
            self._files = []
            self._fields = {}

    # --- parser callbacks (they raise ApiError; _guarded cleans up)

    def _on_part_begin(self) -> None:
        self._part_count += 1
        if self._part_count > MAX_FIELDS + self._settings.max_files:
            raise ApiError("bad_request", "the body has too many parts")
        self._part = _Part(self._hash_files)

    def _current(self) -> _Part:
        if self._part is None:  # pragma: no cover - the parser always begins a part first
            raise ApiError("bad_request", "multipart data outside a part")
        return self._part

    def _header_bytes(self, part: _Part, size: int) -> None:
        part.header_bytes += size
        if part.header_bytes > MAX_PART_HEADER_BYTES:
            raise ApiError("bad_request", "a part's headers are too large")

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        part = self._current()
        self._header_bytes(part, end - start)
        part.field_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        part = self._current()
        self._header_bytes(part, end - start)
        part.field_value += data[start:end]

    def _on_header_end(self) -> None:
        part = self._current()
        part.headers.append((part.field_name.strip().lower(), part.field_value.strip()))
        part.field_name = part.field_value = b""

    def _on_headers_finished(self) -> None:
        part = self._current()
        disposition: bytes | None = None
        for key, value in part.headers:
            if key == b"content-disposition":
                if disposition is not None:
                    raise ApiError("bad_request", "a part has two Content-Disposition headers")
                disposition = value
            elif key == b"content-transfer-encoding" and value.lower().decode("latin-1") not in _IDENTITY_ENCODINGS:
                raise ApiError("bad_request", "Content-Transfer-Encoding is not supported")
        if disposition is None:
            raise ApiError("bad_request", "a part has no Content-Disposition")
        try:
            kind, params = header_params(decode_header(disposition))
        except ValueError:
            raise ApiError("bad_request", "a part's Content-Disposition is malformed") from None
        if kind != "form-data" or "name" not in params:
            raise ApiError("bad_request", "a part is not a named form-data field")
        part.name = params["name"]
        part.headers = []
        filename: str | None = None
        if "filename*" in params:
            filename = ext_value(params["filename*"])
        if filename is None and "filename" in params:
            filename = params["filename"]
        if filename is not None or part.name == _FILE_FIELD:
            part.filename = filename or ""
            if part.filename:
                part.kind = "file"
                self._start_file(part)
            else:
                part.kind = "maybe-file"
            return
        part.kind = "field"
        self._field_count += 1
        if self._field_count > MAX_FIELDS:
            raise ApiError("bad_request", f"at most {MAX_FIELDS} form fields")
        if part.name in self._unique_fields and part.name in self._fields:
            raise ApiError("bad_request", f"the field {part.name} is repeated")
        if part.name in self._message_fields:
            part.limit = self._settings.max_message_chars * 4
        elif part.name == "metadata":
            part.limit = MAX_METADATA_BYTES
        else:
            part.limit = MAX_OTHER_FIELD_BYTES

    def _start_file(self, part: _Part) -> None:
        if len(self._files) >= self._settings.max_files:
            raise ApiError("too_many_files", f"at most {self._settings.max_files} files")
        if not self._dir_checked:
            self._check_upload_dir()
            self._dir_checked = True
        fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=self._settings.upload_dir)
        self._paths.append(path)
        part.path = path
        part.stream = open(fd, "wb")  # noqa: SIM115 - closed at part end or by _release

    def _check_upload_dir(self) -> None:
        folder = self._settings.upload_dir
        os.makedirs(folder, mode=0o700, exist_ok=True)
        problem = upload_dir_problem(folder)
        if problem is not None and problem[0] == "refuse":
            log.error("Refusing to spool uploads to {upload_dir}: {problem}", upload_dir=folder, problem=problem[1])
            raise ApiError("internal_error", "the upload could not be stored")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current()
        if part.kind == "field":
            if len(part.value) + (end - start) > part.limit:
                raise ApiError("bad_request", f"the field {part.name} is too long")
            part.value += data[start:end]
            return
        if part.kind == "maybe-file":
            part.kind = "file"
            self._start_file(part)
        if part.kind != "file" or part.stream is None:  # pragma: no cover - headers always come first
            raise ApiError("bad_request", "part data before the part's headers")
        if part.size + (end - start) > self._settings.max_file_size:
            raise ApiError("too_large", f"a file may have at most {self._settings.max_file_size} bytes")
        chunk = memoryview(data)[start:end]
        part.stream.write(chunk)
        if part.digest is not None:
            part.digest.update(chunk)
        part.size += end - start
        if part.detected is None:
            room = SNIFF_BYTES - len(part.head)
            part.head += chunk[:room]
            if len(part.head) >= SNIFF_BYTES:
                self._decide_type(part, complete=False)
                self._check_text(part, bytes(chunk[room:]))
        else:
            self._check_text(part, bytes(chunk))

    def _decide_type(self, part: _Part, complete: bool) -> None:
        head = bytes(part.head)
        detected = sniff_type(head, complete=complete)
        part.head = bytearray()
        if detected is None or detected not in self._allowed:
            shown = detected or "unknown"
            raise ApiError("unsupported_type", f"a file's content is {shown}, which is not allowed")
        part.detected = detected
        if detected == "text/plain":
            part.text = TextCheck(head)
            self._check_text(part, head, final=complete)

    @staticmethod
    def _check_text(part: _Part, data: bytes, final: bool = False) -> None:
        if part.text is not None and (data or final) and not part.text.feed(data, final):
            raise ApiError("unsupported_type", "a file that began as text is not text all the way")

    def _on_part_end(self) -> None:
        part = self._current()
        if part.kind == "field":
            try:
                value = part.value.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError("bad_request", f"the field {part.name} is not valid UTF-8") from None
            self._fields[part.name] = value
        elif part.kind == "file":
            assert part.stream is not None and part.path is not None
            if part.size == 0:
                raise ApiError("bad_request", "an attached file is empty")
            if part.detected is None:
                self._decide_type(part, complete=True)
            else:
                self._check_text(part, b"", final=True)
            assert part.detected is not None
            part.stream.close()
            part.stream = None
            self._files.append(
                UploadedFile(
                    path=part.path,
                    filename=sanitize_filename(part.filename),
                    content_type=part.detected,
                    size=part.size,
                    sha256=part.digest.hexdigest() if part.digest is not None else "",
                )
            )
        # "maybe-file" with no data: a browser's empty file input, ignored (not counted).
        self._part = None

    def _on_end(self) -> None:
        self._ended = True

"""
End to end: property-based fuzzing of one real server (demo mode,
C{--rate-limit 0}, a private C{--upload-dir}) with hypothesis.

Three families of inputs: JSON bodies, multipart bodies, and raw request
lines and headers over a socket.  After every example the same invariants
hold:

  - no 5xx (in demo mode nothing is upstream, so not even 502/503/504);
  - every error InkFlow produces on an C{/api/*} path is the contract's JSON
    error shape, its code matching its status;
  - the server is still up (C{/api/health} answers 200);
  - no temp file is left in the upload folder (a short bounded wait);
  - no traceback in the server's log.

Runs are reproducible: C{derandomize=True}, no example database.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from inkflow.errors import MESSAGES
from tests.support.server import ServerProcess

MAX_FILE_SIZE = 64 * 1024
MAX_CHARS = 4000

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

#: Twisted's own answer to a request it cannot frame (before InkFlow sees it):
#: no body, so not the contract's JSON.  See test_framing_errors_are_json.
TWISTED_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-uploads")


@pytest.fixture(scope="module")
def server(uploads: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(
        "--rate-limit",
        "0",
        "--upload-dir",
        str(uploads),
        "--max-file-size",
        str(MAX_FILE_SIZE),
        "--header-timeout",
        "2",
        "--body-timeout",
        "2",
    ).start()
    yield s
    s.stop()


# --- a raw HTTP/1.1 client --------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes
    complete: bool = True  # False: cut by our read's idle limit, or headers only (a HEAD answer)


def exchange(port: int, data: bytes, idle: float = 5.0, total: float = 10.0) -> bytes:
    """
    Send C{data} on a fresh connection and return everything the server
    sends until it closes, or C{idle} seconds pass without a byte, or
    C{total} seconds in all.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    out = bytearray()
    try:
        # answered (and closed) before the whole body was sent: read the answer
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        deadline = time.monotonic() + total
        sock.settimeout(idle)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        sock.close()
    return bytes(out)


def parse_responses(data: bytes) -> list[Response]:
    """
    The responses in C{data}, in order (Content-Length or chunked); the last
    one may be incomplete.
    """
    responses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ", lines[0] + b" ")
        assert m, f"not a status line: {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        status = int(m.group(1))
        complete = True
        if status < 200 or status in (204, 304) or rest.startswith(b"HTTP/1."):
            body, data = b"", rest  # no body (1xx, 204, 304, or the answer to a HEAD)
            complete = status < 200 or status in (204, 304)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            body, data = rest[:length], rest[length:]
            complete = len(body) == length
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body_parts = []
            complete = False
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body_parts.append(rest[:size])
                rest = rest[size + 2 :]
                if size == 0:
                    complete = True
                    break
            body, data = b"".join(body_parts), rest
        else:
            body, data = rest, b""  # until the close
        responses.append(Response(status, headers, body, head, complete))
    return responses


def request(method: str, path: str, body: bytes, content_type: str, close: bool = True) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


# --- the invariants -----------------------------------------------------------------------


def assert_contract_error(response: Response) -> None:
    """
    An InkFlow error: the contract's JSON shape, its code matching its status.
    """
    assert response.headers.get("content-type", "").startswith("application/json"), response
    if not response.complete:
        return  # headers only: a HEAD answer, or the body was cut by our read's idle limit
    value = json.loads(response.body)
    assert set(value) == {"message", "error"}, value
    error = value["error"]
    assert value["message"] == error["message"], value
    assert set(error) == {"code", "message", "message_en", "requestId"}, error
    assert error["code"] in MESSAGES, error
    assert MESSAGES[error["code"]][0] == response.status, (response.status, error)
    assert error["requestId"] == response.headers.get("x-request-id"), (error, response.headers)
    assert isinstance(error["message"], str) and error["message"]


def assert_chat_answer(response: Response) -> None:
    """
    A chat answer: 200 with the demo's {"output"} (or {"data"} for a session
    load), or a contract error; never a 5xx.
    """
    assert response.status < 500, response
    assert response.complete, response
    event(f"status {response.status}")
    if response.status >= 400:
        assert_contract_error(response)
        event(f"code {json.loads(response.body)['error']['code']}")
    else:
        assert response.status == 200, response
        value = json.loads(response.body)
        assert isinstance(value, dict) and ("output" in value or "data" in value), value


def assert_still_fine(server: ServerProcess, uploads: Path, mark: int) -> None:
    """
    After an example: health answers, no temp file stays (bounded wait), no
    traceback was logged since line C{mark}.
    """
    marker = f"/api/health?after-example={uuid.uuid4().hex}"
    status, _, body = server.request("GET", marker, timeout=5)
    assert status == 200 and json.loads(body)["status"] in ("ok", "degraded")
    # Its access line comes after every line the example caused.
    server.wait_for(re.escape(marker), timeout=5)
    deadline = time.monotonic() + 3.0
    while any(uploads.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)  # a bounded poll of another process's cleanup
    assert sorted(p.name for p in uploads.iterdir()) == []
    new = "".join(server.lines[mark:])
    assert "Traceback" not in new and "Unhandled error" not in new, new[-4000:]


def mark(server: ServerProcess) -> int:
    server.drain_output()
    return len(server.lines)


# --- strategies: text and JSON ------------------------------------------------------------

HEBREW = st.characters(min_codepoint=0x0590, max_codepoint=0x05FF)
CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from("\x7f\u200f\u202e\u2028\ufeff")
ANY_CHAR = st.characters(codec="utf-8")
TEXT = st.text(st.one_of(HEBREW, CONTROL, ANY_CHAR, st.sampled_from("ab /\\.\"'")), max_size=60)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)

SESSION_IDS = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9_-]{1,128}\Z"),
    st.text(max_size=140),
    st.just(""),
    st.just("x" * 129),
)
MESSAGES_TEXT = st.one_of(
    TEXT,
    st.text(HEBREW, min_size=1, max_size=50),
    st.integers(MAX_CHARS - 3, MAX_CHARS + 3).map(lambda n: "א" * n),
    st.just("x" * 200_000),
    # a lone surrogate (a valid JSON escape, not text)
    st.sampled_from(["a\ud800b", "\udfff", "ok\ud83d"]),
)
CHAT_FIELD_VALUES = st.one_of(MESSAGES_TEXT, JSON_VALUES)
METADATA = st.one_of(
    st.dictionaries(TEXT, JSON_VALUES, max_size=4),
    st.integers(100, 900).map(lambda d: {"deep": json.loads('{"a":' * d + "1" + "}" * d)}),
    st.just({"big": "x" * 9000}),
    JSON_VALUES,
    TEXT.map(json.dumps),
    # metadata as a string nested deeply, and numbers JSON does not have
    st.integers(900, 3000).map(lambda d: "[" * d + "]" * d),
    st.sampled_from(['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e999}', '{"a": -1e400}']),
)


@st.composite
def chat_objects(draw: st.DrawFn) -> dict[str, Any]:
    """The chat shapes, with every field possibly missing, mistyped or odd."""
    value: dict[str, Any] = {}
    for key, strategy in (
        ("message", CHAT_FIELD_VALUES),
        ("chatInput", CHAT_FIELD_VALUES),
        ("sessionId", st.one_of(SESSION_IDS, JSON_VALUES)),
        ("action", st.one_of(st.sampled_from(["sendMessage", "loadPreviousSession", "", "drop"]), JSON_VALUES)),
        ("metadata", METADATA),
    ):
        if draw(st.booleans()):
            value[key] = draw(strategy)
    return value


def nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


VALID_CHATS = st.fixed_dictionaries(
    {
        "message": st.text(st.one_of(HEBREW, ANY_CHAR), min_size=1, max_size=200).filter(
            lambda t: t.strip() and "\x00" not in t
        )
    },
    optional={
        "sessionId": st.from_regex(r"\A[A-Za-z0-9_-]{1,128}\Z"),
        "metadata": st.dictionaries(TEXT, JSON_VALUES, max_size=3),
        "extra": JSON_VALUES,
    },
)

JSON_BODIES = st.one_of(
    VALID_CHATS.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    chat_objects().map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    chat_objects().map(lambda v: json.dumps(v).encode("ascii")),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    # Nesting below and far beyond the JSON parser's recursion limit.
    st.builds(nested, st.integers(1, 500), st.sampled_from(["list", "object"])),
    st.builds(nested, st.integers(1_000, 20_000), st.sampled_from(["list", "object"])),
    st.binary(max_size=300),
    chat_objects().map(lambda v: json.dumps(v).encode()[:-1]),  # cut short
    chat_objects().map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-16", "surrogatepass")),
    st.just(b""),
)
JSON_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/json;charset=latin-1"]
)


@given(body=JSON_BODIES, content_type=JSON_TYPES)
@FUZZ
def test_json_bodies_never_break_the_server(
    server: ServerProcess, uploads: Path, body: bytes, content_type: str
) -> None:
    """Any JSON-typed body (values, wrong types, Hebrew/control text, huge, nested, cut, not UTF-8): 200 or a contract error."""
    start = mark(server)
    responses = parse_responses(exchange(server.port, request("POST", "/api/chat", body, content_type)))
    assert len(responses) == 1
    assert_chat_answer(responses[0])
    assert_still_fine(server, uploads, start)


# --- strategies: multipart ---------------------------------------------------------------

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
FILE_BYTES = st.one_of(
    st.binary(min_size=0, max_size=3000),
    st.binary(max_size=2000).map(lambda b: PNG + b),
    st.binary(max_size=2000).map(lambda b: b"%PDF-1.4\n" + b),
    st.text(max_size=500).map(lambda t: t.encode("utf-8")),
    st.integers(MAX_FILE_SIZE - 2, MAX_FILE_SIZE + 2).map(lambda n: b"a" * n),
)
FILE_NAMES = st.one_of(
    TEXT,
    st.text(HEBREW, min_size=1, max_size=20).map(lambda t: t + ".png"),
    st.sampled_from(["../../etc/passwd", "..\\..\\win.ini", "/abs/path.txt", "CON.txt", ".hidden", "a\x00b.txt", ""]),
    st.just("א" * 400 + ".pdf"),
)
FIELD_NAMES = st.one_of(
    st.sampled_from(["message", "chatInput", "sessionId", "action", "metadata", "files", "other"]), TEXT
)
CRLF = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b""])


def quoted(value: str) -> bytes:
    return b'"' + value.encode("utf-8", "surrogatepass").replace(b'"', b'\\"') + b'"'


@st.composite
def parts(draw: st.DrawFn) -> bytes:
    """One part: its headers (some odd) and its content; the caller adds boundaries."""
    nl = draw(CRLF)
    name = draw(FIELD_NAMES)
    disposition = b"Content-Disposition: " + draw(st.sampled_from([b"form-data", b"attachment", b"FORM-DATA", b""]))
    if draw(st.booleans()):
        disposition += b"; name=" + quoted(name)
    is_file = draw(st.booleans())
    if is_file:
        filename = draw(FILE_NAMES)
        if draw(st.booleans()):
            disposition += b"; filename=" + quoted(filename)
        else:
            disposition += b"; filename*=" + draw(st.sampled_from([b"utf-8''", b"UTF-8'he'", b"bogus''"]))
            disposition += filename.encode("utf-8", "surrogatepass").hex().encode()[:80]
    headers = [disposition] if draw(st.integers(0, 9)) else []
    extra = draw(
        st.lists(
            st.one_of(
                st.sampled_from(
                    [
                        b"Content-Type: image/png",
                        b"Content-Type: application/x-msdownload",
                        b"Content-Transfer-Encoding: base64",
                        b"Content-Transfer-Encoding: binary",
                        b"Content-Disposition: form-data; name=dup",
                        b"X-Garbage",
                        b": no-name",
                    ]
                ),
                st.integers(100, 10_000).map(lambda n: b"X-Huge: " + b"h" * n),
                st.binary(max_size=40).map(lambda b: b"X-Bytes: " + b.replace(b"\r", b"").replace(b"\n", b"")),
            ),
            max_size=3,
        )
    )
    headers += extra
    if is_file:
        content = draw(FILE_BYTES)
    else:
        content = draw(st.one_of(MESSAGES_TEXT, TEXT).map(lambda t: t.encode("utf-8", "surrogatepass")))
        if draw(st.integers(0, 9)) == 0:
            content = draw(st.binary(max_size=200))
    return nl.join(headers) + nl + nl + content


BOUNDARIES = st.one_of(
    st.just("fuzz-boundary-0123456789"),
    st.from_regex(r"\A[0-9A-Za-z'()+_,\-./:=?]{1,70}\Z"),
    st.sampled_from(["", " ", "a" * 201, "bad\x00boundary", "גבול", "x;y", '"quoted"']),
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A multipart body and its Content-Type, from well-formed to broken."""
    boundary = draw(BOUNDARIES)
    declared = boundary if draw(st.integers(0, 9)) else draw(BOUNDARIES)
    b = boundary.encode("utf-8")
    nl = draw(CRLF)
    body = draw(st.sampled_from([b"", b"preamble\r\n", b"\r\n"]))
    for part in draw(st.lists(parts(), max_size=7)):
        body += b"--" + b + nl + part + nl
    ending = draw(st.sampled_from(["close", "close", "close", "none", "open", "cut"]))
    if ending == "close":
        body += b"--" + b + b"--" + nl
    elif ending == "open":
        body += b"--" + b + nl
    elif ending == "cut" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={declared}",
                f'multipart/form-data; boundary="{declared}"',
                f"multipart/form-data; boundary={declared}; boundary=again",
                "multipart/form-data",
                f"multipart/mixed; boundary={declared}",
                f"Multipart/Form-Data; charset=utf-8; boundary={declared}",
            ]
        )
    )
    return body, content_type


ALLOWED_FILES = st.one_of(
    st.binary(min_size=1, max_size=2000).map(lambda b: PNG + b),
    st.binary(max_size=2000).map(lambda b: b"%PDF-1.4\n" + b + b"\n%%EOF\n"),
    st.text(st.one_of(HEBREW, st.sampled_from("abc \n")), min_size=1, max_size=300).map(lambda t: t.encode("utf-8")),
)


@st.composite
def valid_multipart(draw: st.DrawFn) -> tuple[bytes, str]:
    """A well-formed body: a message, maybe a session, up to five allowed files with odd names."""
    boundary = draw(st.from_regex(r"\A[0-9A-Za-z'()+_,\-./:=?]{1,70}\Z"))
    message = draw(st.text(HEBREW, min_size=1, max_size=100))
    out = [b'Content-Disposition: form-data; name="message"\r\n\r\n' + message.encode("utf-8")]
    if draw(st.booleans()):
        session = draw(st.from_regex(r"\A[A-Za-z0-9_-]{1,128}\Z"))
        out.append(b'Content-Disposition: form-data; name="sessionId"\r\n\r\n' + session.encode())
    for _ in range(draw(st.integers(0, 5))):
        name = quoted(draw(FILE_NAMES))
        out.append(
            b'Content-Disposition: form-data; name="files"; filename=' + name + b"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + draw(ALLOWED_FILES)
        )
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + part + b"\r\n" for part in out) + b"--" + b + b"--\r\n"
    return body, f'multipart/form-data; boundary="{boundary}"'


@given(case=st.one_of(valid_multipart(), multipart_bodies()))
@FUZZ
def test_multipart_bodies_never_break_the_server(server: ServerProcess, uploads: Path, case: tuple[bytes, str]) -> None:
    """Broken boundaries, missing parts, huge part headers, odd names and encodings, random files: 200 or a contract error, no temp file left."""
    body, content_type = case
    start = mark(server)
    data = request("POST", "/api/chat", body, "").replace(
        b"Content-Type: \r\n", b"Content-Type: " + content_type.encode("utf-8", "surrogatepass") + b"\r\n"
    )
    answer = exchange(server.port, data)
    responses = parse_responses(answer)
    assert len(responses) == 1
    if "\x00" in content_type:
        # A NUL in a header: refused while parsing the head, with the contract's JSON 400.
        assert responses[0].status == 400
        assert_contract_error(responses[0])
    else:
        assert_chat_answer(responses[0])
    assert_still_fine(server, uploads, start)


# --- strategies: raw request lines and headers ---------------------------------------------


METHODS = st.one_of(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"]),
    st.sampled_from([b"get", b"post", b"G ET", b"", b"\x00", b"POST\x00", b"PRI", b"M" * 300]),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
PATHS = st.one_of(
    st.sampled_from([b"/api/chat", b"/api/health", b"/api/ready", b"/api/", b"/api/nope", b"/", b"/metrics"]),
    st.sampled_from([b"/api/chat?x=1", b"/api/../etc/passwd", b"/api/chat%00", b"*", b"http://x/api/chat", b"//api"]),
    # werkzeug's redirects (merged slashes) and encoded spellings of the chat route
    st.sampled_from([b"/api//health", b"//api//chat", b"/api/chat/", b"/api/%63hat", b"/%61pi/chat", b"/api/./health"]),
    # UTF-8 paths, raw or percent-encoded, and bytes that are not UTF-8.
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20).map(
        lambda t: b"/api/" + t.encode("utf-8")
    ),
    st.binary(min_size=1, max_size=8).filter(lambda b: not set(b) & set(b" \r\n")).map(lambda b: b"/api/" + b),
    st.binary(min_size=1, max_size=8).map(lambda b: b"/api/" + quote(b).encode("ascii")),
    st.text(max_size=20).map(lambda t: b"/api/" + quote(t, safe="/?=&").encode("ascii")),
    st.integers(100, 20_000).map(lambda n: b"/api/" + b"p" * n),
)
VERSIONS = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 extra", b"", b"http/1.1"])
HEADERS = st.one_of(
    st.sampled_from(
        [
            b"Host: fuzz",
            b"Host: \xd7\x90.example:80",
            b"Host: [::1]:99999",
            b"Content-Type: application/json",
            b"Content-Type: multipart/form-data; boundary=zz",
            b"Content-Type: text/plain",
            b"Content-Length: 2",
            b"Content-Length: 0",
            b"Content-Length: -1",
            b"Content-Length: abc",
            b"Content-Length: 1e3",
            b"Content-Length: 99999999999999999999",
            b"Content-Length: 2, 2",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip",
            b"Transfer-Encoding: chunked, chunked",
            b"Transfer-Encoding:\x0bchunked",
            b"Expect: 100-continue",
            b"Connection: close",
            b"Connection: keep-alive",
            b"X-Forwarded-For: 1.2.3.4, ::1, garbage",
            b"Origin: https://evil.example",
            b"X-Nul: a\x00b",
            b" Leading-Space: x",
            b"No-Colon",
            b"Folded: a\r\n b",
            # framing a strict proxy reads differently, cross-site heads
            b"Transfer-Encoding: identity",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
            b"Host: a\r\nHost: b",
            b"Folded: a\r\n\tb",
            b"Sec-Fetch-Site: cross-site",
            b"Origin: null",
            b"Range: bytes=\xff-",
        ]
    ),
    st.integers(1000, 20_000).map(lambda n: b"X-Huge: " + b"h" * n),
    st.integers(50, 600).map(lambda n: b"\r\n".join(b"X-Many-%d: v" % i for i in range(n))),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
BODIES = st.one_of(
    st.just(b""),
    st.just(b'{"message": "raw"}'),
    st.sampled_from([b"2\r\n{}\r\n0\r\n\r\n", b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}0\r\n\r\n", b"ffffffffffff\r\n"]),
    st.binary(max_size=200),
)


SANE_METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
SANE_PATHS = st.one_of(
    st.sampled_from([b"/api/chat", b"/api/health", b"/api/ready", b"/api/nope", b"/", b"/metrics", b"/index.html"]),
    st.text(max_size=20).map(lambda t: b"/api/" + quote(t, safe="/?=&").encode("ascii")),
)
LEGAL_HEADERS = st.sampled_from(
    [
        b"Expect: 100-continue",
        b"X-Forwarded-For: 1.2.3.4, ::1, garbage",
        b"Origin: https://evil.example",
        b"Origin: http://fuzz",
        b"Sec-Fetch-Site: cross-site",
        b"Sec-Fetch-Site: same-origin",
        b"Accept-Encoding: gzip, br",
        b"Cookie: sid=abc",
        b"Authorization: Bearer x",
        b"Range: bytes=0-10",
        b'If-None-Match: "x"',
        b"If-Modified-Since: yesterday",
        b"Content-Type: multipart/form-data; boundary=zz",
        b"Content-Type: text/plain",
        b"Content-Type: application/json; charset=utf-8",
        b"Content-Encoding: gzip",
        b"Accept: */*",
        b"X-Hebrew: \xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d",
    ]
)


@st.composite
def sane_request(draw: st.DrawFn) -> bytes:
    """A well-framed request (method, path, headers legal) with one framing twist at most."""
    method, path = draw(SANE_METHODS), draw(SANE_PATHS)
    body = draw(BODIES)
    headers = [b"Host: fuzz", b"Content-Type: application/json", *draw(st.lists(LEGAL_HEADERS, max_size=3))]
    framing = draw(st.sampled_from(["length", "length", "none", "short", "long", "chunked", "chunked-broken", "odd"]))
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "short":
        headers.append(b"Content-Length: %d" % max(0, len(body) - 1))
    elif framing == "long":  # the server waits for bytes that never come
        headers.append(b"Content-Length: %d" % (len(body) + 10))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif framing == "chunked-broken":
        headers.append(b"Transfer-Encoding: chunked")
        body = b"%x\r\n%s" % (len(body) + draw(st.integers(-3, 3)), body) + draw(
            st.sampled_from([b"", b"\r\n0\r\n\r\n"])
        )
    elif framing == "odd":
        headers.append(draw(HEADERS))
    headers = draw(st.permutations(headers))
    return method + b" " + path + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


@st.composite
def garbage_request(draw: st.DrawFn) -> bytes:
    """A request line and headers from anything goes."""
    line = draw(METHODS) + b" " + draw(PATHS) + b" " + draw(VERSIONS)
    headers = draw(st.lists(HEADERS, max_size=6))
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + draw(BODIES)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """One to three requests on one connection (pipelining), mostly well framed, some garbage."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        out += draw(garbage_request()) if draw(st.integers(0, 3)) == 0 else draw(sane_request())
    if draw(st.booleans()):  # often end with a clean request that closes, so the exchange is quick
        out += b"GET /api/ready HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"
    return out


@given(data=raw_requests())
@FUZZ
def test_raw_requests_never_break_the_server(server: ServerProcess, uploads: Path, data: bytes) -> None:
    """Garbage methods and versions, huge or NUL-bearing headers, bad or conflicting framing, pipelining: no 5xx, errors in the contract's shape."""
    start = mark(server)
    # Some requests are incomplete on purpose: stop reading after 0.25 s of silence.
    answer = exchange(server.port, data, idle=0.25)
    # Twisted's own bare 400 (no body) never reaches a client: framing errors are JSON too.
    assert TWISTED_BARE_400 not in answer
    if not answer:
        event("no answer (closed, or waiting for more)")
    for response in parse_responses(answer):
        assert response.status < 500, response
        event(f"status {response.status}")
        if response.status >= 400:
            assert_contract_error(response)
    assert_still_fine(server, uploads, start)


# --- what fuzzing found ---------------------------------------------------------------------


def test_deeply_nested_json_is_a_400_without_a_traceback(server: ServerProcess, uploads: Path) -> None:
    """JSON nested 20,000 deep (40 KB, under the JSON limit): 400 bad_request, and nothing in the log but one line."""
    start = mark(server)
    responses = parse_responses(
        exchange(server.port, request("POST", "/api/chat", nested(20_000, "list"), "application/json"))
    )
    assert [r.status for r in responses] == [400]
    assert_contract_error(responses[0])
    assert_still_fine(server, uploads, start)


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: abc\r\n",
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["bad-length", "two-lengths", "length-and-chunked"],
)
def test_framing_errors_on_api_paths_are_json(server: ServerProcess, head: bytes) -> None:
    """A POST /api/chat with broken framing is answered 400 in the contract's JSON error shape."""
    data = b"POST /api/chat HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\n" + head + b"\r\n{}"
    responses = parse_responses(exchange(server.port, data))
    assert [r.status for r in responses] == [400]
    assert_contract_error(responses[0])


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/\x80 HTTP/1.1\r\nHost: fuzz\r\n",
        b"POST /api/chat%ff HTTP/1.1\r\nHost: fuzz\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: \x80\xff\r\n",
    ],
    ids=["raw-byte-in-path", "percent-encoded-byte", "host-header"],
)
def test_non_utf8_urls_get_a_json_400_without_a_traceback(server: ServerProcess, uploads: Path, head: bytes) -> None:
    """A URL that is not UTF-8 is a 400 bad_request in the contract's JSON shape, and logs no traceback."""
    start = mark(server)
    responses = parse_responses(exchange(server.port, head + b"Connection: close\r\n\r\n"))
    assert [r.status for r in responses] == [400]
    assert_contract_error(responses[0])
    assert_still_fine(server, uploads, start)

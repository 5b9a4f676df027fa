"""
A fake n8n for tests and benchmarks: a small twisted.web L{Site} with
scripted answers per path, recording every request it receives.

Where n8n 2.8.4 and 2.41.3 answer differently (docs/n8n.md, "n8n 2.41"), the
helpers take a C{version} (L{N8N_2_8}, the default, or L{N8N_2_41}): stream
framing and headers (L{FakeN8n.stream}), a workflow failing before its
Respond node (L{workflow_failed}), and the C{/chat} socket's token
(L{tests.support.fake_n8n_ws}).

In tests::

    fake = listen_fake_n8n(reactor)
    fake.script("/webhook/chat", status_reply(503), echo())
    ...  # POST to fake.url("/webhook/chat")
    fake.requests_for("/webhook/chat")[1].files[0].sha256
    yield fake.stop()

Standalone (JSON echo on every path)::

    python -m tests.support.fake_n8n --port 5678
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from python_multipart.multipart import MultipartParser, parse_options_header
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = [
    "N8N_2_8",
    "N8N_2_41",
    "FakeN8n",
    "FakeStream",
    "RecordedFile",
    "RecordedRequest",
    "Reply",
    "big",
    "echo",
    "empty",
    "hang_body",
    "json_reply",
    "listen_fake_n8n",
    "n8n_not_registered",
    "reset",
    "slow",
    "status_reply",
    "text",
    "workflow_failed",
]

#: The n8n releases the fake can play.
N8N_2_8 = "2.8.4"
N8N_2_41 = "2.41.3"
N8N_VERSIONS = (N8N_2_8, N8N_2_41)

#: n8n's own keepalive line (2.41 writes one after 30 s without output; 2.8.4 none).
N8N_KEEPALIVE = b'{"type":"keepalive"}\n'

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """
    One scripted answer.

    @ivar status: the HTTP status.
    @ivar body: the body; C{None} means the JSON echo (see L{echo}).
    @ivar headers: response headers.
    @ivar delay: seconds to wait before sending anything.
    @ivar reset: after C{delay}, drop the connection without an answer.
    @ivar hang_body: send the headers and the first half of C{body}, then
        never finish.
    """

    status: int = 200
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    hang_body: bool = False
    stream: FakeStream | None = None


class FakeStream:
    """
    A streamed answer as n8n sends it (Response Mode "Streaming"), driven by
    the test line by line, with no timers.

    On the request: status 200 and the headers at once (C{Content-Type:
    application/json; charset=utf-8}, chunked, no C{Content-Length};
    C{Cache-Control: no-cache} as 2.8.4 sends it, C{no-cache, no-transform}
    as 2.41.3 does); then each L{send_line} is one JSON line in one flush
    (one chunk).  L{send_run} writes a whole node run as the C{version}
    does: one chunk per line (2.8.4), or one chunk holding the run's begin,
    items and end (2.41.3); L{send_keepalive} writes n8n's own keepalive
    line.  What the test asks before the request has arrived is done when it
    arrives.

    @ivar arrived: fires with the L{RecordedRequest} when the request is in.
    @ivar closed: fires with C{"finished"} after L{finish}, C{"lost"} when the
        connection went away first (InkFlow dropped it, or L{reset}).
    @ivar paused: how many times the transport asked the fake to stop
        writing (the reader is not keeping up).
    """

    def __init__(self, version: str = N8N_2_8) -> None:
        if version not in N8N_VERSIONS:
            raise ValueError(f"the fake plays n8n {' or '.join(N8N_VERSIONS)}, not {version}")
        self.version = version
        #: The chunks written, in order (each one flush to InkFlow).
        self.chunks: list[bytes] = []
        self.arrived: Deferred[RecordedRequest] = Deferred()
        self.closed: Deferred[str] = Deferred()
        self.request: Request | None = None
        self.paused = 0
        self.resumed = 0
        self.is_paused = False
        self.sent = 0
        self._ops: list[tuple[str, bytes]] = []
        self._resumed_waiters: list[Deferred[None]] = []

    # -- the test's side

    @staticmethod
    def line(
        kind: str,
        content: Any = None,
        node: str = "node-1",
        run: int = 0,
        item: int = 0,
        name: str | None = None,
    ) -> bytes:
        """
        One n8n stream line (newline included).
        """
        value: dict[str, Any] = {"type": kind}
        if content is not None or kind == "error":
            value["content"] = content
        value["metadata"] = {
            "nodeId": node,
            "nodeName": name or f"Node {node}",
            "itemIndex": item,
            "runIndex": run,
            "timestamp": 1767225600000,
        }
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    def send_line(self, kind: str, content: Any = None, **meta: Any) -> None:
        """
        Write one stream line, flushed on its own.
        """
        self._do("raw", self.line(kind, content, **meta))

    def send_run(self, items: list[Any], node: str = "node-1", run: int = 0, name: str | None = None) -> None:
        """
        One node run whole: C{begin}, an C{item} per entry of C{items},
        C{end}; framed as C{version} frames it (see the class).
        """
        meta: dict[str, Any] = {"node": node, "run": run, "name": name}
        lines = [self.line("begin", **meta)]
        lines += [self.line("item", content, **meta) for content in items]
        lines.append(self.line("end", **meta))
        if self.version == N8N_2_41:
            self._do("raw", b"".join(lines))
        else:
            for one in lines:
                self._do("raw", one)

    def send_keepalive(self) -> None:
        """
        n8n's own C{{"type":"keepalive"}} line, in a chunk of its own.
        """
        self._do("raw", N8N_KEEPALIVE)

    def send_raw(self, data: bytes) -> None:
        """
        Write C{data} as one chunk (part of a line, several lines...).
        """
        self._do("raw", data)

    def finish(self) -> None:
        """
        End the body cleanly (the execution ended).
        """
        self._do("finish", b"")

    def reset(self) -> None:
        """
        Drop the connection mid-stream.
        """
        self._do("reset", b"")

    def writable(self) -> Deferred[None]:
        """
        Fires when the transport takes more data (at once if not paused).
        """
        if not self.is_paused:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._resumed_waiters.append(d)
        return d

    # -- the fake's side

    def _do(self, op: str, data: bytes) -> None:
        if self.request is None:
            self._ops.append((op, data))
            return
        self._run(op, data)

    def _run(self, op: str, data: bytes) -> None:
        request = self.request
        assert request is not None
        if request.finished or request.channel is None:
            return
        if op == "raw":
            self.sent += len(data)
            self.chunks.append(data)
            request.write(data)
        elif op == "finish":
            request.unregisterProducer()
            request.finish()
            if not self.closed.called:
                self.closed.callback("finished")
        elif op == "reset":
            request.channel.transport.abortConnection()  # type: ignore[union-attr]

    def start(self, request: Request, record: RecordedRequest) -> None:
        self.request = request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        cache = b"no-cache, no-transform" if self.version == N8N_2_41 else b"no-cache"
        request.setHeader(b"Cache-Control", cache)
        request.registerProducer(self, True)
        request.write(b"")  # the head, at once (chunked: no Content-Length)

        def lost(_: object) -> None:
            if not self.closed.called:
                self.closed.callback("lost")

        request.notifyFinish().addErrback(lost)
        self.arrived.callback(record)
        ops, self._ops = self._ops, []
        for op, data in ops:
            self._run(op, data)

    # IPushProducer, registered on the fake's request: tells the test when
    # InkFlow stops reading n8n's side.
    def pauseProducing(self) -> None:
        self.paused += 1
        self.is_paused = True

    def resumeProducing(self) -> None:
        self.resumed += 1
        self.is_paused = False
        waiters, self._resumed_waiters = self._resumed_waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        pass


def echo() -> Reply:
    """
    200 JSON: C{{"output": "echo: <chatInput>", "sessionId", "path", "files":
    [{"filename", "size", "sha256"}]}}.
    """
    return Reply()


def json_reply(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    """
    A JSON body.
    """
    return Reply(
        status=status,
        body=json.dumps(value, ensure_ascii=False).encode("utf-8"),
        headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )


def status_reply(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Reply:
    """
    A given status, body and headers (e.g. 429 with C{Retry-After}, 500, 503).
    """
    if body:
        headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return Reply(status=status, body=body, headers=dict(headers or {}))


def n8n_not_registered(path: str = "chat") -> Reply:
    """
    n8n's 404 for an inactive or unknown webhook.
    """
    return json_reply(
        {"code": 404, "message": f'The requested webhook "POST {path}" is not registered.', "hint": "..."},
        status=404,
    )


def empty(status: int = 200) -> Reply:
    """
    n8n's answer when a workflow fails before its Respond node: 200, no body.
    """
    return Reply(status=status, body=b"", headers={"Content-Type": "application/json; charset=utf-8"})


def workflow_failed(version: str = N8N_2_8) -> Reply:
    """
    n8n's answer when a workflow fails before its Respond to Webhook node:
    200 with an empty body (2.8.4), or 500 C{{"message":"Error in workflow"}}
    (2.41.3).
    """
    if version == N8N_2_41:
        return json_reply({"message": "Error in workflow"}, status=500)
    if version == N8N_2_8:
        return empty()
    raise ValueError(f"the fake plays n8n {' or '.join(N8N_VERSIONS)}, not {version}")


def text(value: str, status: int = 200) -> Reply:
    """
    A text/plain body.
    """
    return Reply(status=status, body=value.encode("utf-8"), headers={"Content-Type": "text/plain; charset=utf-8"})


def slow(delay: float, then: Reply | None = None) -> Reply:
    """
    C{then} (default: the echo) after C{delay} seconds without a byte.
    """
    base = then or echo()
    return Reply(base.status, base.body, base.headers, delay=delay, reset=base.reset, hang_body=base.hang_body)


def reset(delay: float = 0.0) -> Reply:
    """
    Drop the connection before any header (after C{delay} seconds).
    """
    return Reply(delay=delay, reset=True)


def hang_body(body: bytes = b'{"output": "never finished"}') -> Reply:
    """
    Headers and half a body, then silence.
    """
    return Reply(body=body, headers={"Content-Type": "application/json"}, hang_body=True)


def big(size: int) -> Reply:
    """
    A 200 JSON string body of about C{size} bytes.
    """
    return Reply(body=b'"' + b"x" * max(0, size - 2) + b'"', headers={"Content-Type": "application/json"})


@dataclass(frozen=True)
class RecordedFile:
    """
    A file part received.
    """

    field: str
    filename: str | None
    content_type: str | None
    size: int
    sha256: str


@dataclass
class RecordedRequest:
    """
    A request received.

    @ivar headers: lower-case name -> values.
    @ivar json: the parsed JSON body, if the body was JSON.
    @ivar fields: the text parts of a multipart body.
    @ivar files: the file parts of a multipart body, in order.
    @ivar complete_multipart: whether the multipart body ended properly.
    """

    method: str
    path: str
    headers: dict[str, list[str]]
    content_type: str
    size: int
    json: Any = None
    fields: dict[str, str] = field(default_factory=dict)
    files: list[RecordedFile] = field(default_factory=list)
    complete_multipart: bool = False

    def header(self, name: str) -> str | None:
        """
        The first value of header C{name}, or C{None}.
        """
        values = self.headers.get(name.lower())
        return values[0] if values else None


class _PartCollector:
    """
    Streams one multipart body through python-multipart, hashing file parts.
    """

    def __init__(self, record: RecordedRequest) -> None:
        self.record = record
        self.header_field = b""
        self.header_value = b""
        self.part_headers: dict[str, bytes] = {}
        self.data = bytearray()
        self.hasher = hashlib.sha256()
        self.size = 0
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.part_headers = {}
        self.data = bytearray()
        self.hasher = hashlib.sha256()
        self.size = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part_headers[self.header_field.decode("latin-1").lower()] = self.header_value
        self.header_field = b""
        self.header_value = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self.size += len(chunk)
        self.hasher.update(chunk)
        if len(self.data) < 1024 * 1024:  # text fields are small; files are only hashed
            self.data += chunk

    def on_part_end(self) -> None:
        _, disposition = parse_options_header(self.part_headers.get("content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8")
        filename = disposition.get(b"filename")
        if filename is None:
            self.record.fields[name] = bytes(self.data).decode("utf-8")
            return
        content_type = self.part_headers.get("content-type")
        self.record.files.append(
            RecordedFile(
                field=name,
                filename=filename.decode("utf-8"),
                content_type=content_type.decode("latin-1").strip() if content_type is not None else None,
                size=self.size,
                sha256=self.hasher.hexdigest(),
            )
        )

    def on_end(self) -> None:
        self.ended = True


def _parse_body(record: RecordedRequest, content: BinaryIO, content_type: str) -> None:
    """
    Fill C{record} from the request body: JSON, or multipart streamed through
    python-multipart in chunks.
    """
    media, options = parse_options_header(content_type)
    content.seek(0)
    if media == b"multipart/form-data" and b"boundary" in options:
        collector = _PartCollector(record)
        parser = MultipartParser(options[b"boundary"], collector.callbacks())  # type: ignore[arg-type]
        while chunk := content.read(_CHUNK):
            parser.write(chunk)
        parser.finalize()
        record.complete_multipart = collector.ended
    elif media == b"application/json" or media.endswith(b"+json"):
        try:
            record.json = json.loads(content.read())
        except ValueError:
            record.json = None


class _Webhooks(Resource):
    isLeaf = True

    def __init__(self, fake: FakeN8n) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Request) -> Any:
        fake = self.fake
        path = request.path.decode("utf-8", "replace")
        headers = {
            name.decode("latin-1").lower(): [v.decode("utf-8", "replace") for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        content_type = (headers.get("content-type") or [""])[0]
        content = request.content
        assert content is not None
        content.seek(0, 2)
        record = RecordedRequest(
            method=request.method.decode("ascii"),
            path=path,
            headers=headers,
            content_type=content_type,
            size=content.tell(),
        )
        _parse_body(record, content, content_type)
        fake.requests.append(record)
        reply = fake.next_reply(path)
        transport = request.channel.transport if request.channel is not None else None
        if transport is not None:
            fake._transports.add(transport)
        if reply.stream is not None:
            reply.stream.start(request, record)
            return NOT_DONE_YET

        if reply.delay <= 0:
            self._answer(request, record, reply)
            return NOT_DONE_YET
        call = fake.reactor.callLater(reply.delay, self._answer, request, record, reply)
        fake._calls.add(call)

        def gone(_: object) -> None:
            if call.active():
                call.cancel()
            fake._calls.discard(call)

        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET

    def _answer(self, request: Request, record: RecordedRequest, reply: Reply) -> None:
        self.fake._calls = {c for c in self.fake._calls if c.active()}
        if request.channel is None or request.finished:
            return
        if reply.reset:
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
            return
        body = reply.body if reply.body is not None else self._echo(record)
        headers = dict(reply.headers)
        if reply.body is None:
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        request.setResponseCode(reply.status)
        for name, value in headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("utf-8"))
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if reply.hang_body:
            request.write(body[: len(body) // 2])
            return
        if body:
            request.write(body)
        request.finish()

    @staticmethod
    def _echo(record: RecordedRequest) -> bytes:
        source = record.json if isinstance(record.json, dict) else record.fields
        chat_input = source.get("chatInput", source.get("message", ""))
        answer = {
            "output": f"echo: {chat_input}",
            "sessionId": source.get("sessionId"),
            "path": record.path,
            "files": [{"filename": f.filename, "size": f.size, "sha256": f.sha256} for f in record.files],
        }
        return json.dumps(answer, ensure_ascii=False).encode("utf-8")


class FakeN8n:
    """
    A running fake n8n.

    @ivar requests: every request received, in order.
    @ivar port: the TCP port it listens on.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.requests: list[RecordedRequest] = []
        self.default: Reply = echo()
        self._scripts: dict[str, deque[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self._calls: set[Any] = set()
        self._transports: set[Any] = set()
        self.site = Site(_Webhooks(self), parsePOSTFormSubmission=False)
        self.site.displayTracebacks = False
        self.listening: Any = None
        self.port = 0

    def url(self, path: str = "/webhook/chat") -> str:
        """
        The full URL of C{path} on this fake.
        """
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """
        Queue answers for C{path}, used once each in order; after them the
        path's default (see L{set_default}) or L{default}.
        """
        self._scripts.setdefault(path, deque()).extend(replies)

    def stream(self, path: str = "/webhook/chat", version: str = N8N_2_8) -> FakeStream:
        """
        Queue a streamed answer for C{path} (see L{FakeStream}), framed as n8n
        C{version} frames it, and return its handle, to drive it.
        """
        handle = FakeStream(version)
        self.script(path, Reply(stream=handle))
        return handle

    def set_default(self, path: str, reply: Reply) -> None:
        """
        The answer for C{path} whenever its queue is empty.
        """
        self._defaults[path] = reply

    def next_reply(self, path: str) -> Reply:
        queue = self._scripts.get(path)
        if queue:
            return queue.popleft()
        return self._defaults.get(path, self.default)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """
        The requests received on C{path}, in order.
        """
        return [r for r in self.requests if r.path == path]

    def stop(self) -> Deferred[None]:
        """
        Stop listening, cancel delayed answers and drop open connections.
        """
        for call in list(self._calls):
            if call.active():
                call.cancel()
        self._calls.clear()
        for transport in list(self._transports):
            if getattr(transport, "connected", False):
                transport.abortConnection()
        self._transports.clear()
        if self.listening is None:
            return succeed(None)
        listening, self.listening = self.listening, None
        return maybeDeferred(listening.stopListening)


def listen_fake_n8n(reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> FakeN8n:
    """
    Start a fake n8n on C{interface}:C{port} (0: a free port).
    """
    fake = FakeN8n(reactor)
    fake.listening = reactor.listenTCP(port, fake.site, interface=interface)
    fake.port = fake.listening.getHost().port
    return fake


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - benchmark helper
    """
    Run a JSON-echo fake n8n until interrupted.
    """
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description="A fake n8n answering every POST with a JSON echo.")
    parser.add_argument("--port", type=int, default=5678)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    fake = listen_fake_n8n(reactor, args.port, args.interface)
    if args.delay > 0:
        fake.default = slow(args.delay)
    print(f"fake n8n listening on {fake.url('/')}", flush=True)
    cast(Any, reactor).run()


if __name__ == "__main__":  # pragma: no cover
    main()

"""
InkFlow against a real n8n (2.41.3 by default, or 2.8.4) and the workflows in scripts/n8n/workflows/.

Opt-in: skipped unless C{INKFLOW_N8N_URL} or C{INKFLOW_N8N_DIR} is set (see
conftest.py and docs/n8n.md).  Every test starts its own InkFlow
(C{twistd -n inkflow}) pointed at the n8n under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.n8n.conftest import (
    ECHO_WORKFLOW,
    FAIL_WORKFLOW,
    INACTIVE_WORKFLOW,
    SLOW_WORKFLOW,
    N8n,
)
from tests.support.server import ServerProcess, multipart
from tests.support.server import printing_server as inkflow

pytestmark = pytest.mark.n8n

MB10 = 10 * 1024 * 1024
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
PDF_HEAD = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"


def chat_json(server: ServerProcess, value: dict[str, Any], timeout: float = 60.0) -> tuple[int, dict[str, str], Any]:
    status, headers, data = server.request(
        "POST",
        "/api/chat",
        json.dumps(value).encode(),
        {"Content-Type": "application/json"},
        timeout=timeout,
    )
    return status, headers, json.loads(data) if data else None


def chat_multipart(
    server: ServerProcess,
    fields: dict[str, str],
    files: list[tuple[str, str, str, bytes]],
    timeout: float = 120.0,
) -> tuple[int, dict[str, str], Any]:
    body, content_type = multipart(fields, files)
    status, headers, data = server.request("POST", "/api/chat", body, {"Content-Type": content_type}, timeout=timeout)
    return status, headers, json.loads(data) if data else None


def direct_post(url: str, value: dict[str, Any], timeout: float = 30.0) -> tuple[int, bytes]:
    """
    POST JSON straight to n8n (not through InkFlow).
    """
    request = urllib.request.Request(
        url, data=json.dumps(value).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def png(size: int, seed: bytes) -> bytes:
    """
    C{size} bytes that InkFlow detects as a PNG (its signature, then bytes
    derived from C{seed} that no text detector mistakes for text).
    """
    out = bytearray(PNG_HEAD)
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def pdf(size: int, seed: bytes) -> bytes:
    """
    C{size} bytes that InkFlow detects as a PDF.
    """
    return PDF_HEAD + png(size - len(PDF_HEAD) + len(PNG_HEAD), seed)[len(PNG_HEAD) :]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metadata_of(received: Any) -> dict[str, Any]:
    """
    The metadata as n8n's workflow saw it: an object for JSON requests, a JSON
    string for multipart ones.
    """
    if isinstance(received, str):
        value = json.loads(received)
        assert isinstance(value, dict)
        return value
    assert isinstance(received, dict), received
    return received


def by_name(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    n8n's file list in file-name order: n8n (formidable) records a file when
    its temp copy is flushed to disk, so a small file sent second may come
    first; only the names tie a file to what was sent.
    """
    return sorted(files, key=lambda f: str(f["fileName"]))


def upstream_stats(server: ServerProcess) -> list[dict[str, Any]]:
    status, health = server.get_json("/api/health")
    assert status == 200
    upstreams = health["upstreams"]
    assert isinstance(upstreams, list)
    return upstreams


# --- n8n itself ----------------------------------------------------------------------------------------


def test_n8n_is_up(n8n: N8n) -> None:
    with urllib.request.urlopen(f"{n8n.base}/healthz", timeout=10) as response:
        assert response.status == 200
    pid = n8n.pid()
    if pid is not None:
        main, runner = _rss_mib(pid)
        print(f"n8n RSS at the start of the tests: main {main:.0f} MiB + task runner {runner:.0f} MiB")


# --- the webhook node (echo) ---------------------------------------------------------------------------


def test_json_chat_reaches_the_echo_webhook(n8n: N8n) -> None:
    with inkflow("--webhook", n8n.echo) as server:
        started = time.monotonic()
        status, headers, body = chat_json(
            server,
            {"message": "שלום n8n, מה נשמע?", "sessionId": "json-session-1"},
        )
        elapsed = time.monotonic() - started
    assert status == 200, body
    assert body["workflow"] == "inkflow-echo"
    assert body["action"] == "sendMessage"
    assert body["sessionId"] == "json-session-1"
    assert body["chatInput"] == "שלום n8n, מה נשמע?"
    assert body["metadataType"] == "object"
    assert body["metadata"] == {"requestId": headers["x-request-id"], "source": "inkflow"}
    assert body["files"] == []
    assert body["contentType"].startswith("application/json")
    sent = body["headers"]
    assert sent["x-request-id"] == headers["x-request-id"]
    assert len(sent["idempotency-key"]) >= 16
    print(f"json chat through InkFlow to n8n: {elapsed * 1000:.0f} ms")


def test_client_cookies_and_auth_are_not_forwarded(n8n: N8n) -> None:
    with inkflow("--webhook", n8n.echo, "--webhook-header", "X-Inkflow-Test: forwarded") as server:
        status, _, data = server.request(
            "POST",
            "/api/chat",
            json.dumps({"message": "headers"}).encode(),
            {"Content-Type": "application/json", "Cookie": "sid=secret", "Authorization": "Bearer secret"},
            timeout=60,
        )
    assert status == 200, data
    received = json.loads(data)["headers"]
    assert received["x-inkflow-test"] == "forwarded"
    assert "cookie" not in received
    assert "authorization" not in received


def test_multipart_chat_keeps_hebrew_file_names(n8n: N8n) -> None:
    image = png(20_000, b"image")
    document = pdf(30_000, b"document")
    with inkflow("--webhook", n8n.echo) as server:
        status, headers, body = chat_multipart(
            server,
            {"message": "שני קבצים מצורפים", "sessionId": "multipart-session-1"},
            [
                ("files", "תמונה של החתול.png", "image/png", image),
                ("files", "מסמך סופי (2).pdf", "application/pdf", document),
            ],
        )
    assert status == 200, body
    assert body["contentType"].startswith("multipart/form-data")
    assert body["action"] == "sendMessage"
    assert body["sessionId"] == "multipart-session-1"
    assert body["chatInput"] == "שני קבצים מצורפים"
    # n8n's Webhook node hands multipart text fields over as strings: metadata is JSON text.
    assert body["metadataType"] == "string"
    assert metadata_of(body["metadata"]) == {"requestId": headers["x-request-id"], "source": "inkflow"}
    # Repeated "files" parts become binary properties files0, files1, ... (in arrival order, see by_name).
    assert sorted(f["key"] for f in body["files"]) == ["files0", "files1"]
    assert [(f["fileName"], f["mimeType"], f["size"], f["sha256"]) for f in by_name(body["files"])] == [
        ("מסמך סופי (2).pdf", "application/pdf", len(document), sha256(document)),
        ("תמונה של החתול.png", "image/png", len(image), sha256(image)),
    ]


def test_a_single_file_arrives_as_files_not_files0(n8n: N8n) -> None:
    data = png(5_000, b"single")
    with inkflow("--webhook", n8n.echo) as server:
        status, _, body = chat_multipart(
            server, {"message": "קובץ אחד", "sessionId": "single-file"}, [("files", "קובץ.png", "image/png", data)]
        )
    assert status == 200, body
    assert [(f["key"], f["fileName"], f["size"], f["sha256"]) for f in body["files"]] == [
        ("files", "קובץ.png", len(data), sha256(data))
    ]


def test_five_files_of_10_mb_arrive_whole(n8n: N8n) -> None:
    files = [
        (
            "files",
            f"קובץ גדול {i + 1}.{'png' if i % 2 == 0 else 'pdf'}",
            "image/png" if i % 2 == 0 else "application/pdf",
            (png if i % 2 == 0 else pdf)(MB10, f"big-{i}".encode()),
        )
        for i in range(5)
    ]
    with inkflow("--webhook", n8n.echo, "--attempt-timeout", "120", "--request-timeout", "180") as server:
        started = time.monotonic()
        status, _, body = chat_multipart(
            server, {"message": "חמישה קבצים של 10MB", "sessionId": "big-upload"}, files, timeout=240
        )
        elapsed = time.monotonic() - started
    assert status == 200, body
    received = by_name(body["files"])
    assert sorted(f["key"] for f in received) == [f"files{i}" for i in range(5)]
    sent = sorted(files, key=lambda f: f[1])
    assert [(f["fileName"], f["mimeType"]) for f in received] == [(name, ctype) for _, name, ctype, _ in sent]
    assert [f["size"] for f in received] == [MB10] * 5
    assert [f["bytes"] for f in received] == [MB10] * 5
    assert [f["sha256"] for f in received] == [sha256(data) for _, _, _, data in sent]
    print(f"5 x 10 MB through InkFlow to n8n and back: {elapsed:.2f} s")


# --- the Chat Trigger ----------------------------------------------------------------------------------


def test_chat_trigger_send_message_and_load_previous_session(n8n: N8n) -> None:
    session = f"chat-{uuid.uuid4().hex[:12]}"
    with inkflow("--webhook", n8n.chat) as server:
        status, _, first = chat_json(server, {"action": "sendMessage", "sessionId": session, "chatInput": "שלום, צ'אט"})
        assert status == 200, first
        assert first["output"] == "echo: שלום, צ'אט"
        assert first["sessionId"] == session
        assert first["action"] == "sendMessage"
        assert metadata_of(first["metadata"])["source"] == "inkflow"

        status, _, second = chat_json(server, {"message": "second message", "sessionId": session})
        assert status == 200, second
        assert second["output"] == "echo: second message"

        status, _, history = chat_json(server, {"action": "loadPreviousSession", "sessionId": session})
    assert status == 200, history
    # Answered by the Chat Trigger from its memory, without running the workflow.
    messages = history["data"]
    contents = [m["kwargs"]["content"] for m in messages]
    kinds = [m["id"][-1] for m in messages]
    assert contents == ["שלום, צ'אט", "echo: שלום, צ'אט", "second message", "echo: second message"]
    assert kinds == ["HumanMessage", "AIMessage", "HumanMessage", "AIMessage"]


def test_chat_trigger_load_previous_session_of_an_unknown_session_is_empty(n8n: N8n) -> None:
    with inkflow("--webhook", n8n.chat) as server:
        status, _, history = chat_json(server, {"action": "loadPreviousSession", "sessionId": uuid.uuid4().hex})
    assert status == 200, history
    assert history == {"data": []}


def test_chat_trigger_multipart_with_hebrew_file_names(n8n: N8n) -> None:
    image = png(12_345, b"chat-image")
    text = "שורה ראשונה\nשורה שנייה\n".encode()
    with inkflow("--webhook", n8n.chat) as server:
        status, _, body = chat_multipart(
            server,
            {"chatInput": "קבצים לצ'אט", "sessionId": f"chat-files-{uuid.uuid4().hex[:8]}"},
            [("files", "צילום מסך.png", "image/png", image), ("files", "הערות.txt", "text/plain", text)],
        )
    assert status == 200, body
    assert body["output"] == "echo: קבצים לצ'אט"
    # The Chat Trigger lists files in json.files and stores them as binary data0, data1, ...
    assert [(f["fileName"], f["mimeType"]) for f in by_name(body["files"])] == [
        ("הערות.txt", "text/plain"),
        ("צילום מסך.png", "image/png"),
    ]
    assert sorted(f["binaryKey"] for f in body["files"]) == ["data0", "data1"]
    binary = {b["key"]: (b["fileName"], b["bytes"]) for b in body["binary"]}
    assert {f["binaryKey"]: f["fileName"] for f in body["files"]} == {k: v[0] for k, v in binary.items()}
    assert sorted(v[1] for v in binary.values()) == sorted([len(image), len(text)])
    assert body["metadataType"] == "string"
    assert metadata_of(body["metadata"])["source"] == "inkflow"


def test_five_files_of_10_mb_reach_the_chat_trigger(n8n: N8n) -> None:
    files = [("files", f"צרופה {i + 1}.png", "image/png", png(MB10, f"chat-big-{i}".encode())) for i in range(5)]
    with inkflow("--webhook", n8n.chat, "--attempt-timeout", "120", "--request-timeout", "180") as server:
        started = time.monotonic()
        status, _, body = chat_multipart(
            server, {"chatInput": "חמישה קבצים", "sessionId": f"chat-big-{uuid.uuid4().hex[:8]}"}, files, timeout=240
        )
        elapsed = time.monotonic() - started
    assert status == 200, body
    assert sorted(f["fileName"] for f in body["files"]) == sorted(name for _, name, _, _ in files)
    assert sorted((b["key"], b["bytes"]) for b in body["binary"]) == [(f"data{i}", MB10) for i in range(5)]
    print(f"5 x 10 MB through InkFlow to the Chat Trigger: {elapsed:.2f} s")


# --- failover, failures, slowness ----------------------------------------------------------------------


def test_the_inactive_workflow_answers_404(n8n: N8n) -> None:
    status, data = direct_post(n8n.inactive, {"chatInput": "anyone?"})
    assert status == 404, data
    assert "is not registered" in json.loads(data)["message"]


def test_failover_from_an_inactive_workflow_to_the_echo(n8n: N8n) -> None:
    before = n8n.executions(INACTIVE_WORKFLOW) if n8n.database else None
    with inkflow("--webhook", n8n.inactive, "--webhook", n8n.echo) as server:
        status, _, body = chat_json(server, {"message": "failover", "sessionId": "failover-1"})
        upstreams = upstream_stats(server)
    assert status == 200, body
    assert body["workflow"] == "inkflow-echo"
    assert body["chatInput"] == "failover"
    assert upstreams[0]["failures_total"] == 1
    assert upstreams[1]["failures_total"] == 0
    assert upstreams[1]["requests_total"] == 1
    if before is not None:
        assert n8n.executions(INACTIVE_WORKFLOW) == before


def test_a_failing_workflow_is_a_502_and_runs_exactly_once(n8n: N8n) -> None:
    fail_before = n8n.executions(FAIL_WORKFLOW)
    echo_before = n8n.executions(ECHO_WORKFLOW)
    # n8n answers 500; 500 is not in the default --retry-on, so InkFlow neither retries it nor fails
    # over to the echo webhook: the workflow must run exactly once.
    with inkflow("--webhook", n8n.fail, "--webhook", n8n.echo) as server:
        status, _, body = chat_json(server, {"message": "please fail", "sessionId": "fail-1"})
        upstreams = upstream_stats(server)
    assert status == 502, body
    assert body["error"]["code"] == "upstream_error"
    assert body["error"]["requestId"]
    assert upstreams[0]["requests_total"] == 1
    assert upstreams[1]["requests_total"] == 0
    assert n8n.settled_executions(FAIL_WORKFLOW, fail_before + 1) == fail_before + 1
    assert n8n.executions(ECHO_WORKFLOW) == echo_before


def test_n8n_answers_500_for_the_failing_workflow(n8n: N8n) -> None:
    status, data = direct_post(n8n.fail, {"chatInput": "fail"})
    assert status == 500, data
    assert json.loads(data)["message"] == "Error in workflow"


def test_a_slow_workflow_is_waited_for(n8n: N8n) -> None:
    with inkflow("--webhook", n8n.slow) as server:
        started = time.monotonic()
        status, _, body = chat_json(server, {"message": "take your time", "sessionId": "slow-1"})
        elapsed = time.monotonic() - started
    assert status == 200, body
    assert body == {"output": "slow echo: take your time", "sessionId": "slow-1", "waitedSeconds": 3}
    assert 2.9 <= elapsed < 15, elapsed


def test_an_attempt_timeout_is_a_504_and_the_run_is_not_repeated(n8n: N8n) -> None:
    before = n8n.executions(SLOW_WORKFLOW)
    with inkflow("--webhook", n8n.slow, "--webhook", n8n.echo, "--attempt-timeout", "1") as server:
        started = time.monotonic()
        status, _, body = chat_json(server, {"message": "too slow", "sessionId": "slow-2"})
        elapsed = time.monotonic() - started
        upstreams = upstream_stats(server)
    assert status == 504, body
    assert body["error"]["code"] == "upstream_timeout"
    assert elapsed < 3, elapsed
    assert upstreams[1]["requests_total"] == 0
    # n8n finishes the run although InkFlow gave up: one execution, never a second.
    time.sleep(3.5)
    assert n8n.settled_executions(SLOW_WORKFLOW, before + 1) == before + 1


def test_slow_requests_run_concurrently(n8n: N8n) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def one(server: ServerProcess, i: int) -> None:
        status, _, _ = chat_json(server, {"message": f"parallel {i}", "sessionId": f"parallel-{i}"})
        with lock:
            results.append(status)

    with inkflow("--webhook", n8n.slow) as server:
        threads = [threading.Thread(target=one, args=(server, i)) for i in range(8)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - started
    assert results == [200] * 8
    assert elapsed < 10, elapsed
    print(f"8 concurrent 3 s workflows through InkFlow: {elapsed:.2f} s")


def test_throughput_of_the_echo_through_inkflow(n8n: N8n) -> None:
    total, workers = 200, 8
    statuses: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker(server: ServerProcess) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            status, _, _ = chat_json(server, {"message": f"load {i}", "sessionId": "load"})
            with lock:
                statuses.append(status)

    with inkflow("--webhook", n8n.echo, "--rate-limit", "100000") as server:
        threads = [threading.Thread(target=worker, args=(server,)) for _ in range(workers)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - started
    assert statuses == [200] * total
    rate = total / elapsed
    print(f"{total} echo chats, {workers} at a time, through InkFlow: {elapsed:.2f} s, {rate:.1f} requests/s")
    pid = n8n.pid()
    if pid is not None:
        main, runner = _rss_mib(pid)
        print(f"n8n RSS after the load: main {main:.0f} MiB + task runner {runner:.0f} MiB")


def _rss_mib(pid: int) -> tuple[float, float]:
    """
    The resident memory of n8n's main process and of its children (the task
    runner), MiB.
    """

    def rss(p: str) -> int:
        try:
            with open(f"/proc/{p}/status") as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except OSError:
            return 0

    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        children = []
    return rss(str(pid)) / 1024, sum(rss(c) for c in children) / 1024


def test_no_outbound_connections(n8n: N8n) -> None:
    """
    n8n (and its task runner) listen on loopback only and hold no TCP or UDP
    socket to anything but loopback.
    """
    pid = n8n.pid()
    if pid is None or not os.path.exists(f"/proc/{pid}"):
        pytest.skip("needs the pid of the n8n under test (INKFLOW_N8N_DIR)")
    inodes: set[str] = set()
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = [str(pid), *f.read().split()]
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    seen = 0
    offending: list[str] = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{table}") as f:
            rows = f.read().splitlines()[1:]
        for row in rows:
            fields = row.split()
            local, peer, inode = fields[1], fields[2], fields[9]
            if inode not in inodes:
                continue
            seen += 1
            local_host, peer_host = local.split(":")[0], peer.split(":")[0]
            if local_host not in _LOOPBACK or (peer_host not in _LOOPBACK and peer_host not in _ANY):
                offending.append(f"{table} {local} -> {peer}")
    assert seen > 0, "found none of n8n's sockets"
    assert offending == []


#: 127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc/net/{tcp,udp}{,6} write them.
_LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
#: The unconnected peer of a listening or unconnected socket.
_ANY = {"00000000", "00000000000000000000000000000000"}

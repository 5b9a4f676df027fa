"""
End to end: the real C{twistd -n inkflow} on a loopback port, spoken to over
HTTP, in demo mode (no webhook).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import REPO, ServerProcess, multipart, server_env, twistd

HEALTH_KEYS = {
    "status",
    "version",
    "mode",
    "pid",
    "uptime_s",
    "connections",
    "queue",
    "upstreams",
    "memory",
    "cpu_percent",
    "open_files",
    "threads",
    "cleanup",
    "limits",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    uploads = tmp_path_factory.mktemp("uploads")
    with ServerProcess("--upload-dir", str(uploads)) as s:
        yield s


def test_page_is_hebrew_rtl(server: ServerProcess) -> None:
    """GET / serves the landing page with lang="he" and dir="rtl" and the security headers."""
    status, headers, body = server.request("GET", "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b'lang="he"' in body and b'dir="rtl"' in body
    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"]
    assert headers["server"] == "InkFlow"


def test_page_revalidates_with_304(server: ServerProcess) -> None:
    """A request with the page's ETag, or a later If-Modified-Since, gets 304 and no body."""
    _, headers, _ = server.request("GET", "/")
    status, _, body = server.request("GET", "/", headers={"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")
    status, _, body = server.request("GET", "/", headers={"If-Modified-Since": headers["last-modified"]})
    assert (status, body) == (304, b"")


def test_page_is_gzipped_for_clients_that_accept_it(server: ServerProcess) -> None:
    """Text is sent gzipped to clients that accept gzip, and unzips to the same bytes."""
    _, _, plain = server.request("GET", "/")
    status, headers, packed = server.request("GET", "/", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed) == plain


def test_head_has_headers_and_no_body(server: ServerProcess) -> None:
    """HEAD / answers the GET headers, Content-Length included, with no body."""
    _, get_headers, body = server.request("GET", "/")
    status, headers, head_body = server.request("HEAD", "/")
    assert status == 200
    assert head_body == b""
    assert headers["content-length"] == str(len(body))
    assert headers["etag"] == get_headers["etag"]


def test_assets_are_served_with_cache_control(server: ServerProcess) -> None:
    """Every file under static/assets is served at its path with a long-lived Cache-Control."""
    assets = sorted(p for p in (REPO / "static" / "assets").iterdir() if p.is_file() and not p.name.startswith("."))
    assert assets
    for asset in assets:
        status, headers, body = server.request("GET", f"/assets/{asset.name}")
        assert status == 200, asset
        assert body == asset.read_bytes()
        assert "max-age" in headers["cache-control"]


@pytest.mark.parametrize(
    "path",
    [
        "/../setup.py",
        "/%2e%2e/setup.py",
        "/assets/..%2f..%2fsetup.py",
        "/assets%2f..%2f..%2fsetup.py",
        "/assets/%2e%2e/%2e%2e/setup.py",
        "/..%5csetup.py",
        "/assets/",
        "/assets",
        "/.git/config",
        "/.gitignore",
        "/%00index.html",
        "/inkflow/settings/table.py",
    ],
)
def test_nothing_outside_the_static_folder(server: ServerProcess, path: str) -> None:
    """Traversal, encoded slashes, dot-files and folders get 404 and never a file."""
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    finally:
        conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] in (b"400", b"404"), head
    assert b"setuptools" not in body and b"[core]" not in body and b"import" not in body


def test_health_has_the_contract_keys(server: ServerProcess) -> None:
    """/api/health answers 200 with every key of the contract, mode demo."""
    status, health = server.get_json("/api/health")
    assert status == 200
    assert set(health) >= HEALTH_KEYS
    assert health["mode"] == "demo"
    assert health["status"] == "ok"
    assert health["memory"]["rss_bytes"] > 0
    assert health["limits"]["max_file_size"] == 10485760
    assert health["connections"]["max"] == 50


def test_ready_when_accepting(server: ServerProcess) -> None:
    """/api/ready answers 200 {"ready": true} while the server takes chat work."""
    assert server.get_json("/api/ready") == (200, {"ready": True})


def test_demo_chat_echoes_in_hebrew(server: ServerProcess) -> None:
    """In demo mode a chat message is answered with a Hebrew echo and a generated sessionId."""
    status, headers, body = server.post_json("/api/chat", {"message": "שלום InkFlow 123"})
    assert status == 200
    assert "שלום InkFlow 123" in body["output"]
    assert body["sessionId"] == headers["x-session-id"]
    assert headers["x-request-id"]


def test_demo_chat_accepts_the_n8n_widget_shape(server: ServerProcess) -> None:
    """The @n8n/chat widget's sendMessage and loadPreviousSession requests are answered."""
    status, _, body = server.post_json(
        "/api/chat", {"action": "sendMessage", "sessionId": "abc-123", "chatInput": "היי", "metadata": {}}
    )
    assert status == 200 and "היי" in body["output"]
    status, _, body = server.post_json("/api/chat", {"action": "loadPreviousSession", "sessionId": "abc-123"})
    assert (status, body) == (200, {"data": []})


def test_demo_chat_with_a_file(server: ServerProcess) -> None:
    """A multipart message with a text file is answered, naming the file."""
    payload, ctype = multipart({"message": "קובץ"}, [("files", "הערות.txt", "text/plain", "שלום\n".encode() * 10)])
    status, _, body = server.request("POST", "/api/chat", payload, {"Content-Type": ctype})
    assert status == 200, body
    assert "הערות.txt" in body.decode()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'{"message": ""}', "bad_request"),
        (b'{"message": "x", "sessionId": "../etc"}', "bad_request"),
        (b'{"message": 12}', "bad_request"),
    ],
)
def test_bad_chat_requests_get_json_errors(server: ServerProcess, payload: bytes, code: str) -> None:
    """Malformed chat bodies get 400 with the contract's error shape in Hebrew and English."""
    status, headers, body = server.request("POST", "/api/chat", payload, {"Content-Type": "application/json"})
    import json

    error = json.loads(body)["error"]
    assert status == 400
    assert error["code"] == code
    assert error["message"] and error["message_en"]
    assert error["requestId"] == headers["x-request-id"]


def test_unsupported_content_type_is_415(server: ServerProcess) -> None:
    """A chat body that is neither JSON nor multipart is refused with 415."""
    status, _, body = server.request("POST", "/api/chat", b"hello", {"Content-Type": "text/plain"})
    assert status == 415
    assert b"unsupported_type" in body


def test_oversize_body_refused_before_it_is_sent(server: ServerProcess) -> None:
    """A Content-Length over the limit gets 413 at once, without 100 Continue and without reading the body."""
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        conn.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999\r\nExpect: 100-continue\r\n\r\n"
        )
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    finally:
        conn.close()
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"100 Continue" not in data
    assert b'"too_large"' in data
    assert b"Connection: close" in data


def test_unknown_api_route_and_wrong_method(server: ServerProcess) -> None:
    """Unknown /api/ routes get JSON 404; a wrong method gets JSON 405 with Allow."""
    status, _, body = server.request("GET", "/api/nothing")
    assert status == 404 and b'"not_found"' in body
    status, headers, body = server.request("DELETE", "/api/health")
    assert status == 405 and b'"method_not_allowed"' in body
    assert "GET" in headers["allow"]


def test_sighup_does_not_kill_the_server(server: ServerProcess) -> None:
    """SIGHUP is logged and ignored; the server keeps answering."""
    server.send_signal(signal.SIGHUP)
    server.wait_for("SIGHUP received", timeout=10)
    assert server.get_json("/api/ready")[0] == 200


def test_static_only_mode(tmp_path: Path) -> None:
    """--static-only serves the page and answers /api/chat with 404 chat_disabled."""
    with ServerProcess("--static-only", "--upload-dir", str(tmp_path)) as s:
        assert s.request("GET", "/")[0] == 200
        status, _, body = s.post_json("/api/chat", {"message": "hi"})
        assert status == 404 and body["error"]["code"] == "chat_disabled"
        assert s.get_json("/api/health")[1]["mode"] == "static-only"


def test_sigterm_when_idle_exits_within_a_second(tmp_path: Path) -> None:
    """An idle server stops on SIGTERM within a second, with twistd's usual status and no traceback."""
    s = ServerProcess("--upload-dir", str(tmp_path)).start()
    assert s.get_json("/api/health")[0] == 200
    started = time.monotonic()
    code = s.stop(signal.SIGTERM)
    assert time.monotonic() - started < 1.0
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert "Traceback" not in s.output()


@contextlib.contextmanager
def sigint_deliverable() -> Iterator[None]:
    """
    While a server is started: SIGINT not ignored in this process, so the
    server does not inherit it ignored.  A suite started in the background
    of a non-interactive shell (C{make test &}) has SIGINT ignored, and an
    ignored signal stays ignored across C{exec}: Python then installs no
    handler and Twisted, rightly, none either (the server would never see
    the signal this test sends).
    """
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_sigint_stops_cleanly(tmp_path: Path) -> None:
    """SIGINT stops the server with status 0 and no traceback."""
    with sigint_deliverable():
        s = ServerProcess("--upload-dir", str(tmp_path)).start()
    assert s.get_json("/api/health")[0] == 200  # the reactor runs: its signal handlers are in
    code = s.stop(signal.SIGINT)
    assert code in (0, -signal.SIGINT, 128 + signal.SIGINT)
    assert "Traceback" not in s.output()


def test_tac_is_configured_from_the_environment(tmp_path: Path) -> None:
    """twistd -ny inkflow.tac serves the same page and health, configured by INKFLOW_* variables."""
    s = ServerProcess(
        command=[twistd(), "-ny", str(REPO / "inkflow.tac"), "--pidfile="],
        env={
            "INKFLOW_LISTEN": "tcp:0:interface=127.0.0.1",
            "INKFLOW_MAX_FILES": "3",
            "INKFLOW_UPLOAD_DIR": str(tmp_path),
        },
    )
    with s:
        status, _, body = s.request("GET", "/")
        assert status == 200 and b'dir="rtl"' in body
        health = s.get_json("/api/health")[1]
        assert health["limits"]["max_files"] == 3
        assert health["mode"] == "demo"


def _run_bad(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=server_env(env), cwd=str(REPO), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--max-files", "many"], None, "--max-files"),
        (["--listen", "nonsense:1"], None, "--listen"),
        (["--webhook", "ftp://x"], None, "--webhook"),
        (["--bogus"], None, "--bogus"),
        ([], {"INKFLOW_QUEUE_TIMEOUT": "-3"}, "INKFLOW_QUEUE_TIMEOUT"),
        ([], {"INKFLOW_RETRY_ON": "connect,418"}, "INKFLOW_RETRY_ON"),
    ],
)
def test_bad_options_give_one_clear_line(args: list[str], env: dict[str, str] | None, needle: str) -> None:
    """A bad flag or environment value stops start-up with one line naming it, status 2, no traceback."""
    result = _run_bad([twistd(), "-n", "--pidfile=", "inkflow", *args], env)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2
    assert len(lines) == 1, lines
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_environment_in_tac_gives_one_line() -> None:
    """The .tac with a bad INKFLOW_* value stops with one line naming it."""
    result = _run_bad([twistd(), "-ny", str(REPO / "inkflow.tac"), "--pidfile="], {"INKFLOW_MAX_CONNECTIONS": "0"})
    assert result.returncode != 0
    assert "INKFLOW_MAX_CONNECTIONS" in result.stderr
    assert "Traceback" not in result.stderr


def test_twistd_lists_the_plugin_when_installed() -> None:
    """After the install, `twistd --help` lists inkflow without the checkout on sys.path."""
    if not (Path(sys.executable).parent / "twistd").exists():
        pytest.skip("twistd is not installed in this environment")
    env = server_env(source=False)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [twistd(), "--help"], env=env, cwd="/", capture_output=True, text=True, timeout=60, check=False
    )
    if "inkflow" not in result.stdout and os.environ.get("CI") is None:
        pytest.skip("inkflow is not installed in this environment (run the README's test command)")
    assert "inkflow" in result.stdout


def test_installed_package_serves_its_own_page(tmp_path: Path) -> None:
    """An installed InkFlow run outside the checkout serves the page shipped inside the package."""
    env = server_env(source=False)
    probe = subprocess.run(
        [sys.executable, "-c", "import inkflow, sys; sys.stdout.write(inkflow.__file__)"],
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("inkflow is not installed in this environment (run the README's test command)")
    assert not probe.stdout.startswith(str(REPO) + "/inkflow")
    with ServerProcess("--upload-dir", str(tmp_path), cwd="/", source=False) as s:
        status, _, body = s.request("GET", "/")
        assert status == 200 and b'dir="rtl"' in body
        assert s.request("GET", "/assets/" + next((REPO / "static" / "assets").iterdir()).name)[0] == 200


def test_metrics_in_prometheus_format(server: ServerProcess) -> None:
    """/metrics answers Prometheus text with InkFlow's request, chat, queue, connection and memory metrics."""
    server.post_json("/api/chat", {"message": "count me"})
    status, headers, body = server.request("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'inkflow_http_requests_total{route="/api/chat",status="200"}' in text
    assert "inkflow_chat_latency_seconds_bucket" in text
    assert "inkflow_queue_depth " in text
    assert "inkflow_queue_wait_seconds_count" in text
    assert "inkflow_connections_active " in text
    assert "inkflow_process_rss_bytes " in text
    assert "inkflow_cleanup_runs_total " in text
    assert 'inkflow_build_info{python="' in text and 'version="' in text
    assert "process_resident_memory_bytes " in text
    assert "process_cpu_seconds_total " in text


def test_shutdown_delay_serves_not_ready_then_exits(tmp_path: Path) -> None:
    """--shutdown-delay 2: after SIGTERM, new connections still get answers, /api/ready says 503 with Connection: close, then the server exits."""
    s = ServerProcess("--shutdown-delay", "2", "--upload-dir", str(tmp_path)).start()
    assert s.get_json("/api/ready") == (200, {"ready": True})
    s.send_signal(signal.SIGTERM)
    s.wait_for("not ready; still serving")
    status, headers, body = s.request("GET", "/api/ready")
    assert status == 503 and b'"draining"' in body
    assert headers["connection"] == "close"
    assert s.request("GET", "/")[0] == 200
    code = s.wait(15)
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert "Traceback" not in s.output()

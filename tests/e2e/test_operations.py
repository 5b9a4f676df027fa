"""
End to end: what operators run — JSON logs, the daemon with its pid file and
log file, log rotation on SIGUSR1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.server import ServerProcess, run_command, twistd


def test_json_log_lines_carry_request_ids(tmp_path: Path) -> None:
    """
    --log-format json: every line is a JSON object; chat lines carry the request id the client got
    (the per-chat line, from the chat handler, is debug: the access line is the record at info).
    """
    with ServerProcess("--log-format", "json", "--log-level", "debug", "--upload-dir", str(tmp_path)) as s:
        status, headers, _ = s.post_json("/api/chat", {"message": "log me"})
        assert status == 200
        request_id = headers["x-request-id"]
        s.wait_for(re.compile(r'"log.logger": "inkflow.access"'))
    records = [json.loads(line) for line in s.output().splitlines() if line.startswith("{")]
    assert records
    assert all(line.startswith("{") for line in s.output().splitlines() if line.strip())
    chat_lines = [r for r in records if r.get("request_id") == request_id]
    assert {r["log.logger"] for r in chat_lines} >= {"inkflow.web.handler", "inkflow.access"}


ECS_KEYS = ("@timestamp", "log.level", "log.logger", "message", "ecs.version")


def test_every_json_line_of_a_run_has_the_documented_shape(tmp_path: Path) -> None:
    """
    A whole run with --log-format json (start, a chat, a 404, SIGHUP, stop): every line parses, in the
    ECS shape docs/operations.md documents, with no Twisted internals; the start-up line is short.
    """
    s = ServerProcess("--log-format", "json", "--log-level", "debug", "--max-files", "3", "--upload-dir", str(tmp_path))
    s.start()
    assert s.post_json("/api/chat", {"message": "log me"})[0] == 200
    assert s.request("GET", "/nowhere")[0] == 404
    s.send_signal(signal.SIGHUP)
    s.wait_for("nothing to rotate")
    assert s.stop() in (0, 1, -signal.SIGTERM, 128 + signal.SIGTERM)
    lines = [line for line in s.output().splitlines() if line.strip()]
    assert len(lines) > 10
    for line in lines:
        record = json.loads(line)
        assert list(record)[: len(ECS_KEYS)] == list(ECS_KEYS), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["@timestamp"]), line
        assert record["log.level"] in ("debug", "info", "warn", "error", "critical"), line
        assert not [key for key in record if key.startswith("log_") or key == "format"], line
        assert "__class_uuid__" not in line
    [start] = [json.loads(line) for line in lines if "starting in demo mode" in line]
    assert start["settings"]["max-files"] == 3
    assert len(json.dumps(start)) < 800, start


def test_access_log_can_be_turned_off(tmp_path: Path) -> None:
    """--access-log false: requests are answered and no access line is written."""
    with ServerProcess("--access-log", "false", "--upload-dir", str(tmp_path)) as s:
        assert s.request("GET", "/")[0] == 200
        s.request("GET", "/api/health")
    assert "inkflow.access" not in s.output()


def _wait_for_file_line(path: Path, pattern: str, within: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists():
            m = re.search(pattern, path.read_text(errors="replace"))
            if m:
                return m
        time.sleep(0.05)  # polling another process's file, bounded by the deadline
    raise AssertionError(f"{pattern!r} not in {path}")


def _gone(pid: int, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_daemon_starts_and_stops_through_its_pid_file(tmp_path: Path) -> None:
    """twistd inkflow as a daemon writes its pid file and log file, serves, rotates its log on SIGUSR1, and stops via the pid file."""
    pidfile, logfile = tmp_path / "inkflow.pid", tmp_path / "inkflow.log"
    result = run_command(
        [
            twistd(),
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(logfile),
            "inkflow",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--upload-dir",
            str(tmp_path / "uploads"),
        ]
    )
    assert result.returncode == 0, result.stderr
    port = int(_wait_for_file_line(logfile, r"InkFlowSite starting on (\d+)").group(1))
    pid = int(pidfile.read_text().strip())
    try:
        assert ServerProcess.attach(port).get_json("/api/health")[1]["pid"] == pid
        os.kill(pid, signal.SIGUSR1)
        _wait_for_file_line(logfile, r"log file rotated")
        assert (tmp_path / "inkflow.log.1").exists()
    finally:
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
    assert _gone(pid)
    assert not pidfile.exists()
    assert "Traceback" not in logfile.read_text()


def _monitor(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command([sys.executable, "-m", "inkflow.tools.cli", "monitor", *args])


def test_monitor_once_json_takes_the_servers_base_url(tmp_path: Path) -> None:
    """inkflow monitor --once --json with http://host:port and http://host:port/ reads /api/health of that server."""
    with ServerProcess("--upload-dir", str(tmp_path)) as s:
        pid = s.get_json("/api/health")[1]["pid"]
        for url in (s.base, s.base + "/", s.url("/api/health")):
            result = _monitor("--url", url, "--once", "--json")
            assert (result.returncode, result.stderr) == (0, ""), url
            assert json.loads(result.stdout)["pid"] == pid


def test_monitor_once_unreachable_is_one_line_and_status_1() -> None:
    """Nothing listening: exit 1, nothing on stdout, one line on stderr naming the health URL read."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _monitor("--url", f"http://127.0.0.1:{port}", "--once", "--json")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"inkflow monitor: cannot read http://127.0.0.1:{port}/api/health: connection refused\n"


def test_systemd_notify_ready_once_listening_and_watchdog(tmp_path: Path) -> None:
    """
    Under Type=notify (a $NOTIFY_SOCKET, here a local datagram socket): READY=1 arrives once the port
    answers, then WATCHDOG=1 every half of WatchdogSec, and STOPPING=1 on SIGTERM.
    """
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        s = ServerProcess(
            "--upload-dir", str(tmp_path / "uploads"), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
        )
        with s:
            assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
            assert s.get_json("/api/health")[0] == 200
            assert [sock.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3
            s.stop()
        messages = []
        sock.setblocking(False)  # the process has exited: what it sent is all in the buffer
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(sock.recv(4096))
        assert messages[-1] == b"STOPPING=1"
        assert set(messages[:-1]) <= {b"WATCHDOG=1"}

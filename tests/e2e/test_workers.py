"""
End to end: C{--workers N} — several processes serving one port, supervised.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor

from tests.e2e.test_admission import chat, client, wait_until
from tests.support.fake_n8n import json_reply, listen_fake_n8n, slow
from tests.support.server import ServerProcess

reactor: Any = _reactor


def pids_answering(s: ServerProcess, want: int, seconds: float = 20.0, tries: int = 5000) -> set[int]:
    """
    Ask /api/health on fresh connections until C{want} distinct pids answered
    (bounded in time and count: a worker still starting on a busy machine, or
    one that keeps winning the accept race, must not fail the test early).
    """
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    for _ in range(tries):
        seen.add(s.get_json("/api/health")[1]["pid"])
        if len(seen) >= want or time.monotonic() > deadline:
            break
    return seen


def test_two_workers_share_the_port_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    """--workers 2: two worker pids answer on one port; a SIGKILLed worker is replaced by a new one."""
    with ServerProcess("--workers", "2", "--upload-dir", str(tmp_path)) as s:
        first = pids_answering(s, 2)
        assert len(first) == 2
        assert s.proc is not None and s.proc.pid not in first  # the parent does not serve
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        s.wait_for(rf"Worker {victim} was killed by signal 9 \(SIGKILL\)")
        s.wait_for(r"Worker \d+ started: pid \d+", timeout=10)
        deadline = time.monotonic() + 15
        now: set[int] = set()
        while time.monotonic() < deadline and not (len(now) == 2 and victim not in now):
            now = pids_answering(s, 2)
        assert victim not in now and len(now) == 2
    assert "Traceback" not in s.output()


def test_workers_need_a_tcp_endpoint(tmp_path: Path) -> None:
    """--workers 2 with a unix: endpoint stops start-up with one line naming --workers."""
    from tests.support.server import run_command, twistd

    result = run_command(
        [twistd(), "-n", "--pidfile=", "inkflow", "--workers", "2", "--listen", f"unix:{tmp_path}/s.sock"]
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest_twisted.ensureDeferred
async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    """SIGTERM to the parent while chats are in flight on both workers: all are answered, all processes exit."""
    fake = listen_fake_n8n(reactor)
    fake.set_default("/webhook/slow", slow(1.0, json_reply({"output": "ok"})))
    s = ServerProcess(
        "--workers", "2", "--webhook", fake.url("/webhook/slow"), "--rate-limit", "0", "--upload-dir", str(tmp_path)
    ).start()
    try:
        await threads.deferToThread(pids_answering, s, 2)
        http = client()
        results = defer.gatherResults([defer.Deferred.fromCoroutine(chat(http, s, f"m{i}")) for i in range(8)])
        await wait_until(lambda: len(fake.requests_for("/webhook/slow")) >= 8)
        s.send_signal(signal.SIGTERM)
        answers = await results
        assert [code for code, _, _ in answers] == [200] * 8
        code = await threads.deferToThread(s.wait, 20)
        assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
        output = s.output()
        assert output.count("Drained; stopping") == 2
        assert "Traceback" not in output
        assert json.dumps(answers[0][2]) == '{"output": "ok"}'
    finally:
        s.stop()
        await fake.stop()

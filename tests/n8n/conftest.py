"""
A real n8n for the opt-in integration tests (C{pytest -m n8n tests/n8n}).

Either:
  - C{INKFLOW_N8N_URL}: the base URL of an n8n already started by
    C{scripts/n8n/start.sh} (e.g. C{http://127.0.0.1:5678}); add
    C{INKFLOW_N8N_DIR} (its install folder) so the tests can count executions
    in its database; or
  - C{INKFLOW_N8N_DIR}: an install made by C{scripts/n8n/install.sh}; the
    session starts n8n on a free loopback port with C{start.sh} and stops it
    with C{stop.sh} at the end.
Without either, every test here is skipped.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.server import REPO

SCRIPTS = REPO / "scripts" / "n8n"

#: The fixed ids and paths of scripts/n8n/workflows/*.json.
ECHO_WORKFLOW = "InkflowEcho00001"
CHAT_WORKFLOW = "InkflowChat00002"
FAIL_WORKFLOW = "InkflowFail00003"
SLOW_WORKFLOW = "InkflowSlow00004"
INACTIVE_WORKFLOW = "InkflowOff000005"
STREAM_WORKFLOW = "InkflowStream006"
CHAT_WEBHOOK_ID = "6d1f2c3a-7b4e-4c1d-9a0e-1c2b3d4e5f60"
RESPONSE_NODES_WORKFLOW = "InkflowResp00006"
RESPONSE_NODES_WEBHOOK_ID = "8a3c5e7f-1b2d-4c6e-9f0a-2b3c4d5e6f70"
STREAM_WEBHOOK_ID = "7e2a3b4c-8c5f-4d2e-8b1f-2d3c4e5f6a70"

START_TIMEOUT = 300.0


@dataclass(frozen=True)
class N8n:
    """
    A running n8n with InkFlow's test workflows.

    @ivar base: C{http://127.0.0.1:PORT} without a trailing slash.
    @ivar dir: its install folder (for the database), when known.
    """

    base: str
    dir: Path | None

    def webhook(self, path: str) -> str:
        return f"{self.base}/webhook/{path}"

    @property
    def echo(self) -> str:
        return self.webhook("inkflow-echo")

    @property
    def chat(self) -> str:
        return self.webhook(f"{CHAT_WEBHOOK_ID}/chat")

    @property
    def response_nodes(self) -> str:
        """The Chat Trigger in "Using Response Nodes" mode (scripts/n8n/workflows/response-nodes.json)."""
        return self.webhook(f"{RESPONSE_NODES_WEBHOOK_ID}/chat")

    @property
    def stream(self) -> str:
        """
        The streaming Chat Trigger (scripts/n8n/workflows/stream.json).
        """
        return self.webhook(f"{STREAM_WEBHOOK_ID}/chat")

    @property
    def fail(self) -> str:
        return self.webhook("inkflow-fail")

    @property
    def slow(self) -> str:
        return self.webhook("inkflow-slow")

    @property
    def inactive(self) -> str:
        return self.webhook("inkflow-inactive")

    @property
    def database(self) -> Path | None:
        if self.dir is None:
            return None
        path = self.dir / "user" / ".n8n" / "database.sqlite"
        return path if path.exists() else None

    def executions(self, workflow_id: str) -> int:
        """
        How many executions of C{workflow_id} n8n has recorded (finished or not).
        """
        database = self.database
        if database is None:
            pytest.skip("counting executions needs INKFLOW_N8N_DIR (the database of the n8n under test)")
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as conn:
            row = conn.execute(
                'SELECT COUNT(*) FROM execution_entity WHERE "workflowId" = ?', (workflow_id,)
            ).fetchone()
        return int(row[0])

    def settled_executions(self, workflow_id: str, at_least: int, timeout: float = 15.0) -> int:
        """
        The execution count of C{workflow_id} once it has reached C{at_least}
        and then stayed put for a second (n8n may write the record after it
        answered).
        """
        deadline = time.monotonic() + timeout
        count = self.executions(workflow_id)
        while count < at_least and time.monotonic() < deadline:
            time.sleep(0.2)
            count = self.executions(workflow_id)
        time.sleep(1.0)
        return self.executions(workflow_id)

    def pid(self) -> int | None:
        if self.dir is None:
            return None
        try:
            return int((self.dir / "n8n.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def _free_port_pair() -> int:
    """
    A loopback port P with P+1 free too (n8n's task broker listens there).

    Taken below Linux's ephemeral range (32768-60999 by default), where
    nothing but listeners binds: a port from C{bind(0)} is an ephemeral one,
    and on a busy machine its neighbour P+1 can be the local port of some
    other process's outgoing connection by the time n8n binds it (seen: n8n
    2.41.3's broker failing with EADDRINUSE while nothing listened on P+1).
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free loopback ports")


@pytest.fixture(scope="session")
def n8n() -> Iterator[N8n]:
    url = os.environ.get("INKFLOW_N8N_URL", "").strip().rstrip("/")
    folder = os.environ.get("INKFLOW_N8N_DIR", "").strip()
    directory = Path(folder).resolve() if folder else None
    if url:
        yield N8n(url, directory)
        return
    if directory is None:
        pytest.skip(
            "no real n8n: set INKFLOW_N8N_URL (an n8n started by scripts/n8n/start.sh) "
            "or INKFLOW_N8N_DIR (an install by scripts/n8n/install.sh); see docs/n8n.md"
        )
    if not (directory / "node_modules" / ".bin" / "n8n").exists():
        pytest.skip(f"INKFLOW_N8N_DIR={directory} holds no n8n; run scripts/n8n/install.sh {directory}")
    port = _free_port_pair()
    started = subprocess.run(
        [str(SCRIPTS / "start.sh"), str(directory), str(port)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    if started.returncode != 0:
        pytest.fail(f"scripts/n8n/start.sh failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield N8n(f"http://127.0.0.1:{port}", directory)
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(directory)], capture_output=True, timeout=60, check=False)

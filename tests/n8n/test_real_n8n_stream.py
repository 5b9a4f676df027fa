"""
Streamed answers through InkFlow from a real n8n (2.41.3 or 2.8.4): a Chat Trigger in
Response Mode "Streaming" and two Respond to Webhook nodes (typeVersion 1.5,
streaming on) with a 3 s Wait between them (scripts/n8n/workflows/stream.json).

Opt-in, like tests/n8n/test_real_n8n.py (C{make test-n8n}).
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.n8n.conftest import STREAM_WORKFLOW, N8n
from tests.support.server import printing_server as inkflow

pytestmark = pytest.mark.n8n

WAIT_SECONDS = 3.0


def streamed_lines(
    host: str, port: int, path: str, value: dict[str, Any], timeout: float = 60.0
) -> tuple[int, dict[str, str], list[tuple[float, dict[str, Any]]]]:
    """
    POST with C{Accept: text/plain} (as @n8n/chat does with enableStreaming)
    and read the answer line by line as it comes: (seconds since the request,
    the parsed line) for each.
    """
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        started = time.monotonic()
        conn.request(
            "POST",
            path,
            json.dumps(value).encode(),
            {"Content-Type": "application/json", "Accept": "text/plain"},
        )
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        out: list[tuple[float, dict[str, Any]]] = []
        if response.status != 200:
            response.read()
            return response.status, headers, out
        for _ in range(10_000):
            raw = response.readline()
            if not raw:
                break
            if raw.strip():
                out.append((time.monotonic() - started, json.loads(raw)))
        return response.status, headers, out
    finally:
        conn.close()


def items(lines: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, str]]:
    return [(t, str(v.get("content"))) for t, v in lines if v.get("type") == "item"]


def test_n8n_itself_streams_the_two_parts(n8n: N8n) -> None:
    """
    Straight to n8n: the workflow streams (the reference for the test below).
    """
    parts = urlsplit(n8n.stream)
    status, headers, lines = streamed_lines(
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        parts.path,
        {"action": "sendMessage", "sessionId": "stream-direct", "chatInput": "שלום"},
    )
    assert status == 200, headers
    got = items(lines)
    assert [c for _, c in got] == ["part one: שלום", "part two"], lines
    assert got[1][0] - got[0][0] >= WAIT_SECONDS - 0.5


def test_first_part_arrives_through_inkflow_before_the_second_is_produced(n8n: N8n) -> None:
    """
    Through InkFlow the first part is at the client about 3 s before the
    second (the Wait), unchanged and in n8n's framing; the stream ends
    cleanly with no error line.
    """
    before = n8n.executions(STREAM_WORKFLOW) if n8n.database is not None else None
    with inkflow("--webhook", n8n.stream, "--rate-limit", "0") as server:
        status, headers, lines = streamed_lines(
            "127.0.0.1", server.port, "/api/chat", {"message": "שלום", "sessionId": "stream-inkflow"}
        )
    assert status == 200
    assert headers["content-type"] == "application/x-ndjson; charset=utf-8"
    assert headers["x-accel-buffering"] == "no"
    got = items(lines)
    assert [c for _, c in got] == ["part one: שלום", "part two"], lines
    first_at, second_at = got[0][0], got[1][0]
    assert second_at - first_at >= WAIT_SECONDS - 0.5, (first_at, second_at)
    assert first_at < WAIT_SECONDS, first_at
    kinds = [v["type"] for _, v in lines]
    assert "error" not in kinds
    assert kinds.count("begin") == 2 and kinds.count("end") == 2
    assert {v["metadata"]["nodeName"] for _, v in lines} == {"First part", "Second part"}
    if before is not None:
        assert n8n.settled_executions(STREAM_WORKFLOW, before + 1) == before + 1


def test_json_client_gets_both_parts_joined(n8n: N8n) -> None:
    """
    A JSON client of the streaming workflow gets C{{"output"}} with the two
    parts joined (one per node run).
    """
    with inkflow("--webhook", n8n.stream, "--rate-limit", "0") as server:
        status, _, data = server.request(
            "POST",
            "/api/chat",
            json.dumps({"message": "hi", "sessionId": "stream-json"}).encode(),
            {"Content-Type": "application/json"},
            timeout=60,
        )
    assert status == 200, data
    assert json.loads(data)["output"] == "part one: hi\n\npart two"


def test_json_client_of_a_stream_longer_than_the_attempt_timeout(n8n: N8n) -> None:
    """
    With --attempt-timeout 1 and --request-timeout 2, the 3 s Wait between
    the two parts does not cut a JSON client's answer: the attempt's time
    bounds only n8n's first line, then the stream deadlines apply.
    """
    args = ("--webhook", n8n.stream, "--rate-limit", "0", "--attempt-timeout", "1", "--request-timeout", "2")
    with inkflow(*args) as server:
        started = time.monotonic()
        status, _, data = server.request(
            "POST",
            "/api/chat",
            json.dumps({"message": "ארוך", "sessionId": "stream-json-long"}).encode(),
            {"Content-Type": "application/json"},
            timeout=60,
        )
        took = time.monotonic() - started
    assert status == 200, data
    assert json.loads(data)["output"] == "part one: ארוך\n\npart two"
    assert took >= WAIT_SECONDS - 0.5, took

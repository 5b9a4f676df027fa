"""
End to end: streamed answers leave nothing for the garbage collector.

The real server runs with C{bench/gc_trace} on its path and its automatic
collections off; after the streams, a census (C{SIGUSR2}) counts the objects
only the collector could free, by type.  Every stream used to leave about 75
(its relay and n8n's body, twisted.web's response parser and decoder, the
n8n connection's connector and endpoint factory), and at 2,000 streams a
burst the generation-1 pass that found them stopped the server for 0.7 s
(docs/benchmarks.md).  The fake n8n is driven line by line: no sleeps.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.e2e.test_stream import GUARD, SERVER_ARGS, open_stream, post_json
from tests.support.fake_n8n import FakeN8n
from tests.support.server import REPO, ServerProcess

#: What a stream is made of: none of it may be left in a cycle.
STREAM_PARTS = {
    "StreamRelay",
    "StreamBody",
    "LineSplitter",
    "InkFlowRequest",
    "RequestState",
    "HTTP11ClientProtocol",
    "_ClientProtocol",
    "HTTPClientParser",
    "_ChunkedTransferDecoder",
    "Response",
    "Connector",
    "_WrappingFactory",
    "Server",
    "Client",
}


@pytest.fixture(scope="module")
def traced(fake: FakeN8n, uploads: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    census = tmp_path_factory.mktemp("gc") / "gc"
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO / "bench" / "gc_trace"), str(REPO)]),
        "BENCH_GC_TRACE": str(census),
        "BENCH_GC_OFF": "1",
    }
    with ServerProcess(
        "--webhook", fake.url("/webhook/chat"), "--upload-dir", str(uploads), *SERVER_ARGS, env=env
    ) as s:
        yield s


def census(server: ServerProcess) -> dict[str, int]:
    """
    The objects only the collector could free, by type (and those found
    are let go: the next census starts from nothing).
    """
    assert server.proc is not None
    server.proc.send_signal(signal.SIGUSR2)
    found = server.wait_for(r"gc census: (\d+)(.*)", timeout=GUARD)
    kinds = dict(item.rsplit("=", 1) for item in found.group(2).split())
    assert sum(int(n) for n in kinds.values()) == int(found.group(1))
    return {name: int(n) for name, n in kinds.items()}


@pytest_twisted.ensureDeferred
async def test_streams_leave_nothing_for_the_collector(traced: ServerProcess, fake: FakeN8n) -> None:
    """
    Streams relayed to the end, and a stream read whole for a JSON client,
    leave none of their parts in a reference cycle.
    """
    # A first round warms up what is built on first use (imports, caches);
    # the census after it starts the count from nothing.
    await streams(traced, fake, 1)
    census(traced)
    await streams(traced, fake, 5)
    left = census(traced)
    assert set(left) & STREAM_PARTS == set(), left
    assert sum(left.values()) < 10, left


async def streams(server: ServerProcess, fake: FakeN8n, count: int) -> None:
    """
    C{count} streams relayed to a streaming client to their end, then one
    read whole for a JSON client.
    """
    for i in range(count):
        stream = fake.stream("/webhook/chat")
        stream.send_line("begin", node="agent")
        response, reader = await open_stream(server, {"message": f"שלום {i}", "sessionId": f"s-{i}"})
        assert response.code == 200
        await reader.wait_lines(1)
        stream.send_line("item", "אחת", node="agent")
        stream.send_line("end", node="agent")
        stream.finish()
        assert await reader.end() == "clean"
    joined = fake.stream("/webhook/chat")
    joined.send_line("begin", node="agent")
    joined.send_line("item", "שלום", node="agent")
    joined.send_line("end", node="agent")
    joined.finish()
    code, _, body = await post_json(server, {"message": "שלום", "sessionId": "s-json"})
    assert (code, body) == (200, {"output": "שלום"})

"""
End to end: one service over several processes and instances, with real
processes.

 - C{--workers 2} (the parent holds the state, the workers reach it over
   AMP): one C{Idempotency-Key} runs n8n once, C{--rate-limit 5} lets through
   what one process would, every C{/metrics} scrape and C{/api/health} says
   the whole server's totals;
 - two instances sharing a real C{redis-server} (C{--redis}, on a free
   loopback port): one key across both runs n8n once, the rate limit is
   shared; Redis stopped mid-run: chat still answered, health C{degraded},
   readiness 200; Redis back: shared again;
 - another client (another address, or another session) reusing a key gets
   its own answer, never the first client's body or C{X-Session-ID}.

The clients' addresses are told with C{X-Forwarded-For} from the trusted
loopback proxy, so one test process plays many clients.  Loopback only; every
wait is bounded.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater

from tests.support.fake_n8n import FakeN8n, listen_fake_n8n, slow
from tests.support.redis_server import RedisServer, running_redis
from tests.support.server import ServerProcess

reactor: Any = _reactor

#: Seconds the fake n8n takes per chat: long enough for six requests to meet in flight.
N8N_DELAY = 0.6
RATE_LIMIT = 5
_addresses = itertools.count(1)


def new_address() -> str:
    """A client address of its own (its own rate-limit bucket and key scope)."""
    n = next(_addresses)
    return f"10.{n // 250}.{n % 250}.7"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeN8n]:
    f = listen_fake_n8n(reactor)
    f.set_default("/webhook/chat", slow(N8N_DELAY))
    yield f
    pytest_twisted.blockon(f.stop())


def server_args(fake: FakeN8n, uploads: Path, *extra: str) -> list[str]:
    return [
        "--webhook",
        fake.url("/webhook/chat"),
        "--rate-limit",
        str(RATE_LIMIT),
        "--trusted-proxy",
        "127.0.0.1",
        "--upload-dir",
        str(uploads),
        *extra,
    ]


def post(
    s: ServerProcess, message: str, address: str, key: str | None = None, session: str | None = None
) -> defer.Deferred[tuple[int, dict[str, str], Any]]:
    """One chat on a fresh connection (in a thread: the fake n8n runs in this reactor)."""
    value: dict[str, Any] = {"message": message}
    if session is not None:
        value["sessionId"] = session
    headers = {"X-Forwarded-For": address}
    if key is not None:
        headers["Idempotency-Key"] = key
    return threads.deferToThread(s.post_json, "/api/chat", value, headers)


def get_json(s: ServerProcess, path: str) -> defer.Deferred[tuple[int, Any]]:
    return threads.deferToThread(s.get_json, path)


def get_text(s: ServerProcess, path: str) -> defer.Deferred[str]:
    return threads.deferToThread(lambda: s.request("GET", path)[2].decode())


async def wait_until(predicate: Any, within: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not await defer.maybeDeferred(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        await deferLater(reactor, 0.1, lambda: None)


def n8n_runs(fake: FakeN8n, message: str) -> int:
    return sum(
        1 for r in fake.requests_for("/webhook/chat") if isinstance(r.json, dict) and r.json.get("chatInput") == message
    )


# -- the scenarios, for any set of servers (one --workers server, or two instances) ----------


async def one_key_runs_once(fake: FakeN8n, servers: list[ServerProcess], message: str) -> None:
    """
    Six at once and six later with one key and one session, from twelve
    addresses spread over C{servers}: n8n runs once, all twelve get its answer.
    """
    key = f"key-{message}"
    at = itertools.cycle(servers)
    first = await defer.gatherResults(
        [post(next(at), message, new_address(), key, session=f"s-{message}") for _ in range(6)]
    )
    later = [await post(next(at), message, new_address(), key, session=f"s-{message}") for _ in range(6)]
    answers = [*first, *later]
    assert [code for code, _, _ in answers] == [200] * 12, answers
    assert {body["output"] for _, _, body in answers} == {f"echo: {message}"}
    assert n8n_runs(fake, message) == 1
    replayed = [h for _, h, _ in answers if h.get("idempotent-replayed") == "true"]
    assert len(replayed) == 11


async def rate_limit_is_shared(servers: list[ServerProcess], message: str) -> None:
    """30 chats from one address, spread over C{servers}: what one process allows (5), the rest 429."""
    address = new_address()
    at = itertools.cycle(servers)
    codes = [(await post(next(at), f"{message}-{i}", address))[0] for i in range(30)]
    assert codes.count(200) == RATE_LIMIT, codes
    assert codes.count(429) == 30 - RATE_LIMIT


async def another_client_gets_its_own(fake: FakeN8n, servers: list[ServerProcess], message: str) -> None:
    """
    Client A (no session: a generated one) then client B (another address) and
    client C (another session) with A's key and message: each its own answer,
    never A's X-Session-ID; A with another message under its key: 422.
    """
    key = f"key-{message}"
    a_address = new_address()
    code, a_headers, a_body = await post(servers[0], message, a_address, key)
    assert code == 200
    a_session = a_headers["x-session-id"]
    assert a_body["sessionId"] == a_session
    code, b_headers, b_body = await post(servers[-1], message, new_address(), key)
    assert code == 200 and b_headers.get("idempotent-replayed") is None
    assert b_headers["x-session-id"] != a_session and b_body["sessionId"] != a_session
    code, c_headers, c_body = await post(servers[-1], message, a_address, key, session="client-c")
    assert code == 200 and c_headers["x-session-id"] == "client-c" and c_body["sessionId"] == "client-c"
    assert n8n_runs(fake, message) == 3
    # A itself: the same request replays, another one under the key is 422.
    code, again, body = await post(servers[-1], message, a_address, key)
    assert (code, again.get("idempotent-replayed"), again["x-session-id"]) == (200, "true", a_session)
    code, _, body = await post(servers[0], message + " (changed)", a_address, key)
    assert (code, body["error"]["code"]) == (422, "idempotency_mismatch")
    assert n8n_runs(fake, message) == 3


# -- one process ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_one_process_another_client_never_gets_the_first_ones_answer(
    fake: FakeN8n, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One process (memory): another address or session reusing a key gets its own answer."""
    s = ServerProcess(*server_args(fake, tmp_path_factory.mktemp("single")))
    await threads.deferToThread(s.start)
    try:
        await another_client_gets_its_own(fake, [s], "p-scope")
    finally:
        await threads.deferToThread(s.stop)
    assert "Traceback" not in s.output()


# -- --workers 2 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workers(fake: FakeN8n, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    uploads = tmp_path_factory.mktemp("workers")
    with ServerProcess("--workers", "2", *server_args(fake, uploads)) as s:
        # Both workers up and introduced to the parent.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers_seen = s.get_json("/api/health")[1].get("server", {}).get("workers", {})
            if len(workers_seen) == 2:
                break
            time.sleep(0.1)  # a bounded poll of other processes
        yield s
    assert "Traceback" not in s.output()


@pytest_twisted.ensureDeferred
async def test_workers_one_key_runs_n8n_once(fake: FakeN8n, workers: ServerProcess) -> None:
    """--workers 2: six concurrent and six later requests with one key -> one n8n request, twelve answers."""
    await one_key_runs_once(fake, [workers], "w-once")


@pytest_twisted.ensureDeferred
async def test_workers_rate_limit_is_one_process_worth(workers: ServerProcess) -> None:
    """--workers 2 --rate-limit 5: 5 of 30 chats from one client get through, as with one process."""
    await rate_limit_is_shared([workers], "w-rate")


@pytest_twisted.ensureDeferred
async def test_workers_another_client_never_gets_the_first_ones_answer(fake: FakeN8n, workers: ServerProcess) -> None:
    """--workers 2: another address or session reusing a key gets its own answer; the owner's change is 422."""
    await another_client_gets_its_own(fake, [workers], "w-scope")


CHAT_SAMPLE = re.compile(r'^inkflow_http_requests_total\{route="/api/chat",status="(\d+)"\} ([0-9.e+]+)$', re.M)


@pytest_twisted.ensureDeferred
async def test_workers_every_scrape_is_the_whole_server(fake: FakeN8n, workers: ServerProcess) -> None:
    """
    --workers 2, 20 chats: 10 scrapes of /metrics all count the 20 (never one
    worker's share), and /api/health's totals are the same 10 times, with a
    section per worker.
    """

    def chats(text: str) -> float:
        return sum(float(v) for _, v in CHAT_SAMPLE.findall(text))

    before = chats(await get_text(workers, "/metrics"))
    await defer.gatherResults([post(workers, f"w-metrics-{i}", new_address()) for i in range(20)])
    scrapes = [chats(await get_text(workers, "/metrics")) for _ in range(10)]
    assert scrapes == [before + 20] * 10
    healths = [(await get_json(workers, "/api/health"))[1] for _ in range(10)]
    totals = [h["server"]["totals"]["queue"]["processed_total"] for h in healths]
    assert len(set(totals)) == 1 and totals[0] >= 20
    assert all(sorted(h["server"]["workers"]) == ["0", "1"] for h in healths)
    pids = {w["pid"] for w in healths[0]["server"]["workers"].values()}
    assert len(pids) == 2 and {h["pid"] for h in healths} <= pids
    assert all(h["state"] == {"backend": "workers", "shared": True, "fallbacks_total": 0} for h in healths)


@pytest_twisted.ensureDeferred
async def test_workers_a_killed_worker_never_takes_the_counters_back(workers: ServerProcess) -> None:
    """
    --workers 2: a worker SIGKILLed and replaced; every later scrape counts at
    least what the last one before did (its counts are kept by the parent).
    """
    import os
    import signal

    def chats(text: str) -> float:
        return sum(float(v) for _, v in CHAT_SAMPLE.findall(text))

    await defer.gatherResults([post(workers, f"w-kill-{i}", new_address()) for i in range(6)])
    shown = chats(await get_text(workers, "/metrics"))
    health = (await get_json(workers, "/api/health"))[1]
    victim = health["server"]["workers"]["0"]["pid"]
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        now = (await get_json(workers, "/api/health"))[1]["server"]["workers"]
        return len(now) == 2 and victim not in {w["pid"] for w in now.values()}

    await wait_until(replaced, 20, "worker 0 replaced")
    scrapes = [chats(await get_text(workers, "/metrics")) for _ in range(5)]
    assert all(value >= shown for value in scrapes), (shown, scrapes)


# -- two instances, one Redis ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    yield from running_redis()


@pytest.fixture(scope="module")
def pair(fake: FakeN8n, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    instances = [
        ServerProcess(
            *server_args(fake, tmp_path_factory.mktemp(f"redis{n}"), "--redis", redis.url, "--redis-prefix", "e2e:")
        )
        for n in (1, 2)
    ]
    try:
        for s in instances:
            s.start()
        yield instances
    finally:
        for s in instances:
            s.stop()
    for s in instances:
        assert "Traceback" not in s.output()


@pytest_twisted.ensureDeferred
async def test_redis_one_key_across_two_instances_runs_n8n_once(fake: FakeN8n, pair: list[ServerProcess]) -> None:
    """Two instances, one Redis: one key sent to both (6 at once, 6 later) -> one n8n request."""
    await one_key_runs_once(fake, pair, "r-once")


@pytest_twisted.ensureDeferred
async def test_redis_rate_limit_is_shared(pair: list[ServerProcess]) -> None:
    """Two instances, one Redis, --rate-limit 5: 5 of 30 chats from one client, alternating, get through."""
    await rate_limit_is_shared(pair, "r-rate")


@pytest_twisted.ensureDeferred
async def test_redis_another_client_never_gets_the_first_ones_answer(fake: FakeN8n, pair: list[ServerProcess]) -> None:
    """Two instances, one Redis: another address or session reusing a key gets its own answer."""
    await another_client_gets_its_own(fake, pair, "r-scope")


@pytest_twisted.ensureDeferred
async def test_redis_away_then_back(fake: FakeN8n, redis: RedisServer, pair: list[ServerProcess]) -> None:
    """
    Redis stopped mid-run: every chat is still answered (each instance alone),
    health is degraded with the state section saying why, readiness stays 200;
    Redis started again: health ok and one key across both runs n8n once again.
    """
    await threads.deferToThread(redis.stop)
    try:
        for i in range(4):
            code, _, body = await post(pair[i % 2], f"r-away-{i}", new_address(), f"key-away-{i}")
            assert (code, body["output"]) == (200, f"echo: r-away-{i}")
        for s in pair:
            code, health = await get_json(s, "/api/health")
            assert (code, health["status"]) == (200, "degraded")
            assert health["state"]["backend"] == "redis" and health["state"]["shared"] is False
            assert health["state"]["fallbacks_total"] >= 1
            assert (await get_json(s, "/api/ready")) == (200, {"ready": True})
        metrics = await get_text(pair[0], "/metrics")
        assert "inkflow_state_degraded 1.0" in metrics
    finally:
        await threads.deferToThread(redis.start)

    async def shared_again() -> bool:
        healths = [(await get_json(s, "/api/health"))[1] for s in pair]
        return all(h["status"] == "ok" and h["state"]["shared"] for h in healths)

    await wait_until(shared_again, 20, "both instances shared again")
    await one_key_runs_once(fake, pair, "r-back")
    for s in pair:
        assert "shared state (redis) unreachable" in s.output()
        assert "shared state (redis) reachable again" in s.output()

"""
End to end: two real InkFlow instances sharing a real Redis (C{--redis}, as
deploy/haproxy.cfg says) behind a real HAProxy running deploy/haproxy.cfg (its
ports, server addresses and check interval swapped for loopback test values),
a fake n8n in this process, and five chat clients.

One instance is stopped in the middle of the load:

 - SIGTERM (graceful): no request may fail;
 - SIGKILL (crash): only requests that were in flight on that instance (or
   sent to it in the few milliseconds while it died) may fail, every other one
   is answered, and no chat reaches n8n twice (HAProxy never resends a POST
   once it was sent).

A third test checks HAProxy's own JSON 503 when no instance is up; a fourth
that one Idempotency-Key spread by HAProxy over both instances runs n8n once.

Skipped when C{haproxy} is not installed (scripts/install-system-deps.sh haproxy),
or C{redis-server} (... redis).  Loopback
only; every loop and wait is bounded.  Each scenario takes 8-10 s.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.fake_n8n import FakeN8n, listen_fake_n8n, slow
from tests.support.redis_server import RedisServer, running_redis
from tests.support.server import REPO, ServerProcess

reactor: Any = _reactor

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (scripts/install-system-deps.sh haproxy)"
)

CONFIG = REPO / "deploy" / "haproxy.cfg"
N8N_DELAY = 0.2  # seconds the fake n8n takes per chat
CLIENTS = 5
LOAD_SECONDS = 6.0
STOP_AFTER = 2.5  # seconds into the load
MAX_REQUESTS_PER_CLIENT = 200  # a bound on each client's loop, far above what 6 s allow
CHECK_INTERVAL = "200ms"
JSON_HEADERS: dict[bytes | str, bytes | str] = {"Content-Type": "application/json"}
# "inkflow/app1 0/0/1/203/204 200 ... 5/5/4/2/0 0/0" : timers, status, ..., connection counts / retries
HTTPLOG = re.compile(r" inkflow/(\S+) (-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/(-?\d+) (\d{3}) .* \d+/\d+/\d+/\d+/(\+?)(\d+) ")


# -- the pieces ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeN8n]:
    """A fake n8n: instance app1 posts to /webhook/app1, app2 to /webhook/app2; each answer takes 0.2 s."""
    f = listen_fake_n8n(reactor)
    for name in ("app1", "app2"):
        f.set_default(f"/webhook/{name}", slow(N8N_DELAY))
    yield f
    pytest_twisted.blockon(f.stop())


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A redis-server on a free loopback port, shared by the instances of this module's tests."""
    yield from running_redis()


def free_port() -> int:
    """A port the kernel just handed out on loopback (HAProxy cannot report a port 0 bind back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def haproxy_config(workdir: Path, port: int, servers: dict[str, int]) -> str:
    """
    deploy/haproxy.cfg with loopback test values: the frontend on C{port}, the
    servers replaced by C{servers} (name -> loopback port), checks every 200 ms,
    logs on stdout, no chroot or user switch, sockets in C{workdir}.
    """
    text = CONFIG.read_text(encoding="utf-8")
    replacements = [
        (r"(?m)^    log /dev/log .*$", "    log stdout format raw local0"),
        (r"(?m)^    (chroot|user|group) .*\n", ""),
        (r"/run/haproxy/admin\.sock", str(workdir / "admin.sock")),
        (r"(?m)^    bind 127\.0\.0\.1:8080$", f"    bind 127.0.0.1:{port}"),
        (r"(?m)^    bind 127\.0\.0\.1:8404$", f"    bind unix@{workdir / 'stats.sock'}"),
        (r"\binter 1s\b", f"inter {CHECK_INTERVAL}"),
    ]
    for pattern, new in replacements:
        text, count = re.subn(pattern, new, text)
        assert count >= 1, f"deploy/haproxy.cfg changed: {pattern!r} not found"
    # Each backend's server lines give way to ours, in their place (after default-server).
    lines = "".join(f"    server {name} 127.0.0.1:{p}\n" for name, p in servers.items())
    text, blocks = re.subn(r"(?m)(?:^    server .*\n)+", lines, text)
    assert blocks >= 1, "deploy/haproxy.cfg changed: no server lines in the backend"
    # Loopback only: every address left in the file must be 127.0.0.1.
    addresses = set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text))
    assert addresses <= {"127.0.0.1"}, f"non-loopback address in the test config: {addresses}"
    return text


class HAProxyProcess(ServerProcess):
    """
    A foreground HAProxy (C{-db}) on a test config; its log lines (stdout) and
    warnings (stderr) end up in C{lines}.
    """

    def __init__(self, config: Path, admin: Path) -> None:
        assert HAPROXY is not None
        super().__init__(command=[HAPROXY, "-db", "-f", str(config)])
        self.admin = admin

    def start(self, timeout: float = 10.0) -> HAProxyProcess:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.admin.exists():  # a bounded poll of another process
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not start:\n{self.output()}")
            time.sleep(0.02)
        return self

    def stat(self) -> dict[str, dict[str, str]]:
        """The runtime API's C{show stat} for the backend's servers: name -> row."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.admin))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(data.decode().lstrip("# ").splitlines())
        return {row["svname"]: row for row in rows if row["pxname"] == "inkflow" and row["svname"] != "BACKEND"}

    def log_lines(self) -> list[str]:
        """HAProxy's log (the lines without a "[LEVEL]" prefix)."""
        self.drain_output()
        return [line for line in self.lines if not line.startswith("[")]


async def start_haproxy(tmp_path: Path, servers: dict[str, int]) -> HAProxyProcess:
    """
    HAProxy on the test config for C{servers}, on a free loopback port (another
    one if that port was taken in the meantime, at most 3 tries).
    """
    for attempt in range(3):
        workdir = tmp_path / f"haproxy{attempt}"
        workdir.mkdir()
        port = free_port()
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(workdir, port, servers), "utf-8")
        haproxy = HAProxyProcess(config, workdir / "admin.sock")
        haproxy.port = port
        try:
            return await threads.deferToThread(haproxy.start)
        except AssertionError:
            haproxy.stop(signal.SIGTERM, 5)
            if attempt == 2 or "cannot bind" not in haproxy.output().lower():
                raise
    raise AssertionError("unreachable")


async def wait_until(predicate: Any, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        await deferLater(reactor, 0.02, lambda: None)


# -- the load ------------------------------------------------------------------


@dataclass
class Outcome:
    """One chat request through HAProxy."""

    message: str
    started: float
    finished: float | None = None
    code: int | None = None
    path: str | None = None  # the webhook path in the echo: which instance answered
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == 200 and self.path is not None


@dataclass
class Run:
    """What one scenario measured."""

    outcomes: list[Outcome] = field(default_factory=list)
    stopped_at: float = 0.0  # when the signal was sent
    gone_at: float = 0.0  # when the victim process had exited (its sockets closed)
    outstanding: set[str] = field(default_factory=set)  # client requests without an answer at the signal
    at_victim: set[str] = field(default_factory=set)  # of those, already forwarded by the victim to n8n
    at_other: set[str] = field(default_factory=set)  # of those, already forwarded by the survivor
    exit_code: int | None = None
    victim_output: str = ""
    haproxy_log: list[str] = field(default_factory=list)
    n8n_messages: Counter[str] = field(default_factory=Counter)
    paths: dict[str, set[str]] = field(default_factory=dict)  # webhook path -> messages n8n received there

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def after_stop(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= self.stopped_at]

    def summary(self, name: str) -> str:
        done = self.outcomes
        by_path = Counter(o.path for o in done if o.ok)
        after = self.after_stop()
        worst = max((o.finished or 0) - o.started for o in done)
        logged = [g for m in self.haproxy_log if (g := HTTPLOG.search(m))]
        retried = [g for g in logged if int(g.group(9)) > 0]
        return (
            f"{name}: {len(done)} requests, {len(self.failed)} failed "
            f"({Counter(o.code or o.error for o in self.failed)}); answered by {dict(by_path)}; "
            f"in flight at the signal: {len(self.outstanding)} in all, {len(self.at_victim)} already at n8n "
            f"through the victim, {len(self.at_other)} through the survivor; "
            f"{len(after)} started after it ({sum(o.ok for o in after)} ok); "
            f"haproxy logged {len(logged)} ({Counter(g.group(7) for g in logged)}), "
            f"{len(retried)} of them retried elsewhere; slowest {worst:.3f} s; victim exit {self.exit_code}"
        )

    def details(self) -> str:
        """The failures, and HAProxy's log lines that are not a plain first-try 200."""
        lines = []
        for o in self.failed:
            where = [p for p in ("/webhook/app1", "/webhook/app2") if o.message in self.paths.get(p, set())]
            lines.append(
                f"failed {o.message}: {o.code or o.error} started {o.started - self.stopped_at:+.3f} s "
                f"after the signal, took {(o.finished or 0) - o.started:.3f} s; "
                f"outstanding={o.message in self.outstanding} at n8n via {where}"
            )
        for line in self.haproxy_log:
            g = HTTPLOG.search(line)
            if g is None or g.group(7) != "200" or int(g.group(9)) > 0 or "----" not in line:
                lines.append("haproxy: " + line.rstrip())
        return "\n".join(lines)


def chat_client(pool: HTTPConnectionPool) -> treq.client.HTTPClient:
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


async def client_loop(number: int, url: str, until: float, outcomes: list[Outcome]) -> None:
    """One browser: a kept-alive connection, one chat after another until C{until}."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    http = chat_client(pool)
    try:
        for seq in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= until:
                break
            outcome = Outcome(message=f"c{number}-{seq}", started=time.monotonic())
            outcomes.append(outcome)
            try:
                response = await http.post(
                    url,
                    data=json.dumps({"message": outcome.message, "sessionId": f"client-{number}"}).encode(),
                    headers=JSON_HEADERS,
                    timeout=15,
                )
                body = await response.content()
                outcome.code = response.code
                if response.code == 200:
                    answer = json.loads(body)
                    assert answer["output"] == f"echo: {outcome.message}", answer
                    outcome.path = answer["path"]
            except Exception as e:  # a reset or a timeout: counted, not raised
                outcome.error = type(e).__name__
            outcome.finished = time.monotonic()
    finally:
        await pool.closeCachedConnections()


def reap(process: ServerProcess) -> tuple[int, float]:
    """Wait (in a thread) for C{process} to exit: its exit status and when."""
    assert process.proc is not None
    code = process.proc.wait(15)
    return code, time.monotonic()


def messages_at(fake: FakeN8n, path: str) -> set[str]:
    return {r.json["chatInput"] for r in fake.requests_for(path) if isinstance(r.json, dict)}


async def run_scenario(fake: FakeN8n, tmp_path: Path, signum: int, redis: RedisServer) -> Run:
    """
    Two instances sharing C{redis} behind HAProxy, five clients for 6 s;
    C{signum} to app1 2.5 s in.
    """
    fake.requests.clear()
    instances: dict[str, ServerProcess] = {}
    for name in ("app1", "app2"):
        upload = tmp_path / name
        instances[name] = ServerProcess(
            "--webhook",
            fake.url(f"/webhook/{name}"),
            "--rate-limit",
            "0",
            "--drain-timeout",
            "10",
            "--trusted-proxy",
            "127.0.0.1",
            "--redis",
            redis.url,
            "--upload-dir",
            str(upload),
        )
    haproxy: HAProxyProcess | None = None
    run = Run()
    try:
        await defer.gatherResults([threads.deferToThread(s.start) for s in instances.values()])
        haproxy = await start_haproxy(tmp_path, {n: s.port for n, s in instances.items()})

        def both_up() -> bool:
            stat = haproxy.stat()
            return all(stat[n]["status"] == "UP" and stat[n]["check_status"] == "L7OK" for n in instances)

        try:
            await wait_until(both_up, 10, "both instances UP with a passed /api/ready check")
        except AssertionError:
            stat = haproxy.stat()
            raise AssertionError(
                f"{ {n: (r['status'], r['check_status'], r['check_desc']) for n, r in stat.items()} }\n{haproxy.output()}"
            ) from None

        url = f"http://127.0.0.1:{haproxy.port}/api/chat"
        start = time.monotonic()
        loops = [
            defer.Deferred.fromCoroutine(client_loop(n, url, start + LOAD_SECONDS, run.outcomes))
            for n in range(CLIENTS)
        ]
        victim = instances["app1"]
        # Signal once 2.5 s have passed and the victim is busy with at least one chat.
        await wait_until(
            lambda: (
                time.monotonic() - start >= STOP_AFTER
                and bool({o.message for o in run.outcomes if o.finished is None} & messages_at(fake, "/webhook/app1"))
            ),
            LOAD_SECONDS,
            "a chat in flight on app1",
        )
        run.outstanding = {o.message for o in run.outcomes if o.finished is None}
        run.at_victim = run.outstanding & messages_at(fake, "/webhook/app1")
        run.at_other = run.outstanding & messages_at(fake, "/webhook/app2")
        run.stopped_at = time.monotonic()
        victim.send_signal(signum)
        exited = threads.deferToThread(reap, victim)
        await defer.gatherResults(loops)
        run.exit_code, run.gone_at = await exited
        await threads.deferToThread(victim.wait, 5)  # its last lines
        run.victim_output = victim.output()
        await wait_until(lambda: haproxy.stat()["app1"]["status"].startswith("DOWN"), 5, "app1 DOWN in haproxy")
        run.paths = {p: messages_at(fake, p) for p in ("/webhook/app1", "/webhook/app2")}
        run.n8n_messages = Counter(r.json["chatInput"] for r in fake.requests if isinstance(r.json, dict))
        return run
    finally:
        if haproxy is not None:
            await threads.deferToThread(haproxy.stop, signal.SIGTERM, 10)
            run.haproxy_log = haproxy.log_lines()  # complete once it has exited
        for s in instances.values():
            await threads.deferToThread(s.stop, signal.SIGTERM, 15)


def assert_common(run: Run) -> None:
    """Both scenarios: real load, both instances served, no chat reached n8n twice."""
    assert len(run.outcomes) >= CLIENTS * 10
    assert all(o.finished is not None for o in run.outcomes)
    duplicates = {m: n for m, n in run.n8n_messages.items() if n > 1}
    assert not duplicates, f"chats sent to n8n more than once: {duplicates}"
    answered_by = {o.path for o in run.outcomes if o.ok}
    assert answered_by == {"/webhook/app1", "/webhook/app2"}
    # after the signal app1 takes no new chat: everything started later went to app2
    late = [o for o in run.after_stop() if o.ok]
    assert late and all(o.path == "/webhook/app2" for o in late)


# -- the scenarios --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sigterm_on_one_instance_loses_no_request(fake: FakeN8n, tmp_path: Path, redis: RedisServer) -> None:
    """
    SIGTERM to one of two instances under load: every chat through HAProxy is
    answered 200 (the in-flight ones by the draining instance, the rest by the
    other one), and the stopped instance drains and exits cleanly.
    """
    run = await run_scenario(fake, tmp_path, signal.SIGTERM, redis)
    print(run.summary("SIGTERM"))
    print(run.details())
    assert_common(run)
    assert run.failed == [], run.summary("SIGTERM")
    # the chats in flight on app1 were answered by app1 itself
    assert run.at_victim
    by_message = {o.message: o for o in run.outcomes}
    assert all(by_message[m].path == "/webhook/app1" for m in run.at_victim)
    assert run.exit_code in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert "Drained" in run.victim_output and "Traceback" not in run.victim_output


@pytest_twisted.ensureDeferred
async def test_sigkill_on_one_instance_fails_only_its_in_flight_requests(
    fake: FakeN8n, tmp_path: Path, redis: RedisServer
) -> None:
    """
    SIGKILL to one of two instances under load: only requests in flight on it
    at that moment may fail (and none is resent to n8n); every other chat,
    before and after, is answered 200.
    """
    run = await run_scenario(fake, tmp_path, signal.SIGKILL, redis)
    print(run.summary("SIGKILL"))
    print(run.details())
    assert_common(run)
    assert run.exit_code == -signal.SIGKILL
    failed = {o.message for o in run.failed}
    # In flight on the victim: not answered at the kill and not being answered by the survivor,
    # or sent to the victim while it died: until the process is gone the kernel still completes
    # connections to its port, and those are then reset (a few ms).
    dying = {o.message for o in run.after_stop() if o.started < run.gone_at}
    may_fail = (run.outstanding - run.at_other) | dying
    print(
        f"SIGKILL: {len(failed)} failed; in flight on the victim at the kill: at most "
        f"{len(run.outstanding - run.at_other)} ({len(run.at_victim)} already at n8n); sent while it died "
        f"({(run.gone_at - run.stopped_at) * 1000:.1f} ms): {len(dying)}"
    )
    assert failed <= may_fail, f"failed outside the victim's in-flight requests: {failed - may_fail}"
    # Those that failed while it died never reached n8n; none is resent to n8n (assert_common).
    assert not (failed & dying) & (run.paths["/webhook/app1"] | run.paths["/webhook/app2"])
    # How they fail: HAProxy closes the client's kept-alive connection without an answer
    # (so that a client may retry), or answers 502 on a client's first request.
    assert all(o.code == 502 or o.error == "ResponseNeverReceived" for o in run.failed), run.details()


@pytest_twisted.ensureDeferred
async def test_no_instance_up_gets_json_503_from_haproxy(tmp_path: Path) -> None:
    """
    With every instance down, HAProxy's own answer is InkFlow-shaped: 503 JSON
    C{busy} (Hebrew and English message) with Retry-After.
    """
    closed = {"app1": free_port(), "app2": free_port()}  # nothing listens there
    haproxy = await start_haproxy(tmp_path, closed)
    try:
        await wait_until(
            lambda: all(row["status"].startswith("DOWN") for row in haproxy.stat().values()), 5, "both DOWN"
        )
        http = chat_client(HTTPConnectionPool(reactor, persistent=False))
        response = await http.post(
            f"http://127.0.0.1:{haproxy.port}/api/chat",
            data=b'{"message": "x"}',
            headers=JSON_HEADERS,
            timeout=10,
        )
        body = json.loads(await response.content())
        assert response.code == 503
        assert response.headers.getRawHeaders("Content-Type") == ["application/json; charset=utf-8"]
        assert response.headers.getRawHeaders("Retry-After") == ["5"]
        assert body["error"]["code"] == "busy"
        assert body["error"]["message"] and body["error"]["message_en"]
    finally:
        await threads.deferToThread(haproxy.stop, signal.SIGTERM, 10)


@pytest_twisted.ensureDeferred
async def test_one_idempotency_key_runs_once_across_instances(
    fake: FakeN8n, tmp_path: Path, redis: RedisServer
) -> None:
    """
    Two instances sharing Redis, no keyed backend: HAProxy spreads the
    requests of one key over both (leastconn); for each key, four requests
    (three at once, then one) reach n8n once and get four equal answers, and
    both instances answered some of them.
    """
    fake.requests.clear()
    instances = {
        name: ServerProcess(
            "--webhook",
            fake.url(f"/webhook/{name}"),
            "--rate-limit",
            "0",
            "--trusted-proxy",
            "127.0.0.1",
            "--redis",
            redis.url,
            "--redis-prefix",
            f"{tmp_path.name}:",
        )
        for name in ("app1", "app2")
    }
    haproxy: HAProxyProcess | None = None
    try:
        await defer.gatherResults([threads.deferToThread(s.start) for s in instances.values()])
        haproxy = await start_haproxy(tmp_path, {n: s.port for n, s in instances.items()})
        await wait_until(lambda: all(r["status"] == "UP" for r in haproxy.stat().values()), 10, "both instances UP")
        http = chat_client(HTTPConnectionPool(reactor, persistent=False))
        url = f"http://127.0.0.1:{haproxy.port}/api/chat"

        async def chat(key: str) -> tuple[int, bytes]:
            headers: dict[bytes | str, bytes | str] = {**JSON_HEADERS, "Idempotency-Key": key}
            body = json.dumps({"message": f"m-{key}", "sessionId": "idem"}).encode()
            response = await http.post(url, data=body, headers=headers, timeout=10)
            return response.code, await response.content()

        keys = [f"key-{n}" for n in range(6)]
        for key in keys:
            together = await defer.gatherResults([defer.Deferred.fromCoroutine(chat(key)) for _ in range(3)])
            answers = [*together, await chat(key)]
            assert [code for code, _ in answers] == [200] * 4
            assert len({body for _, body in answers}) == 1, answers
        sent = Counter(r.json["chatInput"] for r in fake.requests if isinstance(r.json, dict))
        assert sent == Counter({f"m-{key}": 1 for key in keys})

        def chats_answered(s: ServerProcess) -> float:
            text = s.request("GET", "/metrics")[2].decode()
            found = re.findall(r'^inkflow_http_requests_total\{route="/api/chat",status="200"\} (\S+)$', text, re.M)
            return sum(float(v) for v in found)

        answered = [await threads.deferToThread(chats_answered, s) for s in instances.values()]
        assert sum(answered) == 4 * len(keys) and min(answered) > 0, answered
    finally:
        if haproxy is not None:
            await threads.deferToThread(haproxy.stop, signal.SIGTERM, 10)
        for s in instances.values():
            await threads.deferToThread(s.stop, signal.SIGTERM, 15)

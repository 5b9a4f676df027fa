"""
End-to-end tests of ``inkflow watchdog``: the real command, as a subprocess,
supervising tests/support/health_child.py on a loopback port.

Every wait polls with a short pause under an overall deadline; every process
started here is killed at the end even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
CHILD = REPO / "tests" / "support" / "health_child.py"
DEADLINE = 20.0
PAUSE = 0.05

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], deadline: float = DEADLINE) -> T:
    """
    Call C{check} until it returns something other than None; fail after C{deadline} seconds.
    """
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(PAUSE)


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Supervisor:
    """
    One ``inkflow watchdog`` subprocess and what it started.
    """

    def __init__(
        self,
        directory: Path,
        options: list[str],
        child_options: list[str] | None = None,
        health: str | None = "child",
        command: list[str] | None = None,
    ) -> None:
        """
        @param health: "child": poll the child's own port; "base": the same,
            given as the server's base URL; None: --no-health; anything else:
            that URL.
        @param command: run this instead of health_child.py.
        """
        directory.mkdir()
        self.port = free_port()
        self.pid_file = directory / "child.pid"
        self.log_path = directory / "watchdog.log"
        self.url = f"http://127.0.0.1:{self.port}/api/health"
        self.seen: set[int] = set()
        if command is None:
            command = [sys.executable, str(CHILD), "--port", str(self.port), "--pid-file", str(self.pid_file)]
            command += child_options or []
        argv = [sys.executable, "-m", "inkflow.tools.cli", "watchdog"]
        if health is None:
            argv.append("--no-health")
        else:
            given = {"child": self.url, "base": f"http://127.0.0.1:{self.port}"}.get(health, health)
            argv += ["--health-url", given]
        argv += [*options, "--", *command]
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=pythonpath)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any] | None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url, timeout=0.5) as response:
                data = json.loads(response.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def answering_pid(self, other_than: int | None = None) -> int:
        """
        Wait until a child answers health checks (one other than C{other_than}); its pid.
        """

        def check() -> int | None:
            assert self.process.poll() is None, f"the watchdog exited early:\n{self.log()}"
            data = self.health()
            pid = data.get("pid") if data else None
            if isinstance(pid, int) and pid != other_than:
                return pid
            return None

        pid = wait_for(f"a child other than {other_than} to answer" if other_than else "the child to answer", check)
        self.seen.add(pid)
        # Until the watchdog itself has heard from it, the child is in its start grace.
        self.wait_for_log(f"child pid {pid} answers health checks")
        return pid

    def wait_for_log(self, text: str, count: int = 1) -> str:
        return wait_for(
            f"{count} x {text!r} in the log", lambda: self.log() if self.log().count(text) >= count else None
        )

    def wait_exit(self, deadline: float = DEADLINE) -> int:
        try:
            return self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the watchdog did not exit within {deadline:g}s:\n{self.log()}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.pid_file.exists():
            self.seen.add(int(self.pid_file.read_text()))
        for pid in self.seen:
            try:
                child = psutil.Process(pid)
                if str(CHILD) in " ".join(child.cmdline()):
                    child.kill()
            except psutil.Error:
                pass
        self._log.close()


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """
    Start watchdogs (same arguments as L{Supervisor}, less the directory); all
    of them and their children are killed at the end.
    """
    started: list[Supervisor] = []

    def start(options: list[str], **kwargs: Any) -> Supervisor:
        supervisor = Supervisor(tmp_path / f"watchdog-{len(started)}", options, **kwargs)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.close()


FAST = [
    "--interval",
    "0.2",
    "--failures",
    "3",
    "--grace",
    "1",
    "--min-restart-delay",
    "0.1",
    "--max-restart-delay",
    "1",
]


def test_restarts_a_child_that_was_killed(supervise: Callable[..., Supervisor]) -> None:
    """
    A child killed with SIGKILL is started again: a new pid answers, and the log
    says how the old one ended.
    """
    wd = supervise(FAST)
    first = wd.answering_pid()
    os.kill(first, signal.SIGKILL)
    second = wd.answering_pid(other_than=first)
    assert second != first
    log = wd.log()
    assert f"child pid {first} was killed by signal 9 (SIGKILL)" in log
    assert "restarting the child in" in log


def test_replaces_a_hung_child(supervise: Callable[..., Supervisor]) -> None:
    """
    A child that stops answering (SIGSTOP) fails --failures health checks in a
    row, gets SIGTERM, then SIGKILL after --grace, and a new child answers.
    """
    wd = supervise(FAST)
    first = wd.answering_pid()
    os.kill(first, signal.SIGSTOP)
    second = wd.answering_pid(other_than=first)
    assert second != first
    assert is_gone(first)
    log = wd.log()
    assert f"health check of child pid {first} failed (3/3)" in log
    assert f"sending SIGTERM to child pid {first} (3 health checks failed in a row" in log
    assert f"child pid {first} still running 1s after SIGTERM; sending SIGKILL" in log


def test_sigterm_stops_the_child_and_exits_zero(supervise: Callable[..., Supervisor]) -> None:
    """
    SIGTERM to the watchdog stops its child first, then the watchdog exits 0.
    """
    wd = supervise(FAST)
    child = wd.answering_pid()
    wd.process.send_signal(signal.SIGTERM)
    assert wd.wait_exit() == 0
    assert is_gone(child)
    log = wd.log()
    assert f"child pid {child} exited with code 0" in log
    assert "watchdog stopped" in log
    assert "Traceback" not in log


def test_sigint_kills_a_child_that_ignores_sigterm(supervise: Callable[..., Supervisor]) -> None:
    """
    A child that ignores SIGTERM is killed after --grace when the watchdog is
    told to stop (here by SIGINT, as from Ctrl-C); the watchdog still exits 0.
    """
    wd = supervise([*FAST, "--grace", "0.5"], child_options=["--ignore-term"])
    child = wd.answering_pid()
    wd.process.send_signal(signal.SIGINT)
    assert wd.wait_exit() == 0
    assert is_gone(child)
    log = wd.log()
    assert f"child pid {child} still running 0.5s after SIGTERM; sending SIGKILL" in log
    assert f"child pid {child} was killed by signal 9 (SIGKILL)" in log
    assert "Traceback" not in log


def test_a_crashing_child_is_restarted_with_doubling_delays(supervise: Callable[..., Supervisor]) -> None:
    """
    A child that exits at once is restarted after 0.1, 0.2, 0.4, 0.4 ... seconds
    (doubling up to --max-restart-delay), and each exit code is logged.
    """
    wd = supervise(
        ["--min-restart-delay", "0.1", "--max-restart-delay", "0.4"],
        health=None,
        command=[sys.executable, "-c", "import sys; sys.exit(3)"],
    )
    wd.wait_for_log("exited with code 3 after", count=6)
    wd.process.send_signal(signal.SIGTERM)
    assert wd.wait_exit() == 0
    lines = [line for line in wd.log().splitlines() if "restarting the child in" in line]
    delays = [line.split("restarting the child in ")[1].split("s ")[0] for line in lines]
    assert delays[:5] == ["0.1", "0.2", "0.4", "0.4", "0.4"]


def test_health_failures_are_not_counted_during_the_start_grace(supervise: Callable[..., Supervisor]) -> None:
    """
    A child that never answers (the health URL names a port it does not listen
    on) is left alone for --start-grace seconds, then replaced.
    """
    nobody = f"http://127.0.0.1:{free_port()}/api/health"
    wd = supervise(["--interval", "0.2", "--failures", "2", "--grace", "0.5", "--start-grace", "1.5"], health=nobody)
    wd.wait_for_log("sending SIGTERM to child pid")
    elapsed = time.monotonic() - wd.started
    assert elapsed >= 1.5, f"the child was stopped {elapsed:.2f}s after start, inside the start grace"
    assert "failed (1/2)" in wd.log()


def test_a_base_health_url_means_api_health(supervise: Callable[..., Supervisor]) -> None:
    """
    --health-url http://127.0.0.1:PORT (the server's address, no path) polls
    /api/health there: the child is seen answering (health_child.py answers 404
    on any other path).
    """
    wd = supervise(FAST, health="base")
    wd.answering_pid()
    assert f"health http://127.0.0.1:{wd.port}/api/health, every" in wd.log()

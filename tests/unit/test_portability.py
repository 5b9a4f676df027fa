"""
What is POSIX-only degrades or refuses clearly where it is missing (Windows):
start-up with the POSIX-only signals and uid calls removed (monkeypatch
delattr), as on Windows.  No Windows machine runs these; they pin the code
paths a Windows start takes.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher

from inkflow.server import logs, startup, systemd
from inkflow.server import service as service_module
from inkflow.server.tap import Options
from inkflow.settings import Settings, default_upload_dir
from inkflow.web.uploads import upload_dir_problem

#: Signals a Windows Python does not have.
POSIX_ONLY_SIGNALS = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP", "SIGCONT", "SIGCHLD", "SIGQUIT")


@pytest.fixture
def windows_like(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    No POSIX-only signals, no uid calls, os.name not posix (for InkFlow's own check only).  Ask for
    tmp_path before this fixture: pytest's needs getuid.
    """
    for name in POSIX_ONLY_SIGNALS:
        monkeypatch.delattr(signal, name, raising=False)
    for name in ("getuid", "geteuid"):
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(startup, "posix", lambda: False)


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def _messages(events: list[dict[str, Any]]) -> list[str]:
    return [e.get("log_format", "") for e in events if e.get("log_namespace", "").startswith("inkflow")]


def test_start_up_without_posix_signals_logs_one_line(
    tmp_path: Path, windows_like: None, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole start-up (plugin's logging set-up, services, the reactor's first turn) with no SIGHUP/SIGUSR1."""
    monkeypatch.setattr(service_module, "tune_gc", lambda: None)  # process-wide; not in a test
    monkeypatch.setattr(logs, "_twistd_config", logs._twistd_config)  # restored after the test
    settings = Settings.defaults(upload_dir=str(tmp_path / "uploads"))
    options: dict[str, object] = {"logger": None, "logfile": str(tmp_path / "inkflow.log"), "nodaemon": True}
    logs.set_up(settings, twistd_options=options)
    reactor = MemoryReactorClock()
    top = startup.guarded(service_module.makeService(settings, reactor), reactor)
    top.privilegedStartService()
    top.startService()
    reactor.run()  # runs the callWhenRunning hooks: the rotation signals among them
    try:
        rotation = [m for m in _messages(events) if "SIGHUP" in m]
        assert rotation == ["No SIGHUP or SIGUSR1 on this system: the log file rotates at {size} MB only"]
        assert reactor.tcpServers  # it listens
        assert options["logger"] == logs.TWISTD_LOGGER
    finally:
        top.stopService()


def test_rotation_signals_absent_degrade_without_an_exception(windows_like: None, events: list[dict[str, Any]]) -> None:
    logs.install_rotation_signals(cast(Any, MemoryReactorClock()))
    assert len([m for m in _messages(events) if "SIGHUP" in m]) == 1


def test_more_than_one_worker_is_refused_with_one_line(windows_like: None, capsys: pytest.CaptureFixture[str]) -> None:
    """--workers 2 where there is no POSIX: one line and status 2 (the plugin); one worker is fine."""
    assert startup.unsupported(Settings.defaults(workers=1)) is None
    with pytest.raises(SystemExit) as stopped:
        Options().parseOptions(["--workers", "2"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("inkflow: error: invalid value for --workers: more than one worker needs a POSIX system")


def test_workers_are_accepted_on_posix() -> None:
    if os.name != "posix":
        pytest.skip("not a POSIX system")
    assert startup.unsupported(Settings.defaults(workers=2)) is None


def test_upload_folder_without_uids(tmp_path: Path, windows_like: None) -> None:
    """No getuid: the default folder has no uid in its name; the folder check skips owner and mode bits."""
    assert default_upload_dir().endswith("inkflow-uploads")
    assert upload_dir_problem(str(tmp_path)) is None
    assert upload_dir_problem(str(tmp_path / "missing")) is not None


def test_no_unix_sockets_means_no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_UNIX", raising=False)
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "/run/systemd/notify"})

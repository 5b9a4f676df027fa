"""
What is POSIX-only degrades or refuses clearly where it is missing (Windows):
start-up with the POSIX-only signals and uid calls removed, as on Windows.
No Windows machine runs these; they pin the code paths a Windows start takes.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
from typing import Any, cast

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import TestCase

from inkflow.server import logs, startup, systemd
from inkflow.server import service as service_module
from inkflow.server.tap import Options
from inkflow.settings import Settings, default_upload_dir
from inkflow.web.uploads import upload_dir_problem
from tests.unit.helpers import temp_path

#: Signals a Windows Python does not have.
POSIX_ONLY_SIGNALS = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP", "SIGCONT", "SIGCHLD", "SIGQUIT")


class WindowsLikeTests(TestCase):
    """
    Each test runs with no POSIX-only signals, no uid calls, and InkFlow's
    own POSIX check saying no.
    """

    def setUp(self) -> None:
        self.folder = os.path.dirname(temp_path(self))
        for name in POSIX_ONLY_SIGNALS:
            self.remove(signal, name)
        for name in ("getuid", "geteuid"):
            self.remove(os, name)
        self.patch(startup, "posix", lambda: False)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def remove(self, owner: object, name: str) -> None:
        """Delete C{owner.name} for this test (as Windows lacks it)."""
        if hasattr(owner, name):
            value = getattr(owner, name)
            delattr(owner, name)
            self.addCleanup(setattr, owner, name, value)

    def rotation_lines(self) -> list[str]:
        return [e.get("log_format", "") for e in self.events if "SIGHUP" in e.get("log_format", "")]

    def test_start_up_without_posix_signals_logs_one_line(self) -> None:
        """The whole start-up (the plugin's logging set-up, services, the reactor's first turn) with no SIGHUP/SIGUSR1."""
        self.patch(service_module, "tune_gc", lambda: None)  # process-wide; not in a test
        self.patch(logs, "_twistd_config", logs._twistd_config)  # restored after the test
        settings = Settings.defaults(upload_dir=os.path.join(self.folder, "uploads"))
        options: dict[str, object] = {"logger": None, "logfile": os.path.join(self.folder, "x.log"), "nodaemon": True}
        logs.set_up(settings, twistd_options=options)
        reactor = MemoryReactorClock()
        top = startup.guarded(service_module.makeService(settings, reactor), reactor)
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        reactor.run()  # runs the callWhenRunning hooks: the rotation signals among them
        self.assertEqual(
            self.rotation_lines(), ["No SIGHUP or SIGUSR1 on this system: the log file rotates at {size} MB only"]
        )
        self.assertTrue(reactor.tcpServers)  # it listens
        self.assertEqual(options["logger"], logs.TWISTD_LOGGER)

    def test_rotation_signals_absent_degrade_without_an_exception(self) -> None:
        logs.install_rotation_signals(cast(Any, MemoryReactorClock()))
        self.assertEqual(len(self.rotation_lines()), 1)

    def test_more_than_one_worker_is_refused_with_one_line(self) -> None:
        """--workers 2 where there is no POSIX: one line and status 2 (the plugin); one worker is fine."""
        self.assertIsNone(startup.unsupported(Settings.defaults(workers=1)))
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        stopped = self.assertRaises(SystemExit, Options().parseOptions, ["--workers", "2"])
        self.assertEqual(stopped.code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertTrue(
            err.getvalue().startswith(
                "inkflow: error: invalid value for --workers: more than one worker needs a POSIX system"
            )
        )

    def test_upload_folder_without_uids(self) -> None:
        """No getuid: the default folder has no uid in its name; the folder check skips owner and mode bits."""
        self.assertTrue(default_upload_dir().endswith("inkflow-uploads"))
        self.assertIsNone(upload_dir_problem(self.folder))
        self.assertIsNotNone(upload_dir_problem(os.path.join(self.folder, "missing")))

    def test_no_unix_sockets_means_no_systemd(self) -> None:
        self.remove(socket, "AF_UNIX")
        self.assertFalse(systemd.notify("READY=1", {"NOTIFY_SOCKET": "/run/systemd/notify"}))


class PosixTests(TestCase):
    def test_workers_are_accepted_on_posix(self) -> None:
        if os.name != "posix":
            self.skipTest("not a POSIX system")
        self.assertIsNone(startup.unsupported(Settings.defaults(workers=2)))

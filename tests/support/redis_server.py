"""
A real C{redis-server} for the tests: Debian's package (installed by
C{scripts/install-system-deps.sh redis}), started in the foreground on a free
loopback port with no persistence, stopped by the test that started it.

L{redis_server_path} installs it when it is missing and apt-get is there; the
tests that need it skip only when it truly cannot be had.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server_path", "running_redis"]

REPO = Path(__file__).resolve().parents[2]
_tried_install = False


def redis_server_path() -> str | None:
    """
    C{redis-server}'s path, installing the package once if needed; C{None}
    when it cannot be installed here.
    """
    global _tried_install
    found = shutil.which("redis-server")
    if found is None and not _tried_install and shutil.which("apt-get"):
        _tried_install = True
        subprocess.run(
            ["sh", str(REPO / "scripts" / "install-system-deps.sh"), "redis"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        found = shutil.which("redis-server")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """
    One foreground redis-server on 127.0.0.1 (and a UNIX socket in a private
    folder).
    """

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = 0
        self.folder = tempfile.mkdtemp(prefix="inkflow-redis-")
        self.unix = os.path.join(self.folder, "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self._output = b""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """
        Start it and wait (bounded) for "Ready to accept connections".
        """
        self.port = self.port or _free_port()
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--unixsocket",
                self.unix,
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.folder,
                "--daemonize",
                "no",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while b"Ready to accept connections" not in self._output:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                self.stop()
                raise AssertionError(f"redis-server did not start:\n{self._output.decode(errors='replace')}")
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                self._output += os.read(self.process.stdout.fileno(), 65536)
        # Keep reading its log so a full pipe never blocks it.
        threading.Thread(target=self._drain, args=(self.process.stdout.fileno(),), daemon=True).start()
        return self

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass

    def stop(self) -> None:
        """
        Stop it (SIGTERM, then SIGKILL), keeping its port for a restart.
        """
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def running_redis() -> Iterator[RedisServer]:
    """
    The body of a C{redis} fixture: a redis-server on a free loopback port
    while the fixture lasts; the test skips when none can be had.
    """
    binary = redis_server_path()
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/install-system-deps.sh redis)")
    server = RedisServer(binary).start()
    yield server
    server.close()

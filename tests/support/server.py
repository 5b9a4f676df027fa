"""
Start the real InkFlow server (C{twistd -n inkflow}) as a subprocess on a free
loopback port, for end-to-end tests.

The port is chosen by the kernel (C{tcp:0}) and read from the server's log
line, so there is no port race and no polling.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STARTED = re.compile(r"(?:InkFlowSite starting on|InkFlowSite \(TLS\) starting on|InkFlow listening on) (\d+)")


def twistd() -> str:
    """
    The twistd next to this Python (the test venv's).
    """
    path = BIN / "twistd"
    return str(path) if path.exists() else "twistd"


def server_env(extra: dict[str, str] | None = None, *, source: bool = True) -> dict[str, str]:
    """
    A clean environment for a server: no INKFLOW_* from the caller.

    @param source: put the checkout first on C{sys.path}, so the tests run the
        code under test even before it is installed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("INKFLOW_")}
    if source:
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ServerProcess:
    """
    One InkFlow process.

    @ivar lines: every line it printed (stdout and stderr together).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        cwd: str | None = None,
        source: bool = True,
    ) -> None:
        if command is None:
            command = [twistd(), "-n", "--pidfile=", "inkflow", "--listen", "tcp:0:interface=127.0.0.1", *args]
        self.command = command
        self.env = server_env(env, source=source)
        self.cwd = cwd or str(REPO)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @classmethod
    def attach(cls, port: int) -> ServerProcess:
        """
        A handle on a server started elsewhere (a daemon), for its HTTP helpers.
        """
        handle = cls(command=[])
        handle.port = port
        return handle

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.spawn()
        try:
            self.port = int(self.wait_for(STARTED, timeout).group(1))
        except BaseException:
            # Never started as far as the test knows: no `with` block will stop it.
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=15)
            raise
        return self

    def spawn(self) -> None:
        """
        Start the process, its output collected line by line (see L{wait_for}).
        """
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 15.0) -> re.Match[str]:
        """
        Block until a printed line matches C{pattern}; return the match.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in self.lines:
            m = regex.search(line)
            if m:
                return m
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {regex.pattern!r} in:\n{self.output()}")
            try:
                got = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if got is None:
                raise AssertionError(f"server exited before {regex.pattern!r}:\n{self.output()}")
            self.lines.append(got)
            m = regex.search(got)
            if m:
                return m

    def drain_output(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def output(self) -> str:
        self.drain_output()
        return "".join(self.lines)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        # let the reader thread hand over the last lines
        self.wait_for_eof(timeout=5)
        return code

    def wait_for_eof(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """
        Stop the server (SIGTERM by default) and return its exit status;
        SIGKILL if it does not stop in time.
        """
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- a tiny blocking HTTP client -----------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15.0,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, _, data = self.request("GET", path)
        return status, json.loads(data)

    def post_json(
        self, path: str, value: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        status, got_headers, data = self.request(
            "POST",
            path,
            json.dumps(value).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )
        return status, got_headers, json.loads(data) if data else None


@contextmanager
def printing_server(*args: str) -> Iterator[ServerProcess]:
    """
    A started L{ServerProcess} with C{args}, stopped at the end; its output is
    printed when the block fails.
    """
    server = ServerProcess(*args).start()
    try:
        yield server
    except BaseException:
        print(server.output())
        raise
    finally:
        server.stop()


def run_command(command: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """
    Run C{command} to its end in a clean server environment from the
    checkout, its output captured as text; the exit status is the caller's to check.
    """
    return subprocess.run(
        list(command),
        env=server_env(),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def multipart(fields: dict[str, str], files: list[tuple[str, str, str, bytes]]) -> tuple[bytes, str]:
    """
    Encode a multipart/form-data body: C{files} are (field, filename, type, bytes).
    """
    boundary = "----inkflow-test-boundary-7MA4YWxkTrZu0gW"
    out: list[bytes] = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.append(value.encode("utf-8") + b"\r\n")
    for field, filename, ctype, data in files:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        out.append(data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"

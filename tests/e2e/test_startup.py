"""
End to end: every start-up failure (a port in use, permission denied, a bad
endpoint, an unreadable config file, an upload folder that cannot be made) is
one line on stderr and exit status 2, never a traceback; under C{twistd -n
inkflow} and C{twistd -ny inkflow.tac} alike.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import REPO, server_env, twistd

NOBODY = 65534


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=server_env(env), cwd=str(REPO), capture_output=True, text=True, timeout=60, check=False
    )


def _plugin(*args: str) -> subprocess.CompletedProcess[str]:
    return _run([twistd(), "-n", "--pidfile=", "inkflow", *args])


def _tac(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run([twistd(), "-ny", str(REPO / "inkflow.tac"), "--pidfile="], env)


def _assert_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert len(lines) == 1, lines
    assert lines[0].startswith("inkflow: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use_is_one_line_and_status_2(busy_port: int, tmp_path: Path) -> None:
    """twistd -n inkflow on a port in use: one line naming the address and the reason."""
    result = _plugin("--listen", f"tcp:{busy_port}:interface=127.0.0.1", "--upload-dir", str(tmp_path))
    _assert_one_line(result, f"127.0.0.1:{busy_port}", "ddress already in use")


def test_admin_port_in_use_is_one_line_and_status_2(busy_port: int, tmp_path: Path) -> None:
    """--admin-listen on a port in use: the same one line."""
    result = _plugin(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--admin-listen",
        f"tcp:{busy_port}:interface=127.0.0.1",
        "--upload-dir",
        str(tmp_path),
    )
    _assert_one_line(result, f"127.0.0.1:{busy_port}", "ddress already in use")


def test_port_in_use_with_workers_is_one_line_and_status_2(busy_port: int, tmp_path: Path) -> None:
    """--workers 2: the parent opens the socket; a port in use is the same one line."""
    result = _plugin(
        "--workers", "2", "--listen", f"tcp:{busy_port}:interface=127.0.0.1", "--upload-dir", str(tmp_path)
    )
    _assert_one_line(result, f"127.0.0.1:{busy_port}", "ddress already in use")


def test_port_in_use_in_the_tac_is_one_line_and_status_2(busy_port: int, tmp_path: Path) -> None:
    """twistd -ny inkflow.tac on a port in use: the same one line."""
    result = _tac({"INKFLOW_LISTEN": f"tcp:{busy_port}:interface=127.0.0.1", "INKFLOW_UPLOAD_DIR": str(tmp_path)})
    _assert_one_line(result, f"127.0.0.1:{busy_port}", "ddress already in use")


def test_permission_denied_on_a_privileged_port_is_one_line(tmp_path: Path) -> None:
    """A port below 1024 for an unprivileged user: one line saying permission denied."""
    command = [twistd(), "-n", "--pidfile=", "inkflow", "--listen", "tcp:1:interface=127.0.0.1"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no unprivileged user to try as")
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    uploads = tmp_path / "uploads"
    uploads.mkdir(mode=0o700)
    os.chown(uploads, NOBODY, NOBODY) if os.geteuid() == 0 else None
    result = _run([*command, "--upload-dir", str(uploads)], {"HOME": str(tmp_path)})
    _assert_one_line(result, "127.0.0.1:1", "ermission denied")


def test_upload_folder_that_cannot_be_made_is_one_line() -> None:
    """An --upload-dir that cannot be created (here under read-only /sys): one line naming it."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys here")
    result = _plugin("--listen", "tcp:0:interface=127.0.0.1", "--upload-dir", "/sys/inkflow-uploads")
    _assert_one_line(result, "/sys/inkflow-uploads")


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_config_file_is_one_line(kind: str, tmp_path: Path) -> None:
    """--config naming a file that is missing, or a folder: one line naming the file."""
    path = tmp_path / "inkflow.toml"
    if kind == "directory":
        path.mkdir()
    result = _plugin("--config", str(path))
    _assert_one_line(result, "--config", str(path))


def test_unreadable_config_file_in_the_tac_is_one_line(tmp_path: Path) -> None:
    """INKFLOW_CONFIG naming a missing file, in the .tac: one line naming it."""
    path = tmp_path / "missing.toml"
    _assert_one_line(_tac({"INKFLOW_CONFIG": str(path)}), str(path))


@pytest.mark.parametrize("endpoint", ["nonsense:1", "tcp:notaport", "ssl:0:privateKey=/nonexistent.pem"])
def test_bad_endpoint_is_one_line(endpoint: str) -> None:
    """A --listen that is not a Twisted endpoint (or names a missing key file): one line naming --listen."""
    _assert_one_line(_plugin("--listen", endpoint), "--listen")


def test_bad_endpoint_in_the_tac_is_one_line() -> None:
    """INKFLOW_LISTEN that is not an endpoint, in the .tac: one line naming it."""
    _assert_one_line(_tac({"INKFLOW_LISTEN": "nonsense:1"}), "INKFLOW_LISTEN")


def test_daemon_start_up_failure_is_reported_by_twistds_parent(busy_port: int, tmp_path: Path) -> None:
    """
    Daemonizing (no -n): twistd's parent reports the failure its own way (status 1, the one line inside
    its message, no traceback on stderr) and the pid file is gone (docs/operations.md says so).
    """
    pidfile, logfile = tmp_path / "inkflow.pid", tmp_path / "inkflow.log"
    command = [twistd(), "--pidfile", str(pidfile), "--logfile", str(logfile), "inkflow"]
    result = _run([*command, "--listen", f"tcp:{busy_port}:interface=127.0.0.1", "--upload-dir", str(tmp_path)])
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy_port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not pidfile.exists()

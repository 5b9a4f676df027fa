"""
The one line a start-up failure is reduced to (L{inkflow.server.startup}).
"""

from __future__ import annotations

import errno

from twisted.internet.error import CannotListenError

from inkflow.server.startup import describe_failure


def test_port_in_use_names_the_address_and_the_reason() -> None:
    error = CannotListenError("127.0.0.1", 8000, OSError(errno.EADDRINUSE, "Address already in use"))
    assert describe_failure(error) == "cannot listen on 127.0.0.1:8000: Address already in use"


def test_all_interfaces_and_unix_sockets_are_named_plainly() -> None:
    assert describe_failure(CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))) == (
        "cannot listen on *:80: Permission denied"
    )
    assert describe_failure(
        CannotListenError(None, "/run/x.sock", OSError(errno.EPERM, "Operation not permitted"))
    ) == ("cannot listen on /run/x.sock: Operation not permitted")


def test_an_os_error_names_its_file() -> None:
    error = PermissionError(errno.EACCES, "Permission denied", "/var/lib/inkflow/uploads")
    assert describe_failure(error) == "Permission denied: /var/lib/inkflow/uploads"


def test_a_defect_is_not_a_start_up_failure() -> None:
    assert describe_failure(ValueError("bug")) is None
    assert describe_failure(OSError()) is None

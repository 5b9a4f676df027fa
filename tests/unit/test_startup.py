"""
The one line a start-up failure is reduced to (L{inkflow.server.startup}).
"""

from __future__ import annotations

import errno

from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from inkflow.server.startup import describe_failure


class DescribeFailureTests(TestCase):
    """
    L{describe_failure}: what it says, and what it leaves to a traceback.
    """

    def test_port_in_use_names_the_address_and_the_reason(self) -> None:
        error = CannotListenError("127.0.0.1", 8000, OSError(errno.EADDRINUSE, "Address already in use"))
        self.assertEqual(describe_failure(error), "cannot listen on 127.0.0.1:8000: Address already in use")

    def test_all_interfaces_and_unix_sockets_are_named_plainly(self) -> None:
        self.assertEqual(
            describe_failure(CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))),
            "cannot listen on *:80: Permission denied",
        )
        self.assertEqual(
            describe_failure(CannotListenError(None, "/run/x.sock", OSError(errno.EPERM, "Operation not permitted"))),
            "cannot listen on /run/x.sock: Operation not permitted",
        )

    def test_an_os_error_names_its_file(self) -> None:
        error = PermissionError(errno.EACCES, "Permission denied", "/var/lib/inkflow/uploads")
        self.assertEqual(describe_failure(error), "Permission denied: /var/lib/inkflow/uploads")

    def test_a_defect_is_not_a_start_up_failure(self) -> None:
        self.assertIsNone(describe_failure(ValueError("bug")))
        self.assertIsNone(describe_failure(OSError()))

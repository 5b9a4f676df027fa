"""
Small helpers shared by the unit tests.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.trial.unittest import TestCase

F = TypeVar("F", bound=Callable[..., Any])


def temp_path(test: TestCase) -> str:
    """
    A fresh path (not yet created) in a private temp folder removed after
    C{test}; unlike C{TestCase.mktemp}, never inside the checkout under pytest.
    """
    folder = tempfile.mkdtemp(prefix="inkflow-test-")
    test.addCleanup(shutil.rmtree, folder, True)
    return folder + "/p"


def pinned(reason: str) -> Callable[[F], F]:
    """
    Mark a test that pins a finding not yet fixed: it must fail.

    Under pytest, C{xfail(strict=True)} (a pass is an error); under trial,
    C{todo} (an expected failure).  The fix removes the marker.
    """

    def mark(test: F) -> F:
        if "_pytest" in sys.modules:
            import pytest

            return cast(F, pytest.mark.xfail(strict=True, reason=reason)(test))
        test.todo = reason  # type: ignore[attr-defined]
        return test

    return mark

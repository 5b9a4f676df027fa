"""
Small helpers shared by the unit tests.
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.trial.unittest import TestCase


def temp_path(test: TestCase) -> str:
    """
    A fresh path (not yet created) in a private temp folder removed after
    C{test}; unlike C{TestCase.mktemp}, never inside the checkout under pytest.
    """
    folder = tempfile.mkdtemp(prefix="inkflow-test-")
    test.addCleanup(shutil.rmtree, folder, True)
    return folder + "/p"

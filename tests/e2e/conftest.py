"""
Fixtures shared by the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor

from tests.support.fake_n8n import FakeN8n, listen_fake_n8n

reactor: Any = _reactor


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeN8n]:
    """A fake n8n on a loopback port, in this process's reactor, for one test module."""
    f = listen_fake_n8n(reactor)
    yield f
    pytest_twisted.blockon(f.stop())


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An upload folder of its own for one test module's server."""
    return tmp_path_factory.mktemp("uploads")

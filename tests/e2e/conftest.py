"""
Fixtures shared by the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor

from tests.support.fake_n8n import FakeN8n, listen_fake_n8n

if TYPE_CHECKING:
    from playwright.sync_api import Browser

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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """
    Debian's Chromium under Playwright for one browser test module (which
    skips itself first when either is missing).
    """
    from playwright.sync_api import sync_playwright

    from tests.support.browser import launch_browser

    with sync_playwright() as playwright, launch_browser(playwright) as launched:
        yield launched

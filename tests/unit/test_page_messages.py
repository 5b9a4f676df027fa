"""
Tests for L{inkflow.web.page_messages}: the page's default limits and error
texts are the server's (the settings defaults, L{inkflow.errors}), through the
generated C{static/assets/messages.js}.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import TestCase

from inkflow.errors import MESSAGES
from inkflow.settings import Settings
from inkflow.web.page_messages import PAGE_MESSAGES_PATH, default_limits, render, server_messages

STATIC = Path(__file__).resolve().parents[2] / "static"


class PageMessagesTests(TestCase):
    """
    One source for what the page says before it asks the server.
    """

    def test_the_generated_file_is_current(self) -> None:
        """
        static/assets/messages.js is what the generator writes today; if not:
        python -m inkflow.web.page_messages > static/assets/messages.js
        """
        self.assertEqual((STATIC / PAGE_MESSAGES_PATH).read_text(encoding="utf-8"), render())

    def test_limits_are_the_settings_defaults(self) -> None:
        """The page's default limits are the settings defaults, under the names /api/health reports them."""
        defaults = Settings.defaults()
        self.assertEqual(
            default_limits(),
            {
                "max_file_size": defaults.max_file_size,
                "max_files": defaults.max_files,
                "max_message_chars": defaults.max_message_chars,
                "allowed_types": list(defaults.allowed_types),
            },
        )

    def test_every_error_code_has_its_hebrew_text(self) -> None:
        """Every code the server answers with is in the file, with errors.py's Hebrew message."""
        self.assertEqual(server_messages(), {code: he for code, (_, he, _en) in MESSAGES.items()})

    def test_the_page_imports_the_file_and_copies_none_of_it(self) -> None:
        """
        chat-client.js imports its limits and the server's texts from
        messages.js and writes none of those texts out itself.
        """
        page = (STATIC / "assets" / "chat-client.js").read_text(encoding="utf-8")
        self.assertIn('from "./messages.js"', page)
        copied = sorted(code for code, hebrew in server_messages().items() if hebrew in page)
        self.assertEqual(copied, [])

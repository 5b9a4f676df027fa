"""
Control characters from clients never reach a log line raw.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase


class LogSafeTests(TestCase):
    def test_control_characters_are_escaped(self) -> None:
        """DEL, C1 (U+0085), line breaks and ESC are escaped; Hebrew is kept."""
        from inkflow.web.request import log_safe

        self.assertEqual(log_safe("GET /a\x7f\u0085\n\x1b[31m/שלום\u2028"), "GET /a\\x7f\\x85\\n\\x1b[31m/שלום\\u2028")

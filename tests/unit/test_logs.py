"""
Tests for L{inkflow.server.logs}: the observers and the direct access-line writer.
"""

from __future__ import annotations

import io
import json
import re

from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import TestCase

from inkflow.server import logs


class ObserverTests(TestCase):
    """
    Text and JSON lines, the level filter, and the access-line fast path.
    """

    def tearDown(self) -> None:
        logs.make_observer("json", stream=io.StringIO())  # leave no text stream behind

    def test_access_line_in_the_text_format(self) -> None:
        """With InkFlow's text observer, access lines are written directly, in the same form as other lines."""
        out = io.StringIO()
        observer = logs.make_observer("text", stream=out)
        Logger(namespace="inkflow.web.routes", observer=observer).info("other line")
        self.assertTrue(logs.write_access_line("GET /{x} 200 12"))
        first, second = out.getvalue().splitlines()
        pattern = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[inkflow\.(web\.routes|access)#info\] "
        self.assertRegex(first, pattern)
        self.assertRegex(second, pattern)
        self.assertTrue(second.endswith("GET /{x} 200 12"))

    def test_json_observer_takes_access_lines_through_the_logger(self) -> None:
        """With JSON lines the fast path declines, and events carry their fields."""
        out = io.StringIO()
        observer = logs.make_observer("json", stream=out)
        self.assertFalse(logs.write_access_line("GET / 200 1"))
        Logger(namespace="inkflow.access", observer=observer).info("x", request_id="abc")
        self.assertEqual(json.loads(out.getvalue())["request_id"], "abc")

    def test_level_filter(self) -> None:
        """Below --log-level nothing is written, access lines included."""
        out = io.StringIO()
        observer = logs.make_observer("text", level="warn", stream=out)
        log = Logger(namespace="t", observer=observer)
        log.info("quiet")
        log.emit(LogLevel.warn, "loud")
        self.assertFalse(logs.write_access_line("GET / 200 1"))
        self.assertEqual(len(re.findall("loud", out.getvalue())), 1)
        self.assertNotIn("quiet", out.getvalue())

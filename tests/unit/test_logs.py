"""
Tests for L{inkflow.server.logs}: the observers and the direct access-line writer.
"""

from __future__ import annotations

import io
import json
import re

from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.trial.unittest import TestCase

from inkflow.server import logs
from inkflow.settings import Settings
from tests.unit.helpers import temp_path


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


class SetUpTests(TestCase):
    """
    L{logs.set_up}: the one set-up the plugin and the .tac share.
    """

    def setUp(self) -> None:
        self.addCleanup(logs.use_for_twistd, *logs._twistd_config)
        self.addCleanup(logs.make_observer, "json", stream=io.StringIO())

    def settings(self, **overrides: object) -> Settings:
        return Settings.defaults(upload_dir=temp_path(self), **overrides)

    def test_plugin_makes_inkflow_twistds_logger(self) -> None:
        """Under the plugin, twistd's --logger becomes InkFlow's factory, writing to twistd's --logfile."""
        options: dict[str, object] = {"logger": None, "logfile": "/tmp/inkflow-x.log", "nodaemon": False}
        logs.set_up(self.settings(log_format="json", log_level="warn"), twistd_options=options)
        self.assertEqual(options["logger"], logs.TWISTD_LOGGER)
        self.assertEqual(logs._twistd_config, ("json", "/tmp/inkflow-x.log", "warn"))

    def test_plugin_in_the_foreground_logs_to_stdout(self) -> None:
        """twistd -n without --logfile: stdout."""
        options: dict[str, object] = {"logger": None, "logfile": None, "nodaemon": True}
        logs.set_up(self.settings(), twistd_options=options)
        self.assertEqual(logs._twistd_config, ("text", "-", "info"))

    def test_an_operators_logger_wins(self) -> None:
        """twistd --logger given: left as it is."""
        options: dict[str, object] = {"logger": "my.observer", "logfile": None, "nodaemon": True}
        logs.set_up(self.settings(log_format="json"), twistd_options=options)
        self.assertEqual(options["logger"], "my.observer")

    def test_tac_uses_inkflows_observer_only_when_asked(self) -> None:
        """The .tac: text at info keeps twistd's observer; JSON or another level sets the ILogObserver component."""
        plain = Application("t")
        logs.set_up(self.settings(), application=plain)
        self.assertIsNone(plain.getComponent(ILogObserver, None))
        for overrides in ({"log_format": "json"}, {"log_level": "debug"}):
            application = Application("t")
            logs.set_up(self.settings(**overrides), application=application)
            self.assertTrue(ILogObserver.providedBy(application.getComponent(ILogObserver, None)))

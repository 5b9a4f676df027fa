"""
Tests for L{inkflow.server.logs}: the observers and the direct access-line writer.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

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


class EcsLineTests(TestCase):
    """
    --log-format json: one documented shape (ECS logging), no Twisted internals.
    """

    def lines(self, emit: Any) -> list[dict[str, Any]]:
        out = io.StringIO()
        emit(Logger(namespace="inkflow.test", observer=logs.make_observer("json", level="debug", stream=out)))
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def test_fixed_keys_then_the_fields_flat(self) -> None:
        """@timestamp (ISO 8601 UTC), log.level, log.logger, the rendered message, ecs.version; fields flat."""
        [line] = self.lines(lambda log: log.warn("{who} said {n}", who="n8n", n=3, nested={"a": (1, 2)}))
        self.assertRegex(line["@timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(
            {k: line[k] for k in ("log.level", "log.logger", "message", "ecs.version")},
            {"log.level": "warn", "log.logger": "inkflow.test", "message": "n8n said 3", "ecs.version": "8.11.0"},
        )
        self.assertEqual((line["who"], line["n"], line["nested"]), ("n8n", 3, {"a": [1, 2]}))

    def test_no_twisted_internals(self) -> None:
        """No log_* keys, no class uuid, no unrendered format; odd values become text."""
        [line] = self.lines(lambda log: log.info("{x}", x=object(), raw=b"bytes"))
        self.assertFalse([k for k in line if k.startswith("log_") or k == "format"])
        self.assertNotIn("__class_uuid__", json.dumps(line))
        self.assertTrue(line["message"].startswith("<object object"))
        self.assertEqual(line["raw"], "bytes")

    def test_a_failure_carries_error_fields(self) -> None:
        """log.failure: error.type, error.message and error.stack_trace."""

        def emit(log: Logger) -> None:
            try:
                raise ValueError("boom")
            except ValueError:
                log.failure("it failed")

        [line] = self.lines(emit)
        self.assertEqual((line["log.level"], line["message"]), ("critical", "it failed"))
        self.assertEqual((line["error.type"], line["error.message"]), ("ValueError", "boom"))
        self.assertIn("Traceback", line["error.stack_trace"])

    def test_a_field_named_like_a_fixed_key_does_not_replace_it(self) -> None:
        [line] = self.lines(lambda log: log.info("text", **{"log.level": "fake"}))
        self.assertEqual((line["log.level"], line["log.level_"]), ("info", "fake"))

    def test_settings_summary_has_only_what_differs_from_the_defaults(self) -> None:
        """The start-up line's settings: the changed options, secrets hidden."""
        settings = Settings.defaults(max_files=3, webhook_header=(("X-Key", "secret"),))
        summary = logs.settings_summary(settings)
        self.assertEqual(summary, {"max-files": 3, "webhook-header": ["X-Key"]})
        self.assertNotIn("secret", json.dumps(summary))

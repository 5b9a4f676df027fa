"""
Tests for L{inkflow.snapshot}: reading a health answer from the network
against the schema.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from inkflow.snapshot import read_health


class ReadHealthTests(TestCase):
    """
    L{read_health} reduces an answer from the network to the schema.
    """

    def test_sections_always_there(self) -> None:
        """Whatever arrives, every section is a mapping, so readers need not check."""
        answers: list[object] = [None, [], "x", {}, {"queue": [], "memory": 3, "upstreams": {}}]
        for data in answers:
            h = read_health(data)
            self.assertEqual((h["queue"], h["memory"], h["upstreams"]), ({}, {}, []))

    def test_wrong_types_are_left_out(self) -> None:
        """A value of the wrong type is absent; booleans are not numbers; ints pass for floats."""
        h = read_health({"pid": "7", "uptime_s": 3, "open_files": True, "status": 1, "queue": {"depth": 2.0}})
        self.assertNotIn("pid", h)
        self.assertNotIn("open_files", h)
        self.assertNotIn("status", h)
        self.assertEqual((h["uptime_s"], h["queue"]["depth"]), (3, 2))

    def test_lists(self) -> None:
        """List items that are not objects go; objects keep what fits; None is kept where allowed."""
        h = read_health(
            {
                "upstreams": ["junk", {"url": "u", "state": 5, "last_error": None}],
                "limits": {"allowed_types": ["a", 1]},
                "cleanup": {"last_run": None},
            }
        )
        self.assertEqual(h["upstreams"], [{"url": "u", "last_error": None}])
        self.assertEqual(h["limits"]["allowed_types"], ["a"])
        self.assertIsNone(h["cleanup"]["last_run"])
        self.assertIn("last_run", h["cleanup"])

    def test_unknown_fields_are_ignored(self) -> None:
        """Fields a newer server sends are dropped, not an error."""
        self.assertNotIn("novelty", read_health({"novelty": {"open": 1}}))

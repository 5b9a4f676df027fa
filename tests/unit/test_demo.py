"""
The demo responder's Hebrew (L{inkflow.n8n.demo}).
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from inkflow.chat import ChatMessage, UploadedFile
from inkflow.n8n.demo import DemoResponder


def _message(names: list[str]) -> ChatMessage:
    files = tuple(UploadedFile("/nonexistent", name, "text/plain", 1) for name in names)
    return ChatMessage(request_id="r", session_id="s", action="sendMessage", text="שלום", metadata={}, files=files)


class DemoPluralTests(TestCase):
    def test_one_file_is_named_in_the_singular(self) -> None:
        output = DemoResponder().answer(_message(["a.txt"]))["output"]
        self.assertIn("וגם קובץ אחד: a.txt", output)
        self.assertNotIn("1 קבצים", output)

    def test_several_files_are_counted_in_the_plural(self) -> None:
        output = DemoResponder().answer(_message(["a.txt", "b.txt"]))["output"]
        self.assertIn("וגם 2 קבצים: a.txt, b.txt", output)

"""
Tests for L{inkflow.n8n.response.decode_answer} and the stream-line parser on
hostile answers from n8n: nothing n8n sends may surface as an exception other
than the C{ValueError} the forwarder turns into a 502.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from inkflow.n8n.response import decode_answer
from inkflow.n8n.stream import is_keepalive, parse_stream_line

JSON = Headers({b"Content-Type": [b"application/json; charset=utf-8"]})


class HostileAnswerTests(TestCase):
    """
    n8n's answer, decoded.
    """

    def test_nesting_too_deep_is_a_value_error(self) -> None:
        """A JSON answer nested 100,000 deep is a ValueError (a 502), never a RecursionError."""
        self.assertRaises(ValueError, decode_answer, JSON, b"[" * 100_000 + b"]" * 100_000)

    def test_a_stream_line_nested_too_deep_is_no_stream_line(self) -> None:
        """A first line with a type key nested 100,000 deep is not taken for a stream line."""
        line = b'{"type": "item", "content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        self.assertIsNone(parse_stream_line(line))
        self.assertFalse(is_keepalive(b'{"keepalive": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))

    def test_plain_json_is_decoded(self) -> None:
        """An ordinary answer is its JSON value."""
        self.assertEqual(decode_answer(JSON, b'{"output": "\\u05e9\\u05dc\\u05d5\\u05dd"}'), {"output": "שלום"})

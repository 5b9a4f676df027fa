"""
Tests for L{inkflow.n8n.stream}: the pure rules of streamed answers.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from inkflow.n8n.stream import (
    ERROR_TEXT,
    KEEPALIVE_LINE,
    Bridge,
    LineSplitter,
    LineTooLong,
    answer_text,
    bridge_body,
    error_line,
    first_line,
    is_keepalive,
    is_stream_line,
    synthesize,
)
from inkflow.web.stream import wants_stream


def line(kind: str, content: str | None = None, node: str = "n1", run: int = 0) -> bytes:
    value: dict[str, object] = {"type": kind}
    if content is not None:
        value["content"] = content
    value["metadata"] = {"nodeId": node, "nodeName": node, "itemIndex": 0, "runIndex": run, "timestamp": 1}
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


class LineSplitterTests(TestCase):
    """
    Tests for L{LineSplitter}.
    """

    def test_complete_lines_out_unfinished_kept(self) -> None:
        """
        Complete lines come out without their newline; the unfinished rest is
        held until its newline arrives.
        """
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"a\nb\nc"), [b"a", b"b"])
        self.assertEqual(splitter.pending, 1)
        self.assertEqual(splitter.feed(b"d"), [])
        self.assertEqual(splitter.feed(b"e\n"), [b"cde"])
        self.assertEqual(splitter.pending, 0)

    def test_utf8_character_split_across_chunks(self) -> None:
        """
        A Hebrew character cut between two chunks is rejoined byte for byte:
        the split is on bytes, never on decoded text.
        """
        data = line("item", "שלום עולם") + b"\n"
        cut = data.index("ש".encode()) + 1  # inside the two-byte character
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(data[:cut]), [])
        self.assertEqual(splitter.feed(data[cut:]), [data[:-1]])
        self.assertEqual(json.loads(data)["content"], "שלום עולם")

    def test_every_split_point(self) -> None:
        """
        Whatever the chunking, the lines are the same.
        """
        data = line("begin") + b"\n" + line("item", "אבג") + b"\n" + line("end") + b"\n"
        expected = data.split(b"\n")[:-1]
        for cut in range(len(data) + 1):
            splitter = LineSplitter()
            got = splitter.feed(data[:cut]) + splitter.feed(data[cut:])
            self.assertEqual(got, expected, cut)

    def test_carriage_return_kept(self) -> None:
        """
        Lines are passed on unchanged: a CR before the newline stays.
        """
        self.assertEqual(LineSplitter().feed(b"x\r\n"), [b"x\r"])

    def test_unfinished_line_over_the_limit(self) -> None:
        """
        An unfinished line longer than the limit is an error, and is dropped.
        """
        splitter = LineSplitter(max_line=10)
        splitter.feed(b"12345")
        self.assertRaises(LineTooLong, splitter.feed, b"678901")
        self.assertEqual(splitter.pending, 0)

    def test_complete_line_over_the_limit(self) -> None:
        """
        A complete line over the limit is an error too, also when it came in
        one chunk.
        """
        self.assertRaises(LineTooLong, LineSplitter(max_line=4).feed, b"ok\n123456\n")
        splitter = LineSplitter(max_line=4)
        splitter.feed(b"123")
        self.assertRaises(LineTooLong, splitter.feed, b"45\n")

    def test_line_at_the_limit(self) -> None:
        """
        A line of exactly the limit passes.
        """
        self.assertEqual(LineSplitter(max_line=4).feed(b"1234\n"), [b"1234"])

    def test_finish_returns_the_tail(self) -> None:
        """
        At the end, a non-blank unfinished line is returned; a blank one is not.
        """
        splitter = LineSplitter()
        splitter.feed(b"a\ntail")
        self.assertEqual(splitter.finish(), b"tail")
        self.assertIsNone(splitter.finish())
        splitter.feed(b"a\n  ")
        self.assertIsNone(splitter.finish())


class StreamDetectionTests(TestCase):
    """
    Tests for L{is_stream_line}, L{first_line} and L{wants_stream}.
    """

    def test_stream_types(self) -> None:
        """
        Objects typed begin, item, end or error are stream lines.
        """
        for kind in ("begin", "item", "end", "error"):
            self.assertTrue(is_stream_line(line(kind)), kind)

    def test_not_stream_lines(self) -> None:
        """
        Other types, objects without a type, arrays, text and broken JSON are
        not.
        """
        for data in (
            b'{"type": "keepalive"}',
            b'{"output": "hi"}',
            b'[{"type": "item"}]',
            b"hello",
            b'{"type": "item"',
            b"",
            b'"item"',
        ):
            self.assertFalse(is_stream_line(data), data)

    def test_first_line(self) -> None:
        """
        The first line that is neither blank nor a keepalive; the whole body
        when it has no newline.
        """
        self.assertEqual(first_line(b"\n\n a\nb"), b" a")
        self.assertEqual(first_line(KEEPALIVE_LINE + b"x\n"), b"x")
        self.assertEqual(first_line(b'{"output": 1}'), b'{"output": 1}')
        self.assertIsNone(first_line(b"\n  \n"))

    def test_keepalive(self) -> None:
        """
        Newer n8n's keepalive is recognised, and is not a stream line.
        """
        self.assertTrue(is_keepalive(KEEPALIVE_LINE))
        self.assertTrue(is_keepalive(b'{ "type": "keepalive" }'))
        self.assertFalse(is_keepalive(b'{"type": "item", "content": "keepalive"}'))
        self.assertFalse(is_stream_line(KEEPALIVE_LINE))

    def test_wants_stream(self) -> None:
        """
        C{text/plain} (what @n8n/chat sends) or C{application/x-ndjson} ask
        for a stream, unless their quality is 0.
        """
        self.assertTrue(wants_stream(b"text/plain"))
        self.assertTrue(wants_stream("application/json, application/x-ndjson;q=0.5"))
        self.assertTrue(wants_stream(b"Text/Plain; charset=utf-8"))
        self.assertFalse(wants_stream(b"application/json"))
        self.assertFalse(wants_stream(None))
        self.assertFalse(wants_stream(b"*/*"))
        self.assertFalse(wants_stream(b"text/plain;q=0"))
        self.assertFalse(wants_stream(b"text/plainish"))


class BridgeTests(TestCase):
    """
    Tests for L{Bridge} and L{bridge_body}: a stream for a JSON client.
    """

    def test_items_joined_per_run_in_first_seen_order(self) -> None:
        """
        Interleaved runs of several nodes: each run's items are joined, the
        runs in the order they first appeared, separated by a blank line.
        """
        lines = [
            line("begin", node="a"),
            line("item", "A1 ", node="a"),
            line("begin", node="b"),
            line("item", "B1", node="b"),
            line("item", "A2", node="a"),
            line("begin", node="a", run=1),
            line("item", "a-run-1", node="a", run=1),
            line("end", node="b"),
            line("end", node="a"),
            line("end", node="a", run=1),
        ]
        result = Bridge().feed_all(lines).result()
        self.assertEqual(result.output, "A1 A2\n\nB1\n\na-run-1")
        self.assertEqual(result.errors, [])
        self.assertEqual(result.lines, 10)

    def test_only_errors(self) -> None:
        """
        A stream of error lines has no output, and its errors.
        """
        result = Bridge().feed_all([line("error", "boom"), b'{"type":"error","content":null}']).result()
        self.assertIsNone(result.output)
        self.assertEqual(result.errors, ["boom", ""])

    def test_begin_end_without_items(self) -> None:
        """
        begin / end without items: no output, no error (an empty answer).
        """
        result = Bridge().feed_all([line("begin"), line("end")]).result()
        self.assertIsNone(result.output)
        self.assertEqual(result.errors, [])

    def test_other_lines_ignored(self) -> None:
        """
        Keepalives, blank lines and junk do not count.
        """
        result = Bridge().feed_all([KEEPALIVE_LINE.strip(), b"", b"junk", line("item", "x")]).result()
        self.assertEqual(result.output, "x")
        self.assertEqual(result.lines, 1)

    def test_bridge_body(self) -> None:
        """
        A whole body: a stream when its first line is a stream line, else
        C{None} (JSON or text, even with newlines in it).
        """
        body = line("begin") + b"\n" + line("item", "שלום") + b"\n" + line("end") + b"\n"
        result = bridge_body(body)
        assert result is not None
        self.assertEqual(result.output, "שלום")
        self.assertIsNone(bridge_body(b'{\n  "output": "hi"\n}\n'))
        self.assertIsNone(bridge_body(b"plain text\nlines"))
        self.assertIsNone(bridge_body(b""))
        after_keepalive = bridge_body(KEEPALIVE_LINE + line("item", "k") + b"\n")
        assert after_keepalive is not None
        self.assertEqual(after_keepalive.output, "k")


class SynthesizeTests(TestCase):
    """
    Tests for L{synthesize}, L{answer_text} and L{error_line}.
    """

    def test_begin_item_end(self) -> None:
        """
        A JSON answer becomes begin, one item with its text, end: n8n's shape
        with InkFlow's metadata, one line each.
        """
        data = synthesize({"output": "שלום", "sessionId": "s"}, 1.5)
        lines = [json.loads(x) for x in data.split(b"\n") if x]
        self.assertEqual([x["type"] for x in lines], ["begin", "item", "end"])
        self.assertEqual(lines[1]["content"], "שלום")
        self.assertTrue(data.endswith(b"\n"))
        for value in lines:
            self.assertEqual(
                value["metadata"],
                {"nodeId": "inkflow", "nodeName": "InkFlow", "itemIndex": 0, "runIndex": 0, "timestamp": 1500},
            )
        self.assertTrue(all(is_stream_line(x) for x in data.split(b"\n") if x))

    def test_answer_text(self) -> None:
        """
        C{output ?? text ?? message}, as @n8n/chat shows; else the JSON.
        """
        self.assertEqual(answer_text({"text": "t", "message": "m"}), "t")
        self.assertEqual(answer_text({"message": "m"}), "m")
        self.assertEqual(answer_text({"output": None, "text": "t"}), "t")
        self.assertEqual(answer_text({"output": {"a": 1}}), '{"a": 1}')
        self.assertEqual(answer_text({"data": []}), '{"data": []}')
        self.assertEqual(answer_text("plain"), "plain")
        self.assertEqual(answer_text([1]), "[1]")

    def test_error_line(self) -> None:
        """
        One error line with the Hebrew text and nodeId "inkflow".
        """
        data = error_line(ERROR_TEXT["upstream_dropped"], 2.0)
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(data.count(b"\n"), 1)
        value = json.loads(data)
        self.assertEqual(value["type"], "error")
        self.assertEqual(value["content"], ERROR_TEXT["upstream_dropped"])
        self.assertEqual(value["metadata"]["nodeId"], "inkflow")

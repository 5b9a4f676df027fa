"""
For the embed's browser tests (L{tests.e2e.test_page_embed}): a site owner's
page on another origin with one C{<script src=".../embed.js">} tag and the CSP
README tells owners to send, and a threaded fake n8n that streams its answer
(NDJSON) for messages starting with C{stream}.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.support.browser import ReceivedRequest, received_request
from tests.support.loopback_http import LoopbackHTTPServer, QuietHandler

__all__ = ["MARKDOWN_ANSWER", "HostSite", "StreamingN8n", "host_csp"]

#: The streamed answer: a heading, bold, a list and a long code line (scrolls sideways).
MARKDOWN_ANSWER = (
    "## התקנה\n\nצריך **שני** דברים:\n\n- קובץ `config.toml`\n- הרשאות\n\n"
    "### דוגמה\n\n```sh\ntwistd -n inkflow --config /etc/inkflow/config.toml --webhook "
    "https://n8n.example.com/webhook/0123456789abcdef0123456789abcdef\n```\n\nזהו."
)


def host_csp(inkflow: str) -> str:
    """The CSP README's "Put the chat on your site" asks a host page for (plus its own 'self')."""
    return (
        f"default-src 'self'; script-src 'self' {inkflow}; style-src 'self' {inkflow}; "
        f"connect-src 'self' {inkflow}; img-src 'self' {inkflow}"
    )


class HostSite(LoopbackHTTPServer):
    """
    The owner's own site: C{/} is a page of theirs (with styles of its own
    that must not reach the chat) that adds the chat with one script tag.
    """

    def __init__(self) -> None:
        self.inkflow = ""
        self.attributes = ""
        site = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                csp = {"Content-Security-Policy": host_csp(site.inkflow)}
                self.send_whole(site.page().encode(), "text/html; charset=utf-8", csp)

        super().__init__(Handler)

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    def page(self) -> str:
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bakery on the corner</title>
<script src="{self.inkflow}/embed.js" defer{self.attributes}></script>
</head>
<body>
<header><h1>Bakery on the corner</h1></header>
<main><p>Fresh bread every morning. Open Sunday to Friday.</p>
<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.</p></main>
</body></html>"""


class StreamingN8n(LoopbackHTTPServer):
    """
    A fake n8n webhook: a message starting with C{stream} is answered with
    L{MARKDOWN_ANSWER} as n8n's streaming lines, any other with
    C{{"output": "n8n: <text> (<n> files)"}}.  Every request is recorded.
    """

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                received = received_request(self)
                with fake._lock:
                    fake.requests.append(received)
                text = received.chat_input or ""
                if text.startswith("stream"):
                    data = fake.stream_lines(MARKDOWN_ANSWER)
                    kind = "application/json; charset=utf-8"  # what n8n's streaming webhook says
                else:
                    answer = {"output": f"n8n: {text} ({len(received.files)} files)"}
                    data = json.dumps(answer, ensure_ascii=False).encode()
                    kind = "application/json; charset=utf-8"
                self.send_whole(data, kind)

        super().__init__(Handler)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook/chat"

    @staticmethod
    def stream_lines(answer: str) -> bytes:
        meta: dict[str, Any] = {"nodeId": "agent", "nodeName": "Agent", "itemIndex": 0, "runIndex": 0}
        lines = [{"type": "begin", "metadata": meta}]
        for start in range(0, len(answer), 24):
            lines.append({"type": "item", "content": answer[start : start + 24], "metadata": meta})
        lines.append({"type": "end", "metadata": meta})
        return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)

    def with_input(self, text: str) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.chat_input == text]

"""
In Chromium: the official @n8n/chat widget (fetched at set-up, see
scripts/install-n8n-chat.sh) with C{enableStreaming: true}, pointed at
InkFlow's /api/chat, shows a streamed answer part by part.

The streaming n8n here is a threaded stdlib server writing n8n 2.8.4's
framing; the test releases the second part itself (an event, no timer).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.support.browser import skip_without_browser, start_inkflow
from tests.support.loopback_http import LoopbackHTTPServer, QuietHandler
from tests.support.server import REPO

skip_without_browser()
if not (REPO / "static" / "examples" / "vendor" / "n8n-chat" / "chat.bundle.umd.js").exists():
    pytest.skip("@n8n/chat is not installed (scripts/install-n8n-chat.sh)", allow_module_level=True)

from playwright.sync_api import Browser, expect  # noqa: E402

WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)

META = {"nodeId": "agent", "nodeName": "Agent", "itemIndex": 0, "runIndex": 0, "timestamp": 1767225600000}


def _line(kind: str, content: str | None = None) -> bytes:
    value: dict[str, Any] = {"type": kind}
    if content is not None:
        value["content"] = content
    value["metadata"] = META
    return json.dumps(value, ensure_ascii=False).encode("utf-8") + b"\n"


class StreamingN8n(LoopbackHTTPServer):
    """
    Answers every chat with a stream: begin and a first item at once, then
    (after L{release}) a second item and end.
    """

    def __init__(self) -> None:
        self.second = threading.Event()
        self.actions: list[str] = []
        fake = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.actions.append(str(body.get("action")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.chunk(_line("begin"))
                self.chunk(_line("item", "חלק ראשון"))
                fake.second.wait(30)
                self.chunk(_line("item", " וחלק שני"))
                self.chunk(_line("end"))
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        super().__init__(Handler)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook/chat"

    def _stopping(self) -> None:
        self.second.set()


#: Mounts a second, streaming @n8n/chat on the example page (evaluated by
#: Playwright: the page's CSP allows no inline script of ours).
MOUNT = """() => {
  const target = document.createElement("div");
  target.id = "stream-chat";
  target.style.height = "600px";
  document.querySelector("main").appendChild(target);
  window.N8nChat.createChat({
    webhookUrl: location.origin + "/api/chat",
    target: "#stream-chat",
    mode: "fullscreen",
    enableStreaming: true,
    loadPreviousSession: false,
    showWelcomeScreen: false,
    initialMessages: [],
  });
}"""


def test_official_widget_streams_through_inkflow(browser: Browser) -> None:
    """
    The widget sends C{Accept: text/plain}; its bot bubble shows the first
    part while n8n has not produced the second, then the whole answer.
    """
    with StreamingN8n() as fake, start_inkflow("--webhook", fake.url()) as server:
        context = browser.new_context(locale="he-IL", service_workers="block")
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            requests: list[Any] = []
            page.on("request", lambda request: requests.append(request))
            page.goto(server.url("/examples/n8n-chat.html"))
            expect(page.locator("html")).to_have_attribute("data-chat-ready", "true")
            page.evaluate(MOUNT)
            box = page.locator("#stream-chat textarea")
            expect(box).to_be_visible()
            box.fill("שלום")
            box.press("Enter")
            bubble = page.locator("#stream-chat .chat-message-from-bot:not(.chat-message-typing)").last
            expect(bubble).to_contain_text("חלק ראשון")
            assert "וחלק שני" not in bubble.inner_text()
            fake.second.set()
            expect(bubble).to_contain_text("חלק ראשון וחלק שני")
            expect(page.locator("#stream-chat")).not_to_contain_text("No response received")
            posts = [r for r in requests if r.method == "POST" and r.url.endswith("/api/chat")]
            assert posts and "text/plain" in (posts[-1].headers.get("accept") or "")
            assert fake.actions.count("sendMessage") == 1  # one message, one n8n run
            assert errors == []
        finally:
            context.close()

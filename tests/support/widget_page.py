"""
A site owner's page embedding the official @n8n/chat widget (the copy
fetched into static/examples/vendor by scripts/install-n8n-chat.sh), served
from its own origin by a small threaded HTTP server: what a customer's site
looks like to InkFlow.  No CSP of InkFlow's applies to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.loopback_http import LoopbackHTTPServer, QuietHandler
from tests.support.server import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

__all__ = ["VENDOR", "OwnerSite", "owner_page", "send_from_widget", "widget_server_args"]

VENDOR = REPO / "static" / "examples" / "vendor" / "n8n-chat"


def widget_server_args(webhook: str, origin: str) -> tuple[str, ...]:
    """
    InkFlow's options for a widget with custom keys on C{origin}'s pages: the
    message under C{question}, the session under C{conversation}, CORS for
    C{origin} allowing an C{X-Widget-Token} header that is forwarded to
    C{webhook}; no rate limit.
    """
    return (
        "--webhook",
        webhook,
        "--rate-limit",
        "0",
        "--chat-input-key",
        "question",
        "--chat-session-key",
        "conversation",
        "--cors-origin",
        origin,
        "--cors-allow-header",
        "X-Widget-Token",
        "--forward-header",
        "X-Widget-Token",
    )


def owner_page(options: dict[str, Any]) -> bytes:
    """A site owner's page embedding the widget with C{options} (webhookUrl and all)."""
    return f"""<!doctype html>
<html lang="he" dir="rtl"><head><meta charset="utf-8">
<link rel="stylesheet" href="/vendor/style.css">
<script src="/vendor/chat.bundle.umd.js"></script></head>
<body><div id="n8n-chat" style="height:600px"></div>
<script>
window.N8nChat.createChat(Object.assign({{target: "#n8n-chat", mode: "fullscreen", showWelcomeScreen: false}},
  {json.dumps(options)}));
</script></body></html>""".encode()


def send_from_widget(page: Page, origin: str, text: str, timeout_ms: float = 15_000) -> Locator:
    """
    Open the owner's page at C{origin} in C{page}, wait (at most
    C{timeout_ms}) for the widget's text box and send C{text} from it; the box
    is returned for the next messages.
    """
    from playwright.sync_api import expect

    page.goto(origin + "/")
    box = page.locator("#n8n-chat textarea")
    expect(box).to_be_visible(timeout=timeout_ms)
    box.fill(text)
    box.press("Enter")
    return box


class OwnerSite(LoopbackHTTPServer):
    """The site owner's own web server (another origin than InkFlow's), on a free loopback port."""

    def __init__(self) -> None:
        self.page = b""
        site = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/vendor/"):
                    path = VENDOR / Path(self.path).name
                    body = path.read_bytes()
                    kind = "text/css" if path.suffix == ".css" else "text/javascript"
                else:
                    body, kind = site.page, "text/html; charset=utf-8"
                self.send_whole(body, kind)

        super().__init__(Handler)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

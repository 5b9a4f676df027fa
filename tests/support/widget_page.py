"""
A site owner's page embedding the official @n8n/chat widget (the copy
fetched into static/examples/vendor by scripts/install-n8n-chat.sh), served
from its own origin by a small threaded HTTP server: what a customer's site
looks like to InkFlow.  No CSP of InkFlow's applies to it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.server import REPO

__all__ = ["VENDOR", "OwnerSite", "owner_page", "widget_server_args"]

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


class OwnerSite:
    """The site owner's own web server (another origin than InkFlow's), on a free loopback port."""

    def __init__(self) -> None:
        self.page = b""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/vendor/"):
                    path = VENDOR / Path(self.path).name
                    body = path.read_bytes()
                    kind = "text/css" if path.suffix == ".css" else "text/javascript"
                else:
                    body, kind = site.page, "text/html; charset=utf-8"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OwnerSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

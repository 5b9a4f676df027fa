"""
The official @n8n/chat widget (unmodified, from static/examples/vendor) in a
real Chromium, on a site owner's page of another origin, pointed at InkFlow's
C{/api/chat}: custom C{chatInputKey} / C{chatSessionKey} and extra
C{webhookConfig.headers} (so a CORS preflight), through InkFlow to a fake n8n.

Skips when Playwright, Chromium or the fetched widget is missing.
"""

from __future__ import annotations

import sys

import pytest

from tests.support.browser import FakeN8n, artifact, browser_missing, start_inkflow
from tests.support.server import ServerProcess
from tests.support.widget_page import VENDOR, OwnerSite, owner_page, send_from_widget, widget_server_args

_missing = browser_missing() or (
    None if (VENDOR / "chat.bundle.umd.js").exists() else "run scripts/install-n8n-chat.sh"
)
if _missing:
    pytest.skip(f"widget browser tests need Playwright, Chromium and the widget: {_missing}", allow_module_level=True)

from playwright.sync_api import Browser, expect  # noqa: E402

WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)


def test_widget_with_custom_keys_and_headers_cross_origin(browser: Browser) -> None:
    """
    chatInputKey "question", chatSessionKey "conversation" and an extra
    header: the preflight passes, n8n gets the message and session under
    those names and the header, and the widget shows n8n's answer.
    """
    with (
        FakeN8n() as fake,
        OwnerSite() as owner,
        start_inkflow(*widget_server_args(fake.url(), owner.origin)) as server,
    ):
        owner.page = owner_page(
            {
                "webhookUrl": server.url("/api/chat"),
                "chatInputKey": "question",
                "chatSessionKey": "conversation",
                "webhookConfig": {"method": "POST", "headers": {"X-Widget-Token": "tok-from-widget"}},
                "loadPreviousSession": True,
            }
        )
        context = browser.new_context(locale="he-IL")
        try:
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            send_from_widget(page, owner.origin, "שאלה מהאתר של הלקוח", WAIT_MS)
            received = fake.wait_for(lambda r: r.fields.get("question") == "שאלה מהאתר של הלקוח")
            expect(page.locator("#n8n-chat .chat-message-from-bot").last).to_contain_text("(0 files)")
            assert received.fields["action"] == "sendMessage"
            assert received.fields["conversation"]  # the widget's session id, under its key
            assert "chatInput" not in received.fields and "sessionId" not in received.fields
            assert received.headers.get("x-widget-token") == "tok-from-widget"
            # the widget's history call used the custom session key too
            history = [r for r in fake.requests if r.fields.get("action") == "loadPreviousSession"]
            assert history and history[0].fields["conversation"] == received.fields["conversation"]
            page.screenshot(path=artifact("n8n-chat-widget-custom-keys.png"))
            assert problems == []
        finally:
            context.close()


def test_widget_in_response_nodes_mode_over_the_websocket(browser: Browser) -> None:
    """
    "Using Response Nodes": the chat POST answers executionStarted, the widget
    opens its WebSocket to InkFlow's /chat (cross-origin, allowed by
    --cors-origin), InkFlow relays it to the fake n8n's /chat: the first
    message, the visitor's answer, and the reply to it all pass.
    """
    fake = ServerProcess(command=[sys.executable, "-m", "tests.support.fake_n8n_ws", "--port", "0"])
    fake.spawn()
    try:
        port = int(fake.wait_for(r"fake n8n listening on (\d+)", 20).group(1))
        with (
            OwnerSite() as owner,
            start_inkflow(
                "--webhook", f"http://127.0.0.1:{port}/webhook/chat", "--rate-limit", "0", "--cors-origin", owner.origin
            ) as server,
        ):
            owner.page = owner_page({"webhookUrl": server.url("/api/chat"), "loadPreviousSession": False})
            context = browser.new_context(locale="he-IL")
            try:
                page = context.new_page()
                sockets: list[str] = []
                page.on("websocket", lambda ws: sockets.append(ws.url))
                box = send_from_widget(page, owner.origin, "התחלה", WAIT_MS)
                bot = page.locator("#n8n-chat .chat-message-from-bot")
                expect(bot.last).to_contain_text("ההודעה הראשונה מ-n8n")
                assert sockets and sockets[0].startswith(f"ws://127.0.0.1:{server.port}/chat?")
                assert "executionId=1001" in sockets[0]
                box.fill("התשובה שלי")
                box.press("Enter")
                expect(bot.last).to_contain_text("קיבלתי: התשובה שלי")
                page.screenshot(path=artifact("n8n-chat-widget-response-nodes.png"))
                _, health = server.get_json("/api/health")
                assert health["websockets"]["opened_total"] == 1
            finally:
                context.close()
    finally:
        fake.stop()

"""
The landing page and its chat widget in a real browser: Debian's Chromium,
driven by Playwright, against the real InkFlow server (C{twistd -n inkflow}) on
a loopback port, with a fake n8n in the test process where a webhook is needed.

Skips when the C{playwright} package or C{/usr/bin/chromium} is missing
(C{scripts/install-system-deps.sh browser} installs the latter).  Screenshots go to
C{test-artifacts/}.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.browser import (
    FakeN8n,
    artifact,
    png_bytes,
    skip_without_browser,
    start_inkflow,
)
from tests.support.server import ServerProcess

skip_without_browser()

from playwright.sync_api import (  # noqa: E402
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Route,
    ViewportSize,
    expect,
)

if TYPE_CHECKING:
    from playwright.sync_api import Response

#: Every Playwright wait in this module is bounded by this (milliseconds).
WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class Watched:
    """
    A page with everything it did recorded: requests, responses, console
    messages and uncaught errors.
    """

    page: Page
    base: str
    requests: list[Request] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    console: list[ConsoleMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def chat_posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.endswith("/api/chat")]

    def foreign(self) -> list[str]:
        return [r.url for r in self.requests if not (r.url.startswith(self.base + "/") or r.url.startswith("data:"))]

    def problems(self) -> list[str]:
        return self.errors + [m.text for m in self.console if m.type == "error"]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Any]:
    """
    C{open_page(server, path="/", viewport=DESKTOP, routes=None)}: a fresh
    context (its own localStorage) with a watched page on C{path}, C{routes}
    (URL pattern -> handler) installed first; closed after the test.
    """
    contexts = []

    def opener(
        server: ServerProcess,
        path: str = "/",
        viewport: ViewportSize = DESKTOP,
        routes: dict[str, Callable[[Route], None]] | None = None,
    ) -> Watched:
        context = browser.new_context(viewport=viewport, locale="he-IL", service_workers="block")
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page, server.base)
        page.on("request", lambda request: watched.requests.append(request))
        page.on("response", lambda response: watched.responses.append(response))
        page.on("console", lambda message: watched.console.append(message))
        page.on("pageerror", lambda error: watched.errors.append(str(error)))
        for pattern, handler in (routes or {}).items():
            page.route(pattern, handler)
        page.goto(server.url(path))
        return watched

    yield opener
    for context in contexts:
        context.close()


def chat_ready(page: Page, state: str = "ready") -> None:
    expect(page.locator("#chat-widget")).to_have_attribute("data-state", state)


def send(page: Page, text: str) -> None:
    box = page.get_by_label("ההודעה שלכם")
    box.fill(text)
    box.press("Enter")


def bot_replies(page: Page) -> Any:
    # The first bot bubble is the greeting.
    return page.locator("#chat-log .msg-bot:not(.msg-typing) .bubble")


# -- the page ---------------------------------------------------------------------


def test_page_is_hebrew_rtl_accessible_and_self_contained(open_page: Any) -> None:
    """
    The page is C{lang="he" dir="rtl"}, has landmarks and a labelled chat,
    loads nothing from another host, breaks no CSP rule, and looks right on a
    desktop and on a phone (screenshots in test-artifacts/).
    """
    with start_inkflow() as server:
        for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            watched = open_page(server, viewport=viewport)
            page = watched.page
            chat_ready(page)
            assert page.evaluate("document.documentElement.dir") == "rtl"
            assert page.evaluate("document.documentElement.lang") == "he"
            assert page.evaluate("getComputedStyle(document.body).direction") == "rtl"
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            expect(page.get_by_role("banner")).to_have_count(1)
            expect(page.get_by_role("main")).to_have_count(1)
            expect(page.get_by_role("contentinfo")).to_have_count(1)
            expect(page.get_by_role("navigation")).to_have_count(1)
            # The log is not live (a streamed answer would be read token by token);
            # finished answers are said once in a polite region of their own.
            expect(page.get_by_role("log")).to_have_attribute("aria-live", "off")
            expect(page.locator("#chat-live")).to_have_attribute("aria-live", "polite")
            expect(page.get_by_label("ההודעה שלכם")).to_be_visible()
            expect(page.get_by_role("button", name="צירוף קבצים")).to_be_visible()
            expect(page.locator("#chat-mode")).to_contain_text("מצב הדגמה")
            # Nothing overflows sideways on a phone.
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.screenshot(path=artifact(f"page-{name}.png"), full_page=True)
            page.locator("#chat").scroll_into_view_if_needed()
            page.screenshot(path=artifact(f"page-{name}-chat.png"))
            assert watched.foreign() == []
            assert watched.problems() == []
            assert not [m.text for m in watched.console if "Content Security Policy" in m.text]


def test_keyboard_reaches_the_chat_in_order(open_page: Any) -> None:
    """
    The skip link is the first stop and leads to the chat; the text box,
    attach and send buttons follow in that order; the focus is visible.
    """
    with start_inkflow() as server:
        page = open_page(server).page
        chat_ready(page)
        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="דילוג לצ'אט")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#chat")).to_be_focused()
        box = page.get_by_label("ההודעה שלכם")
        box.focus()
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        page.keyboard.press("Tab")
        expect(page.get_by_role("button", name="צירוף קבצים")).to_be_focused()
        page.keyboard.press("Tab")
        expect(page.get_by_role("button", name="שליחה")).to_be_focused()


# -- sending ------------------------------------------------------------------------


def test_demo_mode_answers_a_hebrew_message_and_keeps_the_session(open_page: Any) -> None:
    """
    In demo mode a Hebrew message typed with Shift+Enter for a new line and
    sent with Enter gets the server's Hebrew echo; the session id is kept in
    localStorage and used again after a reload.
    """
    with start_inkflow() as server:
        watched = open_page(server)
        page = watched.page
        chat_ready(page)
        box = page.get_by_label("ההודעה שלכם")
        box.fill("שלום, מה המחיר של Plan B")
        box.press("Shift+Enter")
        box.type("ל-12 חודשים?")
        assert box.input_value() == "שלום, מה המחיר של Plan B\nל-12 חודשים?"
        assert watched.chat_posts() == []
        box.press("Enter")
        expect(bot_replies(page)).to_have_count(2)
        expect(bot_replies(page).last).to_contain_text("שלום, מה המחיר של Plan B")
        expect(bot_replies(page).last.locator("p")).to_have_attribute("dir", "auto")
        expect(page.locator("#chat-log .msg-user .bubble")).to_have_text("שלום, מה המחיר של Plan B\nל-12 חודשים?")
        expect(box).to_have_value("")
        assert len(watched.chat_posts()) == 1
        sent = json.loads(watched.chat_posts()[0].post_data or "{}")
        session = page.evaluate("localStorage.getItem('inkflow.sessionId')")
        assert sent["sessionId"] == session
        assert sent["message"] == "שלום, מה המחיר של Plan B\nל-12 חודשים?"

        page.reload()
        chat_ready(page)
        # The conversation is still on screen after the reload (issue 22).
        expect(bot_replies(page)).to_have_count(2)
        send(page, "ושוב")
        expect(bot_replies(page)).to_have_count(3)
        again = json.loads(watched.chat_posts()[-1].post_data or "{}")
        assert again["sessionId"] == session
        assert watched.problems() == []


def test_reply_and_attachments_through_a_fake_n8n(open_page: Any) -> None:
    """
    With a webhook, the message and two attached files (one with a Hebrew
    name) reach n8n intact (sha256), and n8n's C{output} is shown.
    """
    picture = png_bytes(16, 12)
    notes = "סיכום פגישה: 3 משימות, deadline ב-15/08.\n".encode()
    with FakeN8n() as fake, start_inkflow("--webhook", fake.url()) as server:
        page = open_page(server).page
        chat_ready(page)
        expect(page.locator("#chat-mode")).to_have_text("מחובר")
        page.locator("#chat-file-input").set_input_files(
            [
                {"name": "logo.png", "mimeType": "image/png", "buffer": picture},
                {"name": "סיכום פגישה.txt", "mimeType": "text/plain", "buffer": notes},
            ]
        )
        chips = page.locator("#chat-files .file-chip")
        expect(chips).to_have_count(2)
        expect(chips.nth(1).locator("bdi")).to_have_text("סיכום פגישה.txt")
        expect(chips.nth(0)).to_contain_text(f"{len(picture)} בתים")
        send(page, "הנה הקבצים שביקשתם")
        expect(bot_replies(page).last).to_have_text("n8n: הנה הקבצים שביקשתם (2 files)")
        expect(page.locator("#chat-files")).to_be_hidden()
        expect(page.locator("#chat-log .msg-user .file-chip bdi")).to_have_text(["logo.png", "סיכום פגישה.txt"])
        page.locator("#chat-widget").scroll_into_view_if_needed()
        page.screenshot(path=artifact("conversation-desktop.png"))

        received = fake.wait_for(lambda r: r.chat_input == "הנה הקבצים שביקשתם")
        assert len(fake.with_input("הנה הקבצים שביקשתם")) == 1
        by_hash = {f.sha256: f for f in received.files}
        assert set(by_hash) == {hashlib.sha256(picture).hexdigest(), hashlib.sha256(notes).hexdigest()}
        assert by_hash[hashlib.sha256(picture).hexdigest()].content_type == "image/png"
        assert "סיכום פגישה" in by_hash[hashlib.sha256(notes).hexdigest()].filename


DROP_FILE = """
(name) => {
    const data = new DataTransfer();
    data.items.add(new File(["dropped\\n"], name, {type: "text/plain"}));
    const widget = document.getElementById("chat-widget");
    for (const type of ["dragenter", "dragover", "drop"]) {
        widget.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
    }
}
"""


def test_files_can_be_dropped_and_removed_before_sending(open_page: Any) -> None:
    """
    A file dropped on the chat is attached like a picked one; a file taken
    off the list before sending is not sent.
    """
    with FakeN8n() as fake, start_inkflow("--webhook", fake.url()) as server:
        page = open_page(server).page
        chat_ready(page)
        page.locator("#chat-file-input").set_input_files(
            [
                {"name": "keep.txt", "mimeType": "text/plain", "buffer": b"keep me\n"},
                {"name": "drop.txt", "mimeType": "text/plain", "buffer": b"drop me\n"},
            ]
        )
        page.evaluate(DROP_FILE, "נגרר 2.txt")
        expect(page.locator("#chat-files bdi")).to_have_text(["keep.txt", "drop.txt", "נגרר 2.txt"])
        expect(page.locator("#chat-drop")).to_be_hidden()
        page.get_by_role("button", name="הסרת הקובץ drop.txt").click()
        expect(page.locator("#chat-files bdi")).to_have_text(["keep.txt", "נגרר 2.txt"])
        send(page, "רק שני קבצים")
        expect(bot_replies(page).last).to_have_text("n8n: רק שני קבצים (2 files)")
        received = fake.wait_for(lambda r: r.chat_input == "רק שני קבצים")
        assert [f.data for f in received.files] == [b"keep me\n", b"dropped\n"]


def test_files_over_the_reported_limits_are_refused_without_a_request(open_page: Any) -> None:
    """
    The page reads the limits from /api/health: a file over
    C{--max-file-size}, a type not allowed, and more than C{--max-files} files
    are refused in Hebrew before anything is sent.
    """
    with start_inkflow("--max-file-size", "2048", "--max-files", "2") as server:
        watched = open_page(server)
        page = watched.page
        chat_ready(page)
        expect(page.locator(".js-limit-size").first).to_have_text('2 ק"ב')
        files = page.locator("#chat-file-input")
        error = page.get_by_role("alert")

        files.set_input_files(
            [{"name": "תמונה גדולה.png", "mimeType": "image/png", "buffer": png_bytes() + bytes(4096)}]
        )
        expect(error).to_contain_text("גדול מדי")
        expect(error.locator("bdi")).to_have_text("תמונה גדולה.png")
        expect(page.locator("#chat-files .file-chip")).to_have_count(0)

        files.set_input_files([{"name": "setup.exe", "mimeType": "application/x-msdownload", "buffer": b"MZ" * 10}])
        expect(error).to_contain_text("לא ניתן לצרף")
        expect(page.locator("#chat-files .file-chip")).to_have_count(0)

        small = [{"name": f"{i}.txt", "mimeType": "text/plain", "buffer": b"x"} for i in range(3)]
        files.set_input_files(small)
        expect(error).to_contain_text("עד 2 קבצים")
        expect(page.locator("#chat-files .file-chip")).to_have_count(2)
        page.locator("#chat-widget").scroll_into_view_if_needed()
        page.screenshot(path=artifact("refused-files.png"))

        # Nothing went to the chat endpoint while refusing.
        assert watched.chat_posts() == []


# -- a busy or unreachable server -----------------------------------------------------


def _post_blocking(server: ServerProcess, text: str, out: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        body = json.dumps({"message": text, "sessionId": "blocker"}).encode()
        conn.request("POST", "/api/chat", body, {"Content-Type": "application/json"})
        out.append(conn.getresponse().status)
    finally:
        conn.close()


def test_busy_server_is_waited_out_and_the_message_arrives_once(open_page: Any) -> None:
    """
    While InkFlow's only slot is taken and it has no queue, the page's message
    gets 503 busy with Retry-After: the page says so in Hebrew, waits, retries,
    and the message reaches n8n exactly once.
    """
    with (
        FakeN8n() as fake,
        start_inkflow("--webhook", fake.url(), "--max-concurrent", "1", "--queue-size", "0") as server,
    ):
        watched = open_page(server)
        page = watched.page
        chat_ready(page)

        statuses: list[int] = []
        blocker = threading.Thread(target=_post_blocking, args=(server, "hold the slot", statuses), daemon=True)
        blocker.start()
        fake.wait_for(lambda r: r.chat_input == "hold the slot")

        send(page, "הודעה בזמן עומס")
        status = page.locator("#chat-status")
        expect(status).to_contain_text("השרת עמוס, מנסה שוב בעוד")
        expect(status).to_contain_text("שניות")
        busy = [r for r in watched.responses if r.url.endswith("/api/chat") and r.status == 503]
        assert len(busy) == 1
        assert int(busy[0].headers["retry-after"]) >= 1

        fake.release()
        blocker.join(30)
        assert statuses == [200]

        expect(bot_replies(page).last).to_have_text("n8n: הודעה בזמן עומס (0 files)", timeout=45_000)
        expect(status).to_be_hidden()
        assert len(fake.with_input("הודעה בזמן עומס")) == 1
        assert [r.status for r in watched.responses if r.url.endswith("/api/chat")] == [503, 200]


def test_network_failure_is_retried_with_backoff(open_page: Any) -> None:
    """
    When the connection fails, the page says it will try again, backs off,
    and the message gets through on a later attempt.
    """
    with start_inkflow() as server:
        watched = open_page(server)
        page = watched.page
        chat_ready(page)
        failures = {"left": 1}

        def flaky(route: Route) -> None:
            if failures["left"]:
                failures["left"] -= 1
                route.abort("connectionrefused")
            else:
                route.continue_()

        page.route("**/api/chat", flaky)
        send(page, "בדיקת חיבור")
        expect(page.locator("#chat-status")).to_contain_text("אין חיבור לשרת, מנסה שוב בעוד")
        expect(bot_replies(page).last).to_contain_text("בדיקת חיבור")
        assert len(watched.chat_posts()) == 2


def test_messages_are_sent_in_order_one_at_a_time(open_page: Any) -> None:
    """
    Three messages sent quickly go out one after the other, in order, and each
    gets its own answer.
    """
    with FakeN8n() as fake, start_inkflow("--webhook", fake.url()) as server:
        page = open_page(server).page
        chat_ready(page)
        for text in ("ראשונה", "שנייה", "שלישית"):
            send(page, text)
        expect(bot_replies(page)).to_have_count(4)
        expect(bot_replies(page)).to_have_text(
            [
                "שלום! במה אפשר לעזור?",
                "n8n: ראשונה (0 files)",
                "n8n: שנייה (0 files)",
                "n8n: שלישית (0 files)",
            ]
        )
        assert [r.chat_input for r in fake.requests] == ["ראשונה", "שנייה", "שלישית"]


# -- chat switched off -------------------------------------------------------------


def test_static_only_mode_shows_that_chat_is_unavailable(open_page: Any) -> None:
    """
    With C{--static-only} the page says chat is unavailable instead of showing
    a box that cannot work.
    """
    with start_inkflow("--static-only") as server:
        watched = open_page(server)
        page = watched.page
        chat_ready(page, "unavailable")
        expect(page.get_by_text("הצ'אט אינו זמין באתר זה.")).to_be_visible()
        expect(page.get_by_label("ההודעה שלכם")).to_be_hidden()
        page.locator("#chat").scroll_into_view_if_needed()
        page.screenshot(path=artifact("static-only.png"))
        assert watched.chat_posts() == []


def test_chat_disabled_answer_switches_to_the_notice(open_page: Any) -> None:
    """
    When /api/chat answers 404 C{chat_disabled} (the health check was missed
    or said otherwise), the page switches to the notice.
    """

    def claim_demo(route: Route) -> None:
        body = {"status": "ok", "mode": "demo", "limits": {}}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    with start_inkflow("--static-only") as server:
        watched = open_page(server, routes={"**/api/health": claim_demo})
        page = watched.page
        chat_ready(page)
        send(page, "יש כאן מישהו?")
        chat_ready(page, "unavailable")
        expect(page.get_by_text("הצ'אט אינו זמין באתר זה.")).to_be_visible()
        assert [r.status for r in watched.responses if r.url.endswith("/api/chat")] == [404]


# -- the official widget -------------------------------------------------------------


def test_n8n_chat_example_page_gets_a_reply(open_page: Any) -> None:
    """
    The example page runs the vendored @n8n/chat widget against /api/chat and
    shows the answer to a Hebrew message.
    """
    with FakeN8n() as fake, start_inkflow("--webhook", fake.url()) as server:
        watched = open_page(server, path="/examples/n8n-chat.html")
        page = watched.page
        box = page.locator("#n8n-chat textarea")
        expect(box).to_be_visible()
        box.fill("שלום מהרכיב הרשמי")
        box.press("Enter")
        expect(page.locator("#n8n-chat .chat-message-from-bot").last).to_contain_text(
            "n8n: שלום מהרכיב הרשמי (0 files)"
        )
        received = fake.wait_for(lambda r: r.chat_input == "שלום מהרכיב הרשמי")
        assert received.fields["action"] == "sendMessage"

        # Its own multipart upload goes through InkFlow intact too.
        picture = png_bytes(20, 10)
        with page.expect_file_chooser() as chooser:
            page.locator("#n8n-chat .chat-input-file-button").click()
        chooser.value.set_files([{"name": "צילום.png", "mimeType": "image/png", "buffer": picture}])
        box.fill("ועם תמונה")
        box.press("Enter")
        expect(page.locator("#n8n-chat .chat-message-from-bot").last).to_contain_text("n8n: ועם תמונה (1 files)")
        with_file = fake.wait_for(lambda r: r.chat_input == "ועם תמונה")
        assert [f.sha256 for f in with_file.files] == [hashlib.sha256(picture).hexdigest()]
        page.screenshot(path=artifact("n8n-chat-example.png"))
        assert watched.foreign() == []
        assert watched.problems() == []

"""
InkFlow's own page (C{static/index.html}) in headless Chromium, streaming real
answers from a real n8n (2.41.3 or 2.8.4) through InkFlow: the Chat Trigger workflows in
Response Mode "Streaming" whose two Respond to Webhook nodes are 3 s apart
(scripts/n8n/workflows/stream.json, plain text, and stream-markdown.json, the
same with Markdown: a Hebrew part with bold and a list, then an English part
with a heading and a code block).

What is on screen when is read from a record the page keeps of every change
of its chat log (L{tests.support.page_chat.TIMELINE}): the first part was shown
while the second was not, and the second came about 3 s later.

Opt-in, like the other tests here (C{make test-n8n}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.n8n.conftest import STREAM_WORKFLOW, N8n
from tests.support.browser import artifact, browser_missing
from tests.support.page_chat import DESKTOP, PHONE, BrowserThread, ChatPage, open_chat_page
from tests.support.server import ServerProcess

pytestmark = pytest.mark.n8n

_missing = browser_missing()
if _missing:
    pytest.skip(f"browser tests need Playwright and Chromium: {_missing}", allow_module_level=True)

from playwright.sync_api import ViewportSize, expect  # noqa: E402

#: scripts/n8n/workflows/stream-markdown.json
STREAM_MARKDOWN_WORKFLOW = "InkflowStrMd0007"
STREAM_MARKDOWN_WEBHOOK_ID = "9b4d6f8a-2c3e-4d5f-8a1b-3c4d5e6f7a80"

WAIT_MS = 3_000  # the workflows' Wait node
SLACK_MS = 500


@pytest.fixture(scope="module")
def ui() -> Iterator[BrowserThread]:
    thread = BrowserThread().start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def inkflow_plain(n8n: N8n) -> Iterator[ServerProcess]:
    server = ServerProcess("--webhook", n8n.stream, "--rate-limit", "0").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def inkflow_markdown(n8n: N8n) -> Iterator[ServerProcess]:
    url = n8n.webhook(f"{STREAM_MARKDOWN_WEBHOOK_ID}/chat")
    server = ServerProcess("--webhook", url, "--rate-limit", "0").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def open_page(ui: BrowserThread) -> Iterator[Callable[..., ChatPage]]:
    opened: list[ChatPage] = []

    def opener(server: ServerProcess, viewport: ViewportSize = DESKTOP) -> ChatPage:
        assert ui.browser is not None
        chat = ui.run(open_chat_page, ui.browser, server.url("/"), viewport)
        opened.append(chat)
        return chat

    yield opener
    for chat in opened:
        ui.run(chat.page.context.close)


def first_seen(timeline: list[dict[str, Any]], words: str) -> dict[str, Any]:
    """
    The first record of the page's chat log in which a bot bubble has C{words}.
    """
    for entry in timeline:
        if any(words in text for text in entry["texts"]):
            return entry
    raise AssertionError(f"{words!r} never shown: {timeline!r}")


def check_two_parts_apart(chat: ChatPage, first: str, second: str) -> None:
    """
    The first part was on screen, alone, about 3 s before the second came.
    """
    timeline = chat.timeline()
    shown_first = first_seen(timeline, first)
    shown_second = first_seen(timeline, second)
    assert not any(second in text for text in shown_first["texts"]), shown_first
    assert shown_second["t"] - shown_first["t"] >= WAIT_MS - SLACK_MS, (shown_first, shown_second)


def test_page_shows_the_first_part_before_n8n_sends_the_second(
    ui: BrowserThread, n8n: N8n, inkflow_plain: ServerProcess, open_page: Callable[..., ChatPage]
) -> None:
    """
    stream.json through InkFlow to the page: the first part's bubble is
    filled while the workflow waits, the second bubble comes 3 s later; one
    n8n execution, each part said once by the live region.
    """
    before = n8n.executions(STREAM_WORKFLOW) if n8n.database is not None else None
    chat = open_page(inkflow_plain)

    def conversation() -> None:
        page = chat.page
        bubbles = chat.bot_bubbles()
        chat.send("שלום")
        expect(bubbles.first).to_have_text("part one: שלום")
        expect(bubbles.nth(1)).to_have_text("part two", timeout=WAIT_MS * 5)
        expect(bubbles).to_have_count(2)
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(page.locator("#chat-log .msg-error")).to_have_count(0)
        expect(page.locator("#chat-live p")).to_have_text(["part one: שלום", "part two"])
        check_two_parts_apart(chat, "part one", "part two")
        [post] = chat.chat_posts()
        response = post.response()
        assert response is not None
        assert response.headers["content-type"] == "application/x-ndjson; charset=utf-8"
        assert chat.problems() == []

    ui.run(conversation)
    if before is not None:
        assert n8n.settled_executions(STREAM_WORKFLOW, before + 1) == before + 1


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_page_renders_n8ns_streamed_markdown(
    ui: BrowserThread,
    n8n: N8n,
    inkflow_markdown: ServerProcess,
    open_page: Callable[..., ChatPage],
    name: str,
    viewport: ViewportSize,
) -> None:
    """
    stream-markdown.json: the Hebrew part shows rendered (bold, a list with
    code) while the workflow waits; then the English part (heading, bold, a
    code block).  The Hebrew paragraph reads right to left, the English one and
    the code left to right.  Screenshots: test-artifacts/page-n8n-*.png.
    """
    chat = open_page(inkflow_markdown, viewport)

    def conversation() -> None:
        page = chat.page
        bubbles = chat.bot_bubbles()
        chat.send("מה נשמע?")
        hebrew = bubbles.first
        expect(hebrew.locator("strong")).to_have_text("חלק ראשון")
        expect(hebrew.locator("li")).to_have_text(["פריט אחד", "פריט שניים"])
        expect(hebrew.locator("li code")).to_have_text("שניים")
        expect(hebrew).to_contain_text("מה נשמע?")
        chat.screenshot(str(artifact(f"page-n8n-markdown-{name}-first-part.png")))
        english = bubbles.nth(1)
        expect(english.locator("h2, h3, h4").first).to_have_text("Part two", timeout=WAIT_MS * 5)
        expect(english.locator("strong")).to_have_text("English")
        expect(english.locator("pre code")).to_have_text("make run")
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        check_two_parts_apart(chat, "חלק ראשון", "Part two")
        first = chat.directions(0)
        second = chat.directions(1)
        assert [p["dir"] for p in first["paragraphs"]] == ["rtl"], first
        assert [li["dir"] for li in first["lists"]] == ["rtl"], first
        assert [p["dir"] for p in second["paragraphs"]] == ["ltr"], second
        assert [c["dir"] for c in second["code"]] == ["ltr"], second
        assert second["overflow"] <= 0, second
        said = page.locator("#chat-live p")
        expect(said).to_have_count(2)
        assert "**" not in said.first.inner_text()
        chat.screenshot(str(artifact(f"page-n8n-markdown-{name}.png")))
        chat.screenshot(str(artifact(f"page-n8n-markdown-{name}-viewport.png")), whole_viewport=True)
        assert chat.problems() == []

    ui.run(conversation)


def test_hostile_message_echoed_by_n8n_runs_nothing(
    ui: BrowserThread, inkflow_markdown: ServerProcess, open_page: Callable[..., ChatPage]
) -> None:
    """
    The workflow puts the visitor's message into its Markdown answer: a
    hostile message comes back inside n8n's streamed text, and is shown as
    text; the canary stays undefined and no CSP violation is reported.
    """
    hostile = "<img src=x onerror=window.__pwned=1> <script>window.__pwned=2</script> [x](javascript:alert(1))"
    chat = open_page(inkflow_markdown)

    def conversation() -> None:
        page = chat.page
        chat.send(hostile)
        expect(chat.bot_bubbles().first).to_contain_text(hostile)
        expect(chat.bot_bubbles().nth(1).locator("pre code")).to_have_text("make run", timeout=WAIT_MS * 5)
        log = page.locator("#chat-log")
        assert log.locator("script, img, iframe, svg").count() == 0
        assert [a.get_attribute("href") for a in log.locator("a").all()] == []
        assert chat.pwned() == "undefined"
        assert chat.problems() == []

    ui.run(conversation)

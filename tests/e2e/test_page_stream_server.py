"""
InkFlow's own page, end to end: headless Chromium on the real C{twistd -n
inkflow}, whose C{--webhook} is the fake n8n of this process's reactor
(L{tests.support.fake_n8n}).  The fake streams exactly as n8n 2.8.4 does, one
line each time the test says so, so every check of what the visitor sees is
made before the next line exists.  No C{page.route}, no fetch stand-in: the
page's own C{fetch} reads InkFlow's NDJSON answer.

Playwright runs on a thread of its own (L{tests.support.page_chat}) so the
reactor, and with it the fake n8n, keeps running while the browser waits on
the DOM.  Screenshots go to C{test-artifacts/page-server-*.png}.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor

from tests.support.browser import artifact, browser_missing, png_bytes
from tests.support.fake_n8n import FakeN8n, FakeStream, RecordedRequest, json_reply
from tests.support.page_chat import DESKTOP, PHONE, BrowserThread, ChatPage, open_chat_page
from tests.support.server import ServerProcess

_missing = browser_missing()
if _missing:
    pytest.skip(f"browser tests need Playwright and Chromium: {_missing}", allow_module_level=True)

from playwright.sync_api import FilePayload, ViewportSize, expect  # noqa: E402

reactor: Any = _reactor

GUARD = 15.0  # seconds: a bound on every wait for the fake n8n, never a pause
NDJSON = "application/x-ndjson; charset=utf-8"
PAGE_ACCEPT = "application/x-ndjson, application/json"

#: What InkFlow writes when n8n drops a stream it had started (inkflow/n8n/stream.py).
DROPPED = "החיבור לשירות נקטע באמצע התשובה. אפשר לנסות שוב."


@pytest.fixture(scope="module")
def ui() -> Iterator[BrowserThread]:
    thread = BrowserThread().start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def server(fake: FakeN8n) -> Iterator[ServerProcess]:
    s = ServerProcess("--webhook", fake.url("/webhook/chat"), "--rate-limit", "0").start()
    yield s
    s.stop()


@pytest.fixture
def open_page(ui: BrowserThread, server: ServerProcess) -> Iterator[Callable[..., ChatPage]]:
    """
    C{open_page(viewport=DESKTOP)}: InkFlow's page in a fresh context, ready.
    """
    opened: list[ChatPage] = []

    def opener(viewport: ViewportSize = DESKTOP) -> ChatPage:
        assert ui.browser is not None
        chat = ui.run(open_chat_page, ui.browser, server.url("/"), viewport)
        opened.append(chat)
        return chat

    yield opener
    for chat in opened:
        ui.run(chat.page.context.close)


async def ask(ui: BrowserThread, chat: ChatPage, stream: FakeStream, text: str) -> RecordedRequest:
    """
    Type C{text} and press Enter on the page; return the request the fake n8n
    got from InkFlow once it is in (the stream's head is sent at once).
    """
    await ui.call(chat.send, text)
    request: RecordedRequest = await stream.arrived.addTimeout(GUARD, reactor)
    assert request.json["chatInput"] == text, request.json
    return request


async def closed(stream: FakeStream) -> str:
    result: str = await stream.closed.addTimeout(GUARD, reactor)
    return result


def streamed_response_headers(chat: ChatPage) -> dict[str, str]:
    [post] = chat.chat_posts()
    assert post.headers["accept"] == PAGE_ACCEPT
    response = post.response()
    assert response is not None
    return response.headers


# -- a Markdown answer, line by line --------------------------------------------------

FIRST = "## התקנה\n\nכדי להתקין את **InkFlow** צריך *שלושה* צעדים:\n\n1. להתקין את `python3`\n"
SECOND = (
    "2. להריץ את הפקודה\n3. לפתוח את הדף\n\n"
    "The same in English: run **make run**, then open the page.\n\n"
    '```sh\nmake run ARGS="--webhook https://n8n.example.com/webhook/chat"\n'
)
THIRD = "```\n\nזהו, **סיימנו**."


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
@pytest_twisted.ensureDeferred
async def test_markdown_answer_shows_line_by_line(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage], name: str, viewport: ViewportSize
) -> None:
    """
    Each line n8n sends is on screen, rendered, before the next one exists:
    a heading, bold, a numbered list with code; then the rest of the list, an
    English paragraph and a code block still open; then its end.  The Hebrew
    paragraph reads right to left, the English one and the code left to
    right; the typing dots stay until the body ends; the live region says
    nothing while the answer streams and the whole answer once at the end.
    """
    chat = open_page(viewport)
    page = chat.page
    bubble = chat.bot_bubbles().first
    live = page.locator("#chat-live")
    stream = fake.stream("/webhook/chat")
    await ask(ui, chat, stream, "איך מתקינים?")
    stream.send_line("begin", node="agent", name="AI Agent")
    stream.send_line("item", FIRST, node="agent", name="AI Agent")

    def first_part() -> None:
        expect(chat.bot_bubbles()).to_have_count(1)
        expect(bubble.locator("h2, h3, h4").first).to_have_text("התקנה")
        expect(bubble.locator("strong")).to_have_text("InkFlow")
        expect(bubble.locator("em")).to_have_text("שלושה")
        expect(bubble.locator("ol > li")).to_have_text(["להתקין את python3"])
        expect(bubble.locator("ol > li code")).to_have_text("python3")
        expect(page.locator("#chat-log .msg-streaming")).to_have_attribute("aria-busy", "true")
        expect(page.locator("#chat-log .msg-typing")).to_have_count(1)
        expect(page.locator("#chat-log .msg-user .msg-meta")).to_have_text("נשלחה")
        assert "**" not in bubble.inner_text()
        assert "English" not in bubble.inner_text()
        expect(live).to_be_empty()
        headers = streamed_response_headers(chat)
        assert headers["content-type"] == NDJSON

    await ui.call(first_part)
    stream.send_line("item", SECOND, node="agent", name="AI Agent")

    def second_part() -> None:
        expect(bubble.locator("ol > li")).to_have_text(["להתקין את python3", "להריץ את הפקודה", "לפתוח את הדף"])
        expect(bubble.locator(":scope > p").last).to_have_text("The same in English: run make run, then open the page.")
        # The fence is still open: the code shows as a code block already.
        expect(bubble.locator("pre code")).to_have_text(
            'make run ARGS="--webhook https://n8n.example.com/webhook/chat"'
        )
        assert "סיימנו" not in bubble.inner_text()
        expect(live).to_be_empty()
        chat.screenshot(str(artifact(f"page-server-stream-{name}-partial.png")))

    await ui.call(second_part)
    stream.send_line("item", THIRD, node="agent", name="AI Agent")
    stream.send_line("end", node="agent", name="AI Agent")

    def ended_run() -> None:
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(bubble.locator(":scope > p strong").last).to_have_text("סיימנו")
        expect(bubble.locator("pre code")).to_have_count(1)
        # n8n has not closed the body yet: the dots stay, the answer is said once.
        expect(page.locator("#chat-log .msg-typing")).to_have_count(1)
        expect(live.locator("p")).to_have_count(1)

    await ui.call(ended_run)
    stream.finish()
    assert await closed(stream) == "finished"

    def finished() -> None:
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(live.locator("p")).to_have_count(1)
        said = live.inner_text()
        for words in ("התקנה", "InkFlow", "The same in English", "make run ARGS", "סיימנו"):
            assert words in said, said
        assert "**" not in said and "```" not in said and "##" not in said, said
        found = chat.directions()
        assert found["bubble"] == "rtl"
        hebrew = [p for p in found["paragraphs"] if p["text"].startswith("כדי להתקין")]
        english = [p for p in found["paragraphs"] if p["text"].startswith("The same in English")]
        assert [p["dir"] for p in hebrew] == ["rtl"], found
        assert [p["dir"] for p in english] == ["ltr"], found
        assert [c["dir"] for c in found["code"]] == ["ltr"], found
        assert [li["dir"] for li in found["lists"]] == ["rtl"], found
        assert found["overflow"] <= 0, found
        expect(chat.bot_bubbles()).to_have_count(1)
        chat.screenshot(str(artifact(f"page-server-stream-{name}.png")))
        chat.screenshot(str(artifact(f"page-server-stream-{name}-viewport.png")), whole_viewport=True)
        assert chat.problems() == []
        assert chat.pwned() == "undefined"

    await ui.call(finished)


@pytest_twisted.ensureDeferred
async def test_two_node_runs_are_two_bubbles_each_said_at_its_end(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    Two runs streamed interleaved (a node's run 0 and another node's run 0,
    then the first node's run 1): one bubble per run, in order of their first
    item, each filled as its lines come; each run is said by the live region
    once, when it ends.
    """
    chat = open_page()
    page = chat.page
    bubbles = chat.bot_bubbles()
    live = page.locator("#chat-live p")
    stream = fake.stream("/webhook/chat")
    await ask(ui, chat, stream, "שתי תשובות")
    stream.send_line("begin", node="writer")
    stream.send_line("item", "**כותב**: ", node="writer")
    stream.send_line("begin", node="tool")
    stream.send_line("item", "- tool result one\n", node="tool")

    def both_started() -> None:
        expect(bubbles).to_have_count(2)
        expect(bubbles.nth(0).locator("strong")).to_have_text("כותב")
        expect(bubbles.nth(1).locator("li")).to_have_text(["tool result one"])
        expect(live).to_have_count(0)

    await ui.call(both_started)
    stream.send_line("item", "- tool result two", node="tool")
    stream.send_line("end", node="tool")

    def tool_ended() -> None:
        expect(bubbles.nth(1).locator("li")).to_have_text(["tool result one", "tool result two"])
        expect(live).to_have_count(1)
        expect(live.first).to_have_text("tool result one\ntool result two")
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(1)
        expect(bubbles.nth(0)).to_have_text("כותב:")

    await ui.call(tool_ended)
    stream.send_line("item", "סוף התשובה.", node="writer")
    stream.send_line("end", node="writer")
    stream.send_line("begin", node="writer", run=1)
    stream.send_line("item", "ריצה *שנייה*", node="writer", run=1)
    stream.send_line("end", node="writer", run=1)
    stream.finish()
    await closed(stream)

    def all_ended() -> None:
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(bubbles).to_have_count(3)
        expect(bubbles.nth(0)).to_have_text("כותב: סוף התשובה.")
        expect(bubbles.nth(2).locator("em")).to_have_text("שנייה")
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(live).to_have_count(3)
        expect(live).to_have_text(["tool result one\ntool result two", "כותב: סוף התשובה.", "ריצה שנייה"])
        assert chat.problems() == []

    await ui.call(all_ended)


# -- errors in the middle of a stream --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_error_line_from_n8n_mid_stream_is_shown_at_once(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    n8n's own error line (a node failed) after a first part: the error shows
    while the body is still open, below the part that came, which stays.
    """
    chat = open_page()
    page = chat.page
    stream = fake.stream("/webhook/chat")
    await ask(ui, chat, stream, "תשובה ושגיאה")
    stream.send_line("begin", node="agent")
    stream.send_line("item", "חלק ראשון של **התשובה**", node="agent")
    await ui.call(lambda: expect(chat.bot_bubbles().first.locator("strong")).to_have_text("התשובה"))
    stream.send_line("error", "Tool failed: timeout", node="tool")

    def error_shown() -> None:
        expect(page.locator("#chat-log .msg-error .bubble")).to_have_text("Tool failed: timeout")
        expect(page.locator("#chat-log .msg-typing")).to_have_count(1)
        expect(chat.bot_bubbles().first).to_have_text("חלק ראשון של התשובה")
        expect(page.locator("#chat-live p")).to_have_text(["Tool failed: timeout"])

    await ui.call(error_shown)
    stream.finish()
    await closed(stream)

    def ended() -> None:
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(chat.bot_bubbles()).to_have_count(1)
        expect(page.locator("#chat-log .msg-error")).to_have_count(1)
        # The error comes after the part it interrupted.
        order = page.evaluate("[...document.querySelectorAll('#chat-log > .msg')].slice(-2).map((li) => li.className)")
        assert order == ["msg msg-bot", "msg msg-error"], order
        expect(page.locator("#chat-live p")).to_have_count(2)
        assert chat.problems() == []

    await ui.call(ended)


@pytest_twisted.ensureDeferred
async def test_n8n_dropping_the_stream_shows_inkflows_error_line(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    n8n drops the connection mid-stream: InkFlow ends the page's stream with
    its own Hebrew error line and a clean end; the page keeps the part that
    came and shows that error, and the answer is not streaming any more.
    """
    chat = open_page()
    page = chat.page
    stream = fake.stream("/webhook/chat")
    await ask(ui, chat, stream, "ספר סיפור")
    stream.send_line("begin", node="agent")
    stream.send_line("item", "היה היה **פעם**", node="agent")
    await ui.call(lambda: expect(chat.bot_bubbles().first.locator("strong")).to_have_text("פעם"))
    stream.reset()
    assert await closed(stream) == "lost"

    def error_shown() -> None:
        expect(page.locator("#chat-log .msg-error .bubble")).to_have_text(DROPPED)
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(chat.bot_bubbles().first).to_have_text("היה היה פעם")
        chat.screenshot(str(artifact("page-server-stream-dropped.png")))
        assert chat.problems() == []

    await ui.call(error_shown)


@pytest_twisted.ensureDeferred
async def test_an_answer_cut_off_by_inkflow_offers_to_send_again(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    Through the real server a dropped n8n stream never reaches the page as a
    broken connection: InkFlow ends it with its error line and a clean end.
    The page treats that as the cut-off answer it is (as it does a dropped
    connection): the visitor's message says the answer was cut off and offers
    to send it again; the error is shown and said once; sending again asks n8n
    again and shows the new answer.
    """
    chat = open_page()
    page = chat.page
    stream = fake.stream("/webhook/chat")
    await ask(ui, chat, stream, "ספר סיפור")
    stream.send_line("begin", node="agent")
    stream.send_line("item", "היה היה **פעם**", node="agent")
    await ui.call(lambda: expect(chat.bot_bubbles().first.locator("strong")).to_have_text("פעם"))
    stream.reset()
    await closed(stream)

    def cut_off() -> None:
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(page.locator("#chat-log .msg-error .bubble")).to_have_text([DROPPED])
        expect(page.locator("#chat-log .msg-user .msg-meta")).to_contain_text("התשובה נקטעה")
        expect(page.get_by_role("button", name="לשלוח שוב")).to_be_visible()
        # Both said once: the error as it came, the part when the answer ended.
        expect(page.locator("#chat-live p")).to_have_count(2)
        assert sorted(page.locator("#chat-live p").all_inner_texts()) == sorted(["היה היה פעם", DROPPED])

    await ui.call(cut_off)
    again = fake.stream("/webhook/chat")
    await ui.call(lambda: page.get_by_role("button", name="לשלוח שוב").click())
    request: RecordedRequest = await again.arrived.addTimeout(GUARD, reactor)
    assert request.json["chatInput"] == "ספר סיפור"
    again.send_line("begin", node="agent")
    again.send_line("item", "היה היה **פעם** מלך.", node="agent")
    again.send_line("end", node="agent")
    again.finish()
    await closed(again)

    def answered() -> None:
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(chat.bot_bubbles()).to_have_count(2)
        expect(chat.bot_bubbles().last).to_have_text("היה היה פעם מלך.")
        expect(page.locator("#chat-log .msg-user .msg-meta")).to_have_text("נשלחה")
        expect(page.get_by_role("button", name="לשלוח שוב")).to_have_count(0)
        assert chat.problems() == []

    await ui.call(answered)


# -- hostile answers ------------------------------------------------------------------

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "[x](javascript:alert(1))",
    "[x](javascript:window.__pwned=3)",
    "[y](JaVaScRiPt:window.__pwned=4)",
    "![x](javascript:window.__pwned=5)",
    '<a href="javascript:window.__pwned=6">a</a>',
    "<iframe src=javascript:parent.__pwned=7></iframe>",
    "<svg onload=window.__pwned=8></svg>",
    "[<img src=x onerror=window.__pwned=9>](https://example.com/ok)",
    '```"><script>window.__pwned=10</script>\nx\n```',
    "**unclosed <script>window.__pwned=11</script>",
]

HOSTILE_CHECKS = """() => {
  const log = document.getElementById('chat-log');
  return {
    elements: log.querySelectorAll('script, img, iframe, svg, style, object, embed, frame, form, input').length,
    attributes: [...log.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => a.name))
      .filter((n) => n.startsWith('on') || n === 'style' || n === 'src'),
    links: [...log.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.getAttribute('rel')]),
  };
}"""


def check_nothing_ran(chat: ChatPage) -> None:
    page = chat.page
    log = page.locator("#chat-log")
    expect(log).to_contain_text("<script>window.__pwned = 1</script>")
    expect(log).to_contain_text("[x](javascript:alert(1))")
    found = page.evaluate(HOSTILE_CHECKS)
    assert found["elements"] == 0, found
    assert found["attributes"] == [], found
    for href, rel in found["links"]:
        assert href.startswith("https://"), found
        assert rel == "noopener noreferrer", found
    assert chat.pwned() == "undefined"
    assert chat.problems() == []


@pytest_twisted.ensureDeferred
async def test_hostile_markdown_streamed_through_the_server_runs_nothing(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    The hostile corpus streamed through InkFlow in 5-character items (so
    tags and links arrive cut in pieces, and each piece is drawn): shown as
    text or a safe link, the C{window.__pwned} canary stays undefined, no
    element from the answer is a script, image, frame or SVG, and no CSP
    violation is reported.
    """
    chat = open_page()
    page = chat.page
    stream = fake.stream("/webhook/chat")
    await ask(ui, chat, stream, "<script>window.__pwned = 'visitor'</script>")
    answer = "\n\n".join(HOSTILE)
    stream.send_line("begin", node="agent")
    pieces = [answer[i : i + 5] for i in range(0, len(answer), 5)]
    half = len(pieces) // 2
    for piece in pieces[:half]:
        stream.send_line("item", piece, node="agent")

    def half_drawn() -> None:
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(1)
        expect(chat.bot_bubbles().first).to_contain_text("<script>window.__pwned = 1</script>")
        assert chat.pwned() == "undefined"

    await ui.call(half_drawn)
    for piece in pieces[half:]:
        stream.send_line("item", piece, node="agent")
    stream.send_line("end", node="agent")
    stream.finish()
    await closed(stream)

    def all_drawn() -> None:
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(page.locator("#chat-log .msg-user .bubble")).to_have_text("<script>window.__pwned = 'visitor'</script>")
        check_nothing_ran(chat)
        chat.screenshot(str(artifact("page-server-hostile-stream.png")))

    await ui.call(all_drawn)


@pytest_twisted.ensureDeferred
async def test_hostile_markdown_in_a_json_answer_runs_nothing(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    The same corpus in a plain JSON workflow answer (InkFlow turns it into a
    stream for the page): nothing runs either.
    """
    fake.script("/webhook/chat", json_reply({"output": "\n\n".join(HOSTILE)}))
    chat = open_page()
    await ui.call(chat.send, "שלום")

    def drawn() -> None:
        expect(chat.page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(chat.bot_bubbles()).to_have_count(1)
        check_nothing_ran(chat)

    await ui.call(drawn)


# -- a workflow that does not stream ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_json_workflow_answer_still_shows_rendered(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    A workflow answering plain JSON (Respond to Webhook, no streaming): the
    page, which asks for a stream, gets InkFlow's one-item stream of the
    answer's C{output} and shows it rendered, said once.
    """
    fake.script(
        "/webhook/chat",
        json_reply({"output": "תשובה **רגילה**:\n\n- אחת\n- שתיים\n\n```\ncode()\n```", "sessionId": "ignored"}),
    )
    chat = open_page()
    page = chat.page
    await ui.call(chat.send, "בלי זרימה")

    def drawn() -> None:
        bubble = chat.bot_bubbles().last
        expect(bubble.locator("strong")).to_have_text("רגילה")
        expect(bubble.locator("li")).to_have_text(["אחת", "שתיים"])
        expect(bubble.locator("pre code")).to_have_text("code()")
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(page.locator("#chat-live p")).to_have_count(1)
        expect(page.locator("#chat-log .msg-user .msg-meta")).to_have_text("נשלחה")
        assert streamed_response_headers(chat)["content-type"] == NDJSON
        assert chat.problems() == []

    await ui.call(drawn)
    [request] = [r for r in fake.requests_for("/webhook/chat") if r.json and r.json.get("chatInput") == "בלי זרימה"]
    assert request.json["action"] == "sendMessage"


# -- two questions, one after the other -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_question_sent_while_an_answer_streams_waits_its_turn(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    A second question typed while the first answer streams waits in the
    page's queue (n8n gets nothing yet), the first answer goes on filling its
    own bubble above it, and the second answer streams below the second
    question once the first has ended.
    """
    chat = open_page()
    page = chat.page
    first = fake.stream("/webhook/chat")
    second = fake.stream("/webhook/chat")
    await ask(ui, chat, first, "שאלה ראשונה")
    first.send_line("begin", node="agent")
    first.send_line("item", "תשובה **ראשונה**", node="agent")
    await ui.call(lambda: expect(chat.bot_bubbles().first.locator("strong")).to_have_text("ראשונה"))
    await ui.call(chat.send, "שאלה שנייה")
    await ui.call(lambda: expect(page.locator("#chat-log .msg-user .msg-meta").last).to_have_text("ממתינה בתור…"))
    first.send_line("item", ", עוד קצת", node="agent")
    await ui.call(lambda: expect(chat.bot_bubbles().first).to_have_text("תשובה ראשונה, עוד קצת"))
    assert not second.arrived.called
    first.send_line("end", node="agent")
    first.finish()
    request: RecordedRequest = await second.arrived.addTimeout(GUARD, reactor)
    assert request.json["chatInput"] == "שאלה שנייה"
    second.send_line("begin", node="agent")
    second.send_line("item", "תשובה *שנייה*", node="agent")
    await ui.call(lambda: expect(chat.bot_bubbles().nth(1).locator("em")).to_have_text("שנייה"))
    second.send_line("end", node="agent")
    second.finish()
    await closed(second)

    def in_order() -> None:
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        texts = page.locator("#chat-log > .msg:not(:first-child) .bubble").all_inner_texts()
        assert texts == ["שאלה ראשונה", "תשובה ראשונה, עוד קצת", "שאלה שנייה", "תשובה שנייה"], texts
        expect(page.locator("#chat-log .msg-user .msg-meta")).to_have_text(["נשלחה", "נשלחה"])
        assert chat.problems() == []

    await ui.call(in_order)


# -- list markers -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_answers_lists_have_first_level_markers(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    A bulleted list at the top of an answer has discs, a list inside it
    circles, and one deeper squares, as lists do anywhere else.
    """
    fake.script("/webhook/chat", json_reply({"output": "- ראשי\n  - משני\n    - שלישי"}))
    chat = open_page()
    await ui.call(chat.send, "רשימה")

    def markers() -> None:
        bubble = chat.bot_bubbles().last
        expect(bubble.locator("ul")).to_have_count(3)
        found = bubble.locator("ul").evaluate_all("(lists) => lists.map((l) => getComputedStyle(l).listStyleType)")
        assert found == ["disc", "circle", "square"], found

    await ui.call(markers)


# -- a file, and an empty answer --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_message_with_a_file_gets_a_streamed_answer(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    With a file attached the page posts multipart; n8n gets the file as sent
    and its streamed answer shows part by part, as for a text message.
    """
    image = png_bytes()
    chat = open_page()
    page = chat.page
    stream = fake.stream("/webhook/chat")

    def attach_and_send() -> None:
        picture: FilePayload = {"name": "תמונה.png", "mimeType": "image/png", "buffer": image}
        page.locator("#chat-file-input").set_input_files([picture])
        expect(page.locator("#chat-files .file-chip")).to_have_count(1)
        chat.send("מה בתמונה?")

    await ui.call(attach_and_send)
    request: RecordedRequest = await stream.arrived.addTimeout(GUARD, reactor)
    assert request.fields["chatInput"] == "מה בתמונה?", request.fields
    [file] = request.files
    assert file.sha256 == hashlib.sha256(image).hexdigest()
    assert file.content_type == "image/png"
    stream.send_line("begin", node="vision")
    stream.send_line("item", "בתמונה: **ריבוע**", node="vision")

    def first_part() -> None:
        expect(chat.bot_bubbles().first.locator("strong")).to_have_text("ריבוע")
        expect(page.locator("#chat-log .msg-user .msg-files .file-chip")).to_have_count(1)
        assert "כחול" not in chat.bot_bubbles().first.inner_text()

    await ui.call(first_part)
    stream.send_line("item", " כחול.", node="vision")
    stream.send_line("end", node="vision")
    stream.finish()
    await closed(stream)

    def ended() -> None:
        expect(chat.bot_bubbles().first).to_have_text("בתמונה: ריבוע כחול.")
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        [post] = chat.chat_posts()
        assert post.headers["content-type"].startswith("multipart/form-data")
        assert streamed_response_headers(chat)["content-type"] == NDJSON
        assert chat.problems() == []

    await ui.call(ended)


@pytest_twisted.ensureDeferred
async def test_a_stream_with_no_text_says_the_answer_was_empty(
    ui: BrowserThread, fake: FakeN8n, open_page: Callable[..., ChatPage]
) -> None:
    """
    A workflow that streams a run with no text (begin, end): the page says
    the answer was empty rather than leaving nothing.
    """
    chat = open_page()
    page = chat.page
    stream = fake.stream("/webhook/chat")
    await ask(ui, chat, stream, "ריק?")
    stream.send_line("begin", node="agent")
    stream.send_line("end", node="agent")
    stream.finish()
    await closed(stream)

    def said_empty() -> None:
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(chat.bot_bubbles()).to_have_text(["(התקבלה תשובה ריקה)"])
        expect(page.locator("#chat-log .msg-error")).to_have_count(0)
        assert chat.problems() == []

    await ui.call(said_empty)


# -- the server restarting mid-answer ---------------------------------------------------

#: InkFlow's error line when --drain-timeout ends a stream (inkflow/n8n/stream.py).
DRAINED = "השרת עובר הפעלה מחדש והתשובה נעצרה. אפשר לנסות שוב בעוד רגע."


@pytest_twisted.ensureDeferred
async def test_a_server_restart_mid_answer_keeps_it_going_then_says_so(ui: BrowserThread, fake: FakeN8n) -> None:
    """
    SIGTERM while an answer streams (a deploy): the answer goes on filling
    during --drain-timeout, then InkFlow stops it with its error line; the
    page keeps what came, says the server is restarting, and offers to send
    the message again.
    """
    server = ServerProcess("--webhook", fake.url("/webhook/drain"), "--rate-limit", "0", "--drain-timeout", "1").start()
    chat: ChatPage | None = None
    try:
        assert ui.browser is not None
        chat = ui.run(open_chat_page, ui.browser, server.url("/"))
        page = chat.page
        stream = fake.stream("/webhook/drain")
        await ask(ui, chat, stream, "ומה עכשיו?")
        stream.send_line("begin", node="agent")
        stream.send_line("item", "עדיין **כאן**", node="agent")
        await ui.call(lambda: expect(chat.bot_bubbles().first.locator("strong")).to_have_text("כאן"))
        server.send_signal(signal.SIGTERM)
        server.wait_for("Draining", timeout=GUARD)
        stream.send_line("item", " ועוד קצת", node="agent")
        await ui.call(lambda: expect(chat.bot_bubbles().first).to_have_text("עדיין כאן ועוד קצת"))
        assert await closed(stream) == "lost"

        def stopped() -> None:
            expect(page.locator("#chat-log .msg-error .bubble")).to_have_text([DRAINED])
            expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
            expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
            expect(chat.bot_bubbles().first).to_have_text("עדיין כאן ועוד קצת")
            expect(page.locator("#chat-log .msg-user .msg-meta")).to_contain_text("התשובה נקטעה")
            expect(page.get_by_role("button", name="לשלוח שוב")).to_be_visible()
            chat.screenshot(str(artifact("page-server-stream-drained.png")))
            assert chat.problems() == []

        await ui.call(stopped)
    finally:
        if chat is not None:
            ui.run(chat.page.context.close)
        server.stop()

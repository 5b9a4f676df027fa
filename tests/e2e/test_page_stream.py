"""
The page's own chat widget with streamed and Markdown answers, in Debian's
Chromium against the real InkFlow server (C{twistd -n inkflow}).

Until the server streams, a streamed answer comes from Playwright: either
C{page.route} fulfils C{/api/chat} with a whole NDJSON body, or (to watch the page
between two chunks) a C{fetch} stand-in put in by an init script hands the page
a C{ReadableStream} the test writes to line by line.  The plain JSON path is
the real demo responder.  Every page records C{securitypolicyviolation} events;
none may happen.  Screenshots go to C{test-artifacts/}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.browser import artifact, skip_without_browser, start_inkflow
from tests.support.server import ServerProcess

skip_without_browser()

from playwright.sync_api import (  # noqa: E402
    Browser,
    Page,
    Request,
    Route,
    ViewportSize,
    expect,
)

WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

NDJSON = "application/x-ndjson; charset=utf-8"

#: Runs before the page's scripts: a canary for injected script, and a record of CSP violations.
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`);
});
"""

#: A fetch stand-in for /api/chat whose streamed body the test writes to.
CONTROLLED_STREAM = """
(() => {
  const realFetch = window.fetch.bind(window);
  const encoder = new TextEncoder();
  let controller = null;
  const early = [];
  window.__stream = {
    accepts: [],
    push(text, splitAt) {
      const bytes = encoder.encode(text);
      const parts = splitAt ? [bytes.slice(0, splitAt), bytes.slice(splitAt)] : [bytes];
      for (const part of parts) controller ? controller.enqueue(part) : early.push(part);
    },
    close() { controller.close(); },
    fail() { controller.error(new TypeError("connection reset")); },
  };
  window.fetch = (url, init) => {
    if (!String(url).endsWith("api/chat")) return realFetch(url, init);
    window.__stream.accepts.push(init?.headers?.Accept ?? null);
    const body = new ReadableStream({
      start(c) { controller = c; for (const part of early.splice(0)) c.enqueue(part); },
    });
    return Promise.resolve(new Response(body, {status: 200, headers: {"Content-Type": "application/x-ndjson; charset=utf-8"}}));
  };
})();
"""


@dataclass
class Watched:
    page: Page
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def chat_posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.endswith("/api/chat")]

    def problems(self) -> list[str]:
        return self.errors + list(self.page.evaluate("window.__csp"))


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Any]:
    """
    C{open_page(server, viewport=DESKTOP, routes=None, scripts=())}: a fresh
    context with the CSP watch (and C{scripts}) installed, C{routes} (pattern ->
    handler), on C{/}, the chat ready.
    """
    contexts = []

    def opener(
        server: ServerProcess,
        viewport: ViewportSize = DESKTOP,
        routes: dict[str, Callable[[Route], None]] | None = None,
        scripts: tuple[str, ...] = (),
    ) -> Watched:
        context = browser.new_context(viewport=viewport, locale="he-IL", service_workers="block")
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page)
        page.on("request", lambda request: watched.requests.append(request))
        page.on("pageerror", lambda error: watched.errors.append(str(error)))
        page.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
        page.add_init_script(WATCH)
        for script in scripts:
            page.add_init_script(script)
        for pattern, handler in (routes or {}).items():
            page.route(pattern, handler)
        page.goto(server.url("/"))
        expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
        return watched

    yield opener
    for context in contexts:
        context.close()


def send(page: Page, text: str) -> None:
    box = page.get_by_label("ההודעה שלכם")
    box.fill(text)
    box.press("Enter")


def meta(node: str, run: int = 0) -> dict[str, Any]:
    return {"nodeId": node, "nodeName": node, "itemIndex": 0, "runIndex": run, "timestamp": 1767225600000}


def ndjson(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def stream_of(*parts: tuple[str, int, str]) -> bytes:
    """
    A streamed answer: for each (node, run, markdown), begin, the text in
    small items, end; the runs interleaved item by item.
    """
    lines: list[dict[str, Any]] = [{"type": "begin", "metadata": meta(n, r)} for n, r, _ in parts]
    chunks = [[text[i : i + 7] for i in range(0, len(text), 7)] for _, _, text in parts]
    for step in range(max(len(c) for c in chunks)):
        for (node, run, _), pieces in zip(parts, chunks, strict=True):
            if step < len(pieces):
                lines.append({"type": "item", "content": pieces[step], "metadata": meta(node, run)})
        if step == 1:
            lines.append({"type": "keepalive"})
    lines += [{"type": "end", "metadata": meta(n, r)} for n, r, _ in parts]
    return ndjson(*lines)


def answer_with(body: bytes, content_type: str = NDJSON, status: int = 200) -> Callable[[Route], None]:
    def handler(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        route.fulfill(status=status, headers={"Content-Type": content_type, "Cache-Control": "no-store"}, body=body)

    return handler


def bot_bubbles(page: Page) -> Any:
    return page.locator("#chat-log .msg-bot:not(.msg-typing) .bubble.md")


MIXED = """## סיכום ההתקנה

כדי להתקין את **InkFlow** צריך *שלושה* צעדים:

1. להתקין את `python3` ואת `make`
2. להריץ את הפקודה למטה
3. לפתוח את [הדף](https://example.com/docs)

The same in English: run the command below, then open the page.

- first English item
- second item with `code`

```sh
make run ARGS="--webhook https://n8n.example.com/webhook/chat"
```

> הערה: אפשר גם להשתמש ב־`twistd -n inkflow` ישירות.

| אפשרות | ברירת מחדל |
|---|---|
| `--workers` | 1 |
"""

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "[x](javascript:window.__pwned=3)",
    "[x](JaVaScRiPt:window.__pwned=3)",
    "[x](data:text/html,<script>parent.__pwned=4</script>)",
    "![x](javascript:window.__pwned=5)",
    "![pic](x onerror=window.__pwned=6)",
    '<a href="javascript:window.__pwned=7">x</a>',
    "<iframe src=javascript:parent.__pwned=8></iframe>",
    "<svg onload=window.__pwned=9></svg>",
    "<style>body{display:none}</style>",
    "&lt;script&gt;window.__pwned=10&lt;/script&gt; &#60;img src=x onerror=window.__pwned=11&#62;",
    "[<img src=x onerror=window.__pwned=12>](https://example.com)",
    '```"><script>window.__pwned=13</script>\nx\n```',
    "| <b>a</b> | b |\n|---|---|\n| [x](javascript:window.__pwned=14) | <svg onload=window.__pwned=15> |",
    "**unclosed <script>window.__pwned=16</script>",
]


# -- streamed answers -----------------------------------------------------------------


def test_streamed_markdown_answer_renders_lists_bold_and_code(open_page: Any) -> None:
    """
    A streamed answer from two nodes, their runs interleaved, with a keepalive
    and an error line: one bubble per node run, each rendered as Markdown
    (list, bold, code block), the error shown as an error, the request asking
    for a stream, and no CSP violation.
    """
    body = stream_of(
        ("agent", 0, "**שלום!** הנה רשימה:\n\n- פריט ראשון\n- פריט *שני*\n\n```js\nconst x = 1;\n```"),
        ("agent", 1, "ריצה שנייה של אותו צומת."),
        ("tool", 0, "1. one\n2. two"),
    ) + ndjson({"type": "error", "content": "Tool failed: timeout", "metadata": meta("tool2")}, {"type": "mystery"})
    with start_inkflow() as server:
        watched = open_page(server, routes={"**/api/chat": answer_with(body)})
        page = watched.page
        send(page, "תן רשימה")
        bubbles = bot_bubbles(page)
        expect(bubbles).to_have_count(3)
        first = bubbles.nth(0)
        expect(first.locator("strong").first).to_have_text("שלום!")
        expect(first.locator("ul > li")).to_have_text(["פריט ראשון", "פריט שני"])
        expect(first.locator("ul > li em")).to_have_text("שני")
        expect(first.locator("pre code")).to_have_text("const x = 1;")
        expect(bubbles.nth(1)).to_have_text("ריצה שנייה של אותו צומת.")
        expect(bubbles.nth(2).locator("ol > li")).to_have_text(["one", "two"])
        expect(page.locator("#chat-log .msg-error .bubble")).to_have_text("Tool failed: timeout")
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(page.locator("#chat-log .msg-user .msg-meta")).to_have_text("נשלחה")
        # The visitor's message is text, as typed.
        expect(page.locator("#chat-log .msg-user .bubble")).to_have_text("תן רשימה")
        [post] = watched.chat_posts()
        assert post.headers["accept"] == "application/x-ndjson, application/json"
        assert watched.problems() == []


def test_stream_renders_as_it_arrives_and_is_announced_once(open_page: Any) -> None:
    """
    Between chunks: an open ** already shows bold, an open fence shows as a
    code block, a UTF-8 character cut between chunks arrives whole, the
    finished paragraph's node is kept (no flicker), a reader scrolled up stays
    where they are, and the polite live region says nothing until the run
    ends, then the whole answer once.
    """
    with start_inkflow() as server:
        watched = open_page(server, scripts=(CONTROLLED_STREAM,))
        page = watched.page
        live = page.locator("#chat-live")
        send(page, "שאלה")
        page.wait_for_function("window.__stream.accepts.length === 1")
        assert page.evaluate("window.__stream.accepts[0]") == "application/x-ndjson, application/json"

        def push(*lines: dict[str, Any], split_at: int | None = None) -> None:
            page.evaluate("([text, at]) => window.__stream.push(text, at)", [ndjson(*lines).decode(), split_at])

        push({"type": "begin", "metadata": meta("agent")})
        push({"type": "item", "content": "פסקה ראשונה.\n\nועכשיו **מודג", "metadata": meta("agent")})
        bubble = bot_bubbles(page).last
        expect(bubble.locator("strong")).to_have_text("מודג")
        expect(page.locator("#chat-log .msg-streaming")).to_have_attribute("aria-busy", "true")
        page.evaluate("document.querySelector('#chat-log .msg-streaming .md-p').__kept = true")
        # "ש" is two bytes in UTF-8: cut the line between them.
        text = json.dumps({"type": "item", "content": "ש!** ו", "metadata": meta("agent")}, ensure_ascii=False) + "\n"
        cut = text.encode().index("ש".encode()) + 1
        page.evaluate("([text, at]) => window.__stream.push(text, at)", [text, cut])
        expect(bubble.locator("strong")).to_have_text("מודגש!")
        push({"type": "item", "content": "קוד:\n\n```python\nprint('hi')", "metadata": meta("agent")})
        expect(bubble.locator(".md-code pre code")).to_have_text("print('hi')")
        page.locator("#chat-widget").screenshot(path=artifact("markdown-streaming-open-fence.png"))
        assert page.evaluate("document.querySelector('#chat-log .msg-streaming .md-p').__kept") is True
        expect(live).to_be_empty()

        # While at the end, the end is followed; a reader who scrolled up stays put.
        push({"type": "item", "content": "\nfor i in range(3):\n    print(i)" * 12, "metadata": meta("agent")})
        expect(bubble.locator(".md-code pre code")).to_contain_text("for i in range(3)")
        at_end = "(() => { const l = document.getElementById('chat-log'); return l.scrollHeight - l.scrollTop - l.clientHeight; })()"
        assert page.evaluate("document.getElementById('chat-log').scrollTop") > 0
        assert page.evaluate(at_end) < 48
        page.evaluate("document.getElementById('chat-log').scrollTop = 0")
        push({"type": "item", "content": "\nwhile True:\n    pass" * 4, "metadata": meta("agent")})
        expect(bubble.locator(".md-code pre code")).to_contain_text("while True")
        assert page.evaluate("document.getElementById('chat-log').scrollTop") == 0
        expect(live).to_be_empty()

        push(
            {"type": "item", "content": "```\nסוף.", "metadata": meta("agent")},
            {"type": "end", "metadata": meta("agent")},
        )
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(live.locator("p")).to_have_count(1)
        expect(live).to_contain_text("פסקה ראשונה.")
        expect(live).to_contain_text("סוף.")
        assert "**" not in live.inner_text()
        page.evaluate("window.__stream.close()")
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(live.locator("p")).to_have_count(1)
        assert page.evaluate("document.querySelector('#chat-log .msg-bot .md-p') !== null")
        assert watched.problems() == []


def test_a_stream_cut_off_keeps_what_arrived_and_offers_a_retry(open_page: Any) -> None:
    """
    When the connection drops in the middle of a streamed answer, the part
    that arrived stays (final, not streaming), the page says the answer was
    cut off, and offers to send again; nothing is retried by itself.
    """
    with start_inkflow() as server:
        watched = open_page(server, scripts=(CONTROLLED_STREAM,))
        page = watched.page
        send(page, "ספר סיפור")
        page.wait_for_function("window.__stream.accepts.length === 1")
        line = {"type": "item", "content": "היה היה **פעם**", "metadata": meta("agent")}
        page.evaluate("(text) => window.__stream.push(text)", ndjson(line).decode())
        expect(bot_bubbles(page).last.locator("strong")).to_have_text("פעם")
        page.evaluate("window.__stream.fail()")
        expect(page.locator("#chat-log .msg-error .bubble")).to_have_text("החיבור נקטע באמצע התשובה.")
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        expect(bot_bubbles(page).last).to_have_text("היה היה פעם")
        expect(page.locator("#chat-log .msg-user .msg-meta")).to_contain_text("התשובה נקטעה")
        expect(page.get_by_role("button", name="לשלוח שוב")).to_be_visible()
        expect(page.locator("#chat-live p")).to_have_count(2)
        assert page.evaluate("window.__stream.accepts.length") == 1
        assert watched.problems() == []


def test_a_100_kb_answer_streams_in_a_thousand_items(open_page: Any) -> None:
    """
    A 100 KB Markdown answer arriving as 1000 items, ten to a chunk, a task
    apart (the page draws at most once a frame), ends as the same DOM a whole
    render gives, and says the answer once.
    """
    unit = "שורה עם **הדגשה**, `קוד` ו-[קישור](https://example.com).\n- פריט\n- פריט *שני*\n\n```\nx = 1\n```\n\n"
    text = (unit * (102_400 // len(unit) + 1))[:102_400]
    pieces = [text[i : i + 103] for i in range(0, len(text), 103)]
    with start_inkflow() as server:
        watched = open_page(server, scripts=(CONTROLLED_STREAM,))
        page = watched.page
        send(page, "הרבה")
        page.wait_for_function("window.__stream.accepts.length === 1")
        took = page.evaluate(
            """async (pieces) => {
              const started = performance.now();
              const line = (o) => JSON.stringify(o) + "\\n";
              const meta = {nodeId: "agent", runIndex: 0};
              window.__stream.push(line({type: "begin", metadata: meta}));
              for (let i = 0; i < pieces.length; i += 10) {
                const chunk = pieces.slice(i, i + 10).map((content) => line({type: "item", content, metadata: meta}));
                window.__stream.push(chunk.join(""));
                await new Promise((r) => setTimeout(r));
              }
              window.__stream.push(line({type: "end", metadata: meta}));
              window.__stream.close();
              return performance.now() - started;
            }""",
            pieces,
        )
        expect(page.locator("#chat-log .msg-typing")).to_have_count(0)
        bubble = bot_bubbles(page).last
        expect(bubble.locator(":scope > ul")).to_have_count(text.count("- פריט *שני*"))
        same = page.evaluate(
            """async (text) => {
              const {render} = await import("./assets/markdown.js");
              const whole = document.createElement("div");
              render(whole, text);
              const b = [...document.querySelectorAll('#chat-log .msg-bot .bubble.md')].pop();
              return whole.innerHTML === b.innerHTML;
            }""",
            text,
        )
        assert same
        expect(page.locator("#chat-live p")).to_have_count(1)
        print(f"100 KB in {len(pieces)} items: {took:.0f} ms")
        assert watched.problems() == []


def test_busy_answer_is_waited_out_then_streamed(open_page: Any) -> None:
    """
    A 429 with Retry-After (JSON, as InkFlow's errors are) is waited out with
    the page's countdown; the retry's streamed answer is shown.
    """
    calls = {"n": 0}
    streamed = stream_of(("agent", 0, "אחרי ההמתנה: **הצלחה**"))

    def handler(route: Route) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            error = {
                "message": "נשלחו יותר מדי הודעות.",
                "error": {
                    "code": "rate_limited",
                    "message": "נשלחו יותר מדי הודעות.",
                    "message_en": "Too many",
                    "requestId": "r1",
                },
            }
            route.fulfill(
                status=429,
                headers={"Content-Type": "application/json", "Retry-After": "1"},
                body=json.dumps(error, ensure_ascii=False),
            )
        else:
            route.fulfill(status=200, headers={"Content-Type": NDJSON}, body=streamed)

    with start_inkflow() as server:
        watched = open_page(server, routes={"**/api/chat": handler})
        page = watched.page
        send(page, "שוב")
        expect(page.locator("#chat-status")).to_contain_text("מנסה שוב בעוד")
        expect(bot_bubbles(page).last.locator("strong")).to_have_text("הצלחה")
        expect(page.locator("#chat-status")).to_be_hidden()
        assert calls["n"] == 2
        assert len(watched.chat_posts()) == 2
        # Chromium logs the 429 itself; nothing else went wrong.
        assert [p for p in watched.problems() if "status of 429" not in p] == []


def test_plain_json_answer_from_the_demo_responder_is_markdown(open_page: Any) -> None:
    """
    Against the real server's demo responder (no webhook: a JSON answer, which
    InkFlow synthesizes as begin / item / end for the page, since the page asks
    for a stream), the answer shows rendered as Markdown, while the visitor's
    own message stays plain text.
    """
    with start_inkflow() as server:
        watched = open_page(server)
        page = watched.page
        send(page, "**מודגש** ו־`קוד`")
        reply = bot_bubbles(page).last
        expect(reply).to_contain_text("קיבלתי")
        expect(reply.locator("strong")).to_have_text("מודגש")
        expect(reply.locator("code")).to_have_text("קוד")
        expect(page.locator("#chat-log .msg-user .bubble")).to_have_text("**מודגש** ו־`קוד`")
        expect(page.locator("#chat-live")).to_contain_text("קיבלתי")
        response = watched.chat_posts()[0].response()
        assert response is not None and response.headers["content-type"].startswith("application/x-ndjson")
        assert watched.problems() == []


# -- safety -----------------------------------------------------------------------------


@pytest.mark.parametrize("as_stream", [True, False], ids=["stream", "json"])
def test_hostile_answers_execute_nothing(open_page: Any, as_stream: bool) -> None:
    """
    Script tags, event handlers, javascript: and data: links, entities,
    iframes: shown as text or as a safe link; the C{window.__pwned} canary stays
    undefined, no element from the answer is a script, image or frame, every
    link is http(s) with rel=noopener noreferrer, and no CSP violation is
    reported.
    """
    answer = "\n\n".join(HOSTILE)
    body = (
        stream_of(*[("agent", i, text) for i, text in enumerate(HOSTILE)])
        if as_stream
        else json.dumps({"output": answer}).encode()
    )
    content_type = NDJSON if as_stream else "application/json"
    with start_inkflow() as server:
        watched = open_page(server, routes={"**/api/chat": answer_with(body, content_type)})
        page = watched.page
        send(page, "<script>window.__pwned = 'visitor'</script>")
        expect(bot_bubbles(page)).to_have_count(len(HOSTILE) if as_stream else 1)
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        log = page.locator("#chat-log")
        expect(log).to_contain_text("<script>window.__pwned = 1</script>")
        expect(log).to_contain_text("[x](javascript:window.__pwned=3)")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert log.locator("script, img, iframe, svg, style, object, embed, frame, form, input").count() == 0
        for link in log.locator("a").all():
            assert (link.get_attribute("href") or "").startswith("https://")
            assert link.get_attribute("rel") == "noopener noreferrer"
            assert link.get_attribute("target") == "_blank"
        # Nothing has an inline handler or a style attribute.
        assert (
            page.evaluate(
                """() => [...document.querySelectorAll('#chat-log *')].flatMap((e) =>
                 [...e.attributes].map((a) => a.name)).filter((n) => n.startsWith('on') || n === 'style')"""
            )
            == []
        )
        page.locator("#chat-widget").scroll_into_view_if_needed()
        page.locator("#chat-widget").screenshot(path=artifact(f"hostile-{'stream' if as_stream else 'json'}.png"))
        assert watched.problems() == []


def test_the_csp_watch_would_see_an_injection(open_page: Any) -> None:
    """
    The checks above are not vacuous: markup injected the unsafe way (by the
    test, with innerHTML) is stopped by the page's CSP, and the watch records it.
    """
    with start_inkflow() as server:
        watched = open_page(server)
        page = watched.page
        page.evaluate(
            """() => { const box = document.createElement("div");
                 box.innerHTML = '<img src="data:," onerror="window.__pwned = 1">';
                 document.body.append(box); }"""
        )
        page.wait_for_function("window.__csp.length > 0")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert any("script-src" in v for v in page.evaluate("window.__csp"))


# -- layout -----------------------------------------------------------------------------

DIRECTIONS = """() => {
  const b = [...document.querySelectorAll('#chat-log .msg-bot .bubble.md')].pop();
  const dir = (e) => getComputedStyle(e).direction;
  const paragraphs = [...b.querySelectorAll(':scope > p')];
  const [hebrewList, englishList] = [...b.querySelectorAll(':scope > ol, :scope > ul')];
  const side = (list) => {
    const l = list.getBoundingClientRect(), i = list.querySelector('li').getBoundingClientRect();
    return {start: i.left - l.left, end: l.right - i.right};
  };
  return {
    hebrew: dir(paragraphs[0]), english: dir(paragraphs[1]),
    heading: dir(b.querySelector('h3, h4')), code: dir(b.querySelector('pre')),
    codeWrap: dir(b.querySelector('.md-code')),
    hebrewList: dir(hebrewList), englishList: dir(englishList),
    hebrewSide: side(hebrewList), englishSide: side(englishList),
    quote: dir(b.querySelector('blockquote')), table: dir(b.querySelector('table')),
    bubble: dir(b),
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  };
}"""


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_mixed_hebrew_english_and_code_lay_out_in_the_right_directions(
    open_page: Any, name: str, viewport: ViewportSize
) -> None:
    """
    A Hebrew paragraph reads right to left, an English one left to right, the
    code block is always left to right, a Hebrew list has its markers on the
    right and an English one on the left; nothing overflows on a phone.
    Screenshots: test-artifacts/markdown-<name>.png.
    """
    with start_inkflow() as server:
        watched = open_page(
            server, viewport=viewport, routes={"**/api/chat": answer_with(stream_of(("agent", 0, MIXED)))}
        )
        page = watched.page
        send(page, "איך מתקינים?")
        bubble = bot_bubbles(page).last
        expect(bubble.locator("table")).to_be_visible()
        expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
        found = page.evaluate(DIRECTIONS)
        assert found["hebrew"] == "rtl"
        assert found["english"] == "ltr"
        assert found["heading"] == "rtl"
        assert found["code"] == "ltr"
        assert found["codeWrap"] == "ltr"
        assert found["hebrewList"] == "rtl"
        assert found["englishList"] == "ltr"
        # The list's indent (where the markers are) is on its start side.
        assert found["hebrewSide"]["end"] > 10 and found["hebrewSide"]["start"] < 2
        assert found["englishSide"]["start"] > 10 and found["englishSide"]["end"] < 2
        assert found["quote"] == "rtl"
        assert found["table"] == "rtl"
        assert found["bubble"] == "rtl"
        assert found["overflow"] <= 0
        page.evaluate("document.getElementById('chat-log').scrollTop = 0")
        page.evaluate(
            "() => { const log = document.getElementById('chat-log');"
            " const m = [...log.querySelectorAll('.msg-bot')].pop(); log.scrollTop = m.offsetTop - log.offsetTop - 8; }"
        )
        page.locator("#chat-widget").scroll_into_view_if_needed()
        page.locator("#chat-widget").screenshot(path=artifact(f"markdown-{name}.png"))
        assert watched.problems() == []


def test_copy_button_copies_the_code_from_the_keyboard(open_page: Any, browser: Browser) -> None:
    """
    The copy button of a code block is reached with Tab, pressed with Enter,
    puts the code on the clipboard, and says "הועתק".
    """
    with start_inkflow() as server:
        watched = open_page(server, routes={"**/api/chat": answer_with(stream_of(("agent", 0, MIXED)))})
        page = watched.page
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
        send(page, "קוד בבקשה")
        expect(bot_bubbles(page).last.get_by_role("button", name="העתקת הקוד")).to_be_visible()
        # Its text is its name (axe: label-content-name-mismatch), so the name follows the text.
        button = bot_bubbles(page).last.locator(".md-copy")
        expect(button).to_have_text("העתקת הקוד")
        # Reached with Tab from the answer's link just before the code block.
        bot_bubbles(page).last.get_by_role("link", name="הדף").focus()
        page.keyboard.press("Tab")
        expect(button).to_be_focused()
        page.keyboard.press("Enter")
        expect(button).to_have_text("הועתק")
        expect(page.locator("#chat-announce")).to_have_text("הועתק")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == 'make run ARGS="--webhook https://n8n.example.com/webhook/chat"'
        assert watched.problems() == []

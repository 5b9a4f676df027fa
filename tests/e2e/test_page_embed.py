"""
The chat in the site owner's name, on their own page and on any other page
(C{/embed.js}), in Chromium against the real server: the C{[page]} names
(escaped), the embed on a page of another origin under the CSP README gives,
axe-core in each state at desktop and phone widths, the conversation kept
across a reload, and one Idempotency-Key per message across a retry.

Skips when Playwright or Chromium is missing; the axe-core tests skip when
C{tests/a11y/node_modules} is (C{scripts/install-system-deps.sh browser}).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import artifact, png_bytes, skip_without_browser, start_inkflow
from tests.support.embed_site import HostSite, StreamingN8n
from tests.support.server import REPO, ServerProcess

skip_without_browser()

from playwright.sync_api import Browser, BrowserContext, Page, Route, ViewportSize, expect  # noqa: E402

WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
AXE = REPO / "tests" / "a11y" / "node_modules" / "axe-core" / "axe.min.js"

#: Names with markup in them: they must arrive as text.
CONFIG = """
[page]
site_name = "Café <b>Noa</b> & co"
bot_name = "נועה <i>הבוטית</i>"
greeting = "שלום מ<קפה נועה>! מה תרצו לדעת?"
accent_color = "#0b6e4f"
privacy_note = "ההודעות נשמרות 30 יום."
statement_email = "access@noa.example"
logo = "/assets/favicon.svg"
"""


@pytest.fixture(scope="module")
def n8n() -> Iterator[StreamingN8n]:
    with StreamingN8n() as fake:
        yield fake


@pytest.fixture(scope="module")
def host() -> Iterator[HostSite]:
    with HostSite() as site:
        yield site


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, n8n: StreamingN8n, host: HostSite) -> Iterator[ServerProcess]:
    config = tmp_path_factory.mktemp("page") / "inkflow.toml"
    config.write_text(CONFIG, encoding="utf-8")
    with start_inkflow(
        "--config", str(config), "--webhook", n8n.url(), "--cors-origin", host.origin, "--rate-limit", "0"
    ) as running:
        host.inkflow = running.base
        yield running


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Any]:
    opened: list[BrowserContext] = []

    def new(viewport: ViewportSize = DESKTOP, **options: Any) -> BrowserContext:
        context = browser.new_context(viewport=viewport, locale="he-IL", service_workers="block", **options)
        context.set_default_timeout(WAIT_MS)
        opened.append(context)
        return context

    yield new
    for context in opened:
        context.close()


def watch(page: Page) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    return problems


def open_embed(page: Page, host: HostSite) -> None:
    page.goto(host.origin + "/")
    expect(page.locator("#inkflow-chat")).to_have_attribute("data-chat-ready", "true")
    page.get_by_role("button", name=re.compile("צ'אט")).click()
    expect(page.get_by_label("ההודעה שלכם")).to_be_focused()


def send(page: Page, text: str) -> None:
    box = page.get_by_label("ההודעה שלכם")
    box.fill(text)
    box.press("Enter")


def bot_answers(page: Page) -> Any:
    return page.locator("#chat-log .msg-bot:not(.msg-greeting):not(.msg-typing) .bubble")


# -- the owner's names ------------------------------------------------------------


def test_page_title_and_statement_show_the_owners_names_as_text(server: ServerProcess, contexts: Any) -> None:
    """
    The [page] names are on the page, in its <title>, in the chat and in the
    accessibility statement, each as written: a name with < is text, never markup.
    """
    page = contexts().new_page()
    problems = watch(page)
    page.goto(server.url("/"))
    expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
    assert page.title() == "Café <b>Noa</b> & co · צ'אט"
    expect(page.get_by_role("heading", level=1)).to_have_text("Café <b>Noa</b> & co")
    assert page.locator("b, i").count() == 0
    expect(page.locator("#chat-name")).to_have_text("נועה <i>הבוטית</i>")
    expect(page.locator("#chat-log .msg-greeting")).to_have_text("שלום מ<קפה נועה>! מה תרצו לדעת?")
    expect(page.locator("#chat-privacy")).to_have_text("ההודעות נשמרות 30 יום.")
    # No product pitch and no command line on the visitor's page.
    assert "twistd" not in page.content() and "InkFlow" not in page.inner_text("body")
    # The accent colour reaches the send button.
    assert page.evaluate("getComputedStyle(document.querySelector('#chat-send')).backgroundColor") == "rgb(11, 110, 79)"
    page.get_by_role("link", name="הצהרת נגישות").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("הצהרת נגישות")
    assert page.title() == "הצהרת נגישות · Café <b>Noa</b> & co"
    expect(page.locator("main")).to_contain_text("Café <b>Noa</b> & co רואה חשיבות")
    expect(page.locator("main")).to_contain_text("5568")
    expect(page.get_by_role("link", name="access@noa.example")).to_have_attribute("href", "mailto:access@noa.example")
    assert problems == []


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_page_and_statement_fit_the_width(
    server: ServerProcess, contexts: Any, name: str, viewport: ViewportSize
) -> None:
    """Nothing overflows sideways; screenshots of both pages in test-artifacts/."""
    page = contexts(viewport).new_page()
    for path, shot in (("/", "page"), ("/accessibility.html", "statement")):
        page.goto(server.url(path))
        page.wait_for_load_state("load")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
        page.screenshot(path=artifact(f"owner-{shot}-{name}.png"), full_page=True)


def test_the_page_and_embed_revalidate_with_an_etag_of_their_content(server: ServerProcess) -> None:
    """
    The rendered page and /embed.js carry a strong ETag of what was sent
    (names included), no-cache, and a matching If-None-Match gets 304.
    """
    import http.client

    for path in ("/", "/embed.js", "/accessibility.html", "/theme.css"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        etag = response.getheader("ETag")
        assert response.status == 200 and etag and etag.startswith('"'), path
        assert response.getheader("Cache-Control") == "no-cache", path
        assert response.getheader("Last-Modified"), path
        conn.request("GET", path, headers={"If-None-Match": etag})
        again = conn.getresponse()
        again.read()
        assert again.status == 304, path
        conn.close()
        if path == "/embed.js":
            assert "{{page.json}}" not in body.decode()
            assert "\\u003cb\\u003eNoa" in body.decode()  # names inside the script are escaped for it


# -- the embed on another origin ----------------------------------------------------


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_embed_on_a_foreign_page_sends_streams_and_uploads(
    server: ServerProcess, host: HostSite, n8n: StreamingN8n, contexts: Any, name: str, viewport: ViewportSize
) -> None:
    """
    One script tag on a page of another origin, under the CSP README gives:
    the launcher (named with צ'אט) opens the panel in an open Shadow DOM,
    right-to-left, in the owner's names; a message, a streamed Markdown
    answer and a file go through; no CSP violation, no error.
    """
    page = contexts(viewport).new_page()
    problems = watch(page)
    csp: list[str] = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(host.origin + "/")
    launcher = page.get_by_role("button", name=re.compile("צ'אט"))
    expect(launcher).to_be_visible()
    expect(launcher).to_have_accessible_name(re.compile("נועה <i>הבוטית</i>"))
    page.screenshot(path=artifact(f"embed-{name}-closed.png"))
    open_embed(page, host)
    assert page.evaluate("document.querySelector('#inkflow-chat').shadowRoot !== null")
    assert (
        page.evaluate(
            "getComputedStyle(document.querySelector('#inkflow-chat').shadowRoot.querySelector('.chat')).direction"
        )
        == "rtl"
    )
    expect(page.get_by_role("dialog")).to_have_accessible_name("נועה <i>הבוטית</i>")
    expect(page.locator("#inkflow-chat .msg-greeting")).to_have_text("שלום מ<קפה נועה>! מה תרצו לדעת?")
    # The owner's logo, from InkFlow's origin (img-src in the host's CSP).
    logo = page.locator("#inkflow-chat .chat-logo")
    expect(logo).to_have_attribute("src", f"{server.base}/assets/favicon.svg")
    page.wait_for_function(
        "document.querySelector('#inkflow-chat').shadowRoot.querySelector('.chat-logo').naturalWidth > 0"
    )

    send(page, f"שלום מהמאפייה {name}")
    expect(bot_answers(page).last).to_have_text(f"n8n: שלום מהמאפייה {name} (0 files)")

    send(page, f"stream {name}")
    answer = bot_answers(page).last
    expect(answer.get_by_role("heading", name="התקנה")).to_be_visible()
    expect(answer.locator("strong")).to_have_text("שני")
    expect(answer.locator("pre")).to_contain_text("twistd -n inkflow")

    page.locator("#inkflow-chat #chat-file-input").set_input_files(
        {"name": "red-square.png", "mimeType": "image/png", "buffer": png_bytes(rgb=(220, 38, 38))}
    )
    expect(page.locator("#inkflow-chat #chat-files bdi").first).to_have_text("red-square.png")
    send(page, f"קובץ {name}")
    expect(bot_answers(page).last).to_have_text(f"n8n: קובץ {name} (1 files)")
    received = n8n.with_input(f"קובץ {name}")
    assert len(received) == 1 and received[0].files[0].filename == "red-square.png"
    assert received[0].headers.get("idempotency-key")
    page.screenshot(path=artifact(f"embed-{name}-open.png"))

    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(launcher).to_be_focused()
    assert csp == [] and problems == []


# -- continuity and the Idempotency-Key ------------------------------------------------


def test_a_reload_shows_the_conversation_and_a_new_chat_clears_it(server: ServerProcess, contexts: Any) -> None:
    page = contexts().new_page()
    page.goto(server.url("/"))
    expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
    send(page, "זוכרים אותי?")
    expect(bot_answers(page).last).to_have_text("n8n: זוכרים אותי? (0 files)")
    send(page, "stream")
    expect(bot_answers(page).last.get_by_role("heading", name="התקנה")).to_be_visible()
    expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
    page.reload()
    expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
    expect(page.locator("#chat-log .msg-user .bubble")).to_have_text(["זוכרים אותי?", "stream"])
    expect(bot_answers(page)).to_have_count(2)
    expect(bot_answers(page).last.get_by_role("heading", name="התקנה")).to_be_visible()
    page.get_by_role("button", name="שיחה חדשה").click()
    expect(page.locator("#chat-log .msg")).to_have_count(1)
    page.reload()
    expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
    expect(page.locator("#chat-log .msg")).to_have_count(1)
    expect(page.locator("#chat-log .msg-greeting")).to_be_visible()


def test_the_embed_keeps_the_conversation_across_a_reload(server: ServerProcess, host: HostSite, contexts: Any) -> None:
    page = contexts().new_page()
    open_embed(page, host)
    send(page, "שאלה מהמאפייה")
    expect(bot_answers(page).last).to_have_text("n8n: שאלה מהמאפייה (0 files)")
    page.reload()
    open_embed(page, host)
    expect(page.locator("#inkflow-chat .msg-user .bubble")).to_have_text(["שאלה מהמאפייה"])
    expect(bot_answers(page)).to_have_text(["n8n: שאלה מהמאפייה (0 files)"])


def test_one_idempotency_key_across_an_automatic_retry(server: ServerProcess, n8n: StreamingN8n, contexts: Any) -> None:
    """
    The first POST fails as a network error; the page retries by itself with
    the same Idempotency-Key, and n8n runs once, with that key.
    """
    page = contexts().new_page()
    keys: list[str | None] = []

    def flaky(route: Route) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/api/chat", flaky)
    page.goto(server.url("/"))
    expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
    send(page, "פעם אחת בלבד")
    expect(bot_answers(page).last).to_have_text("n8n: פעם אחת בלבד (0 files)")
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]
    assert re.fullmatch(r"[0-9a-f-]{36}", keys[0])
    runs = n8n.with_input("פעם אחת בלבד")
    assert [r.headers.get("idempotency-key") for r in runs] == [keys[0]]
    # The next message has a key of its own.
    send(page, "הודעה שנייה")
    expect(bot_answers(page).last).to_have_text("n8n: הודעה שנייה (0 files)")
    assert keys[-1] != keys[0]


def test_a_refused_file_is_named_in_isolation_with_its_size_to_one_decimal(
    server: ServerProcess, contexts: Any
) -> None:
    """
    An 11,000,000-byte file: "10.5 מ"ב", not "10"; its name in a <bdi> so
    red-square.png stays whole inside the Hebrew sentence.
    """
    page = contexts().new_page()
    page.goto(server.url("/"))
    expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
    page.locator("#chat-file-input").set_input_files(
        {"name": "red-square.png", "mimeType": "image/png", "buffer": b"\x89PNG" + b"\0" * (11_000_000 - 4)}
    )
    error = page.get_by_role("alert")
    expect(error).to_have_text('הקובץ red-square.png גדול מדי (10.5 מ"ב). הגודל המרבי הוא 10 מ"ב.')
    expect(error.locator("bdi").first).to_have_text("red-square.png")
    # However the sentence wraps, the name is one box, read left to right
    # (as a plain inline <bdi> it would break at its hyphen at some width).
    count = """(b, [width, display]) => {
      b.style.display = display; b.parentElement.style.width = `${width}px`; return b.getClientRects().length;
    }"""
    name = error.locator("bdi").first
    widths = range(60, 420, 3)
    assert all(name.evaluate(count, [width, ""]) == 1 for width in widths)
    assert any(name.evaluate(count, [width, "inline"]) > 1 for width in widths)


# -- axe-core ---------------------------------------------------------------------------


def axe_violations(page: Page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => {
          const result = await axe.run(document);
          if (result.passes.length < 20) throw new Error(`axe checked too little: ${result.passes.length} rules passed`);
          return result.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
        }"""
    )
    return list(found)


@pytest.mark.skipif(not AXE.exists(), reason="axe-core missing: run scripts/install-system-deps.sh browser")
@pytest.mark.parametrize(("where", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
@pytest.mark.parametrize("surface", ["page", "embed"])
def test_axe_finds_nothing_idle_answered_and_streamed(
    server: ServerProcess, host: HostSite, contexts: Any, surface: str, where: str, viewport: ViewportSize
) -> None:
    # bypass_csp: only so that axe itself can be injected.
    page = contexts(viewport, bypass_csp=True).new_page()
    if surface == "page":
        page.goto(server.url("/"))
        expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
    else:
        open_embed(page, host)
    found: dict[str, list[str]] = {"idle": axe_violations(page)}
    send(page, "שלום")
    expect(bot_answers(page).last).to_have_text("n8n: שלום (0 files)")
    found["answered"] = axe_violations(page)
    send(page, "stream")
    expect(bot_answers(page).last.locator("pre")).to_be_visible()
    expect(page.locator("#chat-log .msg-streaming")).to_have_count(0)
    found["streamed"] = axe_violations(page)
    page.screenshot(path=artifact(f"axe-{surface}-{where}.png"))
    assert found == {"idle": [], "answered": [], "streamed": []}


# -- the official widget's example page -------------------------------------------------


def test_example_page_says_exactly_what_to_run_without_the_widget(tmp_path: Path, contexts: Any) -> None:
    """Served from a static folder without the fetched widget, the page names the commands, no notes file."""
    static = tmp_path / "static"
    shutil.copytree(REPO / "static", static, ignore=shutil.ignore_patterns("vendor"))
    with start_inkflow("--static-dir", str(static)) as running:
        page = contexts().new_page()
        page.goto(running.url("/examples/n8n-chat.html"))
        status = page.locator("#example-status")
        expect(status).to_contain_text("אינו מותקן")
        expect(status.locator("code")).to_have_text(
            ["make run", "sh scripts/install-n8n-chat.sh", "--static-dir static"]
        )
        assert "NOTES" not in status.inner_text()


@pytest.mark.skipif(
    not (REPO / "static" / "examples" / "vendor" / "n8n-chat" / "chat.bundle.umd.js").exists(),
    reason="the widget is not fetched (sh scripts/install-n8n-chat.sh)",
)
def test_example_page_works_as_make_run_serves_it(contexts: Any) -> None:
    """make run serves the checkout's static/ (with the fetched widget): the example chats in demo mode."""
    with start_inkflow("--static-dir", str(REPO / "static")) as running:
        page = contexts().new_page()
        page.goto(running.url("/examples/n8n-chat.html"))
        expect(page.locator("html")).to_have_attribute("data-chat-ready", "true")
        box = page.locator("#n8n-chat textarea")
        box.fill("שלום מהדוגמה")
        box.press("Enter")
        expect(page.locator("#n8n-chat .chat-message-from-bot").last).to_contain_text("קיבלתי: «שלום מהדוגמה»")


@pytest.mark.skipif(not AXE.exists(), reason="axe-core missing: run scripts/install-system-deps.sh browser")
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE])
def test_axe_finds_nothing_on_the_statement(server: ServerProcess, contexts: Any, viewport: ViewportSize) -> None:
    page = contexts(viewport, bypass_csp=True).new_page()
    page.goto(server.url("/accessibility.html"))
    assert axe_violations(page) == []


def test_a_rate_limited_embed_reads_the_429(host: HostSite) -> None:
    """
    The rate limit refuses from the request head; for an allow-listed origin
    the refusal carries CORS headers, so the embed reads 429 and Retry-After
    instead of a network error.
    """
    import http.client

    with start_inkflow("--cors-origin", host.origin, "--rate-limit", "1") as running:
        statuses = []
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
            conn.request(
                "POST",
                "/api/chat",
                body='{"message": "x", "sessionId": "s1"}',
                headers={"Origin": host.origin, "Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
            )
            response = conn.getresponse()
            response.read()
            statuses.append((response.status, response.getheader("Access-Control-Allow-Origin")))
            conn.close()
        assert statuses == [(200, host.origin), (429, host.origin)]


def test_the_owners_page_reads_a_refusal_given_before_the_route(
    server: ServerProcess, host: HostSite, contexts: Any
) -> None:
    """
    On the owner's page (a --cors-origin), a chat request InkFlow refuses
    from its head (415 for text/plain, a simple request sent without a
    preflight) is readable by the page's script: its status and JSON error,
    not an opaque network error.
    """
    page = contexts().new_page()
    page.goto(host.origin + "/")
    result = page.evaluate(
        """async (url) => {
            try {
                const r = await fetch(url, {method: "POST", headers: {"Content-Type": "text/plain"}, body: "hi"});
                return {status: r.status, code: (await r.json()).error.code};
            } catch (e) {
                return {error: String(e)};
            }
        }""",
        server.url("/api/chat"),
    )
    assert result == {"status": 415, "code": "unsupported_type"}


def test_workers_serve_the_owners_names(tmp_path: Path) -> None:
    """With --workers 2 the [page] table reaches every worker (it travels with the options)."""
    config = tmp_path / "inkflow.toml"
    config.write_text(CONFIG, encoding="utf-8")
    with start_inkflow("--workers", "2", "--config", str(config)) as running:
        for _ in range(4):
            status, _, body = running.request("GET", "/", headers={"Connection": "close"})
            assert status == 200
            assert "<title>Café &lt;b&gt;Noa&lt;/b&gt; &amp; co · צ'אט</title>" in body.decode()

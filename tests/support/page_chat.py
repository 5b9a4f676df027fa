"""
Driving InkFlow's own page (C{static/index.html}) in Chromium, for tests that
also run a fake n8n in this process's reactor.

Playwright's sync API blocks the thread that calls it.  Under pytest-twisted a
test runs in the reactor's greenlet, so a sync Playwright wait there would stop
the reactor, and with it the fake n8n the test drives line by line.
L{BrowserThread} runs Playwright on a thread of its own: an C{async} test
awaits each browser step (L{BrowserThread.call}) while the reactor keeps
serving; a plain test calls L{BrowserThread.run}.

The page helpers (L{ChatPage}) take a Playwright C{Page} and are called on the
browser thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.support.browser import launch_browser

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Request, ViewportSize

__all__ = [
    "DESKTOP",
    "PHONE",
    "WATCH",
    "BrowserThread",
    "ChatPage",
    "open_chat_page",
]

T = TypeVar("T")

#: Playwright's auto-waiting bound for every expectation, in milliseconds.
WAIT_MS = 15_000

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

#: Runs before the page's scripts: the C{window.__pwned} canary stays
#: undefined unless injected script runs, and every CSP violation is recorded.
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`);
});
"""

#: Runs before the page's scripts: C{window.__chatLog} gets, at every change of
#: the chat log, the time (ms since navigation) and the text of each bot bubble,
#: so a test can tell afterwards what was on screen when.
TIMELINE = """
window.__chatLog = [];
const __startTimeline = () => {
  const log = document.getElementById("chat-log");
  if (!log) return;
  const note = () => {
    const bubbles = [...log.querySelectorAll(".msg-bot:not(.msg-typing) .bubble.md")];
    const texts = bubbles.map((b) => b.textContent);
    const last = window.__chatLog[window.__chatLog.length - 1];
    if (!last || JSON.stringify(last.texts) !== JSON.stringify(texts)) {
      window.__chatLog.push({t: performance.now(), texts});
    }
  };
  new MutationObserver(note).observe(log, {childList: true, subtree: true, characterData: true});
};
document.addEventListener("DOMContentLoaded", __startTimeline);
"""


class BrowserThread:
    """
    Headless Chromium driven by sync Playwright on one thread of its own.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self._stack = ExitStack()
        self.browser: Browser | None = None

    def start(self) -> BrowserThread:
        def launch() -> None:
            from playwright.sync_api import expect, sync_playwright

            expect.set_options(timeout=WAIT_MS)
            playwright = self._stack.enter_context(sync_playwright())
            self.browser = self._stack.enter_context(launch_browser(playwright))

        self.run(launch)
        return self

    def stop(self) -> None:
        try:
            self.run(self._stack.close)
        finally:
            self._pool.shutdown(wait=True)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """
        Run C{fn(*args)} on the browser thread and wait for it (blocking).
        """
        return self._pool.submit(fn, *args).result()

    def call(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Run C{fn(*args)} on the browser thread; a L{Deferred} (fired in the
        reactor thread) with its result or its exception.  The reactor runs
        while the browser waits.
        """
        from twisted.internet import reactor

        r: Any = reactor
        d: Deferred[T] = Deferred()
        caller = threading.get_ident()

        def done(future: Future[T]) -> None:
            error = future.exception()
            if error is not None:
                fire: Callable[[], object] = lambda: d.errback(Failure(error))  # noqa: E731
            else:
                result = future.result()
                fire = lambda: d.callback(result)  # noqa: E731
            if threading.get_ident() == caller:
                fire()
            else:
                r.callFromThread(fire)

        self._pool.submit(fn, *args).add_done_callback(done)
        return d


@dataclass
class ChatPage:
    """
    InkFlow's page, open and watched: page errors, console errors, requests.
    """

    page: Page
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def send(self, text: str) -> None:
        box = self.page.get_by_label("ההודעה שלכם")
        box.fill(text)
        box.press("Enter")

    def bot_bubbles(self) -> Locator:
        """
        The bot's answer bubbles (Markdown), the greeting excluded.
        """
        return self.page.locator("#chat-log .msg-bot:not(.msg-typing) .bubble.md")

    def chat_posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.endswith("/api/chat")]

    def problems(self) -> list[str]:
        """
        Page errors, console errors and CSP violations seen so far.
        """
        return self.errors + list(self.page.evaluate("window.__csp"))

    def pwned(self) -> str:
        """
        C{typeof window.__pwned}: C{"undefined"} unless injected script ran.
        """
        return str(self.page.evaluate("typeof window.__pwned"))

    def timeline(self) -> list[dict[str, Any]]:
        """
        What L{TIMELINE} recorded: C{[{"t": ms, "texts": [bubble text, ...]}]}.
        """
        return list(self.page.evaluate("window.__chatLog"))

    def directions(self, index: int = -1) -> dict[str, Any]:
        """
        The computed C{direction} of the blocks of bot bubble C{index}: its
        paragraphs, lists and code blocks in document order, and the bubble.
        """
        script = """(index) => {
          const all = [...document.querySelectorAll('#chat-log .msg-bot:not(.msg-typing) .bubble.md')];
          const b = all.at(index);
          const dir = (e) => getComputedStyle(e).direction;
          const blocks = (sel) => [...b.querySelectorAll(sel)].map((e) => ({text: e.textContent, dir: dir(e)}));
          return {
            bubble: dir(b),
            paragraphs: blocks(':scope > p'),
            lists: blocks(':scope > ul, :scope > ol'),
            code: blocks('pre'),
            overflow: document.documentElement.scrollWidth - window.innerWidth,
          };
        }"""
        return dict(self.page.evaluate(script, index))

    def screenshot(self, path: str, whole_viewport: bool = False) -> None:
        """
        The chat widget (or the whole viewport, the widget in view), the log
        scrolled to the visitor's last message.
        """
        self.page.evaluate(
            "() => { const log = document.getElementById('chat-log');"
            " const m = [...log.querySelectorAll('.msg-user')].pop();"
            " if (m) log.scrollTop = m.offsetTop - log.offsetTop - 8; }"
        )
        widget = self.page.locator("#chat-widget")
        widget.scroll_into_view_if_needed()
        if whole_viewport:
            self.page.screenshot(path=path)
        else:
            widget.screenshot(path=path)


def open_chat_page(
    browser: Browser,
    url: str,
    viewport: ViewportSize = DESKTOP,
    scripts: tuple[str, ...] = (WATCH, TIMELINE),
) -> ChatPage:
    """
    A fresh context (Hebrew locale, no service workers) on C{url}, with the
    watch scripts installed, once the chat says it is ready.  Close it with
    C{chat.page.context.close()}.
    """
    from playwright.sync_api import expect

    context = browser.new_context(viewport=viewport, locale="he-IL", service_workers="block")
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    chat = ChatPage(page)
    page.on("request", lambda request: chat.requests.append(request))
    page.on("pageerror", lambda error: chat.errors.append(str(error)))
    page.on("console", lambda m: chat.errors.append(m.text) if m.type == "error" else None)
    for script in scripts:
        page.add_init_script(script)
    page.goto(url)
    expect(page.locator("#chat-widget")).to_have_attribute("data-state", "ready")
    return chat

// The Markdown renderer of the page (static/assets/markdown.js): its parse tree,
// and what render() builds into a small fake document. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { parse, parseInline, plainText, render, safeHref } from "../../static/assets/markdown.js";
import { Document, Element, serialise } from "./fake-dom.mjs";

// The tree without the source strings render() uses as keys.
const tree = (text, options) => JSON.parse(JSON.stringify(parse(text, options).children, (k, v) => (k === "src" || k === "line" ? undefined : v)));
const inline = (text, open) => parseInline(text, open);
const t = (value) => ({ type: "text", value });

function rendered(text, options) {
  const doc = new Document();
  const box = doc.createElement("div");
  render(box, text, { ...options, doc });
  return box;
}

// Attributes render() may set, and the only values they may have.
const ALLOWED = {
  class: /^[a-z0-9 -]+$/,
  dir: /^(auto|ltr)$/,
  href: /^(https?:\/\/|mailto:)/,
  target: /^_blank$/,
  rel: /^noopener noreferrer$/,
  type: /^button$/,
  tabindex: /^0$/,
  start: /^\d+$/,
};
const TAGS = new Set(
  "div p h3 h4 h5 h6 strong em del code pre a br ul ol li blockquote hr span bdi button table thead tbody tr th td".split(" "),
);

function assertSafe(box) {
  for (const node of [...box.walk()].slice(1)) {
    assert.ok(TAGS.has(node.tagName.toLowerCase()), `unexpected element <${node.tagName}>`);
    for (const [name, value] of node.attributes) {
      assert.ok(Object.hasOwn(ALLOWED, name), `unexpected attribute ${name}="${value}" on <${node.tagName}>`);
      assert.match(value, ALLOWED[name], `${name}="${value}"`);
    }
    if (node.tagName === "A") {
      assert.equal(node.getAttribute("target"), "_blank");
      assert.equal(node.getAttribute("rel"), "noopener noreferrer");
    }
  }
}

describe("blocks", () => {
  test("paragraphs are split on blank lines; a single newline is a line break", () => {
    assert.deepEqual(tree("שורה אחת\nשורה שתיים\n\nפסקה שנייה"), [
      { type: "paragraph", children: [t("שורה אחת"), { type: "br" }, t("שורה שתיים")] },
      { type: "paragraph", children: [t("פסקה שנייה")] },
    ]);
  });

  test("bulleted and numbered lists, nested by indentation, with their start number", () => {
    const [bullets, numbers] = tree("- אחת\n- שתיים\n  - פנימית\n\n3. three\n4. four");
    assert.equal(bullets.type, "list");
    assert.equal(bullets.ordered, false);
    assert.equal(bullets.items.length, 2);
    assert.equal(bullets.items[1].children[1].type, "list");
    assert.deepEqual(bullets.items[1].children[1].items[0].children, [{ type: "paragraph", children: [t("פנימית")] }]);
    assert.equal(numbers.ordered, true);
    assert.equal(numbers.start, 3);
    assert.equal(numbers.items.length, 2);
  });

  test("a lazy line continues a list item; another marker type starts a new list", () => {
    const blocks = tree("- one\ncontinued\n* other");
    assert.equal(blocks.length, 2);
    assert.deepEqual(blocks[0].items[0].children[0].children, [t("one"), { type: "br" }, t("continued")]);
  });

  test("fenced code keeps its text exactly and its language as text", () => {
    assert.deepEqual(tree("```js\nif (a < b) {\n  **not bold**\n}\n```"), [
      { type: "code", lang: "js", text: "if (a < b) {\n  **not bold**\n}", open: false },
    ]);
    assert.deepEqual(tree("~~~\n<b>x</b>\n~~~"), [{ type: "code", lang: "", text: "<b>x</b>", open: false }]);
  });

  test("an unclosed fence runs to the end and is marked open", () => {
    assert.deepEqual(tree("טקסט\n```python\nprint('hi')\n"), [
      { type: "paragraph", children: [t("טקסט")] },
      { type: "code", lang: "python", text: "print('hi')\n", open: true },
    ]);
  });

  test("headings, block quotes, rules and tables", () => {
    const blocks = tree("## כותרת\n> ציטוט\n> **מודגש**\n\n---\n| a | b |\n|---|:-:|\n| 1 | 2 |");
    assert.deepEqual(blocks[0], { type: "heading", level: 2, children: [t("כותרת")] });
    assert.equal(blocks[1].type, "quote");
    assert.deepEqual(blocks[1].children[0].children[2], { type: "strong", children: [t("מודגש")] });
    assert.equal(blocks[2].type, "hr");
    assert.deepEqual(blocks[3], { type: "table", head: [[t("a")], [t("b")]], rows: [[[t("1")], [t("2")]]] });
  });
});

describe("inlines", () => {
  test("bold, italic, strike, inline code", () => {
    assert.deepEqual(inline("**bold** and *it* and __b__ _i_ ~~gone~~ `a*b*c`"), [
      { type: "strong", children: [t("bold")] },
      t(" and "),
      { type: "em", children: [t("it")] },
      t(" and "),
      { type: "strong", children: [t("b")] },
      t(" "),
      { type: "em", children: [t("i")] },
      t(" "),
      { type: "del", children: [t("gone")] },
      t(" "),
      { type: "code", value: "a*b*c" },
    ]);
  });

  test("nested emphasis and ***both***", () => {
    assert.deepEqual(inline("***x*** **a *b* c**"), [
      { type: "strong", children: [{ type: "em", children: [t("x")] }] },
      t(" "),
      { type: "strong", children: [t("a "), { type: "em", children: [t("b")] }, t(" c")] },
    ]);
  });

  test("snake_case, 2 * 3 and a lone ** are text", () => {
    assert.deepEqual(inline("snake_case_name 2 * 3 = 6"), [t("snake_case_name 2 * 3 = 6")]);
    assert.deepEqual(inline("**open"), [t("**open")]);
  });

  test("links, autolinks and bare URLs; trailing punctuation stays outside", () => {
    assert.deepEqual(inline("[האתר](https://example.com/a?b=1) <mailto:x@example.com> ראו https://example.org/x."), [
      { type: "link", href: "https://example.com/a?b=1", children: [t("האתר")] },
      t(" "),
      { type: "link", href: "mailto:x@example.com", children: [t("mailto:x@example.com")] },
      t(" ראו "),
      { type: "link", href: "https://example.org/x", children: [t("https://example.org/x")] },
      t("."),
    ]);
  });

  test("a backslash escape in a link's URL is taken out before the URL is checked", () => {
    assert.deepEqual(inline("[a](https://example.com/snake\\_case) [b](java\\script:alert(1))"), [
      { type: "link", href: "https://example.com/snake_case", children: [t("a")] },
      t(" "),
      t("[b](java\\script:alert(1))"),
    ]);
  });

  test("backslash escapes and a few entities become text", () => {
    assert.deepEqual(inline("\\*not\\* &lt;b&gt; &amp; &#x41;&#66; &copy;"), [t("*not* <b> & AB &copy;")]);
  });

  test("while streaming, an open ** or ` at the end shows as if closed", () => {
    assert.deepEqual(inline("רגע **מודג", true), [t("רגע "), { type: "strong", children: [t("מודג")] }]);
    assert.deepEqual(inline("run `npm i", true), [t("run "), { type: "code", value: "npm i" }]);
    assert.deepEqual(inline("a ** b", true), [t("a ** b")]);
  });
});

describe("safety", () => {
  test("only absolute http, https and mailto URLs are links", () => {
    assert.equal(safeHref("https://example.com"), "https://example.com/");
    assert.equal(safeHref("mailto:a@b.co"), "mailto:a@b.co");
    for (const bad of [
      "javascript:alert(1)",
      "JaVaScRiPt:alert(1)",
      " javascript:alert(1)",
      "java\tscript:alert(1)",
      "data:text/html,<script>alert(1)</script>",
      "vbscript:x",
      "file:///etc/passwd",
      "//evil.example/x",
      "/relative",
      "https://",
      "https://exa mple.com",
      "&#106;avascript:alert(1)",
    ]) {
      assert.equal(safeHref(bad), null, bad);
    }
  });

  const HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned=1">',
    "[x](javascript:alert(1))",
    "[x](JAVASCRIPT:alert(1))",
    "[x](data:text/html,<script>alert(1)</script>)",
    "[x](&#106;avascript:alert(1))",
    "[x](javascript&#58;alert(1))",
    "![x](javascript:alert(1))",
    "![x](x onerror=alert(1))",
    '[x](https://example.com "a" onmouseover="alert(1)")',
    "<a href=\"javascript:alert(1)\">x</a>",
    "<iframe src=//evil.example></iframe>",
    "<style>body{display:none}</style>",
    "```\"><script>alert(1)</script>\nx\n```",
    "&lt;script&gt;alert(1)&lt;/script&gt; &#60;img src=x onerror=alert(1)&#62;",
    "<https://example.com/\" onclick=\"alert(1)>",
    "[<img src=x onerror=alert(1)>](https://example.com)",
    "| <b>a</b> | b |\n|---|---|\n| [x](javascript:1) | <svg onload=alert(1)> |",
  ];

  test("the hostile corpus builds only allowed elements and attributes", () => {
    for (const text of HOSTILE) assertSafe(rendered(text));
    assertSafe(rendered(HOSTILE.join("\n\n")));
  });

  test("raw HTML is text, never markup", () => {
    const box = rendered('<script>window.__pwned = 1</script> <img src=x onerror="alert(1)">');
    assert.equal(box.querySelectorAll("script").length, 0);
    assert.equal(box.querySelectorAll("img").length, 0);
    assert.equal(box.textContent, '<script>window.__pwned = 1</script> <img src=x onerror="alert(1)">');
  });

  test("a link with a forbidden scheme is shown as its text", () => {
    const box = rendered("[x](javascript:alert(1)) [y](data:text/html,hi)");
    assert.equal(box.querySelectorAll("a").length, 0);
    assert.equal(box.textContent, "[x](javascript:alert(1)) [y](data:text/html,hi)");
  });

  test("an image becomes a link (never an <img>)", () => {
    const box = rendered("![תרשים](https://example.com/chart.png)");
    const [a] = box.querySelectorAll("a");
    assert.equal(a.getAttribute("href"), "https://example.com/chart.png");
    assert.equal(a.textContent, "תרשים");
    assert.equal(box.querySelectorAll("img").length, 0);
  });

  test("a code block's language never becomes an attribute", () => {
    const box = rendered('```js" onclick="alert(1)\nx\n```');
    assertSafe(box);
    assert.equal(box.querySelectorAll("pre")[0].textContent, "x");
  });

  test("a 100 KB answer parses quickly", () => {
    const unit = "שורה עם **הדגשה**, `קוד`, [קישור](https://example.com) ו-*נטוי*.\n- פריט\n- פריט 2\n\n";
    const text = unit.repeat(Math.ceil(102400 / unit.length));
    const started = performance.now();
    const blocks = parse(text).children;
    assert.ok(performance.now() - started < 1000, "parse took over a second");
    assert.ok(blocks.length > 1000);
  });

  test("pathological inputs stay linear: unclosed [, *, ` and ( by the thousand", () => {
    for (const text of ["[".repeat(50000), "*a ".repeat(30000), "`".repeat(50000), "[a](".repeat(20000), "_a ".repeat(30000), "**".repeat(40000), "<".repeat(50000)]) {
      const started = performance.now();
      const box = rendered(text);
      assert.ok(performance.now() - started < 1500, `too slow on ${text.slice(0, 8)}…`);
      assertSafe(box);
    }
  });

  test("deeply nested lists and quotes are capped, not a stack overflow", () => {
    const lists = Array.from({ length: 500 }, (_, i) => `${"  ".repeat(i)}- level ${i}`).join("\n");
    const box = rendered(lists);
    assertSafe(box);
    assert.ok(box.querySelectorAll("ul").length <= 8);
    assert.match(box.textContent, /level 499/);
    const quotes = rendered(`${">".repeat(5000)} deep`);
    assert.ok(quotes.querySelectorAll("blockquote").length <= 8);
    assert.match(quotes.textContent, /deep/);
  });

  test("an unclosed fence is a code block, with the rest of the answer in it", () => {
    const box = rendered("לפני\n```\n<script>alert(1)</script>\n**x**");
    assertSafe(box);
    assert.equal(box.querySelectorAll("pre")[0].textContent, "<script>alert(1)</script>\n**x**");
  });
});

describe("DOM", () => {
  test("each block has dir=auto; code blocks are dir=ltr with a copy button", () => {
    const box = rendered("שלום\n\nHello\n\n- פריט\n\n```sh\nls -la\n```");
    const [p1, p2, ul, code] = box.children;
    assert.equal(p1.getAttribute("dir"), "auto");
    assert.equal(p2.getAttribute("dir"), "auto");
    assert.equal(ul.tagName, "UL");
    assert.equal(ul.getAttribute("dir"), "auto");
    assert.equal(code.getAttribute("dir"), "ltr");
    assert.equal(code.querySelectorAll("pre")[0].getAttribute("dir"), "ltr");
    const [button] = code.querySelectorAll("button");
    assert.equal(button.getAttribute("type"), "button");
    assert.equal(button.textContent, "העתקת הקוד", "its text is its name: no aria-label that says otherwise");
    assert.equal(button.getAttribute("aria-label"), null);
    assert.equal(code.querySelectorAll("pre")[0].getAttribute("tabindex"), "0", "a code block scrolls from the keyboard");
  });

  test("blocks in a quote or a list item take its direction; the quote and the table decide by their text", () => {
    const [quote, list, table] = rendered("> ציטוט\n>\n> ## כותרת\n\n- a\n\n  b\n\n| א |\n|---|\n| ב |").children;
    assert.equal(quote.getAttribute("dir"), "auto");
    assert.deepEqual(quote.children.map((c) => c.getAttribute("dir")), [null, null]);
    assert.deepEqual(list.children[0].children.map((c) => c.getAttribute("dir")), [null, null]);
    assert.equal(table.getAttribute("dir"), "auto");
  });

  test("links open in a new tab with rel=noopener noreferrer", () => {
    const box = rendered("[a](https://example.com)");
    assert.equal(serialise(box.children[0]), '<p class="md-p" dir="auto"><a class="md-link" href="https://example.com/" target="_blank" rel="noopener noreferrer">a</a></p>');
  });

  test("answer headings are h3..h6 under the chat's own h2, never skipping a level", () => {
    const box = rendered("# one\n\n## two\n\n###### six");
    assert.deepEqual(
      box.children.map((e) => e.tagName),
      ["H3", "H4", "H5"],
    );
    assert.deepEqual(rendered("## starts at two\n\n### then three").children.map((e) => e.tagName), ["H3", "H4"]);
    assert.deepEqual(rendered("# a\n\n### skips\n\n# back").children.map((e) => e.tagName), ["H3", "H4", "H3"]);
  });

  test("re-rendering a growing answer keeps the finished blocks' nodes", () => {
    const doc = new Document();
    const box = doc.createElement("div");
    render(box, "first paragraph\n\nsecond **par", { streaming: true, doc });
    const first = box.children[0];
    assert.equal(box.children[1].textContent, "second par");
    render(box, "first paragraph\n\nsecond **part**\n\n- a", { streaming: true, doc });
    assert.equal(box.children[0], first);
    assert.equal(box.children.length, 3);
    render(box, "first paragraph\n\nsecond **part**\n\n- a\n- b", { doc });
    assert.equal(box.children[0], first);
    assert.equal(box.children[2].children.length, 2);
  });

  test("streamed piece by piece, every answer renders as it does whole", () => {
    const answers = [
      "## כותרת\n\nפסקה **מודגשת** עם `קוד`.\n\n- א\n- ב\n  - ג\n\n  המשך\n\n1. one\n2. two\n\n```js\nlet a = 1;\n\nlet b = 2;\n```\n\n> ציטוט\n> שני\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nסוף",
      "text\n| a |\n|---|\n| 1 |\n\n- x\ny\n\n***\n~~~\nopen",
      "- a\n\n- b\n\n* c\n\n1) d\n2. e\n\n> q\n\n>> qq\n\n    - deep\n      - deeper\n\n***x*** _y_ [l](https://e.x) ![i](https://e.x/i.png)\n```\nfence",
    ];
    for (const answer of answers) {
      for (const step of [1, 2, 5, 13]) {
        const doc = new Document();
        const box = doc.createElement("div");
        for (let i = step; i < answer.length; i += step) {
          render(box, answer.slice(0, i), { streaming: true, doc });
          assert.equal(serialise(box), serialise(rendered(answer.slice(0, i), { streaming: true })), `at ${i} by ${step}`);
        }
        render(box, answer, { doc });
        assert.equal(serialise(box), serialise(rendered(answer)));
      }
    }
  });

  test("plain text of an answer, for the screen reader", () => {
    assert.equal(plainText(parse("**שלום** עולם\n\n- א\n- ב\n\n```\ncode\n```")), "שלום עולם\nא\nב\ncode");
  });

  test("render works on a fake element given no document", () => {
    const box = new Element(new Document(), "div");
    render(box, "x");
    assert.equal(box.textContent, "x");
  });
});

describe("left-to-right runs inside a Hebrew answer", () => {
  test("a file name in a sentence is isolated in its own <bdi> (it never breaks as -red / square.png)", () => {
    const html = serialise(rendered("קיבלתי את red-square.png, תודה"));
    assert.match(html, /<bdi class="md-ltr">red-square\.png<\/bdi>/);
  });

  test("plain Latin words, numbers and URLs inside links are left as they are", () => {
    assert.doesNotMatch(serialise(rendered("שלום world 42")), /<bdi/);
    assert.match(serialise(rendered("כתובת: user@example.com ו-v1.2.3")), /<bdi class="md-ltr">user@example\.com<\/bdi>.*<bdi class="md-ltr">v1\.2\.3<\/bdi>/);
  });
});

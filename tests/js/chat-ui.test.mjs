// The pure parts of the chat widget shared by the page and the embed:
// sizes, refusals with isolated names, the kept conversation, the
// Idempotency-Key of a message across retries. Run: node --test tests/js/
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { ChatClient, Transcript, formatSize, formatSizes } from "../../static/assets/chat-client.js";
import { RETRYABLE, attachedText, problemParts, waitText } from "../../static/assets/chat-ui.js";
import { headingLevels, parse } from "../../static/assets/markdown.js";

const memory = () => {
  const data = new Map();
  return {
    getItem: (k) => data.get(k) ?? null,
    setItem: (k, v) => data.set(k, String(v)),
    removeItem: (k) => data.delete(k),
    data,
  };
};

describe("sizes", () => {
  test("one decimal where it matters: 11,000,000 bytes are 10.5 MB, not 10", () => {
    assert.equal(formatSize(11_000_000), '10.5 מ"ב');
    assert.equal(formatSize(10 * 1024 * 1024), '10 מ"ב');
    assert.equal(formatSize(1536), '1.5 ק"ב');
    assert.equal(formatSize(800), "800 בתים");
    assert.equal(formatSize(1), "בית אחד");
    assert.equal(formatSize(3 * 1024 ** 3), '3 ג"ב');
  });

  test("a size over a limit never reads the same as the limit", () => {
    const limit = 10 * 1024 * 1024;
    const [size, max] = formatSizes(limit + 1, limit);
    assert.notEqual(size, max);
    assert.deepEqual(formatSizes(11_000_000, limit), ['10.5 מ"ב', '10 מ"ב']);
    assert.deepEqual(formatSizes(limit + 1000, limit), ['10.001 מ"ב', '10 מ"ב']);
  });
});

describe("texts the widget writes", () => {
  test("a refused file's name is a run of its own (a <bdi>), the sizes to one decimal", () => {
    const parts = problemParts({ kind: "size", file: { name: "red-square.png", size: 11_000_000 }, max: 10 * 1024 * 1024 });
    assert.deepEqual(parts, ["הקובץ ", { ltr: "red-square.png" }, ' גדול מדי (10.5 מ"ב). הגודל המרבי הוא 10 מ"ב.']);
    const type = problemParts({ kind: "type", file: { name: "run.exe", size: 1 } });
    assert.deepEqual(type[1], { ltr: "run.exe" });
    assert.deepEqual(problemParts({ kind: "count", max: 5 }), ["אפשר לצרף עד 5 קבצים להודעה."]);
  });

  test("Hebrew number agreement: one file, one second", () => {
    assert.equal(attachedText([{ name: "a.txt" }]), "צורף הקובץ a.txt");
    assert.equal(attachedText([{ name: "a" }, { name: "b" }]), "צורפו 2 קבצים");
    assert.equal(waitText(1, "network"), "אין חיבור לשרת, מנסה שוב בעוד שנייה");
    assert.equal(waitText(5, "busy"), "השרת עמוס, מנסה שוב בעוד 5 שניות");
  });

  test("send again is offered for what a retry can mend, not for a refusal", () => {
    for (const code of ["network", "busy", "rate_limited", "stream_interrupted", "in_progress"]) assert.ok(RETRYABLE.has(code), code);
    for (const code of ["too_large", "unsupported_type", "bad_request", "forbidden_origin"]) assert.ok(!RETRYABLE.has(code), code);
  });
});

describe("answer headings", () => {
  test("no level is skipped, whatever the answer starts with", () => {
    const levels = (text) => headingLevels(parse(text)).children.filter((b) => b.type === "heading").map((b) => b.outLevel);
    assert.deepEqual(levels("## a\n\n#### b\n\n# c"), [3, 4, 3]);
    assert.deepEqual(levels("### a\n\n### b"), [3, 3]);
    assert.deepEqual(levels("> ## quoted\n\n### next"), [4], "under the quoted heading");
    assert.deepEqual(headingLevels(parse("# a\n\n## b"), 2).children.map((b) => b.outLevel), [2, 3]);
  });
});

describe("Transcript", () => {
  test("kept per session; another session, junk or a cleared one shows nothing", () => {
    const storage = memory();
    const kept = new Transcript(storage);
    kept.add("s1", "user", "שלום", [{ name: "a.png", size: 3, type: "image/png" }]);
    kept.add("s1", "bot", "## תשובה");
    assert.deepEqual(new Transcript(storage).load("s1"), [
      { kind: "user", text: "שלום", files: [{ name: "a.png", size: 3 }] },
      { kind: "bot", text: "## תשובה", files: [] },
    ]);
    assert.deepEqual(kept.load("s2"), []);
    storage.setItem("inkflow.transcript", "{not json");
    assert.deepEqual(kept.load("s1"), []);
    storage.setItem("inkflow.transcript", JSON.stringify({ sessionId: "s1", entries: [{ kind: "script", text: "x" }, 5] }));
    assert.deepEqual(kept.load("s1"), []);
    kept.add("s1", "user", "x");
    kept.clear();
    assert.deepEqual(kept.load("s1"), []);
  });

  test("bounded: the last 60 messages, at most 200,000 characters", () => {
    const storage = memory();
    const kept = new Transcript(storage);
    for (let i = 0; i < 70; i += 1) kept.add("s", "user", `m${i}`);
    const entries = kept.load("s");
    assert.equal(entries.length, 60);
    assert.equal(entries[0].text, "m10");
    kept.add("s", "bot", "x".repeat(150_000));
    kept.add("s", "bot", "y".repeat(150_000));
    assert.deepEqual(kept.load("s").map((e) => e.text[0]), ["y"]);
  });

  test("a full or missing storage loses nothing but the copy", () => {
    const full = { getItem: () => null, setItem: () => { throw new Error("QuotaExceededError"); }, removeItem: () => {} };
    new Transcript(full).add("s", "user", "x");
    assert.deepEqual(new Transcript(null).load("s"), []);
  });
});

describe("Idempotency-Key", () => {
  const realFetch = globalThis.fetch;
  afterEach(() => {
    globalThis.fetch = realFetch;
  });

  test("one key per message, the same on the automatic retry after a network error", async () => {
    const keys = [];
    let calls = 0;
    globalThis.fetch = async (url, init) => {
      calls += 1;
      keys.push(init.headers["Idempotency-Key"]);
      if (calls === 1) throw new TypeError("Failed to fetch");
      return new Response(JSON.stringify({ output: "ok" }), { headers: { "Content-Type": "application/json" } });
    };
    const client = new ChatClient({ storage: memory(), backoffBase: 0.01, requestTimeout: 5 });
    const first = await client.send("שלום");
    assert.equal(first.ok, true);
    assert.equal(keys.length, 2);
    assert.match(keys[0], /^[0-9a-f-]{36}$/);
    assert.equal(keys[0], keys[1]);
    await client.send("שוב");
    assert.notEqual(keys[2], keys[0]);
    await client.send("send again", [], {}, keys[0]);
    assert.equal(keys[3], keys[0], "send again of the same message reuses its key");
  });
});

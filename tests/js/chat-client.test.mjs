// The page's chat client (static/assets/chat-client.js) reading streamed answers,
// against a stubbed fetch. Run: node --test tests/js/
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { ChatClient, LineSplitter, StreamReply } from "../../static/assets/chat-client.js";

const encoder = new TextEncoder();
const meta = (nodeId, runIndex = 0) => ({ nodeId, nodeName: nodeId, itemIndex: 0, runIndex, timestamp: 1 });
const line = (value) => `${JSON.stringify(value)}\n`;

// A body that arrives in the given byte chunks, then ends (or fails).
function body(chunks, { fail = false } = {}) {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]);
      else if (fail) controller.error(new TypeError("network error"));
      else controller.close();
    },
  });
}

// Split a string's UTF-8 bytes into pieces of n bytes (so characters break).
function bytesIn(text, n) {
  const bytes = encoder.encode(text);
  const out = [];
  for (let i = 0; i < bytes.length; i += n) out.push(bytes.slice(i, i + n));
  return out;
}

const realFetch = globalThis.fetch;
afterEach(() => {
  globalThis.fetch = realFetch;
});

function stubFetch(...responses) {
  const calls = [];
  globalThis.fetch = async (url, init) => {
    calls.push({ url, init });
    const next = responses.shift();
    return typeof next === "function" ? next() : next;
  };
  return calls;
}

const memory = () => {
  const data = new Map();
  return { getItem: (k) => data.get(k) ?? null, setItem: (k, v) => data.set(k, v) };
};
const client = () => new ChatClient({ storage: memory(), requestTimeout: 5, streamIdleTimeout: 5 });

describe("LineSplitter", () => {
  test("a UTF-8 character split across chunks arrives whole; an unfinished line waits", () => {
    const lines = new LineSplitter();
    const bytes = encoder.encode('{"a":"שלום"}\n{"b":');
    // Cut inside the second byte pair of "ש".
    assert.deepEqual(lines.push(bytes.slice(0, 7)), []);
    assert.deepEqual(lines.push(bytes.slice(7)), ['{"a":"שלום"}']);
    assert.deepEqual(lines.push(encoder.encode("1}")), []);
    assert.deepEqual(lines.end(), ['{"b":1}']);
  });

  test("blank lines are dropped", () => {
    const lines = new LineSplitter();
    assert.deepEqual(lines.push(encoder.encode("\n\n{}\n \n")), ["{}"]);
    assert.deepEqual(lines.end(), []);
  });
});

describe("StreamReply", () => {
  test("interleaved node runs each get their own text; keepalive and strangers are ignored", () => {
    const events = [];
    const reply = new StreamReply({ onStream: (e) => events.push(e) });
    for (const value of [
      { type: "begin", metadata: meta("a") },
      { type: "item", content: "שלום ", metadata: meta("a") },
      { type: "keepalive" },
      { type: "begin", metadata: meta("a", 1) },
      { type: "item", content: "second run", metadata: meta("a", 1) },
      { type: "item", content: "עולם", metadata: meta("a") },
      { type: "surprise", content: "no" },
      { content: "no type" },
      { type: "end", metadata: meta("a") },
      { type: "end", metadata: meta("a", 1) },
    ]) {
      reply.line(JSON.stringify(value));
    }
    reply.line("not json");
    reply.line("[1,2]");
    assert.deepEqual(reply.result().runs, { "a-0": "שלום עולם", "a-1": "second run" });
    assert.equal(reply.reply, "שלום עולם\n\nsecond run");
    assert.deepEqual(
      events.map((e) => `${e.type}:${e.key}`),
      ["begin:a-0", "item:a-0", "begin:a-1", "item:a-1", "item:a-0", "end:a-0", "end:a-1"],
    );
  });

  test("an error line is reported with its text, or a Hebrew default", () => {
    const errors = [];
    const reply = new StreamReply({ onStream: (e) => e.type === "error" && errors.push(e.message) });
    reply.line(JSON.stringify({ type: "error", content: "Node failed", metadata: meta("x") }));
    reply.line(JSON.stringify({ type: "error", content: null, metadata: meta("x") }));
    assert.equal(errors[0], "Node failed");
    assert.match(errors[1], /[\u0590-\u05ff]/);
    assert.deepEqual(reply.result().errors, errors);
  });
});

describe("ChatClient", () => {
  test("asks for a stream and reads NDJSON as it arrives, in any chunking", async () => {
    const text =
      line({ type: "begin", metadata: meta("agent") }) +
      line({ type: "item", content: "**שלום**", metadata: meta("agent") }) +
      line({ type: "keepalive" }) +
      line({ type: "item", content: " — hello ✓", metadata: meta("agent") }) +
      line({ type: "end", metadata: meta("agent") });
    for (const size of [1, 3, 7, 1000]) {
      const calls = stubFetch(
        new Response(body(bytesIn(text, size)), { headers: { "Content-Type": "application/x-ndjson; charset=utf-8" } }),
      );
      const items = [];
      const result = await client().send("hi", [], { onStream: (e) => e.type === "item" && items.push(e.text) });
      assert.equal(calls[0].init.headers.Accept, "application/x-ndjson, application/json");
      assert.equal(result.ok, true);
      assert.equal(result.streamed, true);
      assert.equal(result.reply, "**שלום** — hello ✓");
      assert.deepEqual(items, ["**שלום**", "**שלום** — hello ✓"]);
    }
  });

  test("a plain JSON answer still works", async () => {
    stubFetch(Response.json({ output: "תשובה רגילה", sessionId: "abc" }));
    const c = client();
    const result = await c.send("hi");
    assert.deepEqual([result.ok, result.streamed, result.reply], [true, undefined, "תשובה רגילה"]);
    assert.equal(c.sessionId, "abc");
  });

  test("NDJSON labelled application/json (n8n's own streaming webhook) is read as a stream", async () => {
    const text = line({ type: "begin", metadata: meta("n") }) + line({ type: "item", content: "x", metadata: meta("n") });
    stubFetch(new Response(text, { headers: { "Content-Type": "application/json; charset=utf-8" } }));
    const result = await client().send("hi");
    assert.equal(result.streamed, true);
    assert.equal(result.reply, "x");
  });

  test("a stream cut off midway is reported, with what had arrived", async () => {
    const first = line({ type: "item", content: "חצי", metadata: meta("n") });
    stubFetch(new Response(body([encoder.encode(first)], { fail: true }), { headers: { "Content-Type": "application/x-ndjson" } }));
    const result = await client().send("hi");
    assert.equal(result.ok, false);
    assert.equal(result.code, "stream_interrupted");
    assert.equal(result.partial.reply, "חצי");
  });

  test("a stream silent for longer than the idle timeout is given up, not cut at the request timeout", async () => {
    const first = line({ type: "item", content: "רגע", metadata: meta("n") });
    let reason = null;
    globalThis.fetch = async (url, init) => {
      let sent = 0;
      // Like fetch's own body: it errors when the request's signal aborts.
      const silent = new ReadableStream({
        pull(controller) {
          sent += 1;
          if (sent === 1) return controller.enqueue(encoder.encode(first));
          return new Promise((resolve) => {
            init.signal.addEventListener("abort", () => {
              reason = init.signal.reason;
              controller.error(reason);
              resolve();
            });
          });
        },
      });
      return new Response(silent, { headers: { "Content-Type": "application/x-ndjson" } });
    };
    // The request timeout (20 ms) is over before the idle timeout (80 ms) runs out.
    const c = new ChatClient({ storage: memory(), requestTimeout: 0.02, streamIdleTimeout: 0.08 });
    const started = Date.now();
    const result = await c.send("hi");
    assert.equal(result.code, "stream_interrupted");
    assert.equal(result.partial.reply, "רגע");
    assert.ok(Date.now() - started >= 75, "gave up before the idle timeout");
    assert.equal(reason?.name, "TimeoutError");
  });

  test("an error answer keeps its JSON code and Hebrew message", async () => {
    stubFetch(
      Response.json(
        { message: "ההודעה ארוכה מדי", error: { code: "too_large", message: "ההודעה ארוכה מדי", requestId: "r1" } },
        { status: 413 },
      ),
    );
    const result = await client().send("hi");
    assert.deepEqual([result.ok, result.code, result.message, result.requestId], [false, "too_large", "ההודעה ארוכה מדי", "r1"]);
  });
});

// InkFlow's own error line (nodeId "inkflow": it cut the stream off, then ended
// it cleanly) makes a streamed answer a cut-off one, like a dropped connection;
// n8n's error lines (a node failed) do not. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { INKFLOW_NODE, StreamReply } from "../../static/assets/chat-client.js";

const meta = (nodeId) => ({ nodeId, nodeName: nodeId, itemIndex: 0, runIndex: 0, timestamp: 0 });
const json = (value) => JSON.stringify(value);

describe("StreamReply and InkFlow's error line", () => {
  test("after InkFlow's error line the answer is stream_interrupted, what came kept as partial", () => {
    const errors = [];
    const reply = new StreamReply({ onStream: (e) => e.type === "error" && errors.push(e.message) });
    reply.line(json({ type: "begin", metadata: meta("agent") }));
    reply.line(json({ type: "item", content: "חצי", metadata: meta("agent") }));
    reply.line(json({ type: "error", content: "החיבור לשירות נקטע.", metadata: meta(INKFLOW_NODE) }));
    const result = reply.result();
    assert.equal(result.ok, false);
    assert.equal(result.code, "stream_interrupted");
    assert.equal(result.message, "החיבור לשירות נקטע.");
    assert.equal(result.streamed, true);
    assert.equal(result.errorShown, true);
    assert.equal(result.partial.reply, "חצי");
    assert.deepEqual(result.partial.errors, ["החיבור לשירות נקטע."]);
    // Shown as it came, once.
    assert.deepEqual(errors, ["החיבור לשירות נקטע."]);
  });

  test("an InkFlow error line without text still says why, in Hebrew", () => {
    const reply = new StreamReply();
    reply.line(json({ type: "error", content: "", metadata: meta(INKFLOW_NODE) }));
    assert.equal(reply.result().code, "stream_interrupted");
    assert.match(reply.result().message, /[\u0590-\u05ff]/);
  });

  test("n8n's own error line leaves the answer a successful one", () => {
    const reply = new StreamReply();
    reply.line(json({ type: "item", content: "x", metadata: meta("agent") }));
    reply.line(json({ type: "error", content: "Tool failed", metadata: meta("tool") }));
    const result = reply.result();
    assert.equal(result.ok, true);
    assert.deepEqual(result.errors, ["Tool failed"]);
  });
});

// The landing page's chat widget: the DOM side of chat-client.js.
import { ChatClient, formatSize } from "./chat-client.js";

const $ = (id) => document.getElementById(id);

const el = {
  widget: $("chat-widget"),
  mode: $("chat-mode"),
  log: $("chat-log"),
  status: $("chat-status"),
  statusText: $("chat-status-text"),
  announce: $("chat-announce"),
  live: $("chat-live"),
  form: $("chat-form"),
  error: $("chat-error"),
  files: $("chat-files"),
  input: $("chat-input"),
  fileInput: $("chat-file-input"),
  attach: $("chat-attach"),
  send: $("chat-send"),
  count: $("chat-count"),
  unavailable: $("chat-unavailable"),
  drop: $("chat-drop"),
  reset: $("chat-new"),
};

const client = new ChatClient();
let attached = [];
let disabled = false;

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

// A file chip: <bdi>name</bdi> and its size, optionally with a remove button.
function fileChip(file, onRemove) {
  const chip = make("li", "file-chip");
  const name = make("bdi", null, file.name || "ללא שם");
  name.title = file.name;
  chip.append(name, make("span", "file-size", formatSize(file.size)));
  if (onRemove) {
    const remove = make("button", "file-remove", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", `הסרת הקובץ ${file.name}`);
    remove.addEventListener("click", onRemove);
    chip.append(remove);
  }
  return chip;
}

function scrollToEnd() {
  el.log.scrollTop = el.log.scrollHeight;
}

// Whether the reader is at the end of the conversation (then new text keeps it there).
function atEnd() {
  return el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 48;
}

// The Markdown renderer (markdown.js) is fetched when the visitor first turns
// to the chat, not with the page. Until it is here (or if it cannot be had) an
// answer shows as plain text, and is drawn again once it arrives.
let markdown = null;
let markdownLoading = null;
const waitingForMarkdown = new Map();

function loadMarkdown() {
  markdownLoading ??= import("./markdown.js").then(
    (module) => {
      markdown = module;
      for (const [bubble, [text, streaming]] of waitingForMarkdown) renderMarkdown(bubble, text, { streaming });
      waitingForMarkdown.clear();
      return module;
    },
    () => null,
  );
  return markdownLoading;
}

function renderMarkdown(bubble, text, { streaming = false } = {}) {
  if (markdown) {
    bubble.classList.remove("md-plain");
    markdown.render(bubble, text, { streaming });
    return;
  }
  bubble.classList.add("md-plain");
  bubble.textContent = text;
  waitingForMarkdown.set(bubble, [text, streaming]);
  loadMarkdown();
}

// What a screen reader is given: the answer's text without Markdown marks.
const answerText = (text) => (markdown ? markdown.plainText(markdown.parse(text)) : text);

// Bot answers are Markdown, built as DOM nodes (markdown.js); visitor messages
// and errors stay plain text.
function bubbleFor(kind, text) {
  if (kind !== "bot") {
    const bubble = make("p", "bubble", text);
    bubble.dir = "auto";
    return bubble;
  }
  // No dir of its own: each block inside has dir="auto" (markdown.js).
  const bubble = make("div", "bubble md");
  renderMarkdown(bubble, text);
  return bubble;
}

function addMessage(kind, text, files = []) {
  const item = make("li", `msg msg-${kind}`);
  const bubble = bubbleFor(kind, text);
  item.append(bubble);
  if (files.length) {
    const list = make("ul", "msg-files");
    list.setAttribute("aria-label", "קבצים מצורפים");
    for (const file of files) list.append(fileChip(file));
    item.append(list);
  }
  el.log.append(item);
  scrollToEnd();
  return item;
}

function setMeta(item, text) {
  let meta = item.querySelector(".msg-meta");
  if (!meta) {
    meta = make("p", "msg-meta");
    item.append(meta);
  }
  meta.textContent = text;
  return meta;
}

function showTyping() {
  const item = make("li", "msg msg-bot msg-typing");
  item.setAttribute("aria-hidden", "true");
  const bubble = make("p", "bubble");
  for (let i = 0; i < 3; i += 1) bubble.append(make("span", "dot"));
  item.append(bubble);
  el.log.append(item);
  scrollToEnd();
  return item;
}

function showError(html) {
  el.error.replaceChildren(...html);
  el.error.hidden = html.length === 0;
}

function setStatus(text) {
  el.statusText.textContent = text;
  el.status.hidden = !text;
}

// The conversation log itself is aria-live="off", so a streamed answer is not
// read token by token: each finished answer (or error) is said here once.
const SAY_MAX = 1200;
function sayAnswer(text) {
  const words = text.length > SAY_MAX ? `${text.slice(0, SAY_MAX)}…` : text;
  if (!words.trim()) return;
  el.live.append(make("p", null, words));
  while (el.live.childElementCount > 3) el.live.firstElementChild.remove();
}

// The bubbles of one streamed answer: one per node run, re-rendered at most
// once a frame while text arrives, and once more, final, when the run ends.
class StreamView {
  constructor(after) {
    this.after = after;
    this.bubbles = new Map();
    this.dirty = new Set();
    this.frame = 0;
  }

  get count() {
    return this.bubbles.size;
  }

  update(key, text) {
    let entry = this.bubbles.get(key);
    if (!entry) {
      const stick = atEnd();
      const item = make("li", "msg msg-bot msg-streaming");
      item.setAttribute("aria-busy", "true");
      const bubble = make("div", "bubble md");
      item.append(bubble);
      const anchor = this.after();
      if (anchor) anchor.before(item);
      else el.log.append(item);
      entry = { item, bubble, text: "", done: false };
      this.bubbles.set(key, entry);
      if (stick) scrollToEnd();
    }
    if (entry.done) entry.done = false;
    entry.text = text;
    this.dirty.add(entry);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const stick = atEnd();
    for (const entry of this.dirty) renderMarkdown(entry.bubble, entry.text, { streaming: !entry.done });
    this.dirty.clear();
    if (stick) scrollToEnd();
  }

  finish(key) {
    const entry = this.bubbles.get(key);
    if (!entry || entry.done) return;
    entry.done = true;
    this.dirty.delete(entry);
    const stick = atEnd();
    renderMarkdown(entry.bubble, entry.text);
    entry.item.classList.remove("msg-streaming");
    entry.item.removeAttribute("aria-busy");
    if (stick) scrollToEnd();
    sayAnswer(answerText(entry.text));
  }

  finishAll() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    for (const key of this.bubbles.keys()) this.finish(key);
  }
}

// The clipboard API where the page is a secure context; else the old copy command
// on a selection of the code (which also leaves it selected for Ctrl+C).
async function copyCode(code) {
  try {
    await navigator.clipboard.writeText(code.textContent);
    return true;
  } catch {
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
}

// The copy button of a code block (markdown.js draws it; one listener for all).
function wireCopy() {
  el.log.addEventListener("click", async (event) => {
    const button = event.target instanceof Element ? event.target.closest(".md-copy") : null;
    if (!button || !el.log.contains(button)) return;
    const code = button.closest(".md-code")?.querySelector("pre code");
    if (!code) return;
    const ok = await copyCode(code);
    button.textContent = ok ? "הועתק" : "ההעתקה נכשלה";
    announce(ok ? "הועתק" : "ההעתקה נכשלה");
    setTimeout(() => {
      button.textContent = "העתקה";
    }, 2000);
  });
}

function announce(text) {
  el.announce.textContent = "";
  // A fresh text node so screen readers speak it even when it repeats.
  requestAnimationFrame(() => {
    el.announce.textContent = text;
  });
}

function limitTexts() {
  const { max_file_size: size, max_files: files, max_message_chars: chars } = client.limits;
  for (const node of document.querySelectorAll(".js-limit-size")) node.textContent = formatSize(size);
  for (const node of document.querySelectorAll(".js-limit-files")) node.textContent = String(files);
  el.input.maxLength = chars;
  el.fileInput.accept = client.limits.allowed_types.join(",");
  updateCount();
}

function updateCount() {
  const max = client.limits.max_message_chars;
  const used = el.input.value.length;
  const near = used > max * 0.8;
  el.count.textContent = near ? `${used}/${max}` : "";
  el.count.classList.toggle("is-near", near);
}

function renderAttached() {
  el.files.replaceChildren(
    ...attached.map((file, index) =>
      fileChip(file, () => {
        attached.splice(index, 1);
        renderAttached();
        showError([]);
        announce(`הקובץ ${file.name} הוסר`);
        (el.files.querySelector(".file-remove") ?? el.input).focus();
      }),
    ),
  );
  el.files.hidden = attached.length === 0;
}

// Hebrew sentence parts for refused files; names in <bdi> for correct bidi.
function problemParts(problem) {
  const name = () => make("bdi", null, problem.file.name || "ללא שם");
  if (problem.kind === "count") return [`אפשר לצרף עד ${problem.max} קבצים להודעה.`];
  if (problem.kind === "size") {
    return [
      "הקובץ ",
      name(),
      ` גדול מדי (${formatSize(problem.file.size)}). הגודל המרבי הוא ${formatSize(problem.max)}.`,
    ];
  }
  return ["לא ניתן לצרף את ", name(), ": אפשר לצרף רק תמונות (JPEG, PNG, GIF, WebP), PDF או קובצי טקסט."];
}

function addFiles(list) {
  if (disabled) return;
  const incoming = Array.from(list);
  const fine = [];
  const parts = [];
  for (const file of incoming) {
    const problems = client.checkFiles([file]);
    if (problems.length) {
      for (const p of problems) parts.push(...problemParts(p), " ");
    } else {
      fine.push(file);
    }
  }
  const room = client.limits.max_files - attached.length;
  if (fine.length > room) {
    parts.push(...problemParts({ kind: "count", max: client.limits.max_files }));
    fine.splice(Math.max(0, room));
  }
  attached = attached.concat(fine);
  renderAttached();
  showError(parts);
  if (fine.length) announce(fine.length === 1 ? `צורף הקובץ ${fine[0].name}` : `צורפו ${fine.length} קבצים`);
}

function goUnavailable() {
  disabled = true;
  el.widget.dataset.state = "unavailable";
  el.mode.textContent = "לא זמין";
  el.form.hidden = true;
  el.status.hidden = true;
  el.reset.hidden = true;
  el.unavailable.hidden = false;
  attached = [];
}

function submit() {
  if (disabled) return;
  loadMarkdown();
  const text = el.input.value.trim();
  const files = attached.slice();
  if (!text && !files.length) {
    el.input.focus();
    return;
  }
  if (text.length > client.limits.max_message_chars) {
    showError([`ההודעה ארוכה מדי: עד ${client.limits.max_message_chars} תווים.`]);
    return;
  }
  const problems = client.checkFiles(files);
  if (problems.length) {
    showError(problems.flatMap((p) => [...problemParts(p), " "]));
    return;
  }
  // Taken out of the box at once, so a second press cannot send it again.
  el.input.value = "";
  attached = [];
  renderAttached();
  showError([]);
  updateCount();
  deliver(text, files);
}

function deliver(text, files, item = addMessage("user", text, files)) {
  const meta = setMeta(item, client.pending ? "ממתינה בתור…" : "נשלחת…");
  let typing = null;
  // Streamed bubbles go before the typing dots, which stay until the answer ends.
  const stream = new StreamView(() => typing);
  client
    .send(text, files, {
      onStart() {
        meta.textContent = "נשלחת…";
        typing = showTyping();
      },
      onStream(event) {
        meta.textContent = "נשלחה";
        if (event.type === "item") stream.update(event.key, event.text);
        else if (event.type === "end") stream.finish(event.key);
        else if (event.type === "error") {
          const stick = atEnd();
          const shown = addMessage("error", event.message);
          if (typing) typing.before(shown);
          if (stick) scrollToEnd();
          sayAnswer(event.message);
        }
      },
      onWait(seconds, reason) {
        const text =
          reason === "network"
            ? `אין חיבור לשרת, מנסה שוב בעוד ${seconds} שניות`
            : `השרת עמוס, מנסה שוב בעוד ${seconds} שניות`;
        if (el.status.hidden) announce(text);
        setStatus(text);
        meta.textContent = "ממתינה לשליחה חוזרת…";
      },
      onRetry() {
        setStatus("");
        meta.textContent = "נשלחת שוב…";
      },
    })
    .then((result) => {
      stream.finishAll();
      typing?.remove();
      setStatus("");
      if (result.ok) {
        meta.textContent = "נשלחה";
        if (result.streamed && (stream.count || result.errors.length)) return;
        const reply = result.reply || "(התקבלה תשובה ריקה)";
        addMessage("bot", reply);
        sayAnswer(answerText(reply));
        return;
      }
      if (result.code === "chat_disabled") {
        meta.remove();
        goUnavailable();
        return;
      }
      meta.textContent = result.code === "stream_interrupted" ? "נשלחה, התשובה נקטעה. " : "לא נשלחה. ";
      const retryable = ["network", "busy", "rate_limited", "upstream_error", "upstream_timeout", "client_timeout"];
      if (retryable.includes(result.code) || result.code === "stream_interrupted") {
        const again = make("button", "msg-retry", "לשלוח שוב");
        again.type = "button";
        again.addEventListener("click", () => {
          meta.remove();
          deliver(text, files, item);
        });
        meta.append(again);
      }
      // InkFlow's own error line (a cut-off stream) is on screen already.
      if (result.errorShown) return;
      addMessage("error", result.message);
      sayAnswer(result.message);
    });
}

function wire() {
  wireCopy();
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      if (!event.repeat) submit();
    }
  });
  el.input.addEventListener("input", updateCount);
  el.input.addEventListener("focus", loadMarkdown, { once: true });
  el.attach.addEventListener("click", () => el.fileInput.click());
  el.fileInput.addEventListener("change", () => {
    addFiles(el.fileInput.files);
    el.fileInput.value = "";
  });
  el.reset.addEventListener("click", () => {
    client.resetSession();
    const first = el.log.firstElementChild;
    el.log.replaceChildren(...(first ? [first] : []));
    announce("התחילה שיחה חדשה");
    el.input.focus();
  });

  // Drag and drop anywhere on the widget.
  let depth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer?.types ?? []).includes("Files");
  el.widget.addEventListener("dragenter", (event) => {
    if (disabled || !hasFiles(event)) return;
    event.preventDefault();
    depth += 1;
    el.drop.hidden = false;
  });
  el.widget.addEventListener("dragover", (event) => {
    if (disabled || !hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  el.widget.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) el.drop.hidden = true;
  });
  el.widget.addEventListener("drop", (event) => {
    if (disabled || !hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    el.drop.hidden = true;
    addFiles(event.dataTransfer.files);
  });
}

async function start() {
  wire();
  limitTexts();
  const { mode } = await client.loadConfig();
  limitTexts();
  if (mode === "static-only") {
    goUnavailable();
  } else {
    el.widget.dataset.state = "ready";
    el.mode.textContent = mode === "demo" ? "מחובר · מצב הדגמה" : "מחובר";
  }
  document.documentElement.dataset.chatReady = "true";
}

start();

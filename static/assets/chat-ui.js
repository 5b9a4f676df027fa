// The chat widget: its markup and the DOM side of chat-client.js, one copy for
// the page (app.js) and the embed (embed.js, inside a Shadow DOM). Everything is
// looked up inside the container, so it works in a document and in a shadow root.
import { ChatClient, Transcript, formatSize, formatSizes, newIdempotencyKey } from "./chat-client.js";

// The widget's markup: static (nothing from the configuration or an answer goes
// in here; names are set as text afterwards).
export const CHAT_MARKUP = `
<div class="chat-head">
  <span class="chat-avatar" aria-hidden="true">
    <svg viewBox="0 0 24 24" focusable="false"><path d="M5 16c2-5 4-7 6.5-7s2 3 0 4.5-.8 3.5 4 1.5" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"/></svg>
  </span>
  <div class="chat-title">
    <p class="chat-name" id="chat-name" dir="auto"></p>
    <p class="chat-mode" id="chat-mode">מתחבר…</p>
  </div>
  <button type="button" class="btn-text" id="chat-new">שיחה חדשה</button>
</div>
<div class="chat-log" id="chat-log" role="log" aria-live="off" aria-label="הודעות הצ'אט" tabindex="0"></div>
<div class="chat-status" id="chat-status" hidden>
  <span class="spinner" aria-hidden="true"></span>
  <span id="chat-status-text"></span>
</div>
<p class="visually-hidden" id="chat-announce" role="status"></p>
<div class="visually-hidden" id="chat-live" aria-live="polite" aria-relevant="additions"></div>
<form class="chat-form" id="chat-form" novalidate>
  <p class="chat-error" id="chat-error" role="alert" hidden></p>
  <ul class="chat-files" id="chat-files" aria-label="קבצים מצורפים" hidden></ul>
  <div class="chat-compose">
    <label for="chat-input" class="visually-hidden">ההודעה שלכם</label>
    <textarea id="chat-input" name="message" rows="1" dir="auto" placeholder="כתבו הודעה…" aria-describedby="chat-hint" maxlength="4000" autocomplete="off"></textarea>
    <input type="file" id="chat-file-input" class="visually-hidden" multiple tabindex="-1" aria-hidden="true">
    <button type="button" class="icon-btn" id="chat-attach" aria-label="צירוף קבצים" title="צירוף קבצים">
      <svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M8 12.5l6.4-6.4a3 3 0 114.2 4.2l-8 8a5 5 0 01-7.1-7.1L11 3.7" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"/></svg>
    </button>
    <button type="submit" class="send-btn" id="chat-send">
      <span>שליחה</span>
      <svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M20 12L4 4l3 8-3 8z" fill="currentColor"/></svg>
    </button>
  </div>
  <p class="chat-hint" id="chat-hint">
    <span><kbd>Enter</kbd> לשליחה · <kbd>Shift</kbd>+<kbd>Enter</kbd> לשורה חדשה · אפשר לגרור קבצים לכאן</span>
    <span class="chat-count" id="chat-count" aria-hidden="true"></span>
  </p>
  <p class="privacy-note" id="chat-privacy" dir="auto" hidden></p>
</form>
<div class="chat-unavailable" id="chat-unavailable" hidden>
  <svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><circle cx="12" cy="12" r="9" fill="none" stroke="currentColor" stroke-width="2"/><path d="M12 7v6M12 16.5v.5" stroke="currentColor" stroke-width="2.4" stroke-linecap="round"/></svg>
  <p class="unavailable-title">הצ'אט אינו זמין באתר זה.</p>
  <p>האתר פועל כרגע כעמוד מידע בלבד. אפשר לחזור מאוחר יותר.</p>
</div>
<div class="chat-drop" id="chat-drop" hidden aria-hidden="true">
  <p>שחררו כאן כדי לצרף</p>
</div>`;

// Error codes after which "send again" is offered (with the same Idempotency-Key).
export const RETRYABLE = new Set([
  "network",
  "busy",
  "rate_limited",
  "upstream_error",
  "upstream_timeout",
  "client_timeout",
  "stream_interrupted",
  "in_progress",
]);

// A sentence about a refused file, as parts: strings, and {ltr: text} for a run
// (a file name) that must be isolated from the Hebrew around it (<bdi>).
export function problemParts(problem) {
  const name = { ltr: problem.file?.name || "ללא שם" };
  if (problem.kind === "count") return [`אפשר לצרף עד ${problem.max} קבצים להודעה.`];
  if (problem.kind === "size") {
    const [size, max] = formatSizes(problem.file.size, problem.max);
    return ["הקובץ ", name, ` גדול מדי (${size}). הגודל המרבי הוא ${max}.`];
  }
  return ["לא ניתן לצרף את ", name, ": אפשר לצרף רק תמונות (JPEG, PNG, GIF, WebP), PDF או קובצי טקסט."];
}

// "צורף הקובץ x" / "צורפו 3 קבצים" (what is said when files are attached).
export function attachedText(files) {
  return files.length === 1 ? `צורף הקובץ ${files[0].name}` : `צורפו ${files.length} קבצים`;
}

export function waitText(seconds, reason) {
  const when = seconds === 1 ? "בעוד שנייה" : `בעוד ${seconds} שניות`;
  return reason === "network" ? `אין חיבור לשרת, מנסה שוב ${when}` : `השרת עמוס, מנסה שוב ${when}`;
}

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

// Parts (see problemParts) as nodes: strings as text, {ltr} runs in <bdi>.
function partNodes(parts) {
  return parts.map((part) => (typeof part === "string" ? part : make("bdi", null, part.ltr)));
}

// Mount the chat in container (an element, in a document or a shadow root).
// options: page ({bot_name, greeting, privacy_note, logo}), client (ChatClient
// options: chatUrl, healthUrl, preset), base (the server's URL, for the logo),
// headingBase (the level of the answers' top headings), onLimits(limits),
// onReady(mode), storage.
export function mountChat(container, options = {}) {
  const page = options.page ?? {};
  container.classList.add("chat");
  container.dataset.state = "loading";
  const template = document.createElement("template");
  template.innerHTML = CHAT_MARKUP;
  container.replaceChildren(template.content);
  const $ = (id) => container.querySelector(`#${id}`);

  const el = {
    widget: container,
    name: $("chat-name"),
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
    privacy: $("chat-privacy"),
    unavailable: $("chat-unavailable"),
    drop: $("chat-drop"),
    reset: $("chat-new"),
  };

  const client = new ChatClient(options.client ?? {});
  const transcript = new Transcript(options.storage);
  const headingBase = options.headingBase ?? 3;
  let attached = [];
  let disabled = false;

  el.name.textContent = page.bot_name || "העוזר הדיגיטלי";
  if (page.logo) {
    // The owner's logo (decorative: the name is beside it), resolved on the server's origin.
    const logo = make("img", "chat-logo");
    logo.alt = "";
    logo.src = new URL(page.logo, options.base ?? document.baseURI).href;
    container.querySelector(".chat-avatar").replaceChildren(logo);
  }
  if (page.privacy_note) {
    el.privacy.textContent = page.privacy_note;
    el.privacy.hidden = false;
  }
  const greeting = () => {
    const item = make("div", "msg msg-bot msg-greeting");
    const bubble = make("p", "bubble", page.greeting || "שלום! במה אפשר לעזור?");
    bubble.dir = "auto";
    item.append(bubble);
    return item;
  };
  el.log.append(greeting());

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

  const scrollToEnd = () => {
    el.log.scrollTop = el.log.scrollHeight;
  };
  // Whether the reader is at the end of the conversation (then new text keeps it there).
  const atEnd = () => el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 48;

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
      markdown.render(bubble, text, { streaming, base: headingBase });
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
    const item = make("div", `msg msg-${kind}`);
    item.append(bubbleFor(kind, text));
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
    const item = make("div", "msg msg-bot msg-typing");
    item.setAttribute("aria-hidden", "true");
    const bubble = make("p", "bubble");
    for (let i = 0; i < 3; i += 1) bubble.append(make("span", "dot"));
    item.append(bubble);
    el.log.append(item);
    scrollToEnd();
    return item;
  }

  function showError(parts) {
    el.error.replaceChildren(...partNodes(parts));
    el.error.hidden = parts.length === 0;
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

  function announce(text) {
    el.announce.textContent = "";
    // A fresh text node so screen readers speak it even when it repeats.
    requestAnimationFrame(() => {
      el.announce.textContent = text;
    });
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
        const item = make("div", "msg msg-bot msg-streaming");
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
      const label = markdown?.COPY_LABEL ?? button.textContent;
      const ok = await copyCode(code);
      button.textContent = ok ? "הועתק" : "ההעתקה נכשלה";
      announce(ok ? "הועתק" : "ההעתקה נכשלה");
      setTimeout(() => {
        button.textContent = label;
      }, 2000);
    });
  }

  function limitTexts() {
    const { max_message_chars: chars } = client.limits;
    el.input.maxLength = chars;
    el.fileInput.accept = client.limits.allowed_types.join(",");
    updateCount();
    options.onLimits?.(client.limits);
  }

  function updateCount() {
    const max = client.limits.max_message_chars;
    const used = el.input.value.length;
    const near = used > max * 0.8;
    el.count.replaceChildren(...(near ? [make("bdi", null, `${used}/${max}`)] : []));
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
    if (fine.length) announce(attachedText(fine));
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
    const item = addMessage("user", text, files);
    transcript.add(client.sessionId, "user", text, files);
    deliver(text, files, item, newIdempotencyKey());
  }

  // key: the message's Idempotency-Key, the same on "send again".
  function deliver(text, files, item, key) {
    const session = client.sessionId;
    const keep = (kind, said) => {
      if (client.sessionId === session) transcript.add(session, kind, said);
    };
    const meta = setMeta(item, client.pending ? "ממתינה בתור…" : "נשלחת…");
    let typing = null;
    // Streamed bubbles go before the typing dots, which stay until the answer ends.
    const stream = new StreamView(() => typing);
    client
      .send(
        text,
        files,
        {
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
            const said = waitText(seconds, reason);
            if (el.status.hidden) announce(said);
            setStatus(said);
            meta.textContent = "ממתינה לשליחה חוזרת…";
          },
          onRetry() {
            setStatus("");
            meta.textContent = "נשלחת שוב…";
          },
        },
        key,
      )
      .then((result) => {
        stream.finishAll();
        typing?.remove();
        setStatus("");
        const streamed = result.streamed ? (result.ok ? result : result.partial) : null;
        if (streamed) {
          for (const said of Object.values(streamed.runs ?? {})) if (said) keep("bot", said);
          for (const said of streamed.errors ?? []) keep("error", said);
        }
        if (result.ok) {
          meta.textContent = "נשלחה";
          if (result.streamed && (stream.count || result.errors.length)) return;
          const reply = result.reply || "(התקבלה תשובה ריקה)";
          addMessage("bot", reply);
          keep("bot", reply);
          sayAnswer(answerText(reply));
          return;
        }
        if (result.code === "chat_disabled") {
          meta.remove();
          goUnavailable();
          return;
        }
        meta.textContent = result.code === "stream_interrupted" ? "נשלחה, התשובה נקטעה. " : "לא נשלחה. ";
        if (RETRYABLE.has(result.code)) {
          const again = make("button", "msg-retry", "לשלוח שוב");
          again.type = "button";
          again.addEventListener("click", () => {
            meta.remove();
            deliver(text, files, item, key);
          });
          meta.append(again);
        }
        // InkFlow's own error line (a cut-off stream) is on screen already.
        if (result.errorShown) return;
        addMessage("error", result.message);
        keep("error", result.message);
        sayAnswer(result.message);
      });
  }

  // The conversation kept from before a reload.
  function restore() {
    const entries = transcript.load(client.sessionId);
    if (!entries.length) return;
    loadMarkdown();
    for (const entry of entries) addMessage(entry.kind, entry.text, entry.files);
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
      transcript.clear();
      el.log.replaceChildren(greeting());
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
    restore();
    limitTexts();
    const { mode } = await client.loadConfig();
    limitTexts();
    if (mode === "static-only") {
      goUnavailable();
    } else {
      el.widget.dataset.state = "ready";
      el.mode.textContent = mode === "demo" ? "מחובר · מצב הדגמה" : "מחובר";
    }
    options.onReady?.(mode);
  }

  const ready = start();
  return { client, input: el.input, ready };
}

// The polite part of the chat: limits, session id, an in-order queue, and
// waiting out a busy server. No DOM here; the page wires it up in app.js.

import { DEFAULT_LIMITS, SERVER_MESSAGES } from "./messages.js";

// The default limits, generated from the settings defaults (messages.js).
export { DEFAULT_LIMITS };

// Hebrew messages for error codes, used when a response carries no message
// of its own: the server's (messages.js, generated from inkflow/errors.py),
// then the page's own.
export const ERROR_MESSAGES = Object.freeze({
  ...SERVER_MESSAGES,
  network: "אין חיבור לשרת. בדקו את החיבור ונסו שוב.",
  client_timeout: "התשובה מתעכבת יותר מדי. נסו שוב מאוחר יותר.",
  stream_interrupted: "החיבור נקטע באמצע התשובה.",
  unknown: "משהו השתבש. נסו שוב.",
});

const SESSION_KEY = "inkflow.sessionId";
const SESSION_RE = /^[A-Za-z0-9_-]{1,128}$/;

export function newSessionId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// An Idempotency-Key for one message: the same on every retry of it.
export function newIdempotencyKey() {
  return newSessionId();
}

// Merge what /api/health reports over the defaults, keeping only sane values.
export function mergeLimits(reported) {
  const limits = { ...DEFAULT_LIMITS };
  if (!reported || typeof reported !== "object") return limits;
  for (const key of ["max_file_size", "max_files", "max_message_chars"]) {
    const value = reported[key];
    if (Number.isInteger(value) && value > 0) limits[key] = value;
  }
  if (Array.isArray(reported.allowed_types) && reported.allowed_types.every((t) => typeof t === "string")) {
    limits.allowed_types = reported.allowed_types.map((t) => t.toLowerCase());
  }
  return limits;
}

const SIZE_UNITS = [
  [1024 * 1024 * 1024, 'ג"ב'],
  [1024 * 1024, 'מ"ב'],
  [1024, 'ק"ב'],
];
const numberFormats = new Map();

function formatNumber(value, digits) {
  let format = numberFormats.get(digits);
  if (!format) {
    format = new Intl.NumberFormat("he-IL", { maximumFractionDigits: digits });
    numberFormats.set(digits, format);
  }
  return format.format(value);
}

// "10.5 מ"ב", "12 ק"ב", "800 בתים": one decimal where it is not a whole number
// (11,000,000 bytes are 10.5 מ"ב, not 10). digits: more decimals when they matter.
export function formatSize(bytes, digits = 1) {
  for (const [unit, name] of SIZE_UNITS) {
    if (bytes >= unit) return `${formatNumber(bytes / unit, digits)} ${name}`;
  }
  if (bytes === 1) return "בית אחד";
  return `${formatNumber(bytes, 0)} בתים`;
}

// A size and the limit it is over, written so that they differ on screen
// (10,485,761 bytes against 10 מ"ב is "10.001 מ"ב", or bytes at worst).
export function formatSizes(size, limit) {
  for (let digits = 1; digits <= 3; digits += 1) {
    const [a, b] = [formatSize(size, digits), formatSize(limit, digits)];
    if (a !== b) return [a, b];
  }
  return [`${formatNumber(size, 0)} בתים`, `${formatNumber(limit, 0)} בתים`];
}

// Seconds from a Retry-After header (delta-seconds or an HTTP date), or null.
export function parseRetryAfter(value, now = Date.now()) {
  if (!value) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - now) / 1000));
}

// The text to show from n8n's answer, like @n8n/chat: output ?? text ?? message.
export function replyText(body) {
  const item = Array.isArray(body) ? body[0] : body;
  if (item == null) return "";
  if (typeof item === "string") return item;
  if (typeof item !== "object") return String(item);
  const value = item.output ?? item.text ?? item.message;
  if (value == null) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// What the page asks for: a stream when the workflow streams, JSON otherwise.
export const CHAT_ACCEPT = "application/x-ndjson, application/json";

export function isStream(response) {
  return /^\s*application\/x-ndjson\b/i.test(response.headers.get("Content-Type") ?? "");
}

// Bytes in, complete lines out. The decoder keeps a UTF-8 character split
// across chunks, and the unfinished last line waits for more.
export class LineSplitter {
  constructor() {
    this._decoder = new TextDecoder("utf-8");
    this._rest = "";
  }

  push(bytes) {
    return this._split(this._rest + this._decoder.decode(bytes, { stream: true }));
  }

  // The end of the body: whatever is left is the last line.
  end() {
    const rest = this._rest + this._decoder.decode();
    this._rest = "";
    return rest.trim() ? [rest] : [];
  }

  _split(text) {
    const lines = text.split("\n");
    this._rest = lines.pop();
    return lines.filter((line) => line.trim());
  }
}

// The nodeId of the error line InkFlow writes when it has to cut a stream off
// (n8n dropped it, a deadline, a cap, a restart; docs/contract.md), then ends it.
export const INKFLOW_NODE = "inkflow";

// One streamed answer, line by line: begin / item / end drive one bubble per
// node run (nodeId-runIndex); error lines are shown; keepalive and anything
// else are ignored. hooks.onStream receives {type: "begin" | "item" | "end",
// key, text} and {type: "error", message}. After InkFlow's own error line the
// answer is a cut-off one (result() says stream_interrupted), like a dropped
// connection.
export class StreamReply {
  constructor(hooks = {}) {
    this.hooks = hooks;
    this.runs = new Map();
    this.errors = [];
    this.lines = 0;
    this.cutOff = null;
  }

  line(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    if (!message || typeof message !== "object" || Array.isArray(message)) return;
    const { type } = message;
    if (type === "begin" || type === "item" || type === "end") {
      this.lines += 1;
      const meta = message.metadata && typeof message.metadata === "object" ? message.metadata : {};
      const key = `${meta.nodeId ?? "node"}-${meta.runIndex ?? 0}`;
      if (!this.runs.has(key)) {
        this.runs.set(key, "");
        this.hooks.onStream?.({ type: "begin", key, text: "" });
      }
      if (type === "item" && typeof message.content === "string" && message.content) {
        const text = this.runs.get(key) + message.content;
        this.runs.set(key, text);
        this.hooks.onStream?.({ type: "item", key, text, content: message.content });
      }
      if (type === "end") this.hooks.onStream?.({ type: "end", key, text: this.runs.get(key) });
    } else if (type === "error") {
      this.lines += 1;
      const text = typeof message.content === "string" && message.content.trim() ? message.content : ERROR_MESSAGES.upstream_error;
      this.errors.push(text);
      if (message.metadata?.nodeId === INKFLOW_NODE) this.cutOff ??= text;
      this.hooks.onStream?.({ type: "error", message: text });
    }
  }

  get reply() {
    return Array.from(this.runs.values())
      .filter((text) => text)
      .join("\n\n");
  }

  // What arrived, as a successful answer.
  summary() {
    return { ok: true, streamed: true, reply: this.reply, runs: Object.fromEntries(this.runs), errors: this.errors };
  }

  // The summary, or stream_interrupted (with it as partial) when InkFlow cut
  // the answer off; errorShown: its error line was already given to onStream.
  result() {
    if (this.cutOff === null) return this.summary();
    return { ...failure("stream_interrupted", this.cutOff), streamed: true, partial: this.summary(), errorShown: true };
  }
}

export class ChatClient {
  constructor({
    chatUrl = "api/chat",
    healthUrl = "api/health",
    storage = safeStorage(),
    busyRetries = 5,
    networkRetries = 4,
    backoffBase = 1,
    backoffCap = 30,
    maxWait = 120,
    requestTimeout = 90,
    streamIdleTimeout = 90,
    preset = null,
  } = {}) {
    // preset: mode and limits known already (the embed's configuration); no /api/health then.
    this.preset = preset;
    this.chatUrl = chatUrl;
    this.healthUrl = healthUrl;
    this.storage = storage;
    this.busyRetries = busyRetries;
    this.networkRetries = networkRetries;
    this.backoffBase = backoffBase;
    this.backoffCap = backoffCap;
    this.maxWait = maxWait;
    this.requestTimeout = requestTimeout;
    this.streamIdleTimeout = streamIdleTimeout;
    this.limits = { ...DEFAULT_LIMITS };
    this.mode = null;
    this._tail = Promise.resolve();
    this._pending = 0;
    this._session = null;
  }

  get sessionId() {
    if (this._session) return this._session;
    let id = null;
    try {
      id = this.storage?.getItem(SESSION_KEY);
    } catch {
      id = null;
    }
    if (!id || !SESSION_RE.test(id)) id = newSessionId();
    this._remember(id);
    return id;
  }

  resetSession() {
    this._remember(newSessionId());
    return this._session;
  }

  _remember(id) {
    this._session = id;
    try {
      this.storage?.setItem(SESSION_KEY, id);
    } catch {
      // private mode: the id lives for this page only
    }
  }

  get pending() {
    return this._pending;
  }

  // Read mode and limits from /api/health; defaults when it cannot be read.
  async loadConfig() {
    if (this.preset) {
      this.limits = mergeLimits(this.preset);
      this.mode = typeof this.preset.mode === "string" ? this.preset.mode : null;
      return { mode: this.mode, limits: this.limits };
    }
    try {
      const response = await fetch(this.healthUrl, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!response.ok) throw new Error(`health ${response.status}`);
      const health = await response.json();
      this.limits = mergeLimits(health.limits);
      this.mode = typeof health.mode === "string" ? health.mode : null;
    } catch {
      this.limits = { ...DEFAULT_LIMITS };
      this.mode = null;
    }
    return { mode: this.mode, limits: this.limits };
  }

  // Problems with a set of files, as Hebrew sentences (empty when fine).
  checkFiles(files) {
    const { max_file_size: maxSize, max_files: maxFiles, allowed_types: types } = this.limits;
    const problems = [];
    if (files.length > maxFiles) problems.push({ kind: "count", max: maxFiles });
    for (const file of files) {
      const type = (file.type || "").toLowerCase();
      if (!types.includes(type)) problems.push({ kind: "type", file });
      else if (file.size > maxSize) problems.push({ kind: "size", file, max: maxSize });
    }
    return problems;
  }

  // Queue a message; resolves to {ok: true, reply} or {ok: false, code, message}
  // ({ok: true, streamed: true, reply, runs, errors} for a streamed answer).
  // hooks: onStart(), onWait(seconds, reason) with a countdown, onRetry(),
  // onStream(event) for each line of a streamed answer (see StreamReply).
  // key: the message's Idempotency-Key (a new one when not given); pass the
  // same key to send the same message again.
  send(text, files = [], hooks = {}, key = newIdempotencyKey()) {
    this._pending += 1;
    const run = () => this._deliver(text, files, hooks, key);
    const result = this._tail.then(run, run);
    this._tail = result.catch(() => undefined);
    return result.finally(() => {
      this._pending -= 1;
    });
  }

  _backoff(attempt) {
    const ceiling = Math.min(this.backoffCap, this.backoffBase * 2 ** attempt);
    // Jitter, but never shorter than half the step.
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  async _wait(seconds, reason, hooks) {
    let left = Math.max(1, Math.ceil(Math.min(seconds, this.maxWait)));
    while (left > 0) {
      hooks.onWait?.(left, reason);
      await sleep(1000);
      left -= 1;
    }
    hooks.onRetry?.();
  }

  async _deliver(text, files, hooks, key) {
    hooks.onStart?.();
    let busy = 0;
    let network = 0;
    for (;;) {
      let response;
      const deadline = new Deadline(this.requestTimeout);
      try {
        response = await this._post(text, files, deadline.signal, key);
      } catch (error) {
        deadline.clear();
        if (error?.name === "TimeoutError" || error?.name === "AbortError") {
          return failure("client_timeout");
        }
        if (network >= this.networkRetries) return failure("network");
        await this._wait(this._backoff(network), "network", hooks);
        network += 1;
        continue;
      }
      if (response.ok && isStream(response)) {
        // From the first byte on, no retry: the workflow is already running.
        // The request's deadline gives way to an idle timeout between chunks.
        deadline.restart(this.streamIdleTimeout);
        return this._readStream(response, hooks, deadline);
      }
      const raw = await readText(response);
      deadline.clear();
      const body = parseJson(raw);
      if (response.ok && body === undefined && raw) {
        // NDJSON under another content type (n8n's own streaming webhook says application/json).
        const stream = new StreamReply(hooks);
        for (const line of raw.split("\n")) if (line.trim()) stream.line(line);
        if (stream.lines) return stream.result();
      }
      if (response.ok) {
        if (body && typeof body === "object" && !Array.isArray(body) && SESSION_RE.test(body.sessionId ?? "")) {
          if (body.sessionId !== this._session) this._remember(body.sessionId);
        }
        return { ok: true, reply: replyText(body), body };
      }
      const error = body?.error ?? {};
      const code = typeof error.code === "string" ? error.code : "unknown";
      if ((response.status === 503 || response.status === 429) && busy < this.busyRetries) {
        const hinted = parseRetryAfter(response.headers.get("Retry-After"));
        // The first wait is what the server asked for; after that, back off as well.
        const seconds = busy === 0 && hinted != null ? hinted : Math.max(hinted ?? 0, this._backoff(busy + 1));
        await this._wait(seconds, response.status === 429 ? "rate" : "busy", hooks);
        busy += 1;
        continue;
      }
      return failure(code, error.message, response.status, error.requestId);
    }
  }

  async _readStream(response, hooks, deadline) {
    const stream = new StreamReply(hooks);
    const lines = new LineSplitter();
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        deadline.restart(this.streamIdleTimeout);
        for (const line of lines.push(value)) stream.line(line);
      }
      for (const line of lines.end()) stream.line(line);
    } catch {
      reader.cancel().catch(() => undefined);
      return { ...failure("stream_interrupted"), streamed: true, partial: stream.summary() };
    } finally {
      deadline.clear();
    }
    return stream.result();
  }

  async _post(text, files, signal, key) {
    const init = { method: "POST", headers: { Accept: CHAT_ACCEPT }, credentials: "same-origin" };
    if (key) init.headers["Idempotency-Key"] = key;
    if (files.length) {
      const form = new FormData();
      form.append("message", text);
      form.append("sessionId", this.sessionId);
      for (const file of files) form.append("files", file, file.name);
      init.body = form;
    } else {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify({ message: text, sessionId: this.sessionId });
    }
    if (signal) init.signal = signal;
    return fetch(this.chatUrl, init);
  }
}

// An abort signal that fires after a number of seconds (none for 0), and can be
// restarted with another number or cleared.
class Deadline {
  constructor(seconds) {
    this._controller = new AbortController();
    this._timer = null;
    this.restart(seconds);
  }

  get signal() {
    return this._controller.signal;
  }

  restart(seconds) {
    this.clear();
    if (!seconds) return;
    this._timer = setTimeout(() => {
      this._controller.abort(new DOMException("The answer took too long", "TimeoutError"));
    }, seconds * 1000);
  }

  clear() {
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
  }
}

function failure(code, message, status = 0, requestId = null) {
  return {
    ok: false,
    code,
    status,
    requestId,
    message: typeof message === "string" && message ? message : (ERROR_MESSAGES[code] ?? ERROR_MESSAGES.unknown),
  };
}

async function readText(response) {
  try {
    return await response.text();
  } catch {
    return "";
  }
}

// The JSON value of a body; null when empty, undefined when not JSON.
function parseJson(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function safeStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

// The conversation as this browser saw it, kept in localStorage so that a
// reload shows it again (for the session id it belongs to; "שיחה חדשה"
// clears it). Bounded: the last MAX_ENTRIES messages, at most MAX_CHARS of
// text. Entries: {kind: "user" | "bot" | "error", text, files: [{name, size}]}.
const TRANSCRIPT_KEY = "inkflow.transcript";
const MAX_ENTRIES = 60;
const MAX_CHARS = 200_000;
const KINDS = new Set(["user", "bot", "error"]);

export class Transcript {
  constructor(storage = safeStorage(), key = TRANSCRIPT_KEY) {
    this.storage = storage;
    this.key = key;
  }

  // The entries kept for sessionId ([] for another session or nothing kept).
  load(sessionId) {
    let data;
    try {
      data = JSON.parse(this.storage?.getItem(this.key) ?? "null");
    } catch {
      return [];
    }
    if (!data || data.sessionId !== sessionId || !Array.isArray(data.entries)) return [];
    return data.entries.filter(
      (e) => e && KINDS.has(e.kind) && typeof e.text === "string" && (e.files === undefined || Array.isArray(e.files)),
    ).map((e) => ({
      kind: e.kind,
      text: e.text,
      files: (e.files ?? [])
        .filter((f) => f && typeof f.name === "string" && Number.isFinite(f.size))
        .map((f) => ({ name: f.name, size: f.size })),
    }));
  }

  add(sessionId, kind, text, files = []) {
    const entries = this.load(sessionId);
    entries.push({ kind, text: String(text), files: Array.from(files, (f) => ({ name: f.name, size: f.size })) });
    this._save(sessionId, entries);
  }

  clear() {
    try {
      this.storage?.removeItem(this.key);
    } catch {
      // nothing kept
    }
  }

  _save(sessionId, entries) {
    let kept = entries.slice(-MAX_ENTRIES);
    let chars = kept.reduce((n, e) => n + e.text.length, 0);
    while (kept.length > 1 && chars > MAX_CHARS) {
      chars -= kept[0].text.length;
      kept = kept.slice(1);
    }
    try {
      this.storage?.setItem(this.key, JSON.stringify({ sessionId, entries: kept }));
    } catch {
      // full or private mode: the conversation lives for this page only
    }
  }
}

// The polite part of the chat: limits, session id, an in-order queue, and
// waiting out a busy server. No DOM here; the page wires it up in app.js.

export const DEFAULT_LIMITS = Object.freeze({
  max_file_size: 10485760,
  max_files: 5,
  max_message_chars: 4000,
  allowed_types: ["image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf", "text/plain"],
});

// Hebrew messages for the server's error codes (inkflow/errors.py), used when
// a response carries no message of its own.
export const ERROR_MESSAGES = Object.freeze({
  bad_request: "הבקשה אינה תקינה.",
  too_many_files: "צורפו יותר מדי קבצים.",
  not_found: "הכתובת לא נמצאה.",
  chat_disabled: "הצ'אט אינו זמין באתר זה.",
  method_not_allowed: "השיטה אינה נתמכת בכתובת זו.",
  request_timeout: "הבקשה נשלחה לאט מדי.",
  too_large: "הקובץ או ההודעה גדולים מדי.",
  unsupported_type: "סוג הקובץ או התוכן אינו נתמך.",
  rate_limited: "נשלחו יותר מדי הודעות. נסו שוב בעוד רגע.",
  internal_error: "אירעה שגיאה פנימית.",
  upstream_error: "שירות הצ'אט אינו זמין כרגע.",
  busy: "השרת עמוס כרגע. נסו שוב בעוד רגע.",
  upstream_timeout: "שירות הצ'אט לא הגיב בזמן.",
  network: "אין חיבור לשרת. בדקו את החיבור ונסו שוב.",
  client_timeout: "התשובה מתעכבת יותר מדי. נסו שוב מאוחר יותר.",
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

// "1.5 מ"ב", "12 ק"ב", "800 בתים"
export function formatSize(bytes) {
  if (bytes >= 1024 * 1024) return `${trim(bytes / (1024 * 1024))} מ"ב`;
  if (bytes >= 1024) return `${trim(bytes / 1024)} ק"ב`;
  return bytes === 1 ? "בית אחד" : `${bytes} בתים`;
}

function trim(n) {
  return n >= 10 ? String(Math.round(n)) : String(Math.round(n * 10) / 10);
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
  } = {}) {
    this.chatUrl = chatUrl;
    this.healthUrl = healthUrl;
    this.storage = storage;
    this.busyRetries = busyRetries;
    this.networkRetries = networkRetries;
    this.backoffBase = backoffBase;
    this.backoffCap = backoffCap;
    this.maxWait = maxWait;
    this.requestTimeout = requestTimeout;
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

  // Queue a message; resolves to {ok: true, reply} or {ok: false, code, message}.
  // hooks: onStart(), onWait(seconds, reason) with a countdown, onRetry().
  send(text, files = [], hooks = {}) {
    this._pending += 1;
    const run = () => this._deliver(text, files, hooks);
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

  async _deliver(text, files, hooks) {
    hooks.onStart?.();
    let busy = 0;
    let network = 0;
    for (;;) {
      let response;
      try {
        response = await this._post(text, files);
      } catch (error) {
        if (error?.name === "TimeoutError" || error?.name === "AbortError") {
          return failure("client_timeout");
        }
        if (network >= this.networkRetries) return failure("network");
        await this._wait(this._backoff(network), "network", hooks);
        network += 1;
        continue;
      }
      const body = await readJson(response);
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

  async _post(text, files) {
    const init = { method: "POST", headers: { Accept: "application/json" }, credentials: "same-origin" };
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
    if (this.requestTimeout && AbortSignal.timeout) init.signal = AbortSignal.timeout(this.requestTimeout * 1000);
    return fetch(this.chatUrl, init);
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

async function readJson(response) {
  try {
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function safeStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

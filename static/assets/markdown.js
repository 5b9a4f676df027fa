// A small Markdown renderer for the bot's answers: the subset chat answers use,
// built as DOM nodes, never as HTML.
//
// parse(text, {streaming}) is pure (no DOM; node's test runner uses it) and returns
// a tree of plain objects. render(container, text, {streaming}) builds that tree
// with createElement / createTextNode / textContent, and on a later call keeps the
// blocks whose source did not change, so a streamed answer re-renders only its tail.
//
// Safe by construction: raw HTML is text (nothing here parses HTML); the only
// attribute taken from an answer is a link's href, and only an absolute http:,
// https: or mailto: URL (anything else stays text); images become links.

const MAX_BLOCK_DEPTH = 8; // lists and quotes nested deeper are shown as text
const MAX_INLINE_DEPTH = 12; // emphasis nested deeper is shown as text
const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);

const FENCE_RE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
const HEADING_RE = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const HR_RE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE_RE = /^ {0,3}> ?/;
const ITEM_RE = /^( {0,3})([-*+]|\d{1,9}[.)])([ \t]+|$)/;
const TABLE_DELIM_RE = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
const BLANK_RE = /^[ \t]*$/;

// -- safety ------------------------------------------------------------------

// The URL to put in an href, or null: only absolute http:, https: and mailto:.
export function safeHref(raw) {
  if (typeof raw !== "string") return null;
  const text = raw.trim();
  // Control characters and spaces have no place in a URL written in an answer.
  // eslint-disable-next-line no-control-regex
  if (!text || /[\u0000-\u0020\u007f-\u009f]/.test(text)) return null;
  if (!/^(?:https?:\/\/|mailto:)/i.test(text)) return null;
  let url;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  if (!SAFE_SCHEMES.has(url.protocol)) return null;
  if (url.protocol !== "mailto:" && !url.hostname) return null;
  return url.href;
}

const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0" };

// A few entities are decoded; the result only ever becomes text.
function decodeEntities(text) {
  if (!text.includes("&")) return text;
  return text.replace(/&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|([a-z]{2,5}));/g, (whole, dec, hex, name) => {
    if (name) return Object.hasOwn(ENTITIES, name) ? ENTITIES[name] : whole;
    const code = dec ? Number(dec) : parseInt(hex, 16);
    if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return "\ufffd";
    return String.fromCodePoint(code);
  });
}

// -- blocks ------------------------------------------------------------------

const normalise = (text) =>
  String(text ?? "")
    .replace(/\r\n?/g, "\n")
    .replace(/\u0000/g, "\ufffd");

export function parse(text, { streaming = false } = {}) {
  return { type: "doc", children: parseBlocks(normalise(text).split("\n"), 0, streaming) };
}

function indentOf(line) {
  let n = 0;
  for (const ch of line) {
    if (ch === " ") n += 1;
    else if (ch === "\t") n += 4 - (n % 4);
    else break;
  }
  return n;
}

// Remove up to n columns of leading indentation.
function dedent(line, n) {
  let col = 0;
  let i = 0;
  while (i < line.length && col < n) {
    if (line[i] === " ") col += 1;
    else if (line[i] === "\t") col += 4 - (col % 4);
    else break;
    i += 1;
  }
  return line.slice(i);
}

function startsBlock(line) {
  return FENCE_RE.test(line) || HEADING_RE.test(line) || HR_RE.test(line) || QUOTE_RE.test(line) || ITEM_RE.test(line);
}

// A table: a header row with a pipe, then a delimiter row (|---|:--:|).
function tableStarts(lines, i) {
  const next = lines[i + 1];
  return lines[i].includes("|") && next !== undefined && next.includes("-") && next.includes("|") && TABLE_DELIM_RE.test(next);
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  const cells = [];
  let cell = "";
  for (let i = 0; i < row.length; i += 1) {
    if (row[i] === "\\" && row[i + 1] === "|") {
      cell += "|";
      i += 1;
    } else if (row[i] === "|") {
      cells.push(cell.trim());
      cell = "";
    } else {
      cell += row[i];
    }
  }
  cells.push(cell.trim());
  return cells;
}

function parseBlocks(lines, depth, streaming) {
  const blocks = [];
  let i = 0;
  const last = (block, from) => {
    // The source of a top-level block, so render() can keep unchanged ones.
    if (depth === 0) {
      block.src = lines.slice(from, i).join("\n");
      block.line = from;
    }
    blocks.push(block);
  };
  while (i < lines.length) {
    const line = lines[i];
    const from = i;
    if (BLANK_RE.test(line)) {
      i += 1;
      continue;
    }
    let m = FENCE_RE.exec(line);
    if (m && !(m[1][0] === "`" && line.slice(line.indexOf(m[1]) + m[1].length).includes("`"))) {
      const fence = m[1];
      const indent = indentOf(line);
      const body = [];
      let closed = false;
      i += 1;
      while (i < lines.length) {
        const inner = lines[i];
        const trimmed = inner.trim();
        if (indentOf(inner) < 4 && trimmed.length >= fence.length && /^(`+|~+)$/.test(trimmed) && trimmed[0] === fence[0]) {
          closed = true;
          i += 1;
          break;
        }
        body.push(dedent(inner, indent));
        i += 1;
      }
      last({ type: "code", lang: decodeEntities(m[2] || ""), text: body.join("\n"), open: !closed }, from);
      continue;
    }
    m = HEADING_RE.exec(line);
    if (m) {
      i += 1;
      last({ type: "heading", level: m[1].length, children: parseInline(m[2] || "", streaming && i === lines.length) }, from);
      continue;
    }
    if (HR_RE.test(line)) {
      i += 1;
      last({ type: "hr" }, from);
      continue;
    }
    if (QUOTE_RE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE_RE.test(lines[i])) {
        inner.push(lines[i].replace(QUOTE_RE, ""));
        i += 1;
      }
      const children =
        depth + 1 >= MAX_BLOCK_DEPTH ? [textBlock(inner, streaming && i === lines.length)] : parseBlocks(inner, depth + 1, streaming && i === lines.length);
      last({ type: "quote", children }, from);
      continue;
    }
    m = ITEM_RE.exec(line);
    if (m) {
      const list = parseList(lines, i, depth, streaming);
      i = list.end;
      last(list.node, from);
      continue;
    }
    if (tableStarts(lines, i)) {
      const head = splitRow(line);
      const rows = [];
      i += 2;
      while (i < lines.length && !BLANK_RE.test(lines[i]) && lines[i].includes("|")) {
        rows.push(splitRow(lines[i]));
        i += 1;
      }
      const open = streaming && i === lines.length;
      last(
        {
          type: "table",
          head: head.map((cell) => parseInline(cell, false)),
          rows: rows.map((row) => head.map((_, c) => parseInline(row[c] ?? "", open))),
        },
        from,
      );
      continue;
    }
    // A paragraph: until a blank line or the start of another block.
    const para = [line];
    i += 1;
    while (i < lines.length && !BLANK_RE.test(lines[i]) && !startsBlock(lines[i]) && !tableStarts(lines, i)) {
      para.push(lines[i]);
      i += 1;
    }
    last(textBlock(para, streaming && i === lines.length), from);
  }
  return blocks;
}

function textBlock(lines, open) {
  const text = lines.map((l) => l.replace(/^[ \t]+/, "").replace(/[ \t]+$/, "")).join("\n");
  return { type: "paragraph", children: parseInline(text, open) };
}

function parseList(lines, start, depth, streaming) {
  const first = ITEM_RE.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const marker = ordered ? first[2].slice(-1) : first[2];
  const node = { type: "list", ordered, start: ordered ? Math.min(Number.parseInt(first[2], 10), 1e9) : 1, items: [] };
  let i = start;
  let loose = false;
  // Whether line k starts another item of this list.
  const sameList = (k) => {
    const m = k < lines.length ? ITEM_RE.exec(lines[k]) : null;
    return Boolean(m) && /\d/.test(m[2]) === ordered && (ordered ? m[2].slice(-1) : m[2]) === marker;
  };
  while (sameList(i)) {
    const m = ITEM_RE.exec(lines[i]);
    // Content is indented to the column after the marker (a blank rest: marker + 1).
    const contentIndent = m[1].length + m[2].length + (m[3] && lines[i].length > m[0].length ? indentOf(m[3]) : 1);
    const body = [lines[i].slice(m[0].length)];
    i += 1;
    let sawBlank = false;
    while (i < lines.length) {
      const line = lines[i];
      if (BLANK_RE.test(line)) {
        sawBlank = true;
        body.push("");
        i += 1;
        continue;
      }
      if (indentOf(line) >= contentIndent) {
        if (sawBlank) loose = true;
        body.push(dedent(line, contentIndent));
        sawBlank = false;
        i += 1;
        continue;
      }
      // A lazy continuation of the item's paragraph.
      if (!sawBlank && !startsBlock(line)) {
        body.push(line);
        i += 1;
        continue;
      }
      break;
    }
    while (body.length && BLANK_RE.test(body[body.length - 1])) body.pop();
    if (sawBlank && sameList(i)) loose = true;
    const open = streaming && i === lines.length;
    const children = depth + 1 >= MAX_BLOCK_DEPTH ? [textBlock(body, open)] : parseBlocks(body, depth + 1, open);
    node.items.push({ children });
    if (sawBlank && !sameList(i)) break;
  }
  node.loose = loose;
  return { node, end: i };
}

// -- inlines -----------------------------------------------------------------

const PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
const isSpace = (ch) => ch === undefined || /\s/.test(ch);
const isWordChar = (ch) => ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
const URL_RE = /^(?:https?:\/\/|mailto:)[^\s<>]*[^\s<>.,;:!?'")\]}*_~]/i;

// open: this text runs to the end of a streaming answer, so a construct still
// open at the end (** without its pair, a code span) is shown as if it closed.
export function parseInline(text, open = false) {
  return new InlineParser(text, open).run(0, text.length, 0, false);
}

class InlineParser {
  constructor(text, open) {
    this.text = text;
    this.open = open;
  }

  run(start, end, depth, inLink) {
    const out = [];
    const text = this.text;
    let buf = "";
    // Delimiters with no closer from some position on: no need to look again.
    const noCloser = new Map();
    const flush = () => {
      if (buf) out.push({ type: "text", value: decodeEntities(buf) });
      buf = "";
    };
    let i = start;
    while (i < end) {
      const ch = text[i];
      if (ch === "\\" && i + 1 < end && PUNCT.includes(text[i + 1])) {
        buf += text[i + 1];
        i += 2;
        continue;
      }
      if (ch === "\n") {
        buf = buf.replace(/ +$/, "");
        flush();
        out.push({ type: "br" });
        i += 1;
        continue;
      }
      if (ch === "`") {
        let n = 1;
        while (text[i + n] === "`") n += 1;
        const close = this.findTicks(i + n, end, n);
        if (close >= 0 || (this.open && end === text.length)) {
          flush();
          let value = text.slice(i + n, close >= 0 ? close : end).replace(/\n/g, " ");
          if (value.length > 2 && value.startsWith(" ") && value.endsWith(" ") && value.trim()) value = value.slice(1, -1);
          out.push({ type: "code", value });
          i = close >= 0 ? close + n : end;
          continue;
        }
        buf += text.slice(i, i + n);
        i += n;
        continue;
      }
      if ((ch === "*" || ch === "_" || ch === "~") && depth < MAX_INLINE_DEPTH) {
        let run = 1;
        while (text[i + run] === ch) run += 1;
        const tries = ch === "~" ? (run === 2 ? [2] : []) : run >= 3 ? [2, 1] : [run];
        let done = false;
        for (const size of tries) {
          const delim = ch.repeat(size);
          if (!this.canOpen(i, size, end)) continue;
          const from = i + size;
          const known = noCloser.get(delim);
          let close = known !== undefined && from >= known ? -1 : this.findCloser(from, end, ch, size);
          if (close < 0 && known === undefined) noCloser.set(delim, from);
          if (close < 0 && this.open && end === text.length && from < end && !isSpace(text[end - 1])) close = end;
          if (close < 0 || close <= from) continue;
          flush();
          const type = ch === "~" ? "del" : size === 2 ? "strong" : "em";
          out.push({ type, children: this.run(from, close, depth + 1, inLink) });
          i = Math.min(end, close + size);
          done = true;
          break;
        }
        if (done) continue;
        buf += text.slice(i, i + run);
        i += run;
        continue;
      }
      if (ch === "!" && text[i + 1] === "[" && !inLink) {
        const link = this.link(i + 1, end);
        if (link) {
          flush();
          const href = safeHref(link.url);
          const label = text.slice(link.labelStart, link.labelEnd);
          if (href) out.push({ type: "link", href, image: true, children: [{ type: "text", value: decodeEntities(label) || href }] });
          else out.push({ type: "text", value: text.slice(i, link.end) });
          i = link.end;
          continue;
        }
      }
      if (ch === "[" && !inLink) {
        const link = this.link(i, end);
        if (link) {
          flush();
          const href = safeHref(decodeEntities(link.url.replace(/\\([!-/:-@[-`{-~])/g, "$1")));
          if (href) out.push({ type: "link", href, children: this.run(link.labelStart, link.labelEnd, depth + 1, true) });
          else out.push({ type: "text", value: text.slice(i, link.end) });
          i = link.end;
          continue;
        }
      }
      if (ch === "<") {
        const m = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(text.slice(i, Math.min(end, i + 2048)));
        const href = m && !inLink ? safeHref(m[1]) : null;
        if (href) {
          flush();
          out.push({ type: "link", href, children: [{ type: "text", value: m[1] }] });
          i += m[0].length;
          continue;
        }
      }
      if ((ch === "h" || ch === "H" || ch === "m" || ch === "M") && !inLink && !isWordChar(text[i - 1])) {
        const m = URL_RE.exec(text.slice(i, Math.min(end, i + 2048)));
        const href = m ? safeHref(m[0]) : null;
        if (href) {
          flush();
          out.push({ type: "link", href, children: [{ type: "text", value: m[0] }] });
          i += m[0].length;
          continue;
        }
      }
      buf += ch;
      i += 1;
    }
    flush();
    return out;
  }

  findTicks(from, end, n) {
    const text = this.text;
    let i = from;
    while (i < end) {
      const at = text.indexOf("`", i);
      if (at < 0 || at >= end) return -1;
      let run = 1;
      while (text[at + run] === "`") run += 1;
      if (run === n) return at;
      i = at + run;
    }
    return -1;
  }

  canOpen(i, size, end) {
    const text = this.text;
    const next = text[i + size];
    if (i + size >= end || isSpace(next)) return false;
    if (text[i] === "_" && isWordChar(text[i - 1])) return false;
    return true;
  }

  // The start of the closing delimiter (ch repeated size times), or -1; code
  // spans are skipped, and a closer is the last `size` characters of its run.
  findCloser(from, end, ch, size) {
    const text = this.text;
    let i = from;
    while (i < end) {
      const c = text[i];
      if (c === "\\") {
        i += 2;
        continue;
      }
      if (c === "`") {
        let n = 1;
        while (text[i + n] === "`") n += 1;
        const close = this.findTicks(i + n, end, n);
        i = close >= 0 ? close + n : i + n;
        continue;
      }
      if (c === ch) {
        let run = 1;
        while (i + run < end && text[i + run] === ch) run += 1;
        const fits = size === 2 ? run >= 2 : run !== 2;
        const at = size === 2 ? i + run - 2 : i;
        const before = text[at - 1];
        const after = text[at + size];
        if (fits && at > from && !isSpace(before) && !(ch === "_" && isWordChar(after))) return at;
        i += run;
        continue;
      }
      i += 1;
    }
    return -1;
  }

  // [label](url "title"): positions, or null when it is not a complete link.
  link(i, end) {
    const text = this.text;
    const j = this.closingBracket(i);
    if (j < 0 || j >= end || text[j + 1] !== "(") return null;
    const labelEnd = j;
    let k = j + 2;
    while (k < end && (text[k] === " " || text[k] === "\t")) k += 1;
    const urlStart = k;
    let parens = 0;
    // No ) ahead at all: not a link (found once for a run of such candidates).
    const close = this.nextParen(k);
    if (close < 0 || close >= end) return null;
    if (text[k] === "<") {
      const close = text.indexOf(">", k);
      if (close < 0 || close >= end) return null;
      const url = text.slice(k + 1, close);
      k = close + 1;
      return this.finishLink(i, labelEnd, url, k, end);
    }
    for (; k < end; k += 1) {
      const c = text[k];
      if (c === "\\") k += 1;
      else if (c === "(") parens += 1;
      else if (c === ")") {
        if (parens === 0) break;
        parens -= 1;
      } else if (/\s/.test(c)) break;
      if (k - urlStart > 2048) return null;
    }
    return this.finishLink(i, labelEnd, text.slice(urlStart, k), k, end);
  }

  // Where the ] matching the [ at i is, or -1: every pair found in one pass, so
  // a text of a thousand unclosed [ costs no more than one.
  closingBracket(i) {
    if (!this.brackets) {
      const text = this.text;
      this.brackets = new Int32Array(text.length).fill(-1);
      const stack = [];
      for (let k = 0; k < text.length; k += 1) {
        const c = text[k];
        if (c === "\\") k += 1;
        else if (c === "[") stack.push(k);
        else if (c === "]" && stack.length) this.brackets[stack.pop()] = k;
      }
    }
    return this.brackets[i];
  }

  nextParen(k) {
    const memo = this.parenMemo;
    if (memo && k >= memo.from && (memo.at < 0 || k <= memo.at)) return memo.at;
    const at = this.text.indexOf(")", k);
    this.parenMemo = { from: k, at };
    return at;
  }

  finishLink(i, labelEnd, url, k, end) {
    const text = this.text;
    while (k < end && /[ \t]/.test(text[k])) k += 1;
    if (text[k] === '"' || text[k] === "'") {
      const close = text.indexOf(text[k], k + 1);
      if (close < 0 || close >= end) return null;
      k = close + 1;
      while (k < end && /[ \t]/.test(text[k])) k += 1;
    }
    if (text[k] !== ")") return null;
    return { labelStart: i + 1, labelEnd, url, end: k + 1 };
  }
}

// Plain text of a subtree (for announcements and tests).
export function plainText(node) {
  if (!node) return "";
  if (node.type === "text") return node.value;
  if (node.type === "code" && node.value != null) return node.value;
  if (node.type === "code") return node.text;
  if (node.type === "br") return "\n";
  if (node.type === "hr") return "";
  if (node.type === "list") return node.items.map((item) => item.children.map(plainText).join("\n")).join("\n");
  if (node.type === "table") return [node.head, ...node.rows].map((row) => row.map((cell) => cell.map(plainText).join("")).join(" | ")).join("\n");
  const children = node.children ?? [];
  const joiner = node.type === "doc" || node.type === "quote" ? "\n" : "";
  return children.map(plainText).join(joiner);
}

// -- DOM ---------------------------------------------------------------------

// The copy button's text, which is also its name (a screen reader user says what they see).
export const COPY_LABEL = "העתקת הקוד";

// The levels the headings of an answer are drawn at (set as outLevel on each
// heading block): the first is base (h3 under the chat's h2), a deeper mark is
// one level deeper than the heading it falls under, a mark seen before goes
// back to that heading's level; so an answer that starts with ## or skips from
// # to ### leaves no gap in the page's outline. A heading's level depends only
// on the blocks before it, so the kept blocks of a streamed answer keep theirs.
export function headingLevels(tree, base = 3) {
  const open = []; // {mark, level} of the headings the next one may fall under
  const walk = (blocks) => {
    for (const block of blocks) {
      if (block.type === "heading") {
        while (open.length && open.at(-1).mark > block.level) open.pop();
        let level;
        if (open.length && open.at(-1).mark === block.level) level = open.pop().level;
        else level = open.length ? open.at(-1).level + 1 : base;
        block.outLevel = Math.min(6, level);
        open.push({ mark: block.level, level: block.outLevel });
      } else if (block.type === "quote") walk(block.children);
      else if (block.type === "list") for (const item of block.items) walk(item.children);
    }
  };
  walk(tree.children);
  return tree;
}

function el(doc, tag, className, dir) {
  const node = doc.createElement(tag);
  if (className) node.className = className;
  if (dir) node.setAttribute("dir", dir);
  return node;
}

// A left-to-right run that holds a joiner (a file name, an address, a version:
// red-square.png, user@example.com, v1.2.3): in a Hebrew sentence it must be
// isolated (<bdi>), or the bidi algorithm and the line breaker split it at the
// joiner ("-red" at one line's end, "square.png" at the next).
const LTR_RUN = /[A-Za-z0-9][A-Za-z0-9_+]*(?:[-./@:][A-Za-z0-9_+]+)+/g;

// Text as parts: strings, and {ltr: text} for each such run (as chat-ui's problemParts).
export function ltrParts(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(LTR_RUN)) {
    if (match.index > last) parts.push(text.slice(last, match.index));
    parts.push({ ltr: match[0] });
    last = match.index + match[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

function textNodes(doc, parent, value) {
  for (const part of ltrParts(value)) {
    if (typeof part === "string") {
      parent.append(doc.createTextNode(part));
    } else {
      const run = el(doc, "bdi", "md-ltr");
      run.textContent = part.ltr;
      parent.append(run);
    }
  }
}

function inlineNodes(doc, parent, nodes) {
  for (const node of nodes) {
    switch (node.type) {
      case "text":
        textNodes(doc, parent, node.value);
        break;
      case "br":
        parent.append(el(doc, "br"));
        break;
      case "code": {
        const code = el(doc, "code", "md-code-inline", "auto");
        code.textContent = node.value;
        parent.append(code);
        break;
      }
      case "strong":
      case "em":
      case "del": {
        const wrap = el(doc, node.type);
        inlineNodes(doc, wrap, node.children);
        parent.append(wrap);
        break;
      }
      case "link": {
        const a = el(doc, "a", node.image ? "md-link md-image-link" : "md-link");
        a.setAttribute("href", node.href);
        a.setAttribute("target", "_blank");
        a.setAttribute("rel", "noopener noreferrer");
        inlineNodes(doc, a, node.children);
        parent.append(a);
        break;
      }
      default:
        break;
    }
  }
}

// Every block gets dir="auto", except blocks inside a list item or a quote,
// which take the direction of their list or quote (dir="auto" looks past
// children with a dir of their own, so those would leave the quote without text
// to decide by). Code is always dir="ltr".
// Answer headings sit under the chat's own <h2>: # is an <h3>, and so on
// (headingLevels: never more than one level below the heading before).
function blockNode(doc, block, inherit = false) {
  const dir = inherit ? null : "auto";
  switch (block.type) {
    case "paragraph": {
      const p = el(doc, "p", "md-p", dir);
      inlineNodes(doc, p, block.children);
      return p;
    }
    case "heading": {
      const h = el(doc, `h${block.outLevel ?? Math.min(6, block.level + 2)}`, "md-h", dir);
      inlineNodes(doc, h, block.children);
      return h;
    }
    case "hr":
      return el(doc, "hr", "md-hr");
    case "quote": {
      const q = el(doc, "blockquote", "md-quote", dir);
      for (const child of block.children) q.append(blockNode(doc, child, true));
      return q;
    }
    case "list": {
      const list = el(doc, block.ordered ? "ol" : "ul", block.loose ? "md-list md-loose" : "md-list", dir);
      if (block.ordered && block.start !== 1) list.setAttribute("start", String(block.start));
      for (const item of block.items) {
        const li = el(doc, "li");
        const only = item.children.length === 1 && item.children[0].type === "paragraph" && !block.loose;
        if (only) inlineNodes(doc, li, item.children[0].children);
        else for (const child of item.children) li.append(blockNode(doc, child, child.type !== "list"));
        list.append(li);
      }
      return list;
    }
    case "code": {
      const wrap = el(doc, "div", block.open ? "md-code md-code-open" : "md-code", "ltr");
      const bar = el(doc, "div", "md-code-bar");
      const lang = el(doc, "span", "md-code-lang");
      lang.textContent = block.lang;
      const copy = el(doc, "button", "md-copy");
      copy.setAttribute("type", "button");
      copy.textContent = COPY_LABEL;
      bar.append(lang, copy);
      const pre = el(doc, "pre", "md-pre", "ltr");
      // Scrolled sideways from the keyboard too.
      pre.setAttribute("tabindex", "0");
      const code = el(doc, "code");
      code.textContent = block.text;
      pre.append(code);
      wrap.append(bar, pre);
      return wrap;
    }
    case "table": {
      const wrap = el(doc, "div", "md-table-wrap", dir);
      wrap.setAttribute("tabindex", "0");
      const table = el(doc, "table", "md-table");
      const thead = el(doc, "thead");
      const headRow = el(doc, "tr");
      for (const cell of block.head) {
        const th = el(doc, "th");
        inlineNodes(doc, th, cell);
        headRow.append(th);
      }
      thead.append(headRow);
      const tbody = el(doc, "tbody");
      for (const row of block.rows) {
        const tr = el(doc, "tr");
        for (const cell of row) {
          const td = el(doc, "td");
          inlineNodes(doc, td, cell);
          tr.append(td);
        }
        tbody.append(tr);
      }
      table.append(thead, tbody);
      wrap.append(table);
      return wrap;
    }
    default:
      return doc.createTextNode("");
  }
}

const rendered = new WeakMap();

// While an answer streams, the blocks before the last one are final (a later line
// can only change the last block), so only the last one's text is parsed again:
// a 100 KB answer costs its last block per frame, not 100 KB. The final render
// parses the whole text.
function parseGrowing(text, before) {
  const blocks = before?.entries ?? [];
  if (!before || blocks.length < 2 || !text.startsWith(before.text)) return parse(text, { streaming: true });
  const tail = blocks[blocks.length - 1].block;
  const lines = text.split("\n");
  const rest = parseBlocks(lines.slice(tail.line), 0, true);
  for (const block of rest) block.line += tail.line;
  return { type: "doc", children: [...blocks.slice(0, -1).map((entry) => entry.block), ...rest] };
}

// Render text into container. Blocks whose source and state are unchanged since
// the last call on this container keep their DOM nodes (no flicker, selection and
// focus kept); the rest are replaced. Returns the tree.
export function render(container, text, { streaming = false, doc = container.ownerDocument, base = 3 } = {}) {
  const source = normalise(text);
  const before = rendered.get(container);
  // The first render owns the container: whatever was in it goes.
  if (!before) container.textContent = "";
  const tree = headingLevels(streaming ? parseGrowing(source, before) : parse(source), base);
  const old = before?.entries ?? [];
  const entries = [];
  const last = tree.children.length - 1;
  let keep = 0;
  while (keep < old.length && keep <= last && old[keep].key === blockKey(tree.children[keep], streaming, keep === last)) {
    entries.push(old[keep]);
    keep += 1;
  }
  for (let k = keep; k < old.length; k += 1) old[k].node.remove();
  for (let k = keep; k <= last; k += 1) {
    const block = tree.children[k];
    const node = blockNode(doc, block);
    container.append(node);
    entries.push({ key: blockKey(block, streaming, k === last), node, block });
  }
  rendered.set(container, { text: source, entries });
  return tree;
}

function blockKey(block, streaming, isLast) {
  // The last block of a streaming answer may render differently once it is final.
  return `${streaming && isLast ? "~" : "="}${block.type}:${block.src}`;
}

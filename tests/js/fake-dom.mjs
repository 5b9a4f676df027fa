// A tiny stand-in for the DOM, enough for markdown.js's render(): elements with
// attributes and children, text nodes, and a serialiser that escapes text so a
// test can read what was built. It has no innerHTML: nothing could parse HTML.

class Node {
  constructor(doc) {
    this.ownerDocument = doc;
    this.parentNode = null;
  }

  remove() {
    if (!this.parentNode) return;
    const siblings = this.parentNode.childNodes;
    siblings.splice(siblings.indexOf(this), 1);
    this.parentNode = null;
  }
}

export class Text extends Node {
  constructor(doc, data) {
    super(doc);
    this.data = String(data);
  }

  get textContent() {
    return this.data;
  }
}

export class Element extends Node {
  constructor(doc, tagName) {
    super(doc);
    this.tagName = tagName.toUpperCase();
    this.attributes = new Map();
    this.childNodes = [];
  }

  set className(value) {
    this.setAttribute("class", value);
  }

  get className() {
    return this.attributes.get("class") ?? "";
  }

  setAttribute(name, value) {
    this.attributes.set(String(name), String(value));
  }

  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }

  append(...nodes) {
    for (const node of nodes) {
      const child = typeof node === "string" ? new Text(this.ownerDocument, node) : node;
      child.remove();
      child.parentNode = this;
      this.childNodes.push(child);
    }
  }

  get children() {
    return this.childNodes.filter((n) => n instanceof Element);
  }

  get textContent() {
    return this.childNodes.map((n) => n.textContent).join("");
  }

  set textContent(value) {
    for (const child of [...this.childNodes]) child.remove();
    if (value !== "") this.append(new Text(this.ownerDocument, value));
  }

  // Every element below (depth first), this one first.
  *walk() {
    yield this;
    for (const child of this.children) yield* child.walk();
  }

  querySelectorAll(tag) {
    return [...this.walk()].slice(1).filter((e) => e.tagName === tag.toUpperCase());
  }
}

export class Document {
  createElement(tag) {
    return new Element(this, tag);
  }

  createTextNode(data) {
    return new Text(this, data);
  }
}

const escape = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

export function serialise(node) {
  if (node instanceof Text) return escape(node.data);
  const tag = node.tagName.toLowerCase();
  const attrs = [...node.attributes].map(([k, v]) => ` ${k}="${escape(v)}"`).join("");
  return `<${tag}${attrs}>${node.childNodes.map(serialise).join("")}</${tag}>`;
}

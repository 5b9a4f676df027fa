// The chat on any page, with one tag:
//   <script src="https://INKFLOW/embed.js" defer></script>
// Options as data- attributes of that tag: data-label (the launcher's text,
// "צ'אט"), data-position ("end", the default, or "start"), data-open ("true":
// open at once), data-bot-name and data-greeting (over the [page] table's).
//
// A launcher button and the chat panel (chat-ui.js, the page's own widget) in an
// open Shadow DOM: the host page's styles stay out, tests and tools can reach in.
// Everything else comes from the server this file came from: the widget's
// modules and styles, /api/chat. The server writes its configuration (the
// [page] table, the chat's mode and limits) in place of the marker below.
(function () {
  "use strict";

  var CONFIG = "{{page.json}}";
  var script = document.currentScript;
  if (!script || !script.src || window.inkflowChat) return;
  var config = CONFIG && typeof CONFIG === "object" ? CONFIG : {};
  var base = new URL(".", script.src);
  var data = script.dataset;
  var page = Object.assign({}, config);
  if (data.botName) page.bot_name = data.botName;
  if (data.greeting) page.greeting = data.greeting;

  function make(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function stylesheet(path) {
    var link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = new URL(path, base).href;
    return link;
  }

  function start() {
    var host = make("div");
    host.id = "inkflow-chat";
    var root = host.attachShadow({ mode: "open" });
    // A landmark of its own, so the chat is not loose content on the host page.
    var frame = make("aside", "embed");
    frame.setAttribute("aria-label", "צ'אט");
    frame.dir = "rtl";
    frame.lang = "he";
    frame.dataset.position = data.position === "start" ? "start" : "end";

    var launcher = make("button", "launcher");
    launcher.type = "button";
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-controls", "inkflow-panel");
    var icon = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    icon.setAttribute("viewBox", "0 0 24 24");
    icon.setAttribute("aria-hidden", "true");
    icon.setAttribute("focusable", "false");
    var path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", "M4 5h16v11H8l-4 4z");
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", "currentColor");
    path.setAttribute("stroke-width", "2");
    path.setAttribute("stroke-linejoin", "round");
    icon.append(path);
    var label = make("span", null, data.label || "צ'אט");
    var who = make("span", "visually-hidden", " עם " + (page.bot_name || "העוזר הדיגיטלי"));
    launcher.append(icon, label, who);

    var panel = make("div", "panel");
    panel.id = "inkflow-panel";
    panel.setAttribute("role", "dialog");
    panel.setAttribute("aria-labelledby", "chat-name");
    panel.hidden = true;
    var chat = make("div", "chat");
    panel.append(chat);

    frame.append(launcher, panel);
    root.append(stylesheet("assets/chat.css"), stylesheet("assets/base.css"), stylesheet("assets/embed.css"));
    root.append(stylesheet("theme.css"), frame);
    document.body.append(host);

    var mounted = null;
    function open() {
      panel.hidden = false;
      frame.classList.add("is-open");
      launcher.setAttribute("aria-expanded", "true");
      if (mounted) mounted.input.focus();
    }
    function close() {
      panel.hidden = true;
      frame.classList.remove("is-open");
      launcher.setAttribute("aria-expanded", "false");
      launcher.focus();
    }
    launcher.addEventListener("click", function () {
      if (panel.hidden) open();
      else close();
    });
    panel.addEventListener("keydown", function (event) {
      if (event.key === "Escape") close();
    });

    import(new URL("assets/chat-ui.js", base).href).then(
      function (module) {
        mounted = module.mountChat(chat, {
          page: page,
          base: base.href,
          client: {
            chatUrl: new URL("api/chat", base).href,
            healthUrl: new URL("api/health", base).href,
            preset: config.mode ? config : null,
          },
          onReady: function () {
            host.dataset.chatReady = "true";
          },
        });
        var name = root.getElementById("chat-name");
        name.setAttribute("role", "heading");
        name.setAttribute("aria-level", "2");
        var closer = make("button", "btn-text panel-close", "סגירה");
        closer.type = "button";
        closer.addEventListener("click", close);
        root.querySelector(".chat-head").append(closer);
        if (!panel.hidden) mounted.input.focus();
      },
      function () {
        chat.append(make("p", "chat-noscript", "לא ניתן לטעון את הצ'אט כרגע."));
      },
    );
    window.inkflowChat = { open: open, close: close, host: host };
    if (data.open === "true") open();
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();

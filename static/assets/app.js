// The page's chat: the shared widget (chat-ui.js) in #chat-widget, with the
// owner's names from the page's configuration (<script id="inkflow-page">).
import { formatSize } from "./chat-client.js";
import { mountChat } from "./chat-ui.js";

function pageConfig() {
  try {
    const data = JSON.parse(document.getElementById("inkflow-page")?.textContent ?? "{}");
    return data && typeof data === "object" ? data : {};
  } catch {
    return {};
  }
}

mountChat(document.getElementById("chat-widget"), {
  page: pageConfig(),
  onLimits(limits) {
    for (const node of document.querySelectorAll(".js-limit-size")) node.textContent = formatSize(limits.max_file_size);
    for (const node of document.querySelectorAll(".js-limit-files")) node.textContent = String(limits.max_files);
  },
  onReady() {
    document.documentElement.dataset.chatReady = "true";
  },
});

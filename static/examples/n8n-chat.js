// Starts the official @n8n/chat widget (UMD build fetched by scripts/install-n8n-chat.sh, window.N8nChat)
// against this server's /api/chat. An external file: the page's CSP allows no inline script.
(function () {
  "use strict";
  var webhookUrl = location.origin + "/api/chat";
  var status = document.getElementById("example-status");
  document.getElementById("webhook-url").textContent = webhookUrl;
  if (!window.N8nChat || typeof window.N8nChat.createChat !== "function") {
    // Not in the package (its licence allows no redistribution): each checkout fetches it.
    var command = function (text) {
      var code = document.createElement("code");
      code.dir = "ltr";
      code.textContent = text;
      return code;
    };
    status.replaceChildren(
      "רכיב הצ'אט הרשמי של n8n אינו מותקן בשרת הזה: הוא אינו נכלל בחבילה של InkFlow. בתיקיית הקוד של InkFlow הריצו ",
      command("make run"),
      " (מוריד את הרכיב ומגיש את התיקייה static של הקוד), או ",
      command("sh scripts/install-n8n-chat.sh"),
      " ואז הפעילו את השרת עם ",
      command("--static-dir static"),
      ".",
    );
    document.documentElement.dataset.chatReady = "missing";
    return;
  }
  window.N8nChat.createChat({
    webhookUrl: webhookUrl,
    target: "#n8n-chat",
    mode: "fullscreen",
    loadPreviousSession: true,
    showWelcomeScreen: false,
    allowFileUploads: true,
    defaultLanguage: "en",
    initialMessages: ["שלום!", "זהו רכיב הצ'אט של n8n, מחובר ל־InkFlow. במה אפשר לעזור?"],
    i18n: {
      en: {
        title: "InkFlow + n8n",
        subtitle: "רכיב הצ'אט הרשמי של n8n, דרך InkFlow",
        footer: "",
        getStarted: "שיחה חדשה",
        inputPlaceholder: "כתבו הודעה…",
        closeButtonTooltip: "סגירה",
      },
    },
  });
  document.documentElement.dataset.chatReady = "true";
})();

// The template editor's live preview: rendered by the server for a contact, in the sending sandbox.
(function () {
  "use strict";
  const form = document.getElementById("template-form");
  const contact = document.getElementById("preview-contact");
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  let timer = null;

  async function preview() {
    const body = { subject: form.subject.value, html: form.html.value, text: form.text.value || null };
    if (contact.value.trim()) body.contact_id = Number(contact.value.trim());
    const response = await fetch("/app/templates/preview", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() }, body: JSON.stringify(body),
    });
    const result = await response.json().catch(() => ({}));
    const problems = document.getElementById("preview-problems");
    if (!response.ok) {
      const detail = result.detail;
      problems.textContent = Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ") : `${response.status}: ${detail}`;
      return;
    }
    if (result.problems) { problems.textContent = result.problems.map((p) => `${p.field}: ${p.message}`).join("; "); return; }
    problems.textContent = "";
    document.getElementById("preview-to").textContent = result.to;
    document.getElementById("preview-subject").textContent = result.subject;
    document.getElementById("preview-html").srcdoc = result.html;
    document.getElementById("preview-text").textContent = result.text;
  }

  const later = () => { clearTimeout(timer); timer = setTimeout(preview, 400); };
  form.addEventListener("input", later);
  contact.addEventListener("input", later);
  preview();
})();

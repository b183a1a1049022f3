// The console's writes: a <form data-api="/contacts/3/pause"> is sent to that API route as JSON,
// with the session's CSRF token; a 422 puts each message next to the field it names.
(function () {
  "use strict";
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function value(input) {
    const kind = input.dataset.json || "string";
    if (input.type === "checkbox") return input.checked;
    const raw = input.value.trim();
    if (raw === "") return undefined;
    if (kind === "int") return Number.isInteger(Number(raw)) ? Number(raw) : raw;
    if (kind === "list") return raw.split(",").map((s) => s.trim()).filter(Boolean);
    if (kind === "raw") return input.value;
    // Not JSON: sent as typed, so the API names the field and says what it expected.
    if (kind === "object") { try { return JSON.parse(raw); } catch (_) { return raw; } }
    return raw;
  }

  function body(form) {
    const raw = form.querySelector("[data-body]");
    if (raw) return { text: raw.value, type: raw.dataset.body };
    const data = {};
    for (const input of form.querySelectorAll("input[name], select[name], textarea[name]")) {
      if (input.name === "csrf_token") continue;
      const v = value(input);
      if (v !== undefined) data[input.name] = v;
    }
    return { text: JSON.stringify(data), type: "application/json" };
  }

  function clear(form) {
    form.querySelectorAll(".field-error, .form-error, .form-ok").forEach((el) => (el.textContent = ""));
    form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  }

  function showErrors(form, status, payload) {
    const general = form.querySelector(".form-error");
    const detail = payload && payload.detail;
    if (Array.isArray(detail)) {
      const rest = [];
      for (const item of detail) {
        const names = (item.loc || []).filter((p) => p !== "body" && p !== "query" && typeof p === "string");
        const field = names.length ? form.querySelector(`[data-error-for="${CSS.escape(names[0])}"]`) : null;
        const input = names.length ? form.querySelector(`[name="${CSS.escape(names[0])}"]`) : null;
        if (field) {
          field.textContent = (field.textContent ? field.textContent + " " : "") + item.msg;
          if (input) { input.setAttribute("aria-invalid", "true"); }
        } else {
          rest.push((item.path || names.join(".") || "") + (names.length || item.path ? ": " : "") + item.msg);
        }
      }
      if (general && rest.length) general.textContent = rest.join("; ");
      const first = form.querySelector('[aria-invalid="true"]');
      if (first) first.focus();
    } else if (general) {
      general.textContent = `${status}: ${typeof detail === "string" ? detail : "the request failed"}`;
    }
    if (general && general.textContent) general.focus();
  }

  function fill(template, payload) {
    return template.replace(/\{([\w.]+)\}/g, (_, path) => path.split(".").reduce((o, k) => (o || {})[k], payload));
  }

  async function submit(event) {
    const form = event.target.closest("form[data-api]");
    if (!form) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    clear(form);
    const button = form.querySelector("button[type=submit], button:not([type])");
    if (button) button.disabled = true;
    const { text, type } = body(form);
    try {
      const response = await fetch(form.dataset.api, {
        method: form.dataset.method || "POST",
        headers: { "Content-Type": type, "X-CSRF-Token": csrf(), Accept: "application/json" },
        body: (form.dataset.method || "POST") === "GET" ? undefined : text,
        credentials: "same-origin",
      });
      const payload = await response.json().catch(() => null);
      if (!response.ok) { showErrors(form, response.status, payload); return; }
      form.dispatchEvent(new CustomEvent("api:done", { detail: payload, bubbles: true }));
      if (form.dataset.then === "stay") {
        const ok = form.querySelector(".form-ok");
        if (ok) ok.textContent = fill(form.dataset.ok || "Done.", payload || {});
      } else if (form.dataset.then) {
        window.location.assign(fill(form.dataset.then, payload));
      } else {
        window.location.reload();
      }
    } catch (error) {
      showErrors(form, "network", { detail: String(error) });
    } finally {
      if (button) button.disabled = false;
    }
  }

  document.addEventListener("submit", submit);
})();

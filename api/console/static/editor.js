// The flow editor: checks the YAML as you type (problems at their lines, the diagram redrawn)
// and runs the simulator on what parses, showing the path in the contact's time zone.
(function () {
  "use strict";
  const text = document.getElementById("flow-yaml");
  const problems = document.getElementById("problems");
  const diagram = document.getElementById("editor-diagram");
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  let definition = null;
  let timer = null;

  async function check() {
    const response = await fetch("/app/flows/check", {
      method: "POST", body: text.value, credentials: "same-origin",
      headers: { "Content-Type": "application/yaml", "X-CSRF-Token": csrf() },
    });
    if (!response.ok) { problems.textContent = `The check failed (${response.status}).`; return; }
    const result = await response.json();
    definition = result.definition;
    if (result.diagram) diagram.innerHTML = result.diagram;
    problems.innerHTML = "";
    text.setAttribute("aria-invalid", result.valid ? "false" : "true");
    if (result.valid) { problems.innerHTML = '<p class="form-ok">No problems: ready to save.</p>'; return; }
    const list = document.createElement("ul");
    list.className = "problems";
    for (const p of result.problems) {
      const item = document.createElement("li");
      const where = p.line ? `line ${p.line}` : p.path;
      item.innerHTML = `<button type="button" class="link" data-line="${p.line || ""}"></button> `;
      item.querySelector("button").textContent = where;
      item.append(`${p.path}: ${p.message}`);
      list.append(item);
    }
    problems.append(list);
  }

  function goToLine(line) {
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
    text.scrollTop = Math.max(0, (line - 5) * 18);
  }

  problems.addEventListener("click", (e) => {
    const line = Number(e.target.dataset.line);
    if (line) goToLine(line);
  });
  text.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(check, 400); });
  check();

  function local(iso, zone) {
    try {
      return new Intl.DateTimeFormat("en-GB", { timeZone: zone || "UTC", weekday: "short", day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit", timeZoneName: "short" }).format(new Date(iso));
    } catch (e) { return iso; }
  }

  document.getElementById("simulate-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("sim-error");
    const out = document.getElementById("sim-timeline");
    error.textContent = ""; out.innerHTML = "";
    if (!definition) { error.textContent = "Fix the flow's structure first: there is nothing to simulate."; return; }
    const form = event.target;
    const zone = form.timezone.value.trim() || null;
    const events = form.events.value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
      const [at, type, step] = l.split(/\s+/);
      return step ? { at, type, step } : { at, type };
    });
    const response = await fetch("/flows/simulate", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify({ flow: definition, contact: { email: form.email.value.trim(), timezone: zone }, events }),
    });
    const result = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = result && result.detail;
      error.textContent = Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ") : `${response.status}: ${detail}`;
      return;
    }
    const items = [
      ...result.steps.map((s) => ({ at: s.at, text: `${s.step_id} (${s.type})${s.outcome ? ": " + s.outcome : ""}` })),
      ...result.messages.map((m) => ({ at: m.at, text: `✉ ${m.subject || m.template || m.channel} — ${m.status}` })),
    ].sort((a, b) => a.at.localeCompare(b.at));
    for (const item of items) {
      const li = document.createElement("li");
      li.innerHTML = "<time></time>";
      li.querySelector("time").textContent = local(item.at, zone);
      li.append(item.text);
      out.append(li);
    }
    const end = document.createElement("li");
    end.textContent = `${result.status}${result.exit_reason ? " (" + result.exit_reason + ")" : ""} after ${result.duration}`;
    out.append(end);
  });
})();

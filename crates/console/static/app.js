// Portcullis console: copy buttons, confirmations, form helpers, and the visual policy builder.
// Plain JavaScript, no build step. The builder and the JSON document follow each other: a change
// in the builder rewrites the document; a valid edit of the document redraws the builder.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  wireCopyButtons();
  wireConfirmations();
  wireCatalog();
  wireSimulate();
  wireLiveList();
  const builder = document.getElementById("builder");
  if (builder) new PolicyBuilder(builder);
});

function wireCopyButtons() {
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.querySelector(button.dataset.copy);
      if (!source) return;
      const text = source.textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {
        const area = document.createElement("textarea");
        area.value = text;
        document.body.appendChild(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => (button.textContent = label), 1500);
    });
  });
}

function wireConfirmations() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

function wireCatalog() {
  document.querySelectorAll("[data-fill-url]").forEach((button) => {
    button.addEventListener("click", () => {
      const url = document.getElementById("url");
      const name = document.getElementById("name");
      if (url) url.value = button.dataset.fillUrl;
      if (name && !name.value) name.value = button.dataset.fillName;
      if (url) url.focus();
    });
  });
}

// Live parts of a page (the approvals list, the activity tail) refresh every 2 s from their
// data-live-src, except while someone is typing in them.
function wireLiveList() {
  document.querySelectorAll("[data-live-src]").forEach((list) => {
    setInterval(async () => {
      if (list.contains(document.activeElement)) return;
      if ([...list.querySelectorAll("input[type=text]")].some((i) => i.value)) return;
      try {
        const response = await fetch(list.dataset.liveSrc, { credentials: "same-origin" });
        if (response.ok) list.innerHTML = await response.text();
      } catch (_) {}
    }, 2000);
  });
}

function wireSimulate() {
  const form = document.getElementById("simulate-form");
  if (!form) return;
  const skeletons = JSON.parse(form.dataset.skeletons || "{}");
  const tool = form.querySelector("#tool");
  const args = form.querySelector("#arguments");
  tool.addEventListener("change", () => {
    if (skeletons[tool.value] !== undefined) args.value = skeletons[tool.value];
  });
}

const STATES = [
  ["default", "Default"],
  ["allow", "Allow"],
  ["deny", "Deny"],
  ["hide", "Hide"],
  ["rate_limit", "Rate-limit"],
  ["approval", "Require approval"],
  ["custom", "Custom"],
];

const OPS_BY_TYPE = {
  string: ["eq", "neq", "in", "not_in", "regex", "contains", "starts_with", "exists", "not_exists"],
  number: ["eq", "neq", "lt", "lte", "gt", "gte", "in", "not_in", "exists", "not_exists"],
  integer: ["eq", "neq", "lt", "lte", "gt", "gte", "in", "not_in", "exists", "not_exists"],
  boolean: ["eq", "neq", "exists", "not_exists"],
  array: ["contains", "exists", "not_exists"],
  object: ["exists", "not_exists"],
};

class PolicyBuilder {
  constructor(root) {
    this.root = root;
    this.tools = JSON.parse(root.dataset.tools || "[]");
    this.problems = JSON.parse(root.dataset.problems || "[]");
    this.textarea = document.getElementById("document");
    this.jsonError = document.getElementById("json-error");
    this.rowsEl = document.getElementById("tool-rows");
    this.defaultEl = document.getElementById("default-action");
    this.changedEl = document.getElementById("changed-tools");
    this.readOnly = this.textarea.hasAttribute("readonly");
    this.rows = new Map();
    this.doc = this.parse(this.textarea.value) || { version: "1", default: "deny" };
    this.tools.forEach((tool) => this.rows.set(tool.name, this.makeRow(tool)));
    this.defaultEl.addEventListener("change", () => this.fromBuilder());
    this.changedEl.addEventListener("change", () => this.fromBuilder());
    this.textarea.addEventListener("input", () => this.fromJson());
    const all = root.querySelector("[data-apply-recommended-all]");
    if (all) all.addEventListener("click", () => {
      this.tools.forEach((tool) => this.applyRecommended(tool, false));
      this.fromBuilder();
    });
    if (this.readOnly) {
      root.querySelectorAll("select, input").forEach((el) => (el.disabled = true));
    }
    this.toBuilder();
    this.showProblems();
  }

  parse(text) {
    try {
      const value = JSON.parse(text);
      return value && typeof value === "object" && !Array.isArray(value) ? value : null;
    } catch (_) {
      return null;
    }
  }

  makeRow(tool) {
    const row = document.createElement("div");
    row.className = "tool-row";
    row.setAttribute("role", "listitem");
    row.dataset.tool = tool.name;
    const id = "state-" + tool.name.replace(/[^A-Za-z0-9_-]/g, "_");
    row.innerHTML = `
      <div><div class="tool-name"></div>
        <span class="badge risk-${tool.risk}">${tool.risk}</span> <span class="muted small">${tool.category}</span>
        <div class="field-error problem" role="alert"></div></div>
      <div>
        <div class="row"><select class="state" id="${id}"></select>
          <button type="button" class="secondary small recommended">Recommended</button></div>
        <div class="extra deny-extra" hidden><input type="text" class="reason" placeholder="Reason the agent sees" aria-label="Reason"></div>
        <div class="extra rate-extra" hidden>
          <input type="number" class="max" min="1" value="10" aria-label="Calls at most">
          <select class="window" aria-label="Window"><option value="minute">per minute</option><option value="hour">per hour</option><option value="day">per day</option></select>
          <select class="scope" aria-label="Counted per"><option value="agent">per agent</option><option value="session">per session</option><option value="server">for everyone</option></select></div>
        <div class="extra approval-extra" hidden>
          <select class="timeout" aria-label="Approval timeout"><option value="5m">wait up to 5 minutes</option><option value="15m">15 minutes</option><option value="1h">1 hour</option><option value="24h">24 hours</option></select></div>
        <div class="extra custom-extra" hidden>
          <select class="effect" aria-label="Effect"><option value="deny_if">Deny if</option><option value="approve_if">Needs approval if</option><option value="require">Require</option></select>
          <select class="param" aria-label="Parameter"></select>
          <select class="op" aria-label="Operator"></select>
          <input type="text" class="value" placeholder="value" aria-label="Value">
          <button type="button" class="secondary small add-condition">Add condition</button>
          <div class="hint conditions"></div></div>
      </div>`;
    row.querySelector(".tool-name").textContent = tool.name;
    const select = row.querySelector(".state");
    STATES.forEach(([value, text]) => {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value === "default" ? "Default (unlisted)" : text;
      select.appendChild(option);
    });
    select.setAttribute("aria-label", "State of " + tool.name);
    const params = row.querySelector(".param");
    (tool.params || []).forEach((p) => {
      const option = document.createElement("option");
      option.value = p.name;
      option.textContent = p.name + (p.type ? " (" + p.type + ")" : "");
      option.dataset.type = typeof p.type === "string" ? p.type : "string";
      params.appendChild(option);
    });
    const fillOps = () => {
      const type = params.selectedOptions[0] ? params.selectedOptions[0].dataset.type : "string";
      const ops = row.querySelector(".op");
      ops.innerHTML = "";
      (OPS_BY_TYPE[type] || OPS_BY_TYPE.string).forEach((op) => {
        const option = document.createElement("option");
        option.value = op;
        option.textContent = op.replace("_", " ");
        ops.appendChild(option);
      });
    };
    params.addEventListener("change", fillOps);
    fillOps();
    row.querySelector(".add-condition").addEventListener("click", () => this.addCondition(tool, row));
    row.querySelector(".recommended").addEventListener("click", () => {
      this.applyRecommended(tool, true);
    });
    row.querySelectorAll(".state, .reason, .max, .window, .scope, .timeout").forEach((el) =>
      el.addEventListener(el.tagName === "INPUT" ? "input" : "change", () => {
        this.showExtras(row);
        this.fromBuilder();
      })
    );
    this.rowsEl.appendChild(row);
    return row;
  }

  showExtras(row) {
    const state = row.querySelector(".state").value;
    row.querySelector(".deny-extra").hidden = state !== "deny";
    row.querySelector(".rate-extra").hidden = state !== "rate_limit";
    row.querySelector(".approval-extra").hidden = state !== "approval";
    row.querySelector(".custom-extra").hidden = state !== "custom";
  }

  applyRecommended(tool, sync) {
    const row = this.rows.get(tool.name);
    const rec = tool.recommended || {};
    if (rec.hide) {
      this.setRow(row, { state: "hide" });
      this.customRules.delete(tool.name);
    } else {
      this.customRules.set(tool.name, rec.rule || {});
      this.setRow(row, this.stateOf(rec.rule || {}));
    }
    if (sync) this.fromBuilder();
  }

  get customRules() {
    if (!this._custom) this._custom = new Map();
    return this._custom;
  }

  // What a rule looks like in the builder, or "custom" for anything richer.
  stateOf(rule) {
    if (rule === undefined) return { state: "default" };
    const keys = Object.keys(rule);
    if (keys.length === 0) return { state: "allow" };
    if (rule.action === "deny" && keys.every((k) => ["action", "reason", "on_deny"].includes(k))) {
      return { state: "deny", reason: rule.reason || rule.on_deny || "" };
    }
    if (rule.action === "require_approval" && keys.every((k) => ["action", "approval"].includes(k))) {
      return { state: "approval", timeout: (rule.approval && rule.approval.timeout) || "5m" };
    }
    if (keys.length === 1 && rule.rate_limit && typeof rule.rate_limit === "object") {
      const r = rule.rate_limit;
      if (["minute", "hour", "day"].includes(r.window) || r.window === undefined) {
        return { state: "rate_limit", max: r.max, window: r.window || "minute", scope: r.scope || "agent" };
      }
    }
    return { state: "custom" };
  }

  setRow(row, s) {
    row.querySelector(".state").value = s.state;
    if (s.state === "deny") row.querySelector(".reason").value = s.reason || "";
    if (s.state === "rate_limit") {
      row.querySelector(".max").value = s.max || 10;
      row.querySelector(".window").value = s.window || "minute";
      row.querySelector(".scope").value = s.scope || "agent";
    }
    if (s.state === "approval") {
      const timeout = row.querySelector(".timeout");
      if (![...timeout.options].some((o) => o.value === s.timeout)) {
        const option = document.createElement("option");
        option.value = option.textContent = s.timeout;
        timeout.appendChild(option);
      }
      timeout.value = s.timeout;
    }
    this.showExtras(row);
    this.describeCustom(row);
  }

  describeCustom(row) {
    const rule = this.customRules.get(row.dataset.tool);
    const out = row.querySelector(".conditions");
    out.textContent = rule && Object.keys(rule).length ? "Rule: " + JSON.stringify(rule) : "";
  }

  addCondition(tool, row) {
    const effect = row.querySelector(".effect").value;
    const path = "args." + row.querySelector(".param").value;
    const op = row.querySelector(".op").value;
    const condition = { path, op };
    if (!["exists", "not_exists"].includes(op)) {
      const raw = row.querySelector(".value").value;
      let value = raw;
      try {
        value = JSON.parse(raw);
      } catch (_) {}
      if (["in", "not_in"].includes(op) && !Array.isArray(value)) {
        value = String(raw).split(",").map((v) => v.trim()).filter(Boolean);
      }
      condition.value = value;
    }
    const rule = Object.assign({}, this.customRules.get(tool.name) || {});
    if (effect === "require") {
      rule.require = (rule.require || []).concat([condition]);
    } else {
      const entry = { conditions: [condition] };
      if (effect === "deny_if") entry.on_deny = `${tool.name}: ${condition.path} ${op} ${JSON.stringify(condition.value ?? "")} is not allowed.`;
      rule[effect] = (rule[effect] || []).concat([entry]);
    }
    this.customRules.set(tool.name, rule);
    this.describeCustom(row);
    this.fromBuilder();
  }

  // Builder → document. Parts the builder does not show (all_tools, globs) are kept.
  fromBuilder() {
    const doc = Object.assign({}, this.doc);
    doc.version = doc.version || "1";
    doc.default = this.defaultEl.value;
    doc.changed_tools = this.changedEl.value;
    const names = new Set(this.tools.map((t) => t.name));
    const hide = (Array.isArray(doc.hide) ? doc.hide : []).filter((h) => !names.has(h));
    const tools = {};
    Object.entries(doc.tools || {}).forEach(([k, v]) => {
      if (!names.has(k)) tools[k] = v;
    });
    this.tools.forEach((tool) => {
      const row = this.rows.get(tool.name);
      const state = row.querySelector(".state").value;
      switch (state) {
        case "allow": tools[tool.name] = {}; break;
        case "deny": {
          const reason = row.querySelector(".reason").value.trim();
          tools[tool.name] = reason ? { action: "deny", reason } : { action: "deny" };
          break;
        }
        case "hide": hide.push(tool.name); break;
        case "rate_limit": tools[tool.name] = { rate_limit: {
          max: Number(row.querySelector(".max").value) || 0,
          window: row.querySelector(".window").value,
          scope: row.querySelector(".scope").value } }; break;
        case "approval": tools[tool.name] = { action: "require_approval",
          approval: { timeout: row.querySelector(".timeout").value } }; break;
        case "custom": tools[tool.name] = this.customRules.get(tool.name) || {}; break;
        default: break;
      }
    });
    if (hide.length) doc.hide = hide; else delete doc.hide;
    doc.tools = tools;
    this.doc = doc;
    this.textarea.value = JSON.stringify(doc, null, 2);
    this.jsonError.textContent = "";
  }

  // Document → builder.
  fromJson() {
    const doc = this.parse(this.textarea.value);
    if (!doc) {
      this.jsonError.textContent = "Not valid JSON yet: the builder shows the last valid document.";
      return;
    }
    this.jsonError.textContent = "";
    this.doc = doc;
    this.toBuilder();
  }

  toBuilder() {
    const doc = this.doc;
    this.defaultEl.value = doc.default === "allow" ? "allow" : "deny";
    this.changedEl.value = ["deny", "allow"].includes(doc.changed_tools) ? doc.changed_tools : "hide";
    const hide = Array.isArray(doc.hide) ? doc.hide : [];
    const rules = doc.tools && typeof doc.tools === "object" ? doc.tools : {};
    this.tools.forEach((tool) => {
      const row = this.rows.get(tool.name);
      if (hide.includes(tool.name)) {
        this.setRow(row, { state: "hide" });
        return;
      }
      const rule = rules[tool.name];
      const s = this.stateOf(rule);
      if (s.state === "custom") this.customRules.set(tool.name, rule);
      this.setRow(row, s);
    });
  }

  // Validation problems beside the tool they concern.
  showProblems() {
    this.problems.forEach((p) => {
      const parts = (p.path || "").split("/").slice(1).map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
      if (parts[0] !== "tools" && parts[0] !== "hide") return;
      let name = parts[1];
      if (parts[0] === "hide") {
        const hide = Array.isArray(this.doc.hide) ? this.doc.hide : [];
        name = hide[Number(parts[1])];
      }
      const row = this.rows.get(name);
      if (!row) return;
      row.classList.add("invalid-row");
      const out = row.querySelector(".problem");
      out.textContent = (out.textContent ? out.textContent + " " : "") + parts.slice(2).join(".") + " " + p.message;
    });
  }
}

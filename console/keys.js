// My keys: create (the key shown once, with snippets), list, revoke.
import { h, fill, field, table, copyText } from "./dom.js";
import { t, onLangChange } from "./i18n.js";
import { api, ApiError } from "./api.js";
import * as fmt from "./format.js";

const el = {};
let created = null; // the key just made: shown once, forgotten on leaving the page
let keys = [];
let keyStats = new Map();

export function mount(root, ctx) {
  el.ctx = ctx;
  el.heading = h("h1");
  el.intro = h("p", { class: "intro" });
  el.name = h("input", { id: "key-name", name: "name", required: true, maxlength: "64", autocomplete: "off" });
  el.expires = h("input", { id: "key-expires", name: "expires_in_days", type: "number", min: "1", max: "3650", inputmode: "numeric" });
  el.models = h("input", { id: "key-models", name: "models", autocomplete: "off" });
  el.inFlight = h("input", { id: "key-in-flight", name: "max_in_flight", type: "number", min: "1", max: "1000", inputmode: "numeric" });
  el.budget = h("input", { id: "key-budget", name: "budget_per_month", type: "number", min: "0", step: "any", inputmode: "decimal" });
  el.submit = h("button", { type: "submit", class: "primary", id: "key-create" });
  el.formError = h("p", { class: "error", role: "alert", hidden: true });
  el.formHeading = h("h2");
  el.form = h("form", { class: "card grid-form", onsubmit: (e) => { e.preventDefault(); create(); } },
    el.formHeading,
    h("div", { class: "fields" },
      field("", el.name, " "), field("", el.expires, " "), field("", el.models, " "),
      field("", el.inFlight, " "), field("", el.budget, " ")),
    el.formError,
    h("div", { class: "row" }, el.submit));
  el.created = h("section", { class: "card created", id: "key-created", hidden: true, "aria-live": "polite" });
  el.listHeading = h("h2");
  el.list = h("div", { id: "key-list" });
  fill(root, h("div", { class: "view-head" }, el.heading), el.intro, el.form, el.created,
    h("section", { class: "card" }, el.listHeading, el.list));
  texts();
  onLangChange(() => { texts(); renderCreated(); renderList(); });
}

function label(input, text, hint) {
  const wrap = input.closest(".field");
  wrap.querySelector("label").textContent = text;
  wrap.querySelector(".hint").textContent = hint;
}

function texts() {
  el.heading.textContent = t("keys.heading");
  el.intro.textContent = t("keys.intro");
  el.formHeading.textContent = t("keys.create");
  label(el.name, t("keys.name"), t("keys.name_hint"));
  label(el.expires, t("keys.expires"), t("keys.expires_hint"));
  label(el.models, t("keys.models"), t("keys.models_hint"));
  label(el.inFlight, t("keys.max_in_flight"), t("keys.max_in_flight_hint"));
  label(el.budget, t("keys.budget", { currency: fmt.getCurrency() }), t("keys.budget_hint"));
  el.submit.textContent = t("keys.create");
  el.listHeading.textContent = t("keys.list");
}

const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

async function create() {
  el.formError.hidden = true;
  const body = { name: el.name.value.trim() };
  if (el.expires.value) body.expires_in_days = Number(el.expires.value);
  if (el.models.value.trim()) body.models = list(el.models.value);
  if (el.inFlight.value) body.max_in_flight = Number(el.inFlight.value);
  if (el.budget.value !== "") body.budget_per_month = Number(el.budget.value);
  el.submit.disabled = true;
  try {
    created = await api("/v1/keys", { method: "POST", body });
    el.form.reset();
    renderCreated();
    el.created.querySelector("input")?.focus();
    await refresh();
  } catch (error) {
    el.formError.textContent = error instanceof ApiError ? error.readable() : String(error);
    el.formError.hidden = false;
  } finally {
    el.submit.disabled = false;
  }
}

function snippets(key) {
  const origin = window.location.origin;
  return [
    ["keys.snippet.openai", `from openai import OpenAI

client = OpenAI(base_url="${origin}/v1", api_key="${key}")
reply = client.chat.completions.create(
    model="deepseek-flash", messages=[{"role": "user", "content": "hello"}])
print(reply.choices[0].message.content)`],
    ["keys.snippet.codex", `# ~/.codex/config.toml
model = "deepseek-flash"
model_provider = "deepseek_proxy"

[model_providers.deepseek_proxy]
name = "deepseek_proxy"
base_url = "${origin}/v1"
wire_api = "responses"
env_key = "DEEPSEEK_PROXY_TOKEN"

# then, in your shell:
# export DEEPSEEK_PROXY_TOKEN=${key}`],
    ["keys.snippet.claude", `export ANTHROPIC_BASE_URL=${origin}/anthropic
export ANTHROPIC_AUTH_TOKEN=${key}
export ANTHROPIC_MODEL=deepseek-flash
claude`],
    ["keys.snippet.cherry", `Provider type: OpenAI
API host: ${origin}
API key: ${key}
Models: deepseek-flash, deepseek-v4-pro`],
  ];
}

function copyButton(text, source, accessibleName, label) {
  const button = h("button", { type: "button", class: "copy", "aria-label": accessibleName, text: label || t("copy") });
  button.addEventListener("click", async () => {
    const ok = await copyText(text, source);
    button.textContent = ok ? t("copied") : t("copy_failed");
    setTimeout(() => { button.textContent = label || t("copy"); }, 2000);
  });
  return button;
}

function renderCreated() {
  if (!created) {
    el.created.hidden = true;
    el.created.replaceChildren();
    return;
  }
  const keyInput = h("input", { id: "new-key", readOnly: true, value: created.key, class: "mono", spellcheck: "false", autocomplete: "off" });
  keyInput.addEventListener("focus", () => keyInput.select());
  const blocks = snippets(created.key).map(([name, text]) => {
    const code = h("pre", { class: "snippet", tabindex: "0" }, h("code", { text }));
    return h("div", { class: "snippet-box" },
      h("div", { class: "snippet-head" }, h("h4", { text: t(name) }),
        copyButton(text, null, t("keys.copy_snippet", { what: t(name) }))),
      code);
  });
  fill(el.created,
    h("h2", { text: t("keys.created_heading", { name: created.name }) }),
    h("p", { class: "notice", text: t("keys.shown_once") }),
    h("div", { class: "key-line" }, field(t("keys.key"), keyInput), copyButton(created.key, keyInput, t("keys.copy_key"), t("keys.copy_key"))),
    h("h3", { text: t("keys.snippets") }),
    h("div", { class: "snippets" }, blocks),
    h("div", { class: "row" }, h("button", { type: "button", onclick: () => { created = null; renderCreated(); }, text: t("keys.dismiss") })));
  el.created.hidden = false;
}

export async function refresh() {
  const [mine, me] = await Promise.all([
    api("/v1/keys"),
    api("/v1/usage/me").catch(() => null),
  ]);
  keys = (mine && mine.keys) || [];
  keyStats = new Map(((me && me.keys) || []).map((k) => [k.id, k]));
  if (me && me.currency) fmt.setCurrency(me.currency);
  renderList();
}

function revokeButton(key) {
  let armed = false;
  let timer = null;
  const button = h("button", { type: "button", class: "danger", "aria-label": t("keys.revoke_named", { name: key.name }), text: t("keys.revoke") });
  button.addEventListener("click", async () => {
    if (!armed) {
      // Two steps instead of a confirm() dialog.
      armed = true;
      button.textContent = t("keys.confirm_revoke");
      timer = setTimeout(() => { armed = false; button.textContent = t("keys.revoke"); }, 5000);
      return;
    }
    clearTimeout(timer);
    button.disabled = true;
    try {
      await api(`/v1/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      el.ctx.toast(t("keys.revoked", { name: key.name }));
      await refresh();
    } catch (error) {
      el.ctx.toast(error instanceof ApiError ? error.readable() : String(error), true);
      button.disabled = false;
    }
  });
  return button;
}

export function alertBadge() {
  return h("span", { class: "badge warn", title: t("keys.cache_alert_long"), text: `⚠ ${t("keys.cache_alert")}` });
}

function renderList() {
  if (!el.list) return;
  if (!keys.length) {
    fill(el.list, h("p", { class: "empty", text: t("keys.empty") }));
    return;
  }
  const rows = keys.map((key) => {
    const stats = keyStats.get(key.id) || {};
    const budget = key.budget_per_month ?? stats.budget_per_month;
    return h("tr", { dataset: { keyId: key.id } },
      h("td", {}, h("span", { text: key.name }), stats.cache_alert ? [" ", alertBadge()] : null),
      h("td", { class: "mono", text: `${key.prefix}…` }),
      h("td", { text: key.models ? key.models.join(", ") : t("keys.all_models") }),
      h("td", { class: "num", text: fmt.int(key.max_in_flight) }),
      h("td", { class: "num", text: budget == null ? t("unlimited") : fmt.money(budget) }),
      h("td", { class: "num", text: fmt.money(stats.spent_this_month) }),
      h("td", { class: "num", text: `${fmt.ratio(stats.cache_hit_ratio_today)} / ${fmt.ratio(stats.cache_hit_ratio_7d)}` }),
      h("td", { text: fmt.date(key.created_ms) }),
      h("td", { text: key.expires_ms ? fmt.date(key.expires_ms) : t("keys.never") }),
      h("td", { text: key.last_used_ms ? fmt.dateTime(key.last_used_ms) : t("none") }),
      h("td", {}, revokeButton(key)));
  });
  const cols = ["name", "prefix", "models", "in_flight", "budget", "spent", "cache", "created", "expires", "last_used", "actions"];
  fill(el.list, table(cols.map((c) => t(`keys.col.${c}`)), rows, t("keys.list")));
}

/** Leaving the page forgets the key that was shown once. */
export function leave() {
  created = null;
  renderCreated();
}

// Admin: users (add, disable/enable, edit, delete), everyone's usage with
// cost, requests in flight (refreshing by itself) and the DeepSeek balance.
import { h, fill, field, table } from "./dom.js";
import { t, onLangChange } from "./i18n.js";
import { api, ApiError } from "./api.js";
import * as fmt from "./format.js";

const ACTIVE_EVERY_MS = 3000;
const el = {};
let users = [];
let editing = null; // the user being edited, or null for "add"
let activeTimer = null;
let usageRows = null;
let activeRows = null;
let balance = null;

export function mount(root, ctx) {
  el.ctx = ctx;
  el.heading = h("h1");
  el.refresh = h("button", { type: "button", class: "ghost", onclick: () => refresh() });

  // The user form, for adding and for editing.
  el.username = h("input", { id: "user-name", name: "username", autocomplete: "off", required: true, maxlength: "64" });
  el.password = h("input", { id: "user-password", name: "password", type: "password", autocomplete: "new-password", minlength: "8" });
  el.role = h("select", { id: "user-role", name: "role" }, h("option", { value: "user" }), h("option", { value: "admin" }));
  el.models = h("input", { id: "user-models", name: "models", autocomplete: "off" });
  el.rpm = h("input", { id: "user-rpm", name: "requests_per_minute", type: "number", min: "0", inputmode: "numeric" });
  el.tpd = h("input", { id: "user-tpd", name: "tokens_per_day", type: "number", min: "0", inputmode: "numeric" });
  el.conc = h("input", { id: "user-conc", name: "max_concurrent", type: "number", min: "0", inputmode: "numeric" });
  el.budget = h("input", { id: "user-budget", name: "budget_per_month", type: "number", min: "0", step: "any", inputmode: "decimal" });
  el.formHeading = h("h3");
  el.submit = h("button", { type: "submit", class: "primary", id: "user-submit" });
  el.cancel = h("button", { type: "button", hidden: true, onclick: () => startEdit(null) });
  el.formError = h("p", { class: "error", role: "alert", hidden: true });
  el.form = h("form", { class: "grid-form", id: "user-form", onsubmit: (e) => { e.preventDefault(); saveUser(); } },
    el.formHeading,
    h("div", { class: "fields" },
      field("", el.username, " "), field("", el.password, " "), field("", el.role, " "), field("", el.models, " "),
      field("", el.rpm, " "), field("", el.tpd, " "), field("", el.conc, " "), field("", el.budget, " ")),
    el.formError,
    h("div", { class: "row" }, el.submit, el.cancel));
  el.usersHeading = h("h2");
  el.userList = h("div", { id: "user-list" });

  el.usageHeading = h("h2");
  el.groupBy = h("select", { id: "admin-group", name: "group_by", onchange: () => loadUsage() },
    ["user", "model", "day", "key"].map((g) => h("option", { value: g })));
  el.since = h("select", { id: "admin-since", name: "since", onchange: () => loadUsage() },
    ["today", "7", "30"].map((s) => h("option", { value: s, selected: s === "30" })));
  el.usage = h("div", { id: "admin-usage" });

  el.activeHeading = h("h2");
  el.activeNote = h("p", { class: "hint" });
  el.active = h("div", { id: "admin-active", "aria-live": "off" });

  el.balanceHeading = h("h2");
  el.balance = h("div", { id: "admin-balance" });

  fill(root,
    h("div", { class: "view-head" }, el.heading, el.refresh),
    h("section", { class: "card", id: "admin-users" }, el.usersHeading, el.form, el.userList),
    h("section", { class: "card" }, el.usageHeading,
      h("div", { class: "row filters" }, field("", el.groupBy), field("", el.since)), el.usage),
    h("div", { class: "split" },
      h("section", { class: "card" }, el.activeHeading, el.activeNote, el.active),
      h("section", { class: "card" }, el.balanceHeading, el.balance)));
  texts();
  onLangChange(() => { texts(); renderUsers(); renderUsage(); renderActive(); renderBalance(); });
}

function label(input, text, hint) {
  const wrap = input.closest(".field");
  wrap.querySelector("label").textContent = text;
  const hintEl = wrap.querySelector(".hint");
  if (hintEl) hintEl.textContent = hint || "";
}

function texts() {
  el.heading.textContent = t("admin.heading");
  el.refresh.textContent = t("refresh");
  el.usersHeading.textContent = t("admin.users");
  el.formHeading.textContent = editing ? t("admin.edit_user", { user: editing.username }) : t("admin.add_user");
  label(el.username, t("admin.username"), "");
  label(el.password, editing ? t("admin.new_password") : t("admin.password"), editing ? t("admin.new_password_hint") : t("admin.password_hint"));
  label(el.role, t("admin.role"), "");
  el.role.options[0].textContent = t("admin.role.user");
  el.role.options[1].textContent = t("admin.role.admin");
  label(el.models, t("admin.models"), t("admin.models_hint"));
  label(el.rpm, t("admin.rpm"), t("admin.quota_hint"));
  label(el.tpd, t("admin.tpd"), t("admin.quota_hint"));
  label(el.conc, t("admin.max_concurrent"), t("admin.quota_hint"));
  label(el.budget, t("admin.budget", { currency: fmt.getCurrency() }), t("admin.budget_hint"));
  el.submit.textContent = editing ? t("save") : t("admin.add");
  el.cancel.textContent = t("cancel");
  el.usageHeading.textContent = t("admin.usage");
  label(el.groupBy, t("admin.group_by"));
  for (const option of el.groupBy.options) option.textContent = t(`admin.group.${option.value}`);
  label(el.since, t("admin.since"));
  for (const option of el.since.options) option.textContent = t(`admin.since.${option.value}`);
  el.activeHeading.textContent = t("admin.active");
  el.activeNote.textContent = t("admin.active_note", { seconds: ACTIVE_EVERY_MS / 1000 });
  el.balanceHeading.textContent = t("admin.balance");
}

const readable = (error) => (error instanceof ApiError ? error.readable() : String(error));
const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
const num = (input) => (input.value === "" ? null : Number(input.value));

function startEdit(user) {
  editing = user;
  el.form.reset();
  el.formError.hidden = true;
  el.username.disabled = Boolean(user);
  el.cancel.hidden = !user;
  if (user) {
    el.username.value = user.username;
    el.role.value = user.role || "user";
    el.models.value = (user.models || []).join(", ");
    for (const [input, key] of [[el.rpm, "requests_per_minute"], [el.tpd, "tokens_per_day"], [el.conc, "max_concurrent"], [el.budget, "budget_per_month"]]) {
      input.value = user[key] == null ? "" : String(user[key]);
    }
    el.form.scrollIntoView({ block: "nearest" });
    el.password.focus();
  }
  texts();
}

/** The form as a request body: everything for a new user, only what changed for an edit. */
function body() {
  const fields = {
    role: el.role.value,
    models: el.models.value.trim() ? list(el.models.value) : null,
    requests_per_minute: num(el.rpm),
    tokens_per_day: num(el.tpd),
    max_concurrent: num(el.conc),
    budget_per_month: num(el.budget),
  };
  const out = {};
  if (!editing) {
    out.username = el.username.value.trim();
    out.password = el.password.value;
    for (const [key, value] of Object.entries(fields)) if (value !== null) out[key] = value;
    return out;
  }
  if (el.password.value) out.password = el.password.value;
  for (const [key, value] of Object.entries(fields)) {
    const before = editing[key] ?? null;
    if (JSON.stringify(before) !== JSON.stringify(value)) out[key] = value;
  }
  return out;
}

async function saveUser() {
  el.formError.hidden = true;
  el.submit.disabled = true;
  try {
    if (editing) {
      const name = editing.username;
      await api(`/admin/users/${encodeURIComponent(name)}`, { method: "PATCH", body: body() });
      el.ctx.toast(t("admin.saved", { user: name }));
    } else {
      const created = await api("/admin/users", { method: "POST", body: body() });
      el.ctx.toast(t("admin.added", { user: created.username }));
    }
    startEdit(null);
    await loadUsers();
  } catch (error) {
    el.formError.textContent = readable(error);
    el.formError.hidden = false;
  } finally {
    el.submit.disabled = false;
  }
}

async function patch(user, change, doneKey) {
  try {
    await api(`/admin/users/${encodeURIComponent(user.username)}`, { method: "PATCH", body: change });
    el.ctx.toast(t(doneKey, { user: user.username }));
    await loadUsers();
  } catch (error) {
    el.ctx.toast(readable(error), true);
  }
}

function deleteButton(user) {
  let armed = false;
  const button = h("button", { type: "button", class: "danger", "aria-label": t("admin.action_named", { action: t("admin.delete"), user: user.username }), text: t("admin.delete") });
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = t("admin.confirm_delete");
      setTimeout(() => { armed = false; button.textContent = t("admin.delete"); }, 5000);
      return;
    }
    try {
      await api(`/admin/users/${encodeURIComponent(user.username)}`, { method: "DELETE" });
      el.ctx.toast(t("admin.deleted", { user: user.username }));
      if (editing && editing.username === user.username) startEdit(null);
      await loadUsers();
    } catch (error) {
      el.ctx.toast(readable(error), true);
    }
  });
  return button;
}

function limit(value) {
  return value == null || value === 0 ? "∞" : fmt.int(value);
}

function renderUsers() {
  if (!users.length) {
    fill(el.userList, h("p", { class: "empty", text: t("admin.no_users") }));
    return;
  }
  const rows = users.map((user) => {
    const fromConfig = user.source === "config";
    const named = (action) => t("admin.action_named", { action, user: user.username });
    const actions = fromConfig
      ? h("small", { class: "hint", text: t("admin.config_user") })
      : h("div", { class: "actions" },
        h("button", { type: "button", "aria-label": named(t("admin.edit")), text: t("admin.edit"), onclick: () => startEdit(user) }),
        user.disabled
          ? h("button", { type: "button", "aria-label": named(t("admin.enable")), text: t("admin.enable"), onclick: () => patch(user, { disabled: false }, "admin.saved") })
          : h("button", { type: "button", "aria-label": named(t("admin.disable")), text: t("admin.disable"), onclick: () => patch(user, { disabled: true }, "admin.saved") }),
        deleteButton(user));
    return h("tr", { dataset: { user: user.username }, class: user.disabled ? "off" : "" },
      h("td", { text: user.username }),
      h("td", { text: t(`admin.source.${user.source}`) }),
      h("td", { text: t(`admin.role.${user.role}`) }),
      h("td", {}, h("span", { class: user.disabled ? "badge warn" : "badge ok", text: user.disabled ? t("admin.disabled") : t("admin.enabled") })),
      h("td", { text: user.models ? user.models.join(", ") : t("keys.all_models") }),
      h("td", { class: "num", text: `${limit(user.requests_per_minute)} / ${limit(user.tokens_per_day)} / ${limit(user.max_concurrent)}` }),
      h("td", { class: "num", text: user.budget_per_month == null ? t("unlimited") : fmt.money(user.budget_per_month) }),
      h("td", {}, actions));
  });
  const cols = ["user", "source", "role", "state", "models", "limits", "budget", "actions"].map((c) => t(`admin.col.${c}`));
  fill(el.userList, table(cols, rows, t("admin.users")));
}

async function loadUsers() {
  users = ((await api("/admin/users")) || {}).users || [];
  renderUsers();
}

async function loadUsage() {
  const since = el.since.value;
  const now = new Date();
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()) / 1000;
  const from = since === "today" ? today : today - (Number(since) - 1) * 86400;
  try {
    const answer = await api(`/admin/usage?group_by=${encodeURIComponent(el.groupBy.value)}&from=${from}`);
    if (answer.currency) fmt.setCurrency(answer.currency);
    usageRows = { by: el.groupBy.value, rows: answer.rows || [] };
  } catch (error) {
    usageRows = { error: readable(error) };
  }
  renderUsage();
}

function renderUsage() {
  if (!usageRows) return;
  if (usageRows.error) { fill(el.usage, h("p", { class: "error", role: "alert", text: usageRows.error })); return; }
  const rows = [...usageRows.rows];
  if (!rows.length) { fill(el.usage, h("p", { class: "empty", text: t("admin.usage_empty") })); return; }
  if (usageRows.by === "day") rows.sort((a, b) => fmt.dayKey(b.key).localeCompare(fmt.dayKey(a.key)));
  else rows.sort((a, b) => (b.cost ?? 0) - (a.cost ?? 0) || (b.requests ?? 0) - (a.requests ?? 0));
  const total = rows.reduce((sum, r) => {
    for (const k of ["requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_miss_tokens"]) sum[k] = (sum[k] || 0) + (r[k] || 0);
    if (typeof r.cost === "number") sum.cost = (sum.cost || 0) + r.cost;
    return sum;
  }, {});
  total.key = t("admin.total");
  const line = (row, isTotal) => h("tr", { class: isTotal ? "total" : "" },
    h("td", { text: usageRows.by === "day" && !isTotal ? fmt.dayKey(row.key) : (row.key === "-" ? t("usage.login_tokens") : row.key) }),
    h("td", { class: "num", text: fmt.int(row.requests) }),
    h("td", { class: "num", text: fmt.int(row.prompt_tokens) }),
    h("td", { class: "num", text: fmt.int(row.cached_tokens) }),
    h("td", { class: "num", text: fmt.int(row.completion_tokens) }),
    h("td", { class: "num", text: fmt.money(row.cost) }),
    h("td", { class: "num", text: fmt.ratio(fmt.cacheRatio(row)) }));
  const first = { user: "user", model: "model", day: "day", key: "key" }[usageRows.by];
  const cols = [first, "requests", "prompt", "cached", "completion", "cost", "cache_hit"].map((c) => t(`usage.col.${c}`));
  fill(el.usage, table(cols, [...rows.map((r) => line(r, false)), line(total, true)], t("admin.usage")));
}

async function loadActive() {
  try {
    const answer = await api("/admin/active");
    activeRows = { rows: answer.requests || [] };
  } catch (error) {
    activeRows = { error: readable(error) };
  }
  renderActive();
}

function renderActive() {
  if (!activeRows) return;
  if (activeRows.error) { fill(el.active, h("p", { class: "error", text: activeRows.error })); return; }
  if (!activeRows.rows.length) { fill(el.active, h("p", { class: "empty", text: t("admin.active_empty") })); return; }
  const rows = activeRows.rows.map((r) => h("tr", {},
    h("td", { text: r.user }),
    h("td", { text: r.model || t("none") }),
    h("td", { class: "mono", text: r.route }),
    h("td", { class: "num", text: fmt.seconds(r.age_ms) }),
    h("td", { class: "num", text: fmt.int(r.bytes_out) }),
    h("td", { text: r.stream ? t("yes") : t("no") }),
    h("td", { class: "mono small", text: r.request_id })));
  const cols = ["user", "model", "route", "age", "bytes", "stream", "request"].map((c) => t(`admin.col.${c}`));
  fill(el.active, table(cols, rows, t("admin.active")));
}

async function loadBalance() {
  try {
    balance = { answer: await api("/user/balance") };
  } catch (error) {
    balance = { error: readable(error) };
  }
  renderBalance();
}

function renderBalance() {
  if (!balance) return;
  if (balance.error) { fill(el.balance, h("p", { class: "error", text: balance.error })); return; }
  const infos = (balance.answer && balance.answer.balance_infos) || [];
  const available = balance.answer && typeof balance.answer.is_available === "boolean"
    ? h("p", { text: t("admin.balance_available", { value: balance.answer.is_available ? t("yes") : t("no") }) }) : null;
  if (!infos.length) { fill(el.balance, available, h("p", { class: "empty", text: t("admin.balance_empty") })); return; }
  const rows = infos.map((b) => h("tr", {},
    h("td", { text: b.currency }),
    h("td", { class: "num", text: b.total_balance }),
    h("td", { class: "num", text: b.granted_balance }),
    h("td", { class: "num", text: b.topped_up_balance })));
  const cols = ["currency", "total_balance", "granted_balance", "topped_up_balance"].map((c) => t(`admin.col.${c}`));
  fill(el.balance, available, table(cols, rows, t("admin.balance")));
}

export async function refresh() {
  await Promise.all([loadUsers().catch((e) => fill(el.userList, h("p", { class: "error", text: readable(e) }))), loadUsage(), loadActive(), loadBalance()]);
}

/** Requests in flight refresh by themselves while the admin page is shown. */
export function enter() {
  clearInterval(activeTimer);
  activeTimer = setInterval(loadActive, ACTIVE_EVERY_MS);
}

export function leave() {
  clearInterval(activeTimer);
  activeTimer = null;
}

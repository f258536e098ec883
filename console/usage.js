// My usage: today and this month, limits left, 30 days as a chart, and the
// split by model and by key. Cost is shown with its cache-hit ratio.
import { h, fill, table } from "./dom.js";
import { t, onLangChange } from "./i18n.js";
import { api } from "./api.js";
import * as fmt from "./format.js";
import { alertBadge } from "./keys.js";

const DAYS = 30;
const el = {};
let data = null;
let keyNames = new Map();
let chart = null;

export function mount(root) {
  el.heading = h("h1");
  el.refresh = h("button", { type: "button", class: "ghost", onclick: () => refresh() });
  el.body = h("div", { id: "usage-body" }, h("p", { class: "empty", text: t("loading") }));
  fill(root, h("div", { class: "view-head" }, el.heading, el.refresh), el.body);
  texts();
  onLangChange(() => { texts(); render(); });
  window.addEventListener("resize", resizeChart);
}

function texts() {
  el.heading.textContent = t("usage.heading");
  el.refresh.textContent = t("refresh");
}

export async function refresh() {
  const [me, mine] = await Promise.all([api("/v1/usage/me"), api("/v1/keys").catch(() => null)]);
  data = me;
  if (me.currency) fmt.setCurrency(me.currency);
  keyNames = new Map(((mine && mine.keys) || []).map((k) => [k.id, k.name]));
  for (const k of me.keys || []) keyNames.set(k.id, k.name);
  render();
}

function tokensOf(row) {
  return (row.prompt_tokens || 0) + (row.completion_tokens || 0) + (row.estimated_tokens || 0);
}

function summary(titleKey, row) {
  row = row || {};
  const stat = (label, value, testid) => h("div", { class: "stat" }, h("dt", { text: label }), h("dd", { text: value, "data-testid": testid }));
  return h("section", { class: "card summary" },
    h("h2", { text: t(titleKey) }),
    h("dl", {},
      stat(t("usage.cost"), fmt.money(row.cost), `${titleKey}-cost`),
      stat(t("usage.requests"), fmt.int(row.requests ?? 0)),
      stat(t("usage.tokens"), t("usage.tokens_in_out", { prompt: fmt.int(row.prompt_tokens ?? 0), completion: fmt.int(row.completion_tokens ?? 0) })),
      stat(t("usage.cache_hit"), fmt.ratio(fmt.cacheRatio(row)))));
}

function quotaLine(name, q, resetsAt, money) {
  const show = money ? fmt.money : fmt.int;
  const title = h("div", { class: "quota-name", text: t(`usage.quota.${name}`) });
  if (!q) return h("li", { class: "quota" }, title, h("div", { class: "quota-text", text: t("unlimited") }));
  const frac = q.limit > 0 ? Math.min(1, q.used / q.limit) : 0;
  const bar = h("progress", { max: "1", value: String(frac), "aria-label": t(`usage.quota.${name}`) });
  if (frac >= 0.9) bar.classList.add("high");
  const text = t("usage.quota_left", { used: show(q.used), limit: show(q.limit), remaining: show(q.remaining) })
    + (resetsAt ? ` · ${t("usage.resets", { when: fmt.dateTime(resetsAt * 1000) })}` : "");
  return h("li", { class: "quota" }, title, bar, h("div", { class: "quota-text", text }));
}

function totalsTable(rows, firstCol, keyLabel, caption) {
  if (!rows || !rows.length) return h("p", { class: "empty", text: t("usage.empty_table") });
  const body = rows.map((row) => h("tr", {},
    h("td", {}, keyLabel(row)),
    h("td", { class: "num", text: fmt.int(row.requests) }),
    h("td", { class: "num", text: fmt.int(row.prompt_tokens) }),
    h("td", { class: "num", text: fmt.int(row.cached_tokens) }),
    h("td", { class: "num", text: fmt.int(row.completion_tokens) }),
    h("td", { class: "num", text: fmt.money(row.cost) }),
    h("td", { class: "num", text: fmt.ratio(fmt.cacheRatio(row)) })));
  const cols = [firstCol, "requests", "prompt", "cached", "completion", "cost", "cache_hit"].map((c) => t(`usage.col.${c}`));
  return table(cols, body, caption);
}

function render() {
  if (!data || !el.body) return;
  const quotas = data.quotas || {};
  const days = data.days || [];
  const alerts = new Map((data.keys || []).map((k) => [k.id, k.cache_alert]));
  const chartBox = h("div", { class: "chart", id: "usage-chart", role: "img", "aria-label": t("usage.chart_label") });
  const anyUsage = days.some((d) => d.requests > 0) || (data.month && data.month.requests > 0);
  fill(el.body,
    h("div", { class: "summaries" }, summary("usage.today", data.today), summary("usage.month", data.month)),
    h("section", { class: "card" }, h("h2", { text: t("usage.quotas") }),
      h("ul", { class: "quotas" },
        quotaLine("budget_per_month", quotas.budget_per_month, quotas.budget_resets_at, true),
        quotaLine("tokens_per_day", quotas.tokens_per_day, quotas.tokens_per_day_resets_at),
        quotaLine("requests_per_minute", quotas.requests_per_minute),
        quotaLine("max_concurrent", quotas.max_concurrent))),
    h("section", { class: "card" }, h("h2", { text: t("usage.chart") }),
      anyUsage ? chartBox : h("p", { class: "empty", text: t("usage.empty") })),
    h("div", { class: "stack" },
      h("section", { class: "card" }, h("h2", { text: t("usage.by_model") }),
        totalsTable(data.by_model, "model", (row) => (row.key && row.key !== "-" ? row.key : t("usage.no_model")), t("usage.by_model"))),
      h("section", { class: "card" }, h("h2", { text: t("usage.by_key") }),
        totalsTable(data.by_key, "key", (row) => {
          if (row.key === "-" || !row.key) return t("usage.login_tokens");
          const name = keyNames.get(row.key);
          return h("span", {}, h("span", { text: name ? `${name} (${row.key})` : row.key }), alerts.get(row.key) ? [" ", alertBadge()] : null);
        }, t("usage.by_key")))));
  if (anyUsage) drawChart(chartBox, days);
}

function series(days) {
  const byDay = new Map(days.map((d) => [fmt.dayKey(d.key), d]));
  const now = new Date();
  const todayUtc = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  const xs = [], cost = [], tokens = [];
  for (let i = DAYS - 1; i >= 0; i -= 1) {
    const ms = todayUtc - i * 86400000;
    const row = byDay.get(new Date(ms).toISOString().slice(0, 10));
    xs.push(ms / 1000);
    cost.push(row && typeof row.cost === "number" ? row.cost : 0);
    tokens.push(row ? tokensOf(row) : 0);
  }
  return [xs, cost, tokens];
}

function chartWidth(box) {
  return Math.max(260, Math.floor(box.getBoundingClientRect().width || box.parentElement.clientWidth || 600));
}

function drawChart(box, days) {
  if (chart) { chart.destroy(); chart = null; }
  const UPlot = window.uPlot;
  if (!UPlot) return;
  const css = getComputedStyle(document.documentElement);
  const costColor = css.getPropertyValue("--accent").trim() || "#2563eb";
  const tokenColor = css.getPropertyValue("--accent-2").trim() || "#16a34a";
  const textColor = css.getPropertyValue("--muted").trim() || "#555";
  const grid = { stroke: css.getPropertyValue("--line").trim() || "#ddd", width: 1 };
  const bars = UPlot.paths && UPlot.paths.bars ? UPlot.paths.bars({ size: [0.6, 24] }) : undefined;
  const opts = {
    width: chartWidth(box),
    height: 240,
    tzDate: (ts) => UPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    scales: { x: { time: true, range: (u, min, max) => [min - 43200, max + 43200] }, cost: { auto: true, range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] }, tokens: { auto: true, range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] } },
    series: [
      { value: (u, v) => (v == null ? "" : new Date(v * 1000).toISOString().slice(0, 10)) },
      { label: t("usage.series.cost", { currency: fmt.getCurrency() }), scale: "cost", stroke: costColor, fill: `${costColor}55`, paths: bars, value: (u, v) => fmt.money(v) },
      { label: t("usage.series.tokens"), scale: "tokens", stroke: tokenColor, width: 2, points: { show: true, size: 5 }, value: (u, v) => fmt.int(v) },
    ],
    axes: [
      { stroke: textColor, grid, values: (u, splits) => splits.map((s) => new Date(s * 1000).toISOString().slice(5, 10)) },
      { scale: "cost", stroke: textColor, grid, size: 76, values: (u, splits) => splits.map((s) => fmt.money(s)) },
      { scale: "tokens", side: 1, stroke: textColor, grid: { show: false }, size: 56, values: (u, splits) => splits.map((s) => compact(s)) },
    ],
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
  };
  chart = new UPlot(opts, series(days), box);
}

function compact(n) {
  return new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 }).format(n);
}

function resizeChart() {
  if (!chart) return;
  const box = document.getElementById("usage-chart");
  if (box && box.isConnected) chart.setSize({ width: chartWidth(box), height: 240 });
}

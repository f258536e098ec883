// Numbers, money, ratios and dates, in the current language.
import { t, locale } from "./i18n.js";

const SYMBOL = { CNY: "¥", USD: "$" };
let currency = null;

export const setCurrency = (c) => { if (c) currency = c; };
export const getCurrency = () => currency || "CNY";

const isNum = (n) => typeof n === "number" && Number.isFinite(n);

export function int(n) {
  return isNum(n) ? new Intl.NumberFormat(locale()).format(n) : t("none");
}

/** Money in the gateway's currency; small amounts keep their significant digits. */
export function money(n, cur = currency) {
  if (!isNum(n)) return t("none");
  const symbol = SYMBOL[cur] ?? (cur ? `${cur} ` : "");
  let digits;
  if (n === 0) digits = { maximumFractionDigits: 2 };
  else if (Math.abs(n) < 0.01) digits = { maximumSignificantDigits: 3 };
  else digits = { minimumFractionDigits: 2, maximumFractionDigits: Math.abs(n) < 1 ? 4 : 2 };
  return symbol + new Intl.NumberFormat(locale(), digits).format(n);
}

export function ratio(r) {
  return isNum(r) ? new Intl.NumberFormat(locale(), { style: "percent", maximumFractionDigits: 1 }).format(r) : t("none");
}

/** hit / (hit + miss) from a totals row, when the gateway did not send the ratio. */
export function cacheRatio(row) {
  if (!row) return null;
  if (isNum(row.cache_hit_ratio) || row.cache_hit_ratio === null) return row.cache_hit_ratio ?? null;
  const hit = row.cached_tokens;
  const miss = isNum(row.cache_miss_tokens) ? row.cache_miss_tokens : (isNum(row.prompt_tokens) && isNum(hit) ? row.prompt_tokens - hit : null);
  if (!isNum(hit) || !isNum(miss) || hit + miss <= 0) return null;
  return hit / (hit + miss);
}

export function dateTime(ms) {
  if (!isNum(ms)) return t("none");
  return new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeStyle: "short" }).format(new Date(ms));
}

export function date(ms) {
  if (!isNum(ms)) return t("none");
  return new Intl.DateTimeFormat(locale(), { dateStyle: "medium" }).format(new Date(ms));
}

/** A day key as "YYYY-MM-DD": the ledger may send the date or days since 1970. */
export function dayKey(key) {
  if (/^\d+$/.test(String(key))) return new Date(Number(key) * 86400000).toISOString().slice(0, 10);
  return String(key);
}

export function seconds(ms) {
  return isNum(ms) ? `${(ms / 1000).toFixed(1)} s` : t("none");
}

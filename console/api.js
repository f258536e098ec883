// Calls to the gateway's JSON API with the user's token. The token lives in
// this module and in sessionStorage (gone with the tab), never in a cookie
// or localStorage.
import { t } from "./i18n.js";

const TOKEN_KEY = "dsp_console_token";
let token = null;
try { token = sessionStorage.getItem(TOKEN_KEY); } catch { token = null; }
let onUnauthorized = () => {};

export const hasToken = () => Boolean(token);
export const bearer = () => `Bearer ${token}`;

export function setToken(value) {
  token = value || null;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* memory only then */ }
}

/** Called when a request with the token gets 401: the session is over. */
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

/** An error answer of the gateway, `{"error": {"message", "code"}}`, readable. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** The sentence to show a person. */
  readable() {
    const wait = this.retryAfter ? ` ${t("err.retry_after", { seconds: this.retryAfter })}` : "";
    switch (this.code) {
      case "token_busy":
        return t("err.token_busy") + wait;
      case "budget_exceeded": {
        const when = this.retryAfter
          ? new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" }).format(new Date(Date.now() + this.retryAfter * 1000))
          : "";
        return t("err.budget_exceeded", { when });
      }
      case "quota_exceeded":
      case "user_busy":
        return t("err.quota_exceeded", { message: this.message }) + wait;
      case "invalid_credentials":
        return t("err.invalid_credentials");
      case "network":
        return t("err.network", { detail: this.message });
      default:
        return t("err.generic", { status: this.status || "", message: this.message }) + (this.status === 429 ? wait : "");
    }
  }
}

/** Turns a non-2xx response into an ApiError (and ends the session on 401 with a token). */
export async function errorFrom(response, withToken = true) {
  let code = "";
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || body.error.type || "";
      message = body.error.message || message;
    }
  } catch { /* not JSON */ }
  const retry = Number.parseInt(response.headers.get("retry-after") || "", 10);
  const error = new ApiError(response.status, code, message, Number.isFinite(retry) ? retry : null);
  if (response.status === 401 && withToken && code !== "invalid_credentials") onUnauthorized(error);
  return error;
}

/** fetch() that throws an ApiError for network failures, too. */
export async function send(path, { method = "GET", body, signal, auth = true, headers = {} } = {}) {
  const init = { method, signal, headers: { ...headers }, cache: "no-store" };
  if (auth && token) init.headers.Authorization = bearer();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(0, "network", String((e && e.message) || e), null);
  }
  if (!response.ok) throw await errorFrom(response, auth);
  return response;
}

/** A JSON call: the parsed answer, or an ApiError. */
export async function api(path, options = {}) {
  const response = await send(path, options);
  if (response.status === 204) return null;
  return response.json();
}

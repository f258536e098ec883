// The console's entry point: sign-in, the sections, the language switch.
import { $, $$ } from "./dom.js";
import { t, applyStatic, setLang, currentLang, onLangChange } from "./i18n.js";
import { api, setToken, hasToken, whenUnauthorized, ApiError } from "./api.js";
import * as fmt from "./format.js";
import * as chat from "./chat.js";
import * as keys from "./keys.js";
import * as usage from "./usage.js";
import * as admin from "./admin.js";

const VIEWS = {
  chat: { module: chat, enter: () => chat.focus() },
  keys: { module: keys, enter: () => keys.refresh() },
  usage: { module: usage, enter: () => usage.refresh() },
  admin: { module: admin, enter: () => { admin.enter(); return admin.refresh(); }, adminOnly: true },
};

let session = null; // {user, admin}
let current = null;
let toastTimer = null;

function toast(message, isError = false) {
  const box = $("#toast");
  box.textContent = message;
  box.classList.toggle("error", isError);
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 5000);
}

const ctx = { toast };

function showLogin(message) {
  session = null;
  leaveCurrent();
  $("#app").hidden = true;
  $("#nav").hidden = true;
  $("#session").hidden = true;
  $("#login-view").hidden = false;
  const error = $("#login-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("#login-username").focus();
}

function leaveCurrent() {
  if (current && VIEWS[current].module.leave) VIEWS[current].module.leave();
  current = null;
}

async function route() {
  if (!session) return;
  let name = window.location.hash.replace(/^#\/?/, "") || "chat";
  if (!VIEWS[name] || (VIEWS[name].adminOnly && !session.admin)) name = "chat";
  if (name !== current) leaveCurrent();
  current = name;
  for (const section of $$("#app > section")) section.hidden = section.id !== `view-${name}`;
  for (const link of $$("#nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    await VIEWS[name].enter();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) toast(error instanceof ApiError ? error.readable() : String(error), true);
  }
}

/** Who is signed in: /v1/usage/me says whether they are an admin; older gateways are asked /admin/users. */
async function whoAmI() {
  const me = await api("/v1/usage/me");
  if (me.currency) fmt.setCurrency(me.currency);
  let isAdmin = me.admin;
  if (typeof isAdmin !== "boolean") {
    try {
      await api("/admin/users");
      isAdmin = true;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) throw error;
      isAdmin = false;
    }
  }
  if (!me.currency) {
    const pricing = await api("/v1/pricing").catch(() => null);
    if (pricing && pricing.currency) fmt.setCurrency(pricing.currency);
  }
  return { user: me.user, admin: isAdmin };
}

async function enterApp() {
  session = await whoAmI();
  $("#login-view").hidden = true;
  $("#app").hidden = false;
  $("#nav").hidden = false;
  $("#session").hidden = false;
  $("#nav-admin").hidden = !session.admin;
  $("#whoami").textContent = t("signed_in_as", { user: session.user });
  await chat.loadModels().catch((error) => toast(error instanceof ApiError ? error.readable() : String(error), true));
  await route();
}

async function logIn(event) {
  event.preventDefault();
  const button = $("#login-submit");
  const error = $("#login-error");
  error.hidden = true;
  button.disabled = true;
  button.textContent = t("login.busy");
  try {
    const answer = await api("/auth/login", {
      method: "POST",
      auth: false,
      body: { username: $("#login-username").value, password: $("#login-password").value },
    });
    setToken(answer.token);
    $("#login-password").value = "";
    await enterApp();
  } catch (e) {
    setToken(null);
    error.textContent = e instanceof ApiError ? e.readable() : String(e);
    error.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = t("login.submit");
  }
}

async function logOut() {
  try { await api("/auth/logout", { method: "POST" }); } catch { /* gone anyway */ }
  setToken(null);
  showLogin();
}

function start() {
  applyStatic();
  const lang = $("#lang");
  lang.value = currentLang();
  lang.addEventListener("change", () => setLang(lang.value));
  onLangChange(() => {
    lang.value = currentLang();
    if (session) $("#whoami").textContent = t("signed_in_as", { user: session.user });
  });
  chat.mount($("#view-chat"), ctx);
  keys.mount($("#view-keys"), ctx);
  usage.mount($("#view-usage"), ctx);
  admin.mount($("#view-admin"), ctx);
  $("#login-form").addEventListener("submit", logIn);
  $("#logout").addEventListener("click", logOut);
  window.addEventListener("hashchange", route);
  // A 401 on any call with the token: it expired or was revoked.
  whenUnauthorized(() => {
    setToken(null);
    if (session) showLogin(t("login.expired"));
  });
  if (hasToken()) {
    enterApp().catch(() => { setToken(null); showLogin(); });
  } else {
    showLogin();
  }
}

start();

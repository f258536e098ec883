// The chat playground: streams a reply token by token from the gateway's
// own /v1/chat/completions with the user's token. Everything the model says
// is appended as text nodes: its output is hostile input.
import { h, fill, field } from "./dom.js";
import { t, onLangChange } from "./i18n.js";
import { api, send, ApiError } from "./api.js";
import { sseData } from "./sse.js";
import * as fmt from "./format.js";

const LEDGER_POLLS = 8;
const LEDGER_POLL_MS = 300;

let history = [];
let running = null; // the AbortController of the stream in progress
const el = {};

export function mount(root) {
  el.model = h("select", { id: "chat-model", name: "model" });
  el.thinking = h("input", { type: "checkbox", id: "chat-thinking", checked: true });
  el.log = h("div", { class: "chat-log", id: "chat-log", role: "log", "aria-live": "polite" });
  el.message = h("textarea", { id: "chat-message", name: "message", rows: "3", required: true });
  el.send = h("button", { type: "submit", class: "primary", id: "chat-send" });
  el.stop = h("button", { type: "button", id: "chat-stop", hidden: true, onclick: stop });
  el.newChat = h("button", { type: "button", id: "chat-new", class: "ghost", onclick: newChat });
  el.modelField = field("", el.model);
  el.thinkingLabel = h("label", { for: "chat-thinking", class: "check" }, el.thinking, h("span"));
  el.messageField = field("", el.message);
  el.heading = h("h1");
  el.noModels = h("p", { class: "notice", hidden: true, role: "alert" });

  el.message.addEventListener("keydown", (event) => {
    // Enter sends; Shift+Enter is a new line; an IME composing Chinese keeps its Enter.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.form.requestSubmit();
    }
  });
  el.form = h("form", { class: "chat-form", onsubmit: (event) => { event.preventDefault(); sendMessage(); } },
    el.messageField,
    h("div", { class: "row" }, el.send, el.stop));

  fill(root,
    h("div", { class: "view-head" }, el.heading, el.newChat),
    h("div", { class: "chat-options row" }, el.modelField, el.thinkingLabel),
    el.noModels,
    el.log,
    el.form);
  texts();
  onLangChange(texts);
  renderEmpty();
}

function texts() {
  el.heading.textContent = t("chat.heading");
  el.modelField.querySelector("label").textContent = t("chat.model");
  el.thinkingLabel.querySelector("span").textContent = t("chat.thinking");
  el.messageField.querySelector("label").textContent = t("chat.message");
  el.message.placeholder = t("chat.placeholder");
  el.send.textContent = t("chat.send");
  el.stop.textContent = t("chat.stop");
  el.newChat.textContent = t("chat.new");
  el.noModels.textContent = t("chat.no_models");
  const empty = el.log.querySelector(".empty");
  if (empty) empty.textContent = t("chat.empty");
  for (const details of el.log.querySelectorAll("details > summary")) details.textContent = t("chat.reasoning");
  for (const who of el.log.querySelectorAll("[data-who]")) who.textContent = t(who.dataset.who);
}

function renderEmpty() {
  if (!el.log.children.length) el.log.append(h("p", { class: "empty", text: t("chat.empty") }));
}

function newChat() {
  if (running) stop();
  history = [];
  el.log.replaceChildren();
  renderEmpty();
  el.message.focus();
}

/** Fills the model picker from GET /v1/models (aliases included). */
export async function loadModels() {
  const previous = el.model.value;
  const list = await api("/v1/models");
  const models = (list && list.data) || [];
  el.model.replaceChildren();
  for (const model of models) {
    const label = model.alias_for ? t("chat.alias_for", { alias: model.id, model: model.alias_for }) : model.id;
    el.model.append(h("option", { value: model.id, text: label }));
  }
  if (models.some((m) => m.id === previous)) el.model.value = previous;
  el.noModels.hidden = models.length > 0;
  el.send.disabled = models.length === 0;
}

function bubble(role) {
  const who = role === "user" ? "chat.you" : "chat.assistant";
  const body = h("div", { class: "msg-body" });
  const item = h("article", { class: `msg ${role}` }, h("div", { class: "who", dataset: { who }, text: t(who) }), body);
  el.log.querySelector(".empty")?.remove();
  el.log.append(item);
  return { item, body };
}

function scrollDown() {
  el.log.scrollTop = el.log.scrollHeight;
}

function setRunning(controller) {
  running = controller;
  el.send.disabled = Boolean(controller);
  el.stop.hidden = !controller;
  if (!controller) el.message.focus();
}

function stop() {
  if (running) running.abort();
}

async function sendMessage() {
  const text = el.message.value;
  if (!text.trim() || running) return;
  const model = el.model.value;
  el.message.value = "";
  const mine = bubble("user");
  mine.body.append(h("div", { class: "answer", text }));
  const messages = [...history, { role: "user", content: text }];

  const reply = bubble("assistant");
  reply.item.setAttribute("aria-busy", "true");
  const reasoningText = document.createTextNode("");
  const reasoning = h("details", { class: "reasoning", hidden: true },
    h("summary", { text: t("chat.reasoning") }), h("div", { class: "reasoning-text" }, reasoningText));
  const answerText = document.createTextNode("");
  const answer = h("div", { class: "answer", "data-testid": "answer" }, answerText);
  const meta = h("div", { class: "meta" });
  reply.body.append(reasoning, answer, meta);
  scrollDown();

  const controller = new AbortController();
  setRunning(controller);
  let usage = null;
  let requestId = null;
  try {
    const response = await send("/v1/chat/completions", {
      method: "POST",
      signal: controller.signal,
      body: {
        model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        thinking: { type: el.thinking.checked ? "enabled" : "disabled" },
      },
    });
    requestId = response.headers.get("x-request-id");
    for await (const data of sseData(response.body, controller.signal)) {
      if (data === "[DONE]") break;
      let chunk;
      try { chunk = JSON.parse(data); } catch { continue; }
      if (chunk.error) {
        throw new ApiError(0, chunk.error.code || "stream_error", t("err.stream", { message: chunk.error.message || "" }), null);
      }
      const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
      if (delta.reasoning_content) {
        reasoning.hidden = false;
        reasoningText.appendData(delta.reasoning_content);
      }
      if (delta.content) answerText.appendData(delta.content);
      if (chunk.usage) usage = chunk.usage;
      scrollDown();
    }
    if (controller.signal.aborted) throw new DOMException("stopped", "AbortError");
    history = [...messages, { role: "assistant", content: answerText.data }];
    showUsage(meta, usage, requestId);
  } catch (error) {
    if (error && error.name === "AbortError") {
      meta.append(h("span", { class: "stopped", text: t("chat.stopped") }));
      if (answerText.data) history = [...messages, { role: "assistant", content: answerText.data }];
    } else {
      const message = error instanceof ApiError ? (error.status ? error.readable() : error.message) : String(error);
      reply.body.append(h("p", { class: "error", role: "alert", text: message }));
      if (!answerText.data) answer.hidden = true;
    }
  } finally {
    reply.item.removeAttribute("aria-busy");
    setRunning(null);
    scrollDown();
  }
}

/** Tokens at once (from the final usage chunk); the cost once the ledger has the row. */
function showUsage(meta, usage, requestId) {
  if (usage) {
    const cached = usage.prompt_cache_hit_tokens ?? usage.prompt_tokens_details?.cached_tokens ?? 0;
    const miss = usage.prompt_cache_miss_tokens ?? (usage.prompt_tokens - cached);
    meta.append(h("span", { class: "tokens", text: t("chat.tokens", {
      prompt: fmt.int(usage.prompt_tokens), cached: fmt.int(cached), completion: fmt.int(usage.completion_tokens),
    }) }));
    const ratio = cached + miss > 0 ? cached / (cached + miss) : null;
    meta.append(h("span", { class: "cache", text: t("chat.cache_hit", { ratio: fmt.ratio(ratio) }) }));
  }
  const cost = h("span", { class: "cost", "data-testid": "reply-cost", text: t("chat.cost_pending") });
  meta.append(cost);
  if (!requestId) {
    cost.textContent = t("chat.cost_unknown");
    return;
  }
  pollCost(cost, requestId);
}

async function pollCost(target, requestId) {
  for (let attempt = 0; attempt < LEDGER_POLLS; attempt += 1) {
    await new Promise((resolve) => setTimeout(resolve, LEDGER_POLL_MS));
    let rows;
    try {
      rows = (await api("/v1/usage/me/requests?limit=20")).rows || [];
    } catch {
      break; // no per-request ledger on this gateway: tokens only
    }
    const row = rows.find((r) => r.request_id === requestId);
    if (row && typeof row.cost === "number") {
      target.textContent = t("chat.cost", { cost: fmt.money(row.cost) }) + (row.cost_estimated ? ` ${t("chat.cost_estimated")}` : "");
      target.dataset.cost = String(row.cost);
      return;
    }
  }
  target.textContent = t("chat.cost_unknown");
}

export function focus() {
  el.message.focus();
}

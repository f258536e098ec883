// DOM helpers. Text is only ever set as text (textContent / text nodes):
// model output and user data are hostile input, so no HTML string is built
// anywhere in the console.

/**
 * h("button", {class: "x", onclick: fn, "aria-label": "..."}, "text", child...)
 * Attributes starting with "on" become listeners; `text` sets textContent;
 * `hidden`/`disabled`/`checked`/`value`/`selected` set the property.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "text") {
      el.textContent = String(value);
    } else if (["hidden", "disabled", "checked", "value", "selected", "open", "required", "readOnly"].includes(name)) {
      el[name] = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

let fieldSeq = 0;
/** A labelled form field: a visible <label> tied to its control by id. */
export function field(labelText, control, hint) {
  if (!control.id) control.id = `f${++fieldSeq}`;
  const children = [h("label", { for: control.id, text: labelText }), control];
  if (hint) {
    const hintEl = h("small", { class: "hint", id: `${control.id}-hint`, text: hint });
    control.setAttribute("aria-describedby", hintEl.id);
    children.push(hintEl);
  }
  return h("div", { class: "field" }, children);
}

/** A table inside a horizontally scrollable box, so a phone never scrolls the page sideways. */
export function table(headers, rows, caption) {
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || headers.join(", ") },
    h("table", {},
      caption ? h("caption", { text: caption }) : null,
      h("thead", {}, h("tr", {}, headers.map((title) => h("th", { scope: "col", text: title })))),
      h("tbody", {}, rows)));
}

/** Copies text; falls back to a selection copy where the Clipboard API is unavailable (plain http). */
export async function copyText(text, selectable) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch { /* fall through */ }
  if (selectable && selectable.select) {
    selectable.focus();
    selectable.select();
    try { return document.execCommand("copy"); } catch { return false; }
  }
  return false;
}

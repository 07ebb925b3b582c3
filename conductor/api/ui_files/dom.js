// Small DOM helpers. Text always goes in as text nodes (never as HTML):
// a node name or an error message cannot inject markup.

/** An element: h("td", {class: "x", onclick: f}, "text", child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** The CSS class of a state's badge: "st-wait-call-back". */
export function stateClass(state) {
  return "st-" + String(state ?? "unknown").replace(/[^a-z0-9]+/gi, "-");
}

/** A state badge, with "-> target" when a transition is in progress. */
export function badge(state, target) {
  return h("span", {class: "state"},
    h("span", {class: `badge ${stateClass(state)}`}, state ?? "unknown"),
    target ? h("span", {class: "target"}, ` \u2192 ${target}`) : null);
}

/** "12:03:04" (local time) of an ISO 8601 timestamp; "" for none. */
export function clock(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? String(iso) : at.toLocaleTimeString([], {hour12: false});
}

/** "2026-01-02 12:03:04" (local time) of an ISO 8601 timestamp. */
export function stamp(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ${clock(iso)}`;
}

/** "4 s", "3 min", "2 h" since an ISO 8601 timestamp. */
export function age(iso, now = Date.now()) {
  if (!iso) return "";
  const seconds = Math.max(0, (now - new Date(iso).getTime()) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** A key/value table of an object (nested values as JSON). */
export function kvTable(object, empty = "none") {
  const entries = Object.entries(object || {});
  if (!entries.length) return h("p", {class: "muted"}, empty);
  return h("table", {class: "kv"}, h("tbody", null, entries.map(([key, value]) =>
    h("tr", null, h("th", null, key),
      h("td", null, typeof value === "object" && value !== null ? JSON.stringify(value) : String(value))))));
}

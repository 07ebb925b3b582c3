// The fleet: every node's states, counted by provision and power state and
// listed in a table, kept current by the event stream.
//
// Changes are batched: an event marks its node dirty, and the rows and
// counts are redrawn once per animation frame, so a burst of thousands of
// events costs a few redraws. A redrawn row carries the commit time of the
// oldest change it shows for the first time (data-committed): what
// bench/dashboard.py measures "commit -> visible" from.

import {badge, h, stateClass} from "./dom.js";

export const PROVISION_STATES = [
  "enroll", "verifying", "manageable", "inspecting", "inspect wait", "inspect failed", "cleaning",
  "clean wait", "clean failed", "available", "deploying", "wait call-back", "deploy failed", "active",
  "deleting", "error",
];
export const POWER_STATES = ["power on", "power off", "rebooting", "soft power off", "unknown"];
const FIELDS = ["name", "power_state", "target_power_state", "provision_state", "target_provision_state",
  "last_error", "maintenance", "maintenance_reason", "request_id"];

const powerOf = (node) => node.power_state || "unknown";
const sortKey = (node) => (node.name || node.uuid).toLowerCase();

export class Fleet {
  constructor() {
    this.nodes = new Map();
    this.rows = new Map();
    this.dirty = new Set();
    this.since = new Map(); // uuid -> commit time of its oldest change not drawn yet
    this.scheduled = false;
    this.painted = false;
    this.filter = {provision: null, power: null, text: ""};
    this.watchers = new Set();
    this.provisionCounts = h("div", {class: "chips", id: "provision-counts"});
    this.powerCounts = h("div", {class: "chips", id: "power-counts"});
    this.shown = h("span", {class: "muted", id: "fleet-shown"});
    this.body = h("div", {id: "fleet-rows", role: "rowgroup"});
    const search = h("input", {type: "search", id: "fleet-search", placeholder: "filter by name or UUID",
      oninput: (e) => { this.filter.text = e.target.value.trim().toLowerCase(); this.refilter(); }});
    this.element = h("section", {class: "panel fleet"},
      h("h2", null, "Fleet ", h("span", {class: "total", id: "fleet-total"}, "")),
      h("div", {class: "counts"},
        h("div", null, h("h3", null, "Provision state"), this.provisionCounts),
        h("div", null, h("h3", null, "Power state"), this.powerCounts)),
      h("div", {class: "tools"}, search, this.shown),
      // Rows of fixed height, each its own layout boundary, off-screen ones not
      // rendered: redrawing one row costs the same with 20 nodes or 10,000.
      h("div", {class: "scroll"},
        h("div", {class: "rows", id: "fleet-table", role: "table"},
          h("div", {class: "row head", role: "row"}, ["node", "provision state", "power", "maintenance", "request",
            "last error"].map((title) => h("span", {role: "columnheader"}, title))),
          this.body)));
  }

  /** A node's current fields (undefined if unknown). */
  get(uuid) {
    return this.nodes.get(uuid);
  }

  /** The name of a node, or its UUID. */
  label(uuid) {
    const node = this.nodes.get(uuid);
    return (node && node.name) || uuid;
  }

  /** Call fn(node) whenever a node is drawn again (the node page follows its own). */
  watch(fn) {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  /** Replace every node (a snapshot from GET /v1/nodes); drawn at once. */
  load(nodes) {
    this.nodes = new Map(nodes.map((node) => [node.uuid, node]));
    this.rows = new Map();
    this.dirty.clear();
    this.since.clear();
    const sorted = [...this.nodes.values()].sort((a, b) => sortKey(a).localeCompare(sortKey(b)));
    const fragment = document.createDocumentFragment();
    for (const node of sorted) {
      const row = this.drawRow(node);
      this.rows.set(node.uuid, row);
      fragment.append(row);
    }
    this.body.replaceChildren(fragment);
    this.drawCounts();
    this.refilter();
    if (!this.painted) {
      this.painted = true;
      performance.mark("fleet-rendered");
    }
  }

  /** Merge an event's node snapshot (and when it was committed). */
  update(snapshot, committedAt) {
    const known = this.nodes.get(snapshot.uuid) || {uuid: snapshot.uuid};
    const node = {...known};
    for (const field of FIELDS) if (field in snapshot) node[field] = snapshot[field];
    this.nodes.set(node.uuid, node);
    this.touch(node.uuid, committedAt);
  }

  /** Note a node's active request (from the request events: the node snapshot does not carry it). */
  setRequest(uuid, requestId, committedAt) {
    const node = this.nodes.get(uuid);
    if (!node || node.request_id === requestId) return;
    this.nodes.set(uuid, {...node, request_id: requestId});
    this.touch(uuid, committedAt);
  }

  remove(uuid) {
    this.nodes.delete(uuid);
    this.touch(uuid);
  }

  touch(uuid, committedAt) {
    this.dirty.add(uuid);
    // (ISO 8601 UTC timestamps of one form: their text order is their time order.)
    if (committedAt && !(this.since.get(uuid) <= committedAt)) this.since.set(uuid, committedAt);
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.scheduled = false;
    for (const uuid of this.dirty) {
      const node = this.nodes.get(uuid);
      const row = this.rows.get(uuid);
      if (!node) {
        if (row) row.remove();
        this.rows.delete(uuid);
      } else if (row) {
        this.fillRow(row, node);
        if (this.since.has(uuid)) row.dataset.committed = this.since.get(uuid);
        row.hidden = !this.matches(node);
      } else {
        const added = this.drawRow(node);
        added.hidden = !this.matches(node);
        if (this.since.has(uuid)) added.dataset.committed = this.since.get(uuid);
        this.rows.set(uuid, added);
        this.insertSorted(added, node);
      }
      for (const fn of this.watchers) fn(node, uuid);
    }
    this.dirty.clear();
    this.since.clear();
    this.drawCounts();
    this.drawShown();
  }

  insertSorted(row, node) {
    const key = sortKey(node);
    for (const other of this.body.children) {
      const known = this.nodes.get(other.dataset.uuid);
      if (known && sortKey(known).localeCompare(key) > 0) {
        other.before(row);
        return;
      }
    }
    this.body.append(row);
  }

  drawRow(node) {
    const row = h("div", {class: "row", role: "row", dataset: {uuid: node.uuid}});
    this.fillRow(row, node);
    return row;
  }

  fillRow(row, node) {
    row.dataset.provision = node.provision_state;
    row.dataset.power = powerOf(node);
    row.replaceChildren(
      h("span", {role: "cell"}, h("a", {href: `#/node/${node.uuid}`}, node.name || node.uuid)),
      h("span", {role: "cell", class: "provision"}, badge(node.provision_state, node.target_provision_state)),
      h("span", {role: "cell", class: "power"}, badge(node.power_state, node.target_power_state)),
      h("span", {role: "cell", class: "maintenance"}, node.maintenance ? h("span", {class: "badge st-maintenance",
        title: node.maintenance_reason || ""}, "maintenance") : ""),
      h("span", {role: "cell", class: "request mono", title: node.request_id || null}, node.request_id || ""),
      h("span", {role: "cell", class: "error", title: node.last_error || null}, node.last_error || ""));
  }

  matches(node) {
    const {provision, power, text} = this.filter;
    if (provision && node.provision_state !== provision) return false;
    if (power && powerOf(node) !== power) return false;
    if (text && !((node.name || "").toLowerCase().includes(text) || node.uuid.includes(text))) return false;
    return true;
  }

  refilter() {
    for (const [uuid, row] of this.rows) row.hidden = !this.matches(this.nodes.get(uuid));
    this.drawCounts();
    this.drawShown();
  }

  drawShown() {
    const total = this.nodes.size;
    let shown = 0;
    for (const row of this.rows.values()) if (!row.hidden) shown += 1;
    this.shown.textContent = shown === total ? "" : `showing ${shown} of ${total}`;
  }

  drawCounts() {
    const provision = new Map();
    const power = new Map();
    for (const node of this.nodes.values()) {
      provision.set(node.provision_state, (provision.get(node.provision_state) || 0) + 1);
      power.set(powerOf(node), (power.get(powerOf(node)) || 0) + 1);
    }
    this.element.querySelector("#fleet-total").textContent = `${this.nodes.size} nodes`;
    this.provisionCounts.replaceChildren(...this.chips(provision, PROVISION_STATES, "provision"));
    this.powerCounts.replaceChildren(...this.chips(power, POWER_STATES, "power"));
  }

  chips(counts, order, kind) {
    const states = [...order.filter((s) => counts.has(s)), ...[...counts.keys()].filter((s) => !order.includes(s))];
    return states.map((state) => h("button", {
      type: "button", class: `chip ${stateClass(state)}${this.filter[kind] === state ? " selected" : ""}`,
      dataset: {state, count: counts.get(state)}, title: `show only ${state} (again: all)`,
      onclick: () => { this.filter[kind] = this.filter[kind] === state ? null : state; this.refilter(); },
    }, h("span", {class: "name"}, state), h("span", {class: "n"}, String(counts.get(state)))));
  }
}

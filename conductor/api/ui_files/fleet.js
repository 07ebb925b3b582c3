// The fleet: every node's states, counted by provision and power state and
// listed in a table, kept current by the event stream.
//
// Changes are batched: an event marks its node dirty, and the rows and
// counts are redrawn once per animation frame, so a burst of thousands of
// events costs a few redraws. Each row carries the commit time of the last
// event drawn in it (data-committed), which bench/dashboard.py reads.

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
    this.scheduled = false;
    this.painted = false;
    this.filter = {provision: null, power: null, text: ""};
    this.watchers = new Set();
    this.provisionCounts = h("div", {class: "chips", id: "provision-counts"});
    this.powerCounts = h("div", {class: "chips", id: "power-counts"});
    this.shown = h("span", {class: "muted", id: "fleet-shown"});
    this.body = h("tbody", {id: "fleet-rows"});
    const search = h("input", {type: "search", id: "fleet-search", placeholder: "filter by name or UUID",
      oninput: (e) => { this.filter.text = e.target.value.trim().toLowerCase(); this.refilter(); }});
    this.element = h("section", {class: "panel fleet"},
      h("h2", null, "Fleet ", h("span", {class: "total", id: "fleet-total"}, "")),
      h("div", {class: "counts"},
        h("div", null, h("h3", null, "Provision state"), this.provisionCounts),
        h("div", null, h("h3", null, "Power state"), this.powerCounts)),
      h("div", {class: "tools"}, search, this.shown),
      h("div", {class: "scroll"},
        h("table", {class: "grid", id: "fleet-table"},
          h("thead", null, h("tr", null, ["node", "provision state", "power", "maintenance", "request",
            "last error"].map((title) => h("th", null, title)))),
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
    if (committedAt) node.committed_at = committedAt;
    this.nodes.set(node.uuid, node);
    this.touch(node.uuid);
  }

  /** Note a node's active request (from the request events: the node snapshot does not carry it). */
  setRequest(uuid, requestId, committedAt) {
    const node = this.nodes.get(uuid);
    if (!node || node.request_id === requestId) return;
    this.nodes.set(uuid, {...node, request_id: requestId, committed_at: committedAt || node.committed_at});
    this.touch(uuid);
  }

  remove(uuid) {
    this.nodes.delete(uuid);
    this.touch(uuid);
  }

  touch(uuid) {
    this.dirty.add(uuid);
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
        row.hidden = !this.matches(node);
      } else {
        const added = this.drawRow(node);
        added.hidden = !this.matches(node);
        this.rows.set(uuid, added);
        this.insertSorted(added, node);
      }
      for (const fn of this.watchers) fn(node, uuid);
    }
    this.dirty.clear();
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
    const row = h("tr", {dataset: {uuid: node.uuid}});
    this.fillRow(row, node);
    return row;
  }

  fillRow(row, node) {
    row.dataset.provision = node.provision_state;
    row.dataset.power = powerOf(node);
    if (node.committed_at) row.dataset.committed = node.committed_at;
    row.replaceChildren(
      h("td", null, h("a", {href: `#/node/${node.uuid}`}, node.name || node.uuid)),
      h("td", {class: "provision"}, badge(node.provision_state, node.target_provision_state)),
      h("td", {class: "power"}, badge(node.power_state, node.target_power_state)),
      h("td", {class: "maintenance"}, node.maintenance ? h("span", {class: "badge st-maintenance",
        title: node.maintenance_reason || ""}, "maintenance") : ""),
      h("td", {class: "request mono"}, node.request_id || ""),
      h("td", {class: "error"}, node.last_error || ""));
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

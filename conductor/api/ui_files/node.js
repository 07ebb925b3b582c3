// One node: its states (live), actions (operator and admin), the requests
// they start followed to their end, and its requests, history, ports,
// properties (inventory) and driver_info.

import {call, get, qs} from "./api.js";
import {badge, clock, h, kvTable, stamp} from "./dom.js";

const FINAL = ["succeeded", "failed", "cancelled"];
/** Actions that change what a node runs: asked twice. */
const CONFIRM = new Set(["power off", "rebooting", "deleted", "abort"]);
const REFRESH_MS = 400;

export class NodePage {
  constructor(app, ident) {
    this.app = app;
    this.ident = ident;
    this.node = null;
    this.seen = new Map(); // request id -> latest snapshot from the stream
    this.entries = new Map(); // request id -> its line in the action log
    this.closed = false;
    this.refreshTimer = null;
    this.states = h("div", {id: "node-states"});
    this.log = h("ol", {class: "action-log", id: "action-log"});
    this.requests = h("div", {id: "node-requests"});
    this.history = h("div", {id: "node-history"});
    this.ports = h("div", {id: "node-ports"});
    this.properties = h("div", {id: "node-properties"});
    this.driverInfo = h("div", {id: "node-driver-info"});
    this.title = h("h2", {id: "node-title"}, ident);
    this.element = h("div", {class: "node-page"},
      h("p", null, h("a", {href: "#/"}, "\u2190 fleet")),
      h("section", {class: "panel"}, this.title, this.states),
      app.canOperate ? this.actions() : null,
      h("section", {class: "panel"}, h("h2", null, "Requests"), this.requests),
      h("section", {class: "panel"}, h("h2", null, "History"), this.history),
      h("div", {class: "columns"},
        h("section", {class: "panel"}, h("h2", null, "Ports"), this.ports),
        h("section", {class: "panel"}, h("h2", null, "Properties (inventory)"), this.properties),
        h("section", {class: "panel"}, h("h2", null, "Driver info"), this.driverInfo)));
  }

  async load() {
    try {
      this.node = await get(`/v1/nodes/${encodeURIComponent(this.ident)}`);
    } catch (exc) {
      this.states.replaceChildren(h("p", {class: "message error"}, exc.describe()));
      return;
    }
    this.drawStates();
    this.title.replaceChildren(this.node.name || this.node.uuid, " ",
      h("span", {class: "muted small mono"}, this.node.uuid));
    this.ports.replaceChildren(h("p", {class: "muted"}, "loading\u2026"));
    this.properties.replaceChildren(kvTable(this.node.properties, "no properties (inspect the node to find them)"));
    this.driverInfo.replaceChildren(kvTable({driver: this.node.driver, ...this.node.driver_info}));
    await Promise.all([this.loadLists(), this.loadPorts(), this.app.canOperate ? this.loadImages() : null]);
  }

  close() {
    this.closed = true;
    clearTimeout(this.refreshTimer);
  }

  // --- live ----------------------------------------------------------------------

  /** The fleet redrew a node: ours? */
  onNode(node, uuid) {
    if (!this.node || uuid !== this.node.uuid || this.closed) return;
    if (node) Object.assign(this.node, node);
    this.drawStates();
    this.refreshSoon();
  }

  /** A request event (any node). */
  onRequest(request) {
    if (!this.node || request.node_uuid !== this.node.uuid) return;
    this.seen.set(request.id, request);
    const entry = this.entries.get(request.id);
    if (entry) entry.show(request);
    this.refreshSoon();
  }

  refreshSoon() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.loadLists(), REFRESH_MS);
  }

  // --- drawing -------------------------------------------------------------------

  drawStates() {
    const n = this.node;
    const rows = [
      ["provision state", badge(n.provision_state, n.target_provision_state)],
      ["power state", badge(n.power_state, n.target_power_state)],
      ["maintenance", n.maintenance ? `yes${n.maintenance_reason ? `: ${n.maintenance_reason}` : ""}` : "no"],
      ["active request", n.request_id || "none"],
      ["last error", n.last_error || ""],
      ["fault", n.fault || ""],
      ["reservation", n.reservation || ""],
    ];
    this.states.replaceChildren(h("table", {class: "kv"}, h("tbody", null,
      rows.map(([key, value]) => h("tr", {dataset: {field: key}}, h("th", null, key), h("td", null, value))))));
  }

  async loadLists() {
    if (this.closed || !this.node) return;
    const uuid = this.node.uuid;
    try {
      const [requests, history] = await Promise.all([
        get(`/v1/requests${qs({node: uuid, limit: 20})}`),
        get(`/v1/nodes/${uuid}/history${qs({limit: 50})}`),
      ]);
      this.requests.replaceChildren(table(["request", "kind", "target", "state", "step", "error", "created",
        "finished"], requests.requests.map((r) => [h("span", {class: "mono"}, r.id), r.kind, r.target,
        badge(r.state), r.step || "", r.error || "", stamp(r.created_at), clock(r.finished_at)])));
      this.history.replaceChildren(table(["at", "event", "severity", "message", "provision", "power"],
        history.history.map((e) => [stamp(e.created_at), e.event, e.severity, e.message, e.provision_state || "",
          e.power_state || ""])));
    } catch (exc) {
      this.history.replaceChildren(h("p", {class: "message error"}, exc.describe()));
    }
  }

  async loadPorts() {
    try {
      const page = await get(`/v1/ports${qs({node: this.node.uuid, limit: 1000})}`);
      this.ports.replaceChildren(page.ports.length
        ? table(["MAC address", "port", "created"], page.ports.map((p) => [h("span", {class: "mono"}, p.address),
          h("span", {class: "mono small"}, p.uuid), stamp(p.created_at)]))
        : h("p", {class: "muted"}, "no ports"));
    } catch (exc) {
      this.ports.replaceChildren(h("p", {class: "message error"}, exc.describe()));
    }
  }

  async loadImages() {
    try {
      const page = await get("/v1/images?limit=1000");
      this.imageList.replaceChildren(...page.images.map((image) => h("option", {value: image.name})));
    } catch {
      // The deploy form still takes a URL.
    }
  }

  // --- actions -------------------------------------------------------------------

  actions() {
    const button = (label, run, extra = {}) => h("button", {type: "button", onclick: run, ...extra}, label);
    const power = (target) => () => this.act(target === "rebooting" ? "reboot" : target, target,
      () => call("PUT", `/v1/nodes/${this.node.uuid}/states/power`, {target}));
    const provision = (target, label, params = () => ({})) => () => this.act(label, target,
      () => call("PUT", `/v1/nodes/${this.node.uuid}/states/provision`, {target, ...params()}));
    this.imageList = h("datalist", {id: "images"});
    this.image = h("input", {type: "text", id: "deploy-image", list: "images", placeholder: "image name or URL"});
    this.checksum = h("input", {type: "text", id: "deploy-checksum", placeholder: "SHA-256 (for an http(s) URL)"});
    this.reason = h("input", {type: "text", id: "maintenance-reason", placeholder: "reason"});
    const deployParams = () => {
      const params = {image_source: this.image.value.trim()};
      if (this.checksum.value.trim()) params.image_checksum = this.checksum.value.trim();
      return params;
    };
    const maintenance = (on) => () => this.act(on ? "maintenance on" : "maintenance off", null,
      () => call("PATCH", `/v1/nodes/${this.node.uuid}`,
        on ? {maintenance: true, maintenance_reason: this.reason.value.trim() || null}
          : {maintenance: false, maintenance_reason: null}));
    return h("section", {class: "panel actions", id: "node-actions"},
      h("h2", null, "Actions"),
      h("div", {class: "action-row"}, h("span", {class: "group"}, "power"),
        button("power on", power("power on"), {id: "act-power-on"}),
        button("power off", power("power off"), {id: "act-power-off"}),
        button("reboot", power("rebooting"), {id: "act-reboot"})),
      h("div", {class: "action-row"}, h("span", {class: "group"}, "provision"),
        button("manage", provision("manage", "manage"), {id: "act-manage"}),
        button("provide", provision("provide", "provide"), {id: "act-provide"}),
        button("inspect", provision("inspect", "inspect"), {id: "act-inspect"}),
        button("undeploy", provision("deleted", "undeploy"), {id: "act-undeploy"}),
        button("abort", provision("abort", "abort"), {id: "act-abort"})),
      h("div", {class: "action-row"}, h("span", {class: "group"}, "deploy"), this.image, this.imageList,
        this.checksum, button("deploy", provision("active", "deploy", deployParams), {id: "act-deploy"})),
      h("div", {class: "action-row"}, h("span", {class: "group"}, "maintenance"), this.reason,
        button("maintenance on", maintenance(true), {id: "act-maintenance-on"}),
        button("maintenance off", maintenance(false), {id: "act-maintenance-off"})),
      this.log);
  }

  async act(label, target, send) {
    if (CONFIRM.has(target) && !window.confirm(`${label}: ${this.node.name || this.node.uuid}?`)) return;
    const line = h("li", {class: "pending"}, h("span", {class: "when"}, clock(new Date().toISOString())),
      h("span", {class: "what"}, label), h("span", {class: "result"}, "sending\u2026"));
    this.log.prepend(line);
    const result = line.querySelector(".result");
    let answer;
    try {
      answer = await send();
    } catch (exc) {
      line.className = "failed";
      result.replaceChildren(h("span", {class: "message error"}, exc.describe()));
      return;
    }
    if (!answer || !answer.kind) { // a PATCH: done once answered
      line.className = "succeeded";
      result.textContent = "done";
      Object.assign(this.node, answer || {});
      this.drawStates();
      return;
    }
    const entry = {
      show: (request) => {
        line.className = request.state;
        line.dataset.request = request.id;
        result.replaceChildren(h("span", {class: "mono"}, request.id), " ", badge(request.state),
          request.step ? ` ${request.step}` : "", request.error ? h("span", {class: "error"}, ` ${request.error}`) : "");
      },
    };
    this.entries.set(answer.id, entry);
    entry.show(this.seen.get(answer.id) || answer);
    this.follow(answer.id, entry);
  }

  /** Wait for the end of a request with long polls (events show its steps meanwhile). */
  async follow(requestId, entry) {
    while (!this.closed) {
      let request;
      try {
        request = await get(`/v1/requests/${requestId}?wait=30`);
      } catch (exc) {
        if (exc.status && exc.status < 500) return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
        continue;
      }
      const seen = this.seen.get(requestId);
      if (FINAL.includes(request.state) || !seen || !FINAL.includes(seen.state)) entry.show(request);
      if (FINAL.includes(request.state)) return;
    }
  }
}

function table(titles, rows) {
  if (!rows.length) return h("p", {class: "muted"}, "none");
  return h("div", {class: "scroll short"}, h("table", {class: "grid"},
    h("thead", null, h("tr", null, titles.map((t) => h("th", null, t)))),
    h("tbody", null, rows.map((cells) => h("tr", null, cells.map((c) => h("td", null, c)))))));
}

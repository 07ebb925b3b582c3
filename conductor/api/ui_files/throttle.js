// The throttle knobs (admin only): GET /v1/throttle, a form that PATCHes
// what changed, and throttle.changed events from other operators.

import {call, get} from "./api.js";
import {h} from "./dom.js";

export const KNOBS = [
  ["write_rate", "State changes per second, all clients (0: no limit)", "any"],
  ["write_burst", "Burst of state changes, all clients", "1"],
  ["client_write_rate", "State changes per second, one client (0: no limit)", "any"],
  ["client_write_burst", "Burst of state changes, one client", "1"],
  ["read_rate", "Reads per second, one client (0: no limit)", "any"],
  ["read_burst", "Burst of reads, one client", "1"],
  ["max_queue_depth", "Jobs waiting before new work is refused (0: no limit)", "1"],
  ["bmc_min_interval", "Least seconds between two commands to one BMC", "any"],
  ["worker_concurrency", "Worker processes per conductor host taking jobs (0: all)", "1"],
];

export class Throttle {
  constructor() {
    this.values = {};
    this.inputs = {};
    this.errors = {};
    this.message = h("p", {class: "message", id: "throttle-message", role: "status"});
    const rows = KNOBS.map(([name, help, step]) => {
      this.inputs[name] = h("input", {type: "number", id: `throttle-${name}`, step, min: "0", required: true});
      this.errors[name] = h("span", {class: "field-error"});
      return h("label", {title: help}, h("span", {class: "knob"}, name), this.inputs[name], this.errors[name]);
    });
    this.form = h("form", {id: "throttle-form", onsubmit: (e) => { e.preventDefault(); this.save(); }},
      rows, h("button", {type: "submit", id: "throttle-save"}, "Apply"));
    this.element = h("section", {class: "panel throttle"},
      h("h2", null, "Throttle ", h("span", {class: "muted small"}, "admin")), this.form, this.message);
  }

  async load() {
    try {
      this.show(await get("/v1/throttle"), true);
    } catch (exc) {
      this.say(`Cannot read the throttle: ${exc.describe()}`, "error");
    }
  }

  /** New settings (loaded, saved, or from a throttle.changed event). */
  show(values, everything = false) {
    for (const [name] of KNOBS) {
      const input = this.inputs[name];
      // An operator's unsaved edit is kept, unless this is a full load.
      const edited = input.value !== "" && Number(input.value) !== this.values[name];
      if (everything || !edited) input.value = String(values[name]);
    }
    this.values = {...values};
  }

  async save() {
    const changes = {};
    for (const [name, , step] of KNOBS) {
      const value = Number(this.inputs[name].value);
      this.errors[name].textContent = "";
      if (value !== this.values[name]) changes[name] = step === "1" ? Math.round(value) : value;
    }
    if (!Object.keys(changes).length) {
      this.say("Nothing changed.", "info");
      return;
    }
    try {
      this.show(await call("PATCH", "/v1/throttle", changes), true);
      this.say(`Applied ${Object.entries(changes).map(([k, v]) => `${k} = ${v}`).join(", ")}.`, "ok");
    } catch (exc) {
      for (const [name, text] of Object.entries(exc.body.errors || {})) {
        if (this.errors[name]) this.errors[name].textContent = text;
      }
      this.say(exc.describe(), "error");
    }
  }

  say(text, kind) {
    this.message.textContent = text;
    this.message.className = `message ${kind}`;
  }
}

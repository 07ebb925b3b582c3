// Requests in flight (queued, running, waiting) and the latest failed ones,
// loaded once and kept current by the request.* events.

import {age, badge, clock, h} from "./dom.js";
import {get, qs} from "./api.js";

const ACTIVE = ["queued", "running", "waiting"];
const SHOWN = 50;
/** Redrawn at most this often: a burst of request events costs a few redraws, not one per frame. */
const DRAW_MS = 250;
const FAILED_KEPT = 30;

export class Requests {
  constructor(fleet) {
    this.fleet = fleet;
    this.active = new Map();
    this.failed = [];
    this.onCount = () => {}; // told how many are in flight, at each redraw
    this.scheduled = false;
    this.summary = h("div", {class: "chips", id: "requests-summary"});
    this.activeBody = h("tbody", {id: "requests-active"});
    this.failedBody = h("tbody", {id: "requests-failed"});
    this.element = h("section", {class: "panel requests"},
      h("h2", null, "Requests"),
      this.summary,
      h("h3", null, "In flight"),
      h("div", {class: "scroll short"}, h("table", {class: "grid"},
        h("thead", null, h("tr", null, ["node", "kind", "target", "state", "for"].map((t) => h("th", null, t)))),
        this.activeBody)),
      h("h3", null, "Failed (latest)"),
      h("div", {class: "scroll short"}, h("table", {class: "grid"},
        h("thead", null, h("tr", null, ["node", "kind", "target", "error", "at"].map((t) => h("th", null, t)))),
        this.failedBody)));
    setInterval(() => this.draw(), 5000); // the "for" column ages
  }

  /** Load the requests in flight and the latest failed ones. */
  async load() {
    const pages = await Promise.all([...ACTIVE, "failed"].map((state) =>
      get(`/v1/requests${qs({state, limit: state === "failed" ? FAILED_KEPT : 1000})}`)));
    this.active = new Map(pages.slice(0, 3).flatMap((page) => page.requests).map((r) => [r.id, r]));
    this.failed = pages[3].requests;
    this.draw();
  }

  /** A request's snapshot from an event. */
  update(request) {
    if (ACTIVE.includes(request.state)) {
      this.active.set(request.id, request);
    } else {
      this.active.delete(request.id);
      if (request.state === "failed" && !this.failed.some((r) => r.id === request.id)) {
        this.failed = [request, ...this.failed].slice(0, FAILED_KEPT);
      }
    }
    if (!this.scheduled) {
      this.scheduled = true;
      setTimeout(() => requestAnimationFrame(() => { this.scheduled = false; this.draw(); }), DRAW_MS);
    }
  }

  draw() {
    const counts = {queued: 0, running: 0, waiting: 0};
    for (const request of this.active.values()) counts[request.state] += 1;
    this.onCount(this.active.size);
    this.summary.replaceChildren(...ACTIVE.map((state) => h("span", {class: `chip st-${state}`, dataset: {state}},
      h("span", {class: "name"}, state), h("span", {class: "n"}, String(counts[state])))));
    const oldest = [...this.active.values()].sort((a, b) => (a.created_at || "").localeCompare(b.created_at || ""));
    const now = Date.now();
    this.activeBody.replaceChildren(...oldest.slice(0, SHOWN).map((r) => h("tr", {dataset: {request: r.id}},
      h("td", null, this.nodeLink(r.node_uuid)), h("td", null, r.kind), h("td", null, r.target),
      h("td", null, badge(r.state)), h("td", null, age(r.created_at, now)))));
    if (oldest.length > SHOWN) {
      this.activeBody.append(h("tr", null, h("td", {colspan: 5, class: "muted"}, `and ${oldest.length - SHOWN} more`)));
    }
    this.failedBody.replaceChildren(...this.failed.map((r) => h("tr", {dataset: {request: r.id}},
      h("td", null, this.nodeLink(r.node_uuid)), h("td", null, r.kind), h("td", null, r.target),
      h("td", {class: "error", title: r.error || null}, r.error || ""), h("td", null, clock(r.finished_at)))));
  }

  nodeLink(uuid) {
    return h("a", {href: `#/node/${uuid}`}, this.fleet.label(uuid));
  }
}

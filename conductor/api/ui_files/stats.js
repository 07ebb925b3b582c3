// The work queue and admission figures: GET /v1/stats every few seconds;
// rates per second from two readings of its counters.

import {get} from "./api.js";
import {h} from "./dom.js";

const EVERY_MS = 2000;

const sum = (counts) => Object.values(counts || {}).reduce((a, b) => a + b, 0);

export class Stats {
  constructor() {
    this.previous = null;
    this.tiles = {};
    const tile = (key, title, help) => {
      this.tiles[key] = h("span", {class: "value", id: `stat-${key}`}, "\u2013");
      return h("div", {class: "tile", title: help}, this.tiles[key], h("span", {class: "label"}, title));
    };
    this.note = h("p", {class: "muted small", id: "stats-note"});
    this.element = h("section", {class: "panel stats"},
      h("div", {class: "tiles"},
        tile("depth", "queue depth", "Jobs waiting in the work queue"),
        tile("drain", "drained / s", "Jobs completed per second, all conductors (moving average)"),
        tile("admitted", "admitted / s", "State changes accepted (202) per second"),
        tile("refused", "refused / s", "State changes refused per second (rate limits, full queue, conflicts...)"),
        tile("inflight", "in flight", "Requests queued, running or waiting"),
        tile("conductors", "conductors", "Conductors whose heartbeat is recent")),
      this.note);
  }

  /** Requests in flight as the event stream has them (more current than a reading every few seconds). */
  inFlight(count) {
    this.live = true;
    this.tiles.inflight.textContent = String(count);
  }

  start() {
    this.poll();
    this.timer = setInterval(() => this.poll(), EVERY_MS);
  }

  async poll() {
    if (document.hidden) return;
    let now;
    try {
      now = await get("/v1/stats");
    } catch (exc) {
      this.note.textContent = `Figures unavailable: ${exc.describe ? exc.describe() : exc.message}`;
      return;
    }
    this.note.textContent = "";
    this.tiles.depth.textContent = String(now.queue_depth);
    this.tiles.drain.textContent = now.drain_rate.toFixed(1);
    if (!this.live) this.tiles.inflight.textContent = String(sum(now.requests_active));
    this.tiles.conductors.textContent = String(now.conductors_alive);
    const before = this.previous;
    this.previous = now;
    if (!before) return;
    const seconds = (new Date(now.at) - new Date(before.at)) / 1000;
    if (seconds <= 0) return;
    const rate = (key) => Math.max(0, (sum(now[key]) - sum(before[key])) / seconds).toFixed(1);
    this.tiles.admitted.textContent = rate("accepted");
    this.tiles.refused.textContent = rate("rejected");
  }
}

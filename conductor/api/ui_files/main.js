// The dashboard: sign in with a token, then the fleet (live), requests,
// queue figures and throttle; #/node/<uuid> is one node's page.

import {ApiError, get, getAll, onUnauthorized, token} from "./api.js";
import {h} from "./dom.js";
import {Fleet} from "./fleet.js";
import {NodePage} from "./node.js";
import {Requests} from "./requests.js";
import {Stats} from "./stats.js";
import {EventStream} from "./stream.js";
import {Throttle} from "./throttle.js";

const ROLES = {reader: 0, operator: 1, admin: 2};

class App {
  constructor(root) {
    this.root = root;
    this.caller = null;
    this.stream = null;
    this.page = null;
    this.syncing = null;
    this.held = [];
    this.banner = h("div", {id: "banner", class: "banner", role: "alert", hidden: true});
    // A 401 once signed in: the token was revoked (or the API forgot it).
    onUnauthorized((error) => { if (this.caller) this.signOut(error.message); });
  }

  get canOperate() {
    return ROLES[this.caller.role] >= ROLES.operator;
  }

  get isAdmin() {
    return this.caller.role === "admin";
  }

  /** Who the stored token is (or, with no token, whether the API needs one). */
  async start() {
    try {
      this.caller = await get("/v1/tokens/self");
    } catch (exc) {
      if (exc.status === 401) {
        const refused = token.get();
        token.clear();
        return this.signIn(refused ? exc.message : "");
      }
      return this.signIn(exc.describe());
    }
    this.open();
  }

  // --- signing in and out --------------------------------------------------------

  signIn(message) {
    this.close();
    const secret = h("input", {type: "password", id: "token", autocomplete: "off", spellcheck: "false",
      placeholder: "cdt_\u2026", required: true, autofocus: true});
    const note = h("p", {class: "message error", id: "login-message", role: "alert"}, message || "");
    // No name on the input: a form sent without this script would not put the token in a URL.
    const form = h("form", {id: "login", class: "panel login", onsubmit: async (event) => {
      event.preventDefault();
      token.set(secret.value.trim());
      note.textContent = "";
      await this.start();
    }},
    h("h2", null, "Sign in"),
    h("p", null, "Paste an API token. It stays in this browser tab (session storage) and is sent only as an ",
      h("code", null, "Authorization: Bearer"), " header."),
    h("p", {class: "muted small"}, "Make one with ", h("code", null, "conductor token create --role reader"),
      " (or operator, admin); ", h("code", null, "conductor up"), " keeps an admin token in ",
      h("code", null, "<data dir>/admin.token"), "."),
    secret, h("button", {type: "submit", id: "sign-in"}, "Sign in"), note);
    this.root.replaceChildren(header(null), form);
    secret.focus();
  }

  signOut(message) {
    this.caller = null;
    token.clear();
    this.signIn(message);
  }

  // --- the signed-in dashboard -----------------------------------------------------

  open() {
    this.close();
    this.fleet = new Fleet();
    this.requests = new Requests(this.fleet);
    this.stats = new Stats();
    this.requests.onCount = (count) => this.stats.inFlight(count);
    this.throttle = this.isAdmin ? new Throttle() : null;
    this.status = h("span", {id: "live", class: "live is-down", title: "connecting"}, "connecting");
    this.fleetPage = h("div", {id: "fleet-page", class: "fleet-page"},
      this.stats.element,
      h("div", {class: "layout"}, this.fleet.element,
        h("div", {class: "side"}, this.requests.element, this.throttle ? this.throttle.element : null)));
    this.nodeSlot = h("div", {id: "node-page"});
    const who = this.caller.name || this.caller.token_id || this.caller.client;
    this.root.replaceChildren(
      header(h("span", {class: "who"},
        h("span", {id: "role", class: `role role-${this.caller.role}`}, this.caller.role), " ", who, " ",
        this.status, " ",
        h("button", {type: "button", id: "sign-out", onclick: () => this.signOut("Signed out.")}, "Sign out"))),
      this.banner, this.fleetPage, this.nodeSlot);
    this.fleet.watch((node, uuid) => this.page && this.page.onNode(node, uuid));
    this.stream = new EventStream("/v1/events", {
      event: (type, payload) => this.onEvent(type, payload),
      sync: () => this.sync(),
      status: (state, text) => this.setStatus(state, text),
      unauthorized: (error) => this.signOut(error.message),
    }).start();
    // If the stream cannot open (e.g. every stream slot is taken), still show the fleet.
    this.fallback = setTimeout(() => { if (!this.fleet.painted) this.sync(); }, 3000);
    this.route();
    window.onhashchange = () => this.route();
  }

  close() {
    if (this.stream) this.stream.stop();
    this.stream = null;
    if (this.stats) clearInterval(this.stats.timer);
    if (this.page) this.page.close();
    this.page = null;
    clearTimeout(this.fallback);
    window.onhashchange = null;
  }

  route() {
    const match = /^#\/node\/(.+)$/.exec(location.hash);
    if (this.page) this.page.close();
    this.page = null;
    if (match) {
      this.page = new NodePage(this, decodeURIComponent(match[1]));
      this.fleetPage.hidden = true;
      this.nodeSlot.replaceChildren(this.page.element);
      this.page.load();
    } else {
      this.fleetPage.hidden = false;
      this.nodeSlot.replaceChildren();
    }
    window.scrollTo(0, 0);
  }

  /** Load the fleet and the requests; events arriving meanwhile are applied after. */
  async sync() {
    if (this.syncing) {
      // What is loading may predate the stream's subscription: load again after.
      this.again = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      try {
        // The fleet is drawn as soon as it is here; held events wait for both.
        await Promise.all([getAll("/v1/nodes?limit=1000", "nodes").then((nodes) => this.fleet.load(nodes)),
          this.requests.load()]);
        this.say("");
        // The rest once the fleet is drawn: first things first.
        if (!this.stats.timer) {
          this.stats.start();
          if (this.throttle) this.throttle.load();
        }
      } catch (exc) {
        this.say(`Cannot load the fleet: ${exc instanceof ApiError ? exc.describe() : exc.message}`);
      } finally {
        this.syncing = null;
        const held = this.held;
        this.held = [];
        for (const [type, payload] of held) this.apply(type, payload);
        if (this.again) {
          this.again = false;
          this.sync();
        }
      }
    })();
    return this.syncing;
  }

  onEvent(type, payload) {
    if (this.syncing) this.held.push([type, payload]);
    else this.apply(type, payload);
  }

  apply(type, payload) {
    const data = payload.data || {};
    const at = payload.committed_at;
    if (type === "node.deleted") this.fleet.remove(data.node.uuid);
    else if (type.startsWith("node.")) this.fleet.update(data.node, at);
    if (type.startsWith("request.") && data.request) {
      const request = data.request;
      this.requests.update(request);
      if (data.node) this.fleet.update(data.node, at);
      this.fleet.setRequest(request.node_uuid, type === "request.finished" ? null : request.id, at);
      if (this.page) this.page.onRequest(request);
    }
    if (type === "throttle.changed" && this.throttle) this.throttle.show(data.throttle);
  }

  setStatus(state, text) {
    if (!this.status) return;
    this.status.className = `live is-${state}`;
    this.status.textContent = state === "live" ? "live" : "not live";
    this.status.title = text;
    if (state === "live") this.say("");
    else this.say(text);
  }

  say(text) {
    this.banner.textContent = text;
    this.banner.hidden = !text;
  }
}

function header(right) {
  return h("header", null, h("h1", null, h("a", {href: "#/"}, "conductor"), " ",
    h("span", {class: "muted"}, "dashboard")), right);
}

new App(document.getElementById("app")).start();

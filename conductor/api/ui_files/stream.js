// The event stream (GET /v1/events, Server-Sent Events) read with fetch().
//
// EventSource cannot send an Authorization header, and a token in the URL
// would end up in logs and history; fetch() can, and its body is a
// ReadableStream we parse as the SSE standard says (fields, blank line
// dispatches). After a drop the reader reconnects with Last-Event-ID, so
// the server replays what was missed; a stream.reset event (the id was too
// old) or a connection made without an id means the caller must load its
// state again (onSync).

import {ApiError, headers, readResponse} from "./api.js";

/** A connection that sent no byte for this long is taken as dead (the server's heartbeat is 15 s). */
const SILENCE_MS = 45000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class EventStream {
  /**
   * @param {string} url e.g. "/v1/events"
   * @param {object} on {event(type, payload), sync(), status(state, text), unauthorized(error)}
   */
  constructor(url, on) {
    this.url = url;
    this.on = on;
    this.lastId = null;
    this.retryMs = 2000;
    this.stopped = false;
    this.controller = null;
  }

  start() {
    this.loop();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async loop() {
    while (!this.stopped) {
      let wait = this.retryMs;
      try {
        await this.connect();
        if (!this.stopped) this.on.status("down", "The event stream ended; reconnecting\u2026");
      } catch (exc) {
        if (this.stopped) return;
        if (exc instanceof ApiError) {
          if (exc.status === 401) {
            this.on.unauthorized(exc);
            return;
          }
          if (exc.retryAfter) wait = exc.retryAfter * 1000;
          this.on.status("down", `Live updates unavailable: ${exc.describe()}`);
        } else {
          this.on.status("down", `Live updates interrupted (${exc.message}); reconnecting\u2026`);
        }
      }
      await sleep(wait);
    }
  }

  async connect() {
    const resumed = this.lastId;
    const sent = headers({Accept: "text/event-stream"});
    if (resumed) sent["Last-Event-ID"] = resumed;
    const controller = new AbortController();
    this.controller = controller;
    const response = await fetch(this.url, {headers: sent, signal: controller.signal, cache: "no-store"});
    if (!response.ok) await readResponse(response); // throws its ApiError
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let watchdog = setTimeout(() => controller.abort(), SILENCE_MS);
    let rest = "";
    let connected = false;
    let frame = {type: "", data: [], id: null};
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(), SILENCE_MS);
        const lines = (rest + value).split("\n");
        rest = lines.pop();
        for (const raw of lines) {
          const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
          if (line === "") {
            if (frame.data.length) this.dispatch(frame);
            frame = {type: "", data: [], id: null};
          } else if (line.startsWith(":")) {
            // The first comment (": connected") comes once the server
            // subscribed us: state loaded from now on misses nothing.
            if (!connected) {
              connected = true;
              this.on.status("live", "Live");
              if (!resumed) this.on.sync();
            }
          } else {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let text = colon < 0 ? "" : line.slice(colon + 1);
            if (text.startsWith(" ")) text = text.slice(1);
            if (field === "event") frame.type = text;
            else if (field === "data") frame.data.push(text);
            else if (field === "id") frame.id = text;
            else if (field === "retry" && /^\d+$/.test(text)) this.retryMs = Number(text);
          }
        }
      }
    } finally {
      clearTimeout(watchdog);
      controller.abort();
    }
  }

  dispatch(frame) {
    if (frame.id) this.lastId = frame.id;
    let payload;
    try {
      payload = JSON.parse(frame.data.join("\n"));
    } catch {
      return;
    }
    const type = frame.type || payload.type;
    if (type === "stream.reset") {
      this.on.status("live", "Some events were missed; reloading");
      this.on.sync();
    } else if (type === "stream.closed") {
      const reason = payload.data && payload.data.reason;
      if (reason === "token_revoked") {
        this.stopped = true;
        this.on.unauthorized(new ApiError(401, {code: "unauthorized", message: payload.data.message}));
      }
      // Otherwise the server stops or we fell behind: the loop reconnects with Last-Event-ID.
    } else {
      this.on.event(type, payload);
    }
  }
}

// Calls to the API with the operator's bearer token, and its error shape.
//
// The token is kept in this tab's sessionStorage (gone when the tab
// closes) and sent only as an Authorization header, never in a URL.

const KEY = "conductor.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (secret) => sessionStorage.setItem(KEY, secret),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An error answer: {code, status, message, ...} plus Retry-After. */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.code = this.body.code || String(status);
    this.retryAfter = retryAfter ? Number(retryAfter) : null;
  }

  /** "409 transition_in_progress: ... (retry in 5 s)" */
  describe() {
    const status = this.status ? `${this.status} ` : "";
    const retry = this.retryAfter ? ` (retry in ${this.retryAfter} s)` : "";
    return `${status}${this.code}: ${this.message}${retry}`;
  }
}

let unauthorized = () => {};

/** Call fn(error) on every 401 (the token is unknown or was revoked). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

/** The headers of a call: the bearer token, if there is one. */
export function headers(extra = {}) {
  const all = {Accept: "application/json, application/problem+json", ...extra};
  const secret = token.get();
  if (secret) all.Authorization = `Bearer ${secret}`;
  return all;
}

/** The JSON body of a response; ApiError for an error status. */
export async function readResponse(response) {
  const text = await response.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = {message: text.slice(0, 300)};
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, body, response.headers.get("Retry-After"));
    if (response.status === 401) unauthorized(error);
    throw error;
  }
  return body;
}

/** Call the API; resolves to the JSON body, rejects with ApiError. */
export async function call(method, path, body) {
  const init = {method, cache: "no-store", headers: headers(body === undefined ? {} : {"Content-Type": "application/json"})};
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, {code: "unreachable", message: `The API cannot be reached (${exc.message}).`});
  }
  return readResponse(response);
}

export const get = (path) => call("GET", path);

/** Every item of a paginated list (following its `next` links). */
export async function getAll(path, key) {
  const items = [];
  let next = path;
  while (next) {
    const page = await get(next);
    items.push(...page[key]);
    next = page.next;
  }
  return items;
}

/** A query string of the defined values: qs({node: "n1", limit: 20}). */
export function qs(params) {
  const defined = Object.entries(params).filter(([, v]) => v !== null && v !== undefined);
  return defined.length ? "?" + new URLSearchParams(defined).toString() : "";
}

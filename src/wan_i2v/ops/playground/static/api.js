// The playground's server: the per-launch token, the one fetch wrapper (JSON in and out, ApiError with the
// server's message), the job URLs, and fetching a kept image back as a data: URI.

import { state } from "./state.js";
import { $, blobToDataUri } from "./util.js";

const TOKEN_KEY = "wan-playground-token";
export const TOKEN_HELP = "open the address the playground printed (it carries ?token=...)";

export function jobPath(id, tail = "") {
  return `/api/jobs/${encodeURIComponent(id)}${tail}`;
}

/** The per-launch token: from the page (put there by the server), else ?token= kept for this tab. */
export function readToken() {
  const meta = document.querySelector('meta[name="wan-token"]');
  let token = meta ? meta.content.trim() : "";
  if (token === "{{TOKEN}}") token = ""; // the page was served without the server's substitution
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (!token && fromUrl) {
    token = fromUrl;
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch (_) {
      /* storage may be disabled; the token still works for this page */
    }
  }
  if (!token) {
    try {
      token = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      token = "";
    }
  }
  if (fromUrl) {
    // Keep the token out of the address bar (and out of screenshots).
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  state.token = token;
  if (!token) showBanner(`No playground token: ${TOKEN_HELP}.`);
}

function showBanner(text) {
  const banner = $("token-error");
  banner.textContent = text;
  banner.hidden = false;
}

export class ApiError extends Error {
  constructor(message, status, errors) {
    super(message);
    this.status = status;
    this.errors = errors || {};
  }
}

/** A request to the playground's server; JSON in and out; ApiError with the server's message. */
export async function api(path, { method = "GET", json, body, headers = {} } = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin", cache: "no-store" };
  if (state.token) init.headers["X-Playground-Token"] = state.token;
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (_) {
    throw new ApiError("cannot reach the playground server (is it still running?)", 0);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  let data = null;
  let text = "";
  try {
    if (type.includes("json")) data = await response.json();
    else if (type.startsWith("text/plain")) text = (await response.text()).slice(0, 300); // not HTML pages
  } catch (_) {
    /* an unreadable body: the status says enough */
  }
  if (!response.ok) {
    let message = (data && data.message) || text.trim() || `${response.status} ${response.statusText}`;
    if (response.status === 401 || response.status === 403) message += ` (${TOKEN_HELP})`;
    throw new ApiError(message, response.status, data && data.errors);
  }
  return data;
}

/** A file the server keeps (a job's input image) as a data: URI, to send it again. */
export async function fetchDataUri(path) {
  const headers = state.token ? { "X-Playground-Token": state.token } : {};
  let response;
  try {
    response = await fetch(path, { headers, credentials: "same-origin" });
  } catch (_) {
    throw new ApiError("cannot reach the playground server (is it still running?)", 0);
  }
  if (!response.ok) throw new ApiError(`the job's image is not available (${response.status})`, response.status);
  return blobToDataUri(await response.blob());
}

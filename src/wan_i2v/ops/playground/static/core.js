// Shared by every module: the page's state, small DOM and formatting helpers, and the playground's server API.

// ---- state --------------------------------------------------------------------------------------------
// The page's shared state, in one object the other modules read and write, and the few words about jobs
// that several of them use: what a status means, which input fields are images, the history's stand-in
// for an image sent inline.

export const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]);
const RUNNING = new Set(["IN_QUEUE", "IN_PROGRESS"]);
/** A job sent to another endpoint than the one this playground drives is shown as last seen, never polled. */
export const followed = (job) => job.followed !== false;
export const running = (job) => RUNNING.has(job.status) && followed(job);
export const settled = (job) => TERMINAL.has(job.status) || !followed(job);
export const IMAGE_FIELDS = new Set(["image", "last_image"]); // handled outside the generated form
export const INLINE_IMAGE = "(inline image)"; // what the history shows instead of a kept data URI

export const state = {
  token: "",
  config: null,
  fields: [], // one entry per generated form field: {name, spec, kind, required, input, wrap}
  image: null, // {source: "file" | "url", value, label, width, height}
  previewSeq: 0, // answers to older /api/preview requests are dropped
  previewError: null, // the server's reason this image cannot be used, if any
  viewedId: null, // the job shown in the run panel
  jobs: new Map(), // id -> the latest job object seen
  polls: new Map(), // id -> {timer, inFlight, failures}
  sentInputs: new Map(), // id -> the whole input this page sent (images included)
  progressPoints: new Map(), // id -> [{t, p}] for the time-left estimate
  errorsShownFor: null, // the failed job whose field errors are in the form
  fromForm: new Set(), // jobs sent from the form in this page: only their field errors mark the form
  postersSent: new Set(),
  posterLoading: false, // a history video being loaded off screen for its poster
  snippets: new Map(),
  settingsShownFor: null, // the job whose settings table is shown
  picks: [], // job ids ticked for comparison, oldest first
  historyOrder: [], // job ids as the history lists them, newest first
  historySeen: false, // the first history answer opens a job still running
  historyLoading: null,
  historyAgain: false,
};

// ---- util ---------------------------------------------------------------------------------------------
// Small DOM and formatting helpers, shared by every module; nothing here knows about jobs.

export const $ = (id) => document.getElementById(id);

/** A new element: el("div", {class: "x", id: "y"}, child, "text", ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function truncate(text, max) {
  const s = String(text ?? "");
  return s.length > max ? s.slice(0, max - 1) + "…" : s;
}

export function seconds(value) {
  if (!Number.isFinite(value)) return "";
  if (value < 60) return `${value < 10 ? value.toFixed(1) : Math.round(value)} s`;
  const m = Math.floor(value / 60);
  const s = Math.round(value % 60);
  return `${m}m ${String(s).padStart(2, "0")}s`;
}

export function megabytes(bytes) {
  if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

export function clockTime(epochSeconds) {
  if (!epochSeconds) return "";
  const date = new Date(epochSeconds * 1000);
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

export function sameValue(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function blobToDataUri(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("could not read the file"));
    reader.readAsDataURL(blob);
  });
}

// ---- api ----------------------------------------------------------------------------------------------
// The playground's server: the per-launch token, the one fetch wrapper (JSON in and out, ApiError with the
// server's message), the job URLs, and fetching a kept image back as a data: URI.

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

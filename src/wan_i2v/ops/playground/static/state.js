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

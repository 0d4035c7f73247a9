// Sending a job (POST /api/jobs) and following it: polling every job still running, putting one in the run
// panel, cancelling it.

import { TERMINAL, running, settled, state } from "./state.js";
import { $ } from "./util.js";
import { TOKEN_HELP, jobPath, ApiError, api } from "./api.js";
import { collectInput } from "./form.js";
import { showErrors, clearErrors, focusFirstInvalid } from "./errors.js";
import { renderRun } from "./run.js";
import { refreshHistory, updateHistoryCard } from "./history.js";

const POLL_VIEWED_MS = 500; // the job on screen
const POLL_BACKGROUND_MS = 2000; // other jobs still running (so the history stays true)

export async function onSubmit(event) {
  event.preventDefault();
  clearErrors();
  if (!state.config) return;
  const { input, errors } = collectInput();
  if (!state.image) errors.image = "choose an image first: drop, paste, pick a file or give a URL";
  if (state.previewError) errors.image = state.previewError;
  if (Object.keys(errors).length) {
    showErrors(errors);
    focusFirstInvalid();
    return;
  }
  await submitJob({ image: state.image.value, ...input }, { fromForm: true });
}

/** POST /api/jobs, then follow the job. Field errors go under the form's fields. */
export async function submitJob(input, { fromForm }) {
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Sending…";
  if (!fromForm) $("job-error").textContent = "";
  try {
    if (!state.token) throw new ApiError(`no playground token: ${TOKEN_HELP}`, 403);
    const answer = await api("/api/jobs", { method: "POST", json: { input } });
    state.sentInputs.set(answer.id, input);
    if (fromForm) state.fromForm.add(answer.id);
    const job = {
      id: answer.id, status: "IN_QUEUE", submitted_at: Date.now() / 1000, started_at: null, ended_at: null,
      input, output: null, video: null, poster: null, error: null, progress: null, queue: null,
    };
    state.jobs.set(job.id, job);
    viewJob(job.id);
    track(job.id);
    refreshHistory();
  } catch (err) {
    const fields = err.errors || {};
    if (Object.keys(fields).length) {
      showErrors(fields);
      focusFirstInvalid();
    }
    const general = Object.keys(fields).length ? "" : err.message;
    if (general) (fromForm ? $("form-error") : $("job-error")).textContent = `Not sent: ${general}`;
    else if (!fromForm) $("job-error").textContent = "Not sent: see the messages under the settings.";
  } finally {
    button.disabled = false;
    button.textContent = "Generate video";
  }
}

/** Poll a job until it ends: every 500 ms while it is on screen, every 2 s otherwise. */
export function track(id) {
  if (state.polls.has(id)) return;
  state.polls.set(id, { timer: null, inFlight: false, failures: 0 });
  poll(id);
}

/** Poll now (the job just came on screen) instead of at its next turn. */
function pollSoon(id) {
  const entry = state.polls.get(id);
  if (!entry) return track(id);
  if (entry.inFlight) return undefined; // its answer schedules the next poll at the fast rate
  clearTimeout(entry.timer);
  return poll(id);
}

async function poll(id) {
  const entry = state.polls.get(id);
  if (!entry) return;
  entry.inFlight = true;
  try {
    const job = await api(jobPath(id));
    entry.failures = 0;
    onJobUpdate(job);
    if (settled(job)) {
      state.polls.delete(id);
      onJobEnded(job);
      return;
    }
  } catch (err) {
    entry.failures += 1;
    if (err.status === 404) {
      state.polls.delete(id);
      if (id === state.viewedId) $("job-error").textContent = err.message;
      return;
    }
    if (id === state.viewedId) $("job-error").textContent = `Lost contact with the playground server: ${err.message}. Retrying…`;
  } finally {
    entry.inFlight = false;
  }
  if (!state.polls.has(id)) return;
  const base = id === state.viewedId ? POLL_VIEWED_MS : POLL_BACKGROUND_MS;
  const delay = Math.min(base * 2 ** Math.min(entry.failures, 4), 10000); // back off while unreachable
  entry.timer = setTimeout(() => poll(id), delay);
}

function onJobUpdate(job) {
  const before = state.jobs.get(job.id);
  state.jobs.set(job.id, job);
  recordProgress(job);
  if (job.id === state.viewedId) {
    if (/^Lost contact/.test($("job-error").textContent)) $("job-error").textContent = "";
    renderRun(job);
  }
  // Keep the history card in step without reloading the whole list.
  if (!before || before.status !== job.status) updateHistoryCard(job);
}

function onJobEnded(job) {
  if (job.id === state.viewedId) renderRun(job);
  refreshHistory();
}

function recordProgress(job) {
  if (job.status !== "IN_PROGRESS" || !job.progress || typeof job.progress.percent !== "number") return;
  const points = state.progressPoints.get(job.id) || [];
  const last = points[points.length - 1];
  if (!last || job.progress.percent !== last.p) points.push({ t: Date.now() / 1000, p: job.progress.percent });
  state.progressPoints.set(job.id, points);
}

/** Put a job in the run panel (a new one, or a card clicked in the history). */
export function viewJob(id) {
  state.viewedId = id;
  $("job-error").textContent = "";
  $("snippet").hidden = true;
  $("copy-status").textContent = "";
  const job = state.jobs.get(id);
  if (job) renderRun(job);
  document.querySelectorAll(".history-item").forEach((card) => card.classList.toggle("active", card.dataset.jobId === id));
  if (job && !settled(job)) pollSoon(id);
}

export async function onCancel() {
  const id = state.viewedId;
  if (!id) return;
  const button = $("cancel");
  button.disabled = true;
  try {
    const answer = await api(jobPath(id, "/cancel"), { method: "POST" });
    const job = state.jobs.get(id);
    if (job && answer && TERMINAL.has(answer.status)) {
      onJobUpdate({ ...job, status: answer.status, ended_at: job.ended_at || Date.now() / 1000 });
    }
    pollSoon(id);
  } catch (err) {
    $("job-error").textContent = `Cancel failed: ${err.message}`;
    const job = state.jobs.get(id);
    button.disabled = !(job && running(job));
  }
}

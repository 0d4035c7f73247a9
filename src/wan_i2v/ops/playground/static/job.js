// The job view: sending a job and following it, the run panel drawn from it, and the buttons under it.

import {
  TERMINAL, followed, running, settled, IMAGE_FIELDS, INLINE_IMAGE, state,
  $, el, truncate, seconds, clockTime, TOKEN_HELP, jobPath, ApiError, api, fetchDataUri,
} from "./core.js";
import {
  collectInput, fieldNamed, writeField, resetForm, applyModeRules, setError, showErrors, clearErrors, focusFirstInvalid,
} from "./form.js";
import { setImage } from "./image.js";
import { refreshHistory, updateHistoryCard } from "./history.js";

// ---- job ----------------------------------------------------------------------------------------------
// Sending a job (POST /api/jobs) and following it: polling every job still running, putting one in the run
// panel, cancelling it.

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
async function submitJob(input, { fromForm }) {
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

// ---- run ----------------------------------------------------------------------------------------------
// The run panel drawn from a job: status, progress, clock, the input image until there is a video, then the
// video (and its poster for the history), its metadata, timings and the settings it was sent with.

const PHASES = {
  fetch_image: "fetching the image",
  text_encode: "encoding the prompt",
  condition_encode: "encoding the image",
  denoise: "denoise",
  vae_decode: "decoding the frames",
  encode_mp4: "writing the MP4",
  upload: "uploading",
  done: "done",
};

const POSTER_MAX_WIDTH = 320;

function renderRun(job) {
  const status = $("status");
  status.textContent = job.status;
  status.className = `status-badge s-${job.status.toLowerCase()}`;
  $("run-job").textContent = `Job ${job.id} · sent ${clockTime(job.submitted_at)}`;

  const percent = job.status === "COMPLETED" ? 100 : Math.max(0, Math.min(100, Number(job.progress && job.progress.percent) || 0));
  const bar = $("progress");
  bar.setAttribute("aria-valuenow", String(Math.round(percent * 10) / 10));
  bar.querySelector(".progress-bar").style.width = `${percent}%`;
  bar.classList.toggle("running", running(job));
  bar.classList.toggle("failed", TERMINAL.has(job.status) && job.status !== "COMPLETED");
  $("progress-text").textContent = progressText(job);
  $("cancel").disabled = !running(job);
  $("job-actions").hidden = false;
  updateClock();

  if (!followed(job) && !TERMINAL.has(job.status)) {
    $("job-error").textContent = `Sent to ${job.endpoint}; this playground drives another endpoint, so the job is shown as last seen.`;
  }
  if (job.error && (TERMINAL.has(job.status))) {
    $("job-error").textContent = job.error.message || job.status.toLowerCase();
    if (job.status === "FAILED" && state.errorsShownFor !== job.id && state.fromForm.has(job.id)) {
      clearErrors();
      showErrors(job.error.fields);
      state.errorsShownFor = job.id;
    }
  }
  renderResult(job);
  renderStage(job);
  if (state.settingsShownFor !== job.id) {
    renderSettings($("job-settings"), job.input);
    state.settingsShownFor = job.id;
  }
  $("job-settings-box").hidden = false;
}

/** The input image in place of the video until there is one. */
function renderStage(job) {
  const stage = $("run-stage");
  const image = job.input && job.input.image;
  if (job.video || typeof image !== "string" || image === INLINE_IMAGE) {
    stage.hidden = true;
    return;
  }
  const img = $("run-image");
  if (img.dataset.failed === image) {
    stage.hidden = true; // this page cannot load it (a URL the worker fetches itself)
    return;
  }
  if (img.getAttribute("src") !== image) img.src = image;
  stage.hidden = false;
  stage.classList.toggle("running", running(job));
  const words = { IN_QUEUE: "queued", IN_PROGRESS: "generating…", COMPLETED: "no video kept" };
  const said = words[job.status] || job.status.toLowerCase().replace(/_/g, " ");
  $("run-stage-text").textContent = followed(job) ? said : `${said.replace("…", "")} when last seen`;
}

function progressText(job) {
  const p = job.progress;
  switch (job.status) {
    case "IN_QUEUE": {
      const q = job.queue;
      if (!q) return "waiting for a worker";
      const starting = q.workers_initializing ? `, ${q.workers_initializing} starting` : "";
      return `waiting for a worker (${q.in_queue} in queue, ${q.workers_ready} ready${starting})`;
    }
    case "IN_PROGRESS": {
      if (!p || !p.phase) return "starting";
      const phase = PHASES[p.phase] || p.phase.replace(/_/g, " ");
      if (p.phase === "denoise" && p.total_steps) {
        const expert = p.expert ? ` · ${p.expert.replace(/_/g, "-")} expert` : "";
        return `${phase} ${p.step}/${p.total_steps}${expert}`;
      }
      return phase;
    }
    case "COMPLETED": {
      const total = job.output && job.output.timings && job.output.timings.total;
      return total ? `done: ${seconds(total)} on the worker` : "done";
    }
    case "CANCELLED":
      return "cancelled";
    case "TIMED_OUT":
      return "timed out";
    case "FAILED":
      return "failed";
    default:
      return job.status.toLowerCase();
  }
}

/** #elapsed and #eta, every 250 ms while a job is on screen. */
export function updateClock() {
  const job = state.jobs.get(state.viewedId);
  if (!job || !job.submitted_at) {
    $("elapsed").textContent = "";
    $("eta").textContent = "";
    return;
  }
  if (settled(job) && !job.ended_at) {
    $("elapsed").textContent = ""; // how long it ran was never seen (another endpoint's job, or one forgotten)
    $("eta").textContent = "";
    return;
  }
  const end = job.ended_at || Date.now() / 1000;
  const elapsed = Math.max(0, end - job.submitted_at);
  $("elapsed").textContent = TERMINAL.has(job.status) ? `took ${seconds(elapsed)}` : `${seconds(elapsed)} elapsed`;
  $("eta").textContent = job.status === "IN_PROGRESS" ? etaText(job) : "";
}

/** Time left, from the rate the percent has moved at since the first progress seen. */
function etaText(job) {
  const points = state.progressPoints.get(job.id) || [];
  if (points.length < 2) return "";
  const first = points[0];
  const last = points[points.length - 1];
  const rate = (last.p - first.p) / (last.t - first.t);
  if (!(rate > 0)) return "";
  const left = Math.max(0, (100 - last.p) / rate - (Date.now() / 1000 - last.t));
  return `· about ${seconds(left)} left`;
}

function renderResult(job) {
  const result = $("result");
  const output = job.output;
  if (!output && !job.video) {
    result.hidden = true;
    $("result-video").pause();
    $("download").hidden = true;
    return;
  }
  result.hidden = false;
  const video = $("result-video");
  const download = $("download");
  if (job.video) {
    if (video.dataset.jobId !== job.id) showVideo(video, job);
    download.href = job.video;
    download.setAttribute("download", `wan-${job.id}.mp4`);
    download.hidden = false;
    video.hidden = false;
  } else {
    video.removeAttribute("src");
    video.dataset.jobId = "";
    video.hidden = true;
    download.hidden = true;
  }
  renderMetadata(output || {});
  renderTimings((output && output.timings) || {});
}

function showVideo(video, job) {
  video.dataset.jobId = job.id;
  video.onloadeddata = () => {
    if (video.dataset.jobId === job.id) capturePoster(job, video);
  };
  video.src = job.video;
  video.play().catch(() => {
    /* autoplay may be refused; the controls are there */
  });
}

/** A frame of the finished video as the history's poster, once per job that has none. */
export function capturePoster(job, video) {
  const known = state.jobs.get(job.id) || job;
  if (known.poster || state.postersSent.has(job.id) || !video.videoWidth) return;
  state.postersSent.add(job.id);
  const width = Math.min(POSTER_MAX_WIDTH, video.videoWidth);
  const height = Math.max(1, Math.round((video.videoHeight * width) / video.videoWidth));
  const canvas = el("canvas", { width: String(width), height: String(height) });
  try {
    canvas.getContext("2d").drawImage(video, 0, 0, width, height);
  } catch (_) {
    return; // not drawable: the history keeps its placeholder
  }
  canvas.toBlob(async (blob) => {
    if (!blob) return;
    try {
      await api(jobPath(job.id, "/poster"), { method: "PUT", body: blob, headers: { "Content-Type": "image/png" } });
      refreshHistory();
    } catch (err) {
      console.warn("poster not saved:", err.message);
    }
  }, "image/png");
}

function renderMetadata(output) {
  const dl = $("metadata");
  dl.textContent = "";
  const rows = [
    ["Seed", output.seed],
    ["Size", output.width && output.height ? `${output.width}×${output.height}` : undefined],
    ["Frames", output.frame_num],
    ["FPS", output.fps && output.frame_num ? `${output.fps} (${(output.frame_num / output.fps).toFixed(1)} s)` : output.fps],
    ["Mode", output.mode],
    ["Steps", output.sample_steps],
    ["Resolution", output.resolution],
    ["File", output.video_size_mb !== undefined ? `${output.video_size_mb} MB` : undefined],
  ];
  for (const [label, value] of rows) {
    if (value === undefined || value === null) continue;
    dl.append(el("dt", { text: label }), el("dd", { text: String(value) }));
  }
}

// Phases that only some jobs have: a zero means the job did not have it (another mode, no LoRAs).
const OCCASIONAL = new Set(["mode_switch", "lora_fetch", "lora_load"]);

/** One bar per numeric timing except the total, lengths relative to the longest. */
function renderTimings(timings) {
  const chart = $("timings-chart");
  chart.textContent = "";
  // The phases in the order they run (the server's JSON may sort keys), then any others.
  const order = Object.keys(PHASES);
  const rank = (key) => (order.includes(key) ? order.indexOf(key) : order.length);
  const entries = Object.entries(timings)
    .filter(([key, value]) => key !== "total" && typeof value === "number")
    .filter(([key, value]) => !(OCCASIONAL.has(key) && value === 0))
    .sort((a, b) => rank(a[0]) - rank(b[0]));
  const longest = Math.max(0, ...entries.map(([, value]) => value));
  $("timings-total").textContent = typeof timings.total === "number" ? `· ${seconds(timings.total)} in all` : "";
  if (!entries.length) {
    chart.append(el("p", { class: "subtle", text: "No timings." }));
    return;
  }
  for (const [key, value] of entries) {
    const width = longest > 0 ? (100 * value) / longest : 0;
    const bar = el("div", { class: "timing-bar" });
    bar.style.width = `${width}%`;
    chart.append(el("div", { class: "timing-row", title: `${key}: ${value} s` },
      el("span", { class: "timing-label", text: key.replace(/_/g, " ") }),
      el("span", { class: "timing-track" }, bar),
      el("span", { class: "timing-value", text: `${value.toFixed(value < 10 ? 2 : 1)} s` })));
  }
}

/** A job's input as a table; images as small pictures, long text cut short. */
export function renderSettings(table, input, highlight = new Set()) {
  table.textContent = "";
  for (const [key, value] of Object.entries(input || {})) {
    table.append(el("tr", { class: highlight.has(key) ? "diff" : null },
      el("th", { text: key }), el("td", {}, settingValue(key, value))));
  }
}

function settingValue(key, value) {
  if (IMAGE_FIELDS.has(key) && typeof value === "string" && value !== INLINE_IMAGE) {
    return el("img", { class: "setting-thumb", src: value, alt: key, loading: "lazy" });
  }
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return el("span", { title: text.length > 120 ? text : null, text: truncate(text, 120) });
}

/** A job's input image this page cannot load (a URL the worker fetches itself) leaves the stage hidden. */
export function bindRunImage() {
  const stageImg = $("run-image");
  stageImg.addEventListener("error", () => {
    stageImg.dataset.failed = stageImg.getAttribute("src") || "";
    $("run-stage").hidden = true;
  });
}

// ---- actions ------------------------------------------------------------------------------------------
// The buttons under a job: the same settings with a new seed, its settings back in the form, curl and
// Python snippets to copy.

const SEED_MAX = 4294967295;

/** The job's whole input with its images as data (what this page sent, or fetched back). */
async function fullInput(job) {
  const held = state.sentInputs.get(job.id);
  if (held) return { ...held };
  const input = { ...job.input };
  for (const name of IMAGE_FIELDS) {
    const value = input[name];
    if (value === INLINE_IMAGE) {
      throw new Error(`the job's ${name} was sent inline and is not kept; use these settings and add it again`);
    }
    if (typeof value === "string" && value.startsWith("/api/")) input[name] = await fetchDataUri(value);
  }
  return input;
}

function randomSeed() {
  const word = new Uint32Array(1);
  crypto.getRandomValues(word);
  return word[0] % (SEED_MAX + 1);
}

export async function onNewSeed() {
  const job = state.jobs.get(state.viewedId);
  if (!job) return;
  const button = $("new-seed");
  button.disabled = true;
  try {
    const input = await fullInput(job);
    input.seed = randomSeed();
    await submitJob(input, { fromForm: false });
  } catch (err) {
    $("job-error").textContent = `Not sent: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

/** Fill the form (and the image) from the job on screen. */
export async function onReuse() {
  const job = state.jobs.get(state.viewedId);
  if (!job || !state.config) return;
  resetForm();
  const held = state.sentInputs.get(job.id);
  const input = held || job.input || {};
  const unknown = [];
  for (const [name, value] of Object.entries(input)) {
    if (name === "image") continue;
    const field = fieldNamed(name);
    if (!field) unknown.push(name);
    else if (name === "last_image" && value === INLINE_IMAGE) setError(name, "was sent inline and is not kept: add it again");
    else if (field.kind === "image" && typeof value === "string" && value.startsWith("data:")) {
      field.setFile(value, "the job's last image");
    } else if (field.kind === "image" && typeof value === "string" && value.startsWith("/api/")) {
      try {
        field.setFile(await fetchDataUri(value), "the job's last image");
      } catch (err) {
        setError(name, err.message);
      }
    } else writeField(field, value);
  }
  applyModeRules();
  if (unknown.length) $("form-error").textContent = `Not in this form, left out: ${unknown.join(", ")}`;
  const image = input.image;
  try {
    if (typeof image !== "string") throw new Error("this job has no image to reuse");
    if (image.startsWith("/api/")) setImage({ source: "file", value: await fetchDataUri(image), label: `image of job ${job.id}` });
    else if (image.startsWith("data:")) setImage({ source: "file", value: image, label: `image of job ${job.id}` });
    else setImage({ source: "url", value: image, label: truncate(image, 80) });
  } catch (err) {
    setError("image", err.message);
  }
  $("form-panel").scrollIntoView({ behavior: "smooth", block: "start" });
}

export async function copySnippet(kind) {
  const id = state.viewedId;
  if (!id) return;
  const status = $("copy-status");
  status.textContent = "";
  try {
    let snippets = state.snippets.get(id);
    if (!snippets) {
      snippets = await api(jobPath(id, "/snippets"));
      state.snippets.set(id, snippets);
    }
    const text = snippets[kind] || "";
    const pre = $("snippet");
    pre.textContent = text;
    pre.hidden = false;
    const copied = await copyText(text);
    status.textContent = copied ? `${kind === "curl" ? "curl" : "Python"} copied` : "copy it from the box below";
  } catch (err) {
    $("job-error").textContent = `Snippets: ${err.message}`;
  }
}

async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (_) {
    /* refused (no focus, no permission): try the old way */
  }
  const area = el("textarea", { class: "visually-hidden", readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch (_) {
    copied = false;
  }
  area.remove();
  return copied;
}

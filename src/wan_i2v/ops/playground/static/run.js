// The run panel drawn from a job: status, progress, clock, the input image until there is a video, then the
// video (and its poster for the history), its metadata, timings and the settings it was sent with.

import { TERMINAL, followed, running, settled, IMAGE_FIELDS, INLINE_IMAGE, state } from "./state.js";
import { $, el, truncate, seconds, clockTime } from "./util.js";
import { jobPath, api } from "./api.js";
import { showErrors, clearErrors } from "./errors.js";
import { refreshHistory } from "./history.js";

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

export function renderRun(job) {
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

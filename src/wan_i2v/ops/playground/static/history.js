// The history at the foot of the page: every job this playground sent (GET /api/history) as a card,
// posters for those that lack one, and the two picks for the comparison.

import { running, settled, state, $, el, truncate, seconds, clockTime, api } from "./core.js";
import { track, viewJob, capturePoster } from "./job.js";

/** GET /api/history; calls while one is under way run once more after it. */
export async function refreshHistory() {
  if (state.historyLoading) {
    state.historyAgain = true;
    return state.historyLoading;
  }
  state.historyLoading = (async () => {
    try {
      const answer = await api("/api/history");
      $("history-error").textContent = "";
      const jobs = (answer && answer.jobs) || [];
      for (const job of jobs) {
        // A job being polled has fresher progress than the history's row.
        if (!state.polls.has(job.id) || !state.jobs.has(job.id)) state.jobs.set(job.id, job);
        if (!settled(job)) track(job.id); // so a reloaded page follows it to the end
      }
      renderHistory(jobs.map((job) => state.jobs.get(job.id) || job));
      if (!state.historySeen && !state.viewedId && jobs.length && running(jobs[0])) viewJob(jobs[0].id);
      state.historySeen = true;
    } catch (err) {
      $("history-error").textContent = `History: ${err.message}`;
    }
  })();
  try {
    await state.historyLoading;
  } finally {
    state.historyLoading = null;
  }
  if (state.historyAgain) {
    state.historyAgain = false;
    return refreshHistory();
  }
  return undefined;
}

function renderHistory(jobs) {
  const list = $("history");
  list.textContent = "";
  state.historyOrder = jobs.map((job) => job.id);
  state.picks = state.picks.filter((id) => state.historyOrder.includes(id));
  if (!jobs.length) list.append(el("p", { class: "subtle empty-history", text: "No jobs yet. Your videos will appear here." }));
  for (const job of jobs) list.append(historyCard(job));
  updateCompareButton();
  backfillPosters(jobs);
}

/** Finished jobs nobody watched here (the page was closed, or showed another job) still get a
 *  poster: their video is loaded off screen, one at a time, and its first frame kept. */
function backfillPosters(jobs) {
  if (state.posterLoading) return;
  const job = jobs.find((j) => j.video && !j.poster && !state.postersSent.has(j.id));
  if (!job) return;
  const video = el("video", { muted: true, preload: "auto", playsinline: true });
  video.muted = true;
  state.posterLoading = true;
  const done = () => {
    state.posterLoading = false;
    video.removeAttribute("src");
    video.load();
  };
  video.onloadeddata = () => {
    capturePoster(job, video);
    state.postersSent.add(job.id); // tried once, whatever came of it
    done();
  };
  video.onerror = () => {
    state.postersSent.add(job.id); // no poster for a video that will not load; do not try again
    done();
  };
  video.src = job.video;
}

function historyCard(job) {
  const card = el("article", {
    class: `history-item${job.id === state.viewedId ? " active" : ""}`,
    "data-job-id": job.id, tabindex: "0", role: "button", "aria-label": `open job ${job.id}`,
  });
  fillCard(card, job);
  card.addEventListener("click", (event) => {
    if (event.target.closest(".pick")) return; // ticking for comparison does not open the job
    viewJob(job.id);
    if (window.innerWidth < 1000) $("run-panel").scrollIntoView({ behavior: "smooth", block: "start" });
  });
  card.addEventListener("keydown", (event) => {
    if ((event.key === "Enter" || event.key === " ") && event.target === card) {
      event.preventDefault();
      viewJob(job.id);
    }
  });
  return card;
}

function fillCard(card, job) {
  card.textContent = "";
  const thumb = job.poster
    ? el("img", { class: "thumb", src: job.poster, alt: "", loading: "lazy" })
    : el("div", { class: "thumb placeholder", text: running(job) ? "…" : "no preview" });
  const pick = el("input", { type: "checkbox", class: "compare-pick", "aria-label": `compare job ${job.id}` });
  pick.checked = state.picks.includes(job.id);
  pick.disabled = !job.video;
  pick.title = job.video ? "compare" : "no video to compare";
  pick.addEventListener("change", () => onPick(job.id, pick.checked));
  const input = job.input || {};
  const out = job.output || {};
  const facts = [out.mode || input.mode, out.width ? `${out.width}×${out.height}` : input.resolution,
    out.frame_num ? `${out.frame_num} fr` : null, job.ended_at ? seconds(job.ended_at - job.submitted_at) : null]
    .filter(Boolean).join(" · ");
  card.append(
    el("div", { class: "thumb-wrap" }, thumb, el("label", { class: "pick" }, pick, "compare")),
    el("div", { class: "card-body" },
      el("div", { class: "card-head" },
        el("span", { class: `status-badge small s-${job.status.toLowerCase()}`, text: job.status }),
        el("time", { class: "subtle", text: clockTime(job.submitted_at) })),
      el("p", { class: "card-prompt", title: input.prompt || "", text: truncate(input.prompt || "(no prompt)", 90) }),
      facts ? el("p", { class: "subtle card-facts", text: facts }) : null));
}

export function updateHistoryCard(job) {
  const card = document.querySelector(`.history-item[data-job-id="${CSS.escape(job.id)}"]`);
  if (card) fillCard(card, job);
}

/** Two picks at most: a third replaces the oldest. */
function onPick(id, checked) {
  state.picks = state.picks.filter((p) => p !== id);
  if (checked) state.picks.push(id);
  while (state.picks.length > 2) {
    const dropped = state.picks.shift();
    const box = document.querySelector(`.history-item[data-job-id="${CSS.escape(dropped)}"] .compare-pick`);
    if (box) box.checked = false;
  }
  updateCompareButton();
}

function updateCompareButton() {
  const button = $("compare");
  button.disabled = state.picks.length !== 2;
  $("history-hint").textContent = state.picks.length === 2 ? "Two jobs picked." : "Tick two finished jobs to compare them.";
}

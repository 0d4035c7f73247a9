// The two picked jobs side by side: their videos started together, the settings that differ highlighted.

import { state, $, el, truncate, seconds, sameValue } from "./core.js";
import { renderSettings } from "./job.js";

/** The two picked videos side by side, looping; settings that differ are highlighted. */
export function showCompare() {
  const jobs = state.picks.map((id) => state.jobs.get(id)).filter(Boolean);
  if (jobs.length !== 2) return;
  const shown = jobs.map(comparable);
  const keys = [...new Set(shown.flatMap((s) => Object.keys(s)))];
  const differing = new Set(keys.filter((k) => k !== "image" && !sameValue(shown[0][k], shown[1][k])));
  const columns = $("compare-columns");
  columns.textContent = "";
  const videos = [];
  jobs.forEach((job, i) => {
    const ordered = Object.fromEntries(keys.map((k) => [k, shown[i][k] === undefined ? "—" : shown[i][k]]));
    const table = el("table", { class: "settings-table" });
    renderSettings(table, ordered, differing);
    const video = job.video
      ? el("video", { src: job.video, controls: true, loop: true, autoplay: true, muted: true, playsinline: true })
      : el("div", { class: "thumb placeholder", text: "no video" });
    if (job.video) {
      video.muted = true; // the attribute alone does not mute an element made by script
      videos.push(video);
    }
    columns.append(el("div", { class: "compare-col" },
      el("p", { class: "compare-title" }, el("strong", { text: truncate((job.input && job.input.prompt) || "(no prompt)", 80) }),
        el("span", { class: "subtle", text: ` · ${job.id}` })),
      video, table));
  });
  syncStart(videos);
  $("compare-view").hidden = false;
  $("compare-view").scrollIntoView({ behavior: "smooth", block: "start" });
}

/** What to compare of a job: its settings as sent, and what it ran with. */
function comparable(job) {
  const out = job.output || {};
  const ran = {};
  if (out.seed !== undefined) ran["seed (used)"] = out.seed;
  if (out.width) ran["size (video)"] = `${out.width}×${out.height}`;
  if (out.mode) ran["mode (ran)"] = out.mode;
  if (out.sample_steps) ran["steps (ran)"] = out.sample_steps;
  if (out.timings && out.timings.total) ran["time on worker"] = seconds(out.timings.total);
  return { ...(job.input || {}), ...ran };
}

/** Start the two videos together once both can play, so their motion lines up. */
function syncStart(videos) {
  let ready = 0;
  for (const video of videos) {
    video.addEventListener("canplay", () => {
      ready += 1;
      if (ready !== videos.length) return;
      for (const v of videos) {
        v.currentTime = 0;
        v.play().catch(() => {});
      }
    }, { once: true });
  }
}

export function closeCompare() {
  const view = $("compare-view");
  view.querySelectorAll("video").forEach((v) => v.pause());
  $("compare-columns").textContent = "";
  view.hidden = true;
}

// The buttons under a job: the same settings with a new seed, its settings back in the form, curl and
// Python snippets to copy.

import { IMAGE_FIELDS, INLINE_IMAGE, state } from "./state.js";
import { $, el, truncate } from "./util.js";
import { jobPath, api, fetchDataUri } from "./api.js";
import { fieldNamed, writeField, resetForm, applyModeRules } from "./form.js";
import { setError } from "./errors.js";
import { setImage } from "./image.js";
import { submitJob } from "./job.js";

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

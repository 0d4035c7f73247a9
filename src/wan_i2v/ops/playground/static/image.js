// The input image: a file (chosen, dropped or pasted) or a URL, shown with the crop and video size the
// worker will make of it (POST /api/preview).

import { state, $, truncate, megabytes, blobToDataUri, api } from "./core.js";
import { currentResolution, setError } from "./form.js";

export function imageFileProblem(file) {
  const limit = state.config ? state.config.limits.image_bytes : Infinity;
  if (file.type && !file.type.startsWith("image/")) return `${file.name} is not an image`;
  if (file.size > limit) return `${file.name} is ${megabytes(file.size)}; images may be at most ${megabytes(limit)}`;
  return null;
}

async function useImageFile(file) {
  const problem = imageFileProblem(file);
  if (problem) {
    state.previewError = null;
    setError("image", problem);
    return;
  }
  try {
    setImage({ source: "file", value: await blobToDataUri(file), label: `${file.name || "pasted image"} · ${megabytes(file.size)}` });
  } catch (err) {
    setError("image", err.message);
  }
}

function useImageUrl(raw) {
  const url = String(raw || "").trim();
  if (!/^(https?:\/\/|data:image\/)/i.test(url)) {
    setError("image", "give an http(s) URL (or a data:image/… URI)");
    return;
  }
  setImage({ source: "url", value: url, label: truncate(url, 80) });
}

/** A new input image: show it, then ask the server what the worker will make of it. */
export function setImage(image) {
  state.image = image;
  state.previewError = null;
  setError("image", null);
  $("error-image").textContent = "";
  $("image-name").textContent = image.label;
  $("image-url").value = image.source === "url" && !image.value.startsWith("data:") ? image.value : "";
  $("output-size").textContent = image.source === "url" ? "loading the preview…" : "";
  $("preview-crop").hidden = true;
  $("preview").classList.remove("empty");
  const img = $("preview-img");
  img.dataset.for = image.value.slice(0, 200); // to tell a late load event from an older image
  img.src = image.value;
}

function onPreviewLoad() {
  const img = $("preview-img");
  if (!state.image || img.dataset.for !== state.image.value.slice(0, 200)) return;
  state.image.width = img.naturalWidth;
  state.image.height = img.naturalHeight;
  requestPreview();
}

function onPreviewError() {
  if (!state.image || !$("preview-img").getAttribute("src")) return;
  $("preview-crop").hidden = true;
  $("preview").classList.add("empty");
  $("output-size").textContent = state.image.source === "url"
    ? "Preview unavailable (this page could not load the URL); the worker fetches it itself, so you can still submit."
    : "Preview unavailable: the browser cannot show this image.";
}

/** POST /api/preview: the video size and the crop the worker will make; drawn over the image. */
export async function requestPreview() {
  const image = state.image;
  if (!image || !image.width || !state.config) return;
  const seq = ++state.previewSeq;
  const chosen = currentResolution();
  const resolution = chosen || "480p";
  try {
    const answer = await api("/api/preview", { method: "POST", json: { width: image.width, height: image.height, resolution } });
    if (seq !== state.previewSeq) return;
    state.previewError = null;
    setError("image", null);
    drawCrop(answer.crop, image);
    const note = chosen ? "" : ` (at ${resolution}; the worker's default resolution may differ)`;
    $("output-size").textContent = `→ ${answer.width}×${answer.height} video${note} · image ${image.width}×${image.height}`;
  } catch (err) {
    if (seq !== state.previewSeq) return;
    $("preview-crop").hidden = true;
    if (err.status === 422) {
      state.previewError = err.errors.image || err.message;
      setError("image", state.previewError);
      $("output-size").textContent = "";
    } else {
      $("output-size").textContent = `Preview unavailable: ${err.message}`;
    }
  }
}

/** The crop, in the source's pixels, as a box over the shown image (the rest is dimmed). */
function drawCrop(crop, image) {
  const box = $("preview-crop");
  if (!crop) {
    box.hidden = true;
    return;
  }
  const pct = (v, whole) => `${(100 * v) / whole}%`;
  box.style.left = pct(crop.left, image.width);
  box.style.top = pct(crop.top, image.height);
  box.style.width = pct(crop.width, image.width);
  box.style.height = pct(crop.height, image.height);
  box.hidden = false;
}

export function bindImageInputs() {
  const zone = $("drop-zone");
  const fileInput = $("image-file");
  fileInput.addEventListener("change", () => {
    const file = fileInput.files && fileInput.files[0];
    fileInput.value = ""; // choosing the same file again fires change again
    if (file) useImageFile(file);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const data = event.dataTransfer;
    const file = data && [...data.files].find((f) => f.type.startsWith("image/"));
    if (file) useImageFile(file);
    else if (data && data.files.length) setError("image", "that is not an image");
    else if (data) useImageUrl(data.getData("text/uri-list").split("\n")[0] || data.getData("text/plain"));
  });
  // A drop that misses the zone would open the file in the tab and lose the form.
  for (const name of ["dragover", "drop"]) {
    window.addEventListener(name, (event) => {
      if (!event.target.closest || !event.target.closest("input, textarea")) event.preventDefault();
    });
  }

  $("image-url-use").addEventListener("click", () => useImageUrl($("image-url").value));
  $("image-url").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      useImageUrl($("image-url").value);
    }
  });
  document.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    const file = data && [...data.files].find((f) => f.type.startsWith("image/"));
    if (!file) return; // text pastes go where the user pastes them
    event.preventDefault();
    useImageFile(file);
  });
  const img = $("preview-img");
  img.addEventListener("load", onPreviewLoad);
  img.addEventListener("error", onPreviewError);
}

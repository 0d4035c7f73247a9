// The wan-i2v playground page: one image and a settings form in, a job followed to its video out, and every
// job the playground sent kept in a history below. This entry point loads the config and wires the page.
//
// Plain ES2020 modules loaded by the browser as they are (index.html: <script type="module">), no build
// step; each module's first lines say what it holds, and the page's state lives in core.js.

import { state, $, el, readToken, api } from "./core.js";
import { buildForm, resetForm } from "./form.js";
import { requestPreview, bindImageInputs } from "./image.js";
import { onSubmit, onCancel, updateClock, bindRunImage, onNewSeed, onReuse, copySnippet } from "./job.js";
import { refreshHistory } from "./history.js";
import { showCompare, closeCompare } from "./compare.js";

async function loadConfig() {
  const fields = $("fields");
  try {
    state.config = await api("/api/config");
  } catch (err) {
    fields.textContent = "";
    const retry = el("button", { type: "button", class: "secondary small", text: "Try again" });
    retry.addEventListener("click", () => {
      fields.textContent = "Loading the settings…";
      loadConfig();
    });
    fields.append(el("p", { class: "form-error", text: `Could not load the settings: ${err.message}` }), retry);
    return;
  }
  const label = state.config.endpoint && state.config.endpoint.label;
  $("endpoint").textContent = label ? `→ ${label}` : "";
  buildForm();
  $("submit").disabled = false;
  requestPreview();
}

function bindActions() {
  $("settings-form").addEventListener("submit", onSubmit);
  $("reset-form").addEventListener("click", resetForm);
  $("cancel").addEventListener("click", onCancel);
  $("new-seed").addEventListener("click", onNewSeed);
  $("reuse").addEventListener("click", onReuse);
  $("copy-curl").addEventListener("click", () => copySnippet("curl"));
  $("copy-python").addEventListener("click", () => copySnippet("python"));
  $("compare").addEventListener("click", showCompare);
  $("compare-close").addEventListener("click", closeCompare);
  $("history-refresh").addEventListener("click", refreshHistory);
}

function init() {
  readToken();
  bindImageInputs();
  bindRunImage();
  bindActions();
  loadConfig();
  refreshHistory();
  setInterval(updateClock, 250);
}

init();

// Messages under the form's fields: a field's own slot, else its parent's, else the form's; and clearing them.

import { state } from "./state.js";
import { $ } from "./util.js";

/** "loras[0].scale" -> "loras-0-scale", the suffix of the page's ids. */
function idKey(name) {
  return String(name).replace(/\[(\d+)\]/g, "-$1").replace(/\./g, "-");
}

/** The message slot for a field: its own, else its parent's (loras-0-scale -> loras-0 -> loras). */
function errorSlot(name) {
  const parts = idKey(name).split("-");
  for (let n = parts.length; n > 0; n -= 1) {
    const slot = $(`error-${parts.slice(0, n).join("-")}`);
    if (slot) return slot;
  }
  return null;
}

/** The server's messages start with the field's own name ("frame_num: ..."); the slot says that already. */
function withoutName(name, message) {
  const text = String(message || "");
  return text.startsWith(`${name}: `) ? text.slice(name.length + 2) : text;
}

export function setError(name, message) {
  const slot = errorSlot(name);
  const input = name === "image" ? $("drop-zone") : $(`field-${idKey(name)}`);
  if (input) input.classList.toggle("invalid", Boolean(message));
  if (!message) {
    if (slot && slot.id === `error-${idKey(name)}`) slot.textContent = "";
    return;
  }
  if (!slot || slot.id === "form-error") {
    appendLine($("form-error"), `${name}: ${withoutName(name, message)}`);
    return;
  }
  const own = slot.id === `error-${idKey(name)}`;
  const text = own ? withoutName(name, message) : `${name}: ${withoutName(name, message)}`;
  if (slot.textContent) appendLine(slot, text);
  else slot.textContent = text;
}

function appendLine(node, text) {
  node.textContent = node.textContent ? `${node.textContent}\n${text}` : text;
}

export function showErrors(errors) {
  for (const [name, message] of Object.entries(errors || {})) setError(name, message);
}

export function clearErrors() {
  document.querySelectorAll(".field-error").forEach((slot) => {
    slot.textContent = "";
  });
  document.querySelectorAll(".invalid").forEach((node) => node.classList.remove("invalid"));
  $("form-error").textContent = "";
  state.errorsShownFor = null;
  if (state.previewError) setError("image", state.previewError);
}

export function focusFirstInvalid() {
  const first = document.querySelector("#form-panel .invalid");
  if (first) {
    first.scrollIntoView({ behavior: "smooth", block: "center" });
    if (typeof first.focus === "function") first.focus({ preventScroll: true });
  }
}

// The settings form: the job's schema read as field specs, the generated controls and their values, and the
// messages under the fields.

import { state, sameValue, $, el, megabytes, blobToDataUri } from "./core.js";
import { imageFileProblem, requestPreview } from "./image.js";

// ---- schema -------------------------------------------------------------------------------------------
// The job's JSON Schema (GET /api/config) read as flat field specs, and what a value must be to pass it
// (the schema's constraints and the config's field_rules). No DOM.

function resolveRef(node) {
  let current = node;
  for (let hops = 0; current && current.$ref && hops < 10; hops += 1) {
    const path = current.$ref.replace(/^#\//, "").split("/");
    current = path.reduce((at, key) => (at ? at[key] : undefined), state.config.schema);
  }
  return current || {};
}

/**
 * One property of the schema, flattened: pydantic writes `X | None` as anyOf [X, {type: null}],
 * Literal choices as `enum`, and nested models as `$ref`.
 */
function describe(prop, required) {
  prop = resolveRef(prop);
  let base = prop;
  let nullable = false;
  const options = prop.anyOf || prop.oneOf;
  if (options) {
    const resolved = options.map(resolveRef);
    const others = resolved.filter((o) => o.type !== "null");
    nullable = others.length < resolved.length;
    base = others.length === 1 ? others[0] : {};
  } else if (prop.allOf && prop.allOf.length === 1) {
    base = resolveRef(prop.allOf[0]);
  }
  let type = base.type;
  if (Array.isArray(type)) {
    nullable = nullable || type.includes("null");
    type = type.find((t) => t !== "null");
  }
  const spec = {
    type,
    nullable,
    required,
    enum: base.enum || (base.const !== undefined ? [base.const] : undefined),
    hasDefault: "default" in prop,
    default: prop.default,
    description: prop.description || base.description || "",
    items: base.items ? resolveRef(base.items) : undefined,
  };
  for (const key of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "minItems", "maxItems"]) {
    if (base[key] !== undefined) spec[key] = base[key];
  }
  spec.kind = kindOf(spec);
  return spec;
}

function kindOf(spec) {
  if (spec.enum) return "select";
  if (spec.type === "boolean") return "checkbox";
  if (spec.type === "integer" || spec.type === "number") return "number";
  if (spec.type === "string") return "text";
  if (spec.type === "array" && spec.items && spec.items.type === "object") return "list";
  return "json"; // anything else is typed as JSON
}

/** The value the worker uses when the field is left out ([] for lists without a default). */
function defaultOf(spec) {
  if (spec.hasDefault) return spec.default;
  if (spec.kind === "list") return [];
  return undefined;
}

/** The field_rules "An+B" form (frame_num "4n+1"): [A, B], or null for a rule this page cannot read. */
function parseRule(rule) {
  const match = /^\s*(\d*)\s*n\s*\+\s*(\d+)\s*$/.exec(String(rule || ""));
  return match ? [Number(match[1] || 1), Number(match[2])] : null;
}

/** The problem with one value, from the schema's constraints, or null. */
function checkValue(name, value, spec) {
  if (spec.type === "integer" || spec.type === "number") {
    if (typeof value !== "number" || !Number.isFinite(value)) return "must be a number";
    if (spec.type === "integer" && !Number.isInteger(value)) return "must be a whole number";
    if (spec.minimum !== undefined && value < spec.minimum) return `must be at least ${spec.minimum}`;
    if (spec.maximum !== undefined && value > spec.maximum) return `must be at most ${spec.maximum}`;
    if (spec.exclusiveMinimum !== undefined && value <= spec.exclusiveMinimum) return `must be more than ${spec.exclusiveMinimum}`;
    if (spec.exclusiveMaximum !== undefined && value >= spec.exclusiveMaximum) return `must be less than ${spec.exclusiveMaximum}`;
  }
  if (spec.enum && !spec.enum.some((v) => sameValue(v, value))) return `must be one of ${spec.enum.join(", ")}`;
  if (typeof value === "string") {
    if (spec.maxLength !== undefined && value.length > spec.maxLength) {
      return `at most ${spec.maxLength} characters (this has ${value.length})`;
    }
    if (spec.minLength !== undefined && value.length < spec.minLength) {
      return spec.minLength === 1 ? "must not be empty" : `at least ${spec.minLength} characters`;
    }
  }
  if (Array.isArray(value) && spec.maxItems !== undefined && value.length > spec.maxItems) {
    return `at most ${spec.maxItems} entries`;
  }
  const rule = parseRule(((state.config && state.config.field_rules) || {})[name]);
  if (rule && typeof value === "number" && Number.isInteger(value)) {
    const [a, b] = rule;
    const off = (((value - b) % a) + a) % a;
    if (off) {
      const below = value - off;
      const nearest = [below, below + a].filter((n) => (spec.minimum === undefined || n >= spec.minimum)
        && (spec.maximum === undefined || n <= spec.maximum));
      return `must be ${state.config.field_rules[name]}; nearest valid: ${nearest.join(" or ")}`;
    }
  }
  return null;
}

// ---- errors -------------------------------------------------------------------------------------------
// Messages under the form's fields: a field's own slot, else its parent's, else the form's; and clearing them.

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

// ---- form ---------------------------------------------------------------------------------------------
// The settings form, generated from the job's schema: a control per field (a field added to the worker's
// schema appears with no change here), reading and writing their values, the mode's rules, and the job
// input the form describes, checked. Only the fields with behaviour of their own are named: image (left to
// image.js), last_image, mode, sample_steps, the guidance fields, resolution, loras, and the prompts.

const TEXTAREA_FIELDS = new Set(["prompt", "negative_prompt"]);

/** Schema descriptions use `backticks` for names: show those as <code>, the rest as text. */
function richText(text) {
  return String(text || "")
    .split("`")
    .map((part, i) => (i % 2 ? el("code", { text: part }) : document.createTextNode(part)));
}

function humanize(name) {
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function buildForm() {
  const { schema } = state.config;
  const container = $("fields");
  container.textContent = "";
  state.fields = [];
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    if (name === "image") continue; // the image area above
    const spec = describe(prop, required.has(name));
    const field = { name, spec, kind: name === "last_image" ? "image" : spec.kind };
    container.append(renderField(field));
    state.fields.push(field);
  }
  bindSpecialFields();
  resetForm();
}

function renderField(field) {
  const { name, spec } = field;
  const id = `field-${name}`;
  const wide = field.kind === "text" || field.kind === "list" || field.kind === "image" || field.kind === "json";
  const wrap = el("div", { class: `field field-${field.kind}${wide ? " wide" : ""}`, "data-field": name });
  field.wrap = wrap;
  const label = el("label", { for: id, class: "field-label" }, humanize(name), " ",
    el("code", { class: "field-name", text: name }), spec.required ? el("span", { class: "req", text: "*" }) : null);

  if (field.kind === "checkbox") {
    field.input = el("input", { type: "checkbox", id });
    wrap.append(el("div", { class: "check-row" }, field.input, label));
  } else {
    wrap.append(label, renderControl(field, id));
  }
  wrap.append(el("p", { class: "help", id: `help-${name}` }, richText(spec.description)));
  wrap.append(el("div", { class: "field-error", id: `error-${name}`, role: "alert" }));
  return wrap;
}

function renderControl(field, id) {
  const { spec } = field;
  switch (field.kind) {
    case "select":
      field.input = selectFor(spec, id);
      return field.input;
    case "number":
      field.input = numberInput(spec, id);
      return field.input;
    case "text":
      field.input = TEXTAREA_FIELDS.has(field.name) || (spec.maxLength || 0) > 2048
        ? el("textarea", { id, rows: field.name === "prompt" ? 3 : 2 })
        : el("input", { type: "text", id });
      if (spec.maxLength) field.input.maxLength = spec.maxLength;
      return field.input;
    case "image":
      return lastImageControl(field, id);
    case "list":
      return listControl(field, id);
    default:
      field.input = el("textarea", { id, rows: 2, placeholder: "JSON", class: "mono" });
      return field.input;
  }
}

function selectFor(spec, id) {
  const select = el("select", { id });
  if (spec.nullable) select.append(el("option", { value: "", text: "(worker default)" }));
  spec.enum.forEach((value, i) => select.append(el("option", { value: String(i), text: String(value) })));
  return select;
}

function numberInput(spec, id) {
  const input = el("input", { type: "number", id, inputmode: spec.type === "integer" ? "numeric" : "decimal" });
  const min = spec.minimum ?? spec.exclusiveMinimum;
  const max = spec.maximum ?? spec.exclusiveMaximum;
  if (min !== undefined) input.min = String(min);
  if (max !== undefined) input.max = String(max);
  input.step = spec.multipleOf ? String(spec.multipleOf) : spec.type === "integer" ? "1" : "any";
  if (spec.nullable && spec.default === null) input.placeholder = "worker default";
  return input;
}

/** last_image: a URL or data URI typed in, or a file read into a data URI kept beside the box. */
function lastImageControl(field, id) {
  field.input = el("input", { type: "text", id, placeholder: "https://… or data:image/…;base64,…" });
  const picker = el("input", { type: "file", accept: "image/*", id: `${id}-file`, class: "visually-hidden" });
  const pick = el("label", { for: picker.id, class: "button secondary small", text: "Choose file" });
  const chip = el("span", { class: "file-chip", id: `${id}-chip`, hidden: true });
  field.fileValue = null;
  field.setFile = (value, label) => {
    field.fileValue = value;
    field.input.value = "";
    field.input.disabled = Boolean(value);
    chip.hidden = !value;
    chip.textContent = "";
    if (value) {
      const clear = el("button", { type: "button", class: "link", text: "remove", "aria-label": "remove the last image" });
      clear.addEventListener("click", () => field.setFile(null));
      chip.append(label, " ", clear);
    }
  };
  picker.addEventListener("change", async () => {
    const file = picker.files && picker.files[0];
    picker.value = "";
    if (!file) return;
    const problem = imageFileProblem(file);
    setError(field.name, problem);
    if (problem) return;
    field.setFile(await blobToDataUri(file), `${file.name} (${megabytes(file.size)})`);
  });
  return el("div", { class: "inline-row" }, field.input, picker, pick, chip);
}

/** A list of objects (loras): one row per entry, each entry's own fields, add and remove buttons. */
function listControl(field, id) {
  const rows = el("div", { class: "list-rows", id });
  const addLabel = field.name === "loras" ? "Add LoRA" : "Add entry";
  const add = el("button", { type: "button", class: "secondary small", id: `add-${field.name}`, text: addLabel });
  add.addEventListener("click", () => {
    const items = readListRaw(field);
    items.push(listItemDefaults(field));
    renderListRows(field, items);
  });
  field.rows = rows;
  field.addButton = add;
  field.input = rows;
  return el("div", { class: "list-control" }, rows, add);
}

function listItemProps(field) {
  const items = field.spec.items;
  const required = new Set(items.required || []);
  return Object.entries(items.properties || {}).map(([name, prop]) => ({ name, spec: describe(prop, required.has(name)) }));
}

function listItemDefaults(field) {
  const item = {};
  for (const { name, spec } of listItemProps(field)) item[name] = spec.hasDefault ? spec.default : null;
  return item;
}

function renderListRows(field, items) {
  field.rows.textContent = "";
  items.forEach((item, index) => field.rows.append(renderListRow(field, item, index, items)));
  const max = field.spec.maxItems;
  field.addButton.disabled = max !== undefined && items.length >= max;
  field.addButton.title = field.addButton.disabled ? `at most ${max}` : "";
}

function renderListRow(field, item, index, items) {
  const prefix = `${field.name}-${index}`;
  const row = el("div", { class: "list-row", "data-index": String(index) });
  const cells = el("div", { class: "list-cells" });
  for (const { name, spec } of listItemProps(field)) {
    const id = `field-${prefix}-${name}`;
    const sub = { name: `${field.name}[${index}].${name}`, spec, kind: spec.kind };
    const control = spec.kind === "checkbox" ? el("input", { type: "checkbox", id }) : renderControl(sub, id);
    const input = spec.kind === "checkbox" ? control : sub.input;
    writeControl(input, spec, item[name]);
    if (spec.kind === "text") input.placeholder = spec.nullable ? "(none)" : "";
    if (spec.kind === "number" && spec.nullable) input.placeholder = "optional";
    const cell = el("div", { class: `cell cell-${spec.kind}`, title: spec.description },
      el("label", { for: id, text: humanize(name) }), control,
      el("div", { class: "field-error", id: `error-${prefix}-${name}` }));
    cells.append(cell);
  }
  const remove = el("button", { type: "button", class: "link remove", text: "Remove", "aria-label": `remove entry ${index + 1}` });
  remove.addEventListener("click", () => {
    const current = readListRaw(field);
    current.splice(index, 1);
    renderListRows(field, current);
  });
  row.append(el("div", { class: "list-row-head" }, el("span", { class: "subtle", text: `#${index + 1}` }), remove),
    cells, el("div", { class: "field-error", id: `error-${prefix}` }));
  return row;
}

/** The rows as they stand (null for empty boxes), to re-render after an add or a remove. */
function readListRaw(field) {
  const props = listItemProps(field);
  return [...field.rows.querySelectorAll(".list-row")].map((row) => {
    const index = row.dataset.index;
    const item = {};
    for (const { name, spec } of props) {
      const input = $(`field-${field.name}-${index}-${name}`);
      const read = readControl(input, spec);
      item[name] = read.empty || read.bad ? null : read.value;
    }
    return item;
  });
}

function bindSpecialFields() {
  const mode = fieldNamed("mode");
  if (mode) mode.input.addEventListener("change", applyModeRules);
  const resolution = fieldNamed("resolution");
  if (resolution) resolution.input.addEventListener("change", requestPreview);
  // Editing a field clears its message; the next submit checks again.
  $("fields").addEventListener("input", (event) => {
    const target = event.target;
    if (!target.id || !target.id.startsWith("field-")) return;
    target.classList.remove("invalid");
    const slot = $(`error-${target.id.slice("field-".length)}`);
    if (slot) slot.textContent = "";
  });
}

export function fieldNamed(name) {
  return state.fields.find((f) => f.name === name);
}

/** {value, empty, bad}: what one control holds, typed as the schema says. */
function readControl(input, spec) {
  if (!input) return { empty: true };
  if (input.type === "checkbox") return { value: input.checked };
  if (input.tagName === "SELECT") {
    if (input.value === "") return { empty: true };
    return { value: spec.enum[Number(input.value)] };
  }
  if (input.type === "number") {
    if (input.validity && input.validity.badInput) return { bad: "must be a number" };
    if (input.value.trim() === "") return { empty: true };
    return { value: Number(input.value) };
  }
  const text = input.value;
  if (spec.kind === "json") {
    if (text.trim() === "") return { empty: true };
    try {
      return { value: JSON.parse(text) };
    } catch (_) {
      return { bad: "must be valid JSON" };
    }
  }
  // An emptied text box means "leave it to the worker" when the field may be absent (null default);
  // otherwise it is the empty string (an empty negative prompt is a real choice).
  if (text === "" && (spec.nullable || !spec.hasDefault)) return { empty: true };
  return { value: text };
}

function writeControl(input, spec, value) {
  if (!input) return;
  const missing = value === null || value === undefined;
  if (input.type === "checkbox") input.checked = Boolean(value);
  else if (input.tagName === "SELECT") {
    const index = missing ? -1 : spec.enum.findIndex((v) => sameValue(v, value));
    input.value = index >= 0 ? String(index) : spec.nullable ? "" : "0";
  } else if (spec.kind === "json") input.value = missing ? "" : JSON.stringify(value);
  else input.value = missing ? "" : String(value);
}

export function writeField(field, value) {
  if (field.kind === "list") renderListRows(field, Array.isArray(value) ? value.map((v) => ({ ...listItemDefaults(field), ...v })) : []);
  else if (field.kind === "image") {
    field.setFile(null);
    writeControl(field.input, field.spec, value);
  } else writeControl(field.input, field.spec, value);
}

export function resetForm() {
  for (const field of state.fields) writeField(field, defaultOf(field.spec));
  applyModeRules();
  clearErrors();
}

function currentMode() {
  const mode = fieldNamed("mode");
  if (!mode) return null;
  const read = readControl(mode.input, mode.spec);
  return read.empty ? null : read.value;
}

export function currentResolution() {
  const field = fieldNamed("resolution");
  const read = field ? readControl(field.input, field.spec) : { empty: true };
  return read.empty ? null : read.value;
}

/** The mode sets sample_steps' range and default, and (turbo) fixes guidance at 1. */
export function applyModeRules() {
  const modes = (state.config && state.config.modes) || {};
  const mode = currentMode();
  const rules = mode ? modes[mode] : null;
  const steps = fieldNamed("sample_steps");
  if (steps) {
    const [low, high] = rules ? rules.steps : [steps.spec.minimum, steps.spec.maximum];
    steps.input.min = low !== undefined ? String(low) : "";
    steps.input.max = high !== undefined ? String(high) : "";
    steps.input.placeholder = rules
      ? `${rules.default_steps} (${mode} default)`
      : Object.entries(modes).map(([m, r]) => `${r.default_steps} ${m}`).join(" / ") || "worker default";
    setNote(steps, rules ? `${low}–${high} steps in ${mode} mode.` : "");
  }
  for (const field of state.fields.filter((f) => f.name.startsWith("guidance_scale"))) {
    const fixed = Boolean(rules && rules.guidance_fixed);
    if (fixed) field.input.value = "";
    field.input.disabled = fixed;
    field.wrap.classList.toggle("disabled", fixed);
    field.input.placeholder = rules
      ? `${rules.default_guidance} (${fixed ? `fixed in ${mode}` : `${mode} default`})`
      : "worker default";
  }
}

/** A line under a field's help text that says what its current mode allows. */
function setNote(field, text) {
  let note = field.wrap.querySelector(".note");
  if (!note) {
    note = el("p", { class: "help note" });
    field.wrap.querySelector(".help").after(note);
  }
  note.textContent = text;
  note.hidden = !text;
}

/** The rules of the chosen mode, beyond the schema (sample_steps' range). */
function checkModeRules(name, value) {
  const mode = currentMode();
  const rules = mode && state.config.modes[mode];
  if (!rules || name !== "sample_steps" || typeof value !== "number") return null;
  const [low, high] = rules.steps;
  return value < low || value > high ? `must be from ${low} to ${high} in ${mode} mode` : null;
}

/** One list field's entries, each with only its filled-in values; problems under their own boxes. */
function collectList(field, errors) {
  const items = [];
  const props = listItemProps(field);
  field.rows.querySelectorAll(".list-row").forEach((row, index) => {
    const item = {};
    for (const { name, spec } of props) {
      const key = `${field.name}[${index}].${name}`;
      const read = readControl($(`field-${field.name}-${index}-${name}`), spec);
      if (read.bad) errors[key] = read.bad;
      else if (read.empty) {
        if (spec.required) errors[key] = "required";
      } else {
        const problem = checkValue(name, read.value, spec);
        if (problem) errors[key] = problem;
        else if (read.value !== null) item[name] = read.value;
      }
    }
    // An entry whose text boxes are all empty names nothing (for loras: no file on either expert).
    const texts = props.filter((p) => p.spec.kind === "text");
    if (texts.length && texts.every((p) => item[p.name] === undefined)) {
      errors[`${field.name}[${index}]`] = field.name === "loras"
        ? "names no file: give high, low or both" : "empty entry: fill it in or remove it";
    }
    items.push(item);
  });
  return items;
}

/**
 * The job input the form describes: only fields changed from their default (and required ones),
 * so the worker's own defaults apply to the rest. {input, errors}.
 */
export function collectInput() {
  const input = {};
  const errors = {};
  for (const field of state.fields) {
    const { name, spec } = field;
    if (field.input && field.input.disabled && field.kind !== "image") continue; // fixed by the mode
    let read;
    if (field.kind === "list") read = { value: collectList(field, errors) };
    else if (field.kind === "image" && field.fileValue) read = { value: field.fileValue };
    else read = readControl(field.input, spec);
    if (read.bad) {
      errors[name] = read.bad;
      continue;
    }
    if (read.empty) {
      if (spec.required && !spec.hasDefault) errors[name] = "required";
      continue;
    }
    const problem = checkValue(name, read.value, spec) || checkModeRules(name, read.value);
    if (problem) {
      errors[name] = problem;
      continue;
    }
    if (spec.required || !sameValue(read.value, defaultOf(spec))) input[name] = read.value;
  }
  return { input, errors };
}

// The wan-i2v playground page: one image and a settings form in, a job followed to its video out,
// and every job the playground sent kept in a history below.
//
// Plain ES2020 in one file, no build step. The settings form is generated from the job's JSON Schema
// (GET /api/config), so a field added to the worker's schema appears here with no change to this file;
// only the fields with behaviour of their own (image, last_image, mode, sample_steps, the guidance
// fields, resolution, loras) are named below.
"use strict";

(() => {
  // ---- constants and state --------------------------------------------------------------------------

  const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]);
  const RUNNING = new Set(["IN_QUEUE", "IN_PROGRESS"]);
  /** A job sent to another endpoint than the one this playground drives is shown as last seen, never polled. */
  const followed = (job) => job.followed !== false;
  const running = (job) => RUNNING.has(job.status) && followed(job);
  const settled = (job) => TERMINAL.has(job.status) || !followed(job);
  const TOKEN_KEY = "wan-playground-token";
  const TOKEN_HELP = "open the address the playground printed (it carries ?token=...)";
  const POLL_VIEWED_MS = 500; // the job on screen
  const POLL_BACKGROUND_MS = 2000; // other jobs still running (so the history stays true)
  const POSTER_MAX_WIDTH = 320;
  const SEED_MAX = 4294967295;
  const IMAGE_FIELDS = new Set(["image", "last_image"]); // handled outside the generated form
  const TEXTAREA_FIELDS = new Set(["prompt", "negative_prompt"]);
  const INLINE_IMAGE = "(inline image)"; // what the history shows instead of a kept data URI
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

  const state = {
    token: "",
    config: null,
    fields: [], // one entry per generated form field: {name, spec, kind, required, input, wrap}
    image: null, // {source: "file" | "url", value, label, width, height}
    previewSeq: 0, // answers to older /api/preview requests are dropped
    previewError: null, // the server's reason this image cannot be used, if any
    viewedId: null, // the job shown in the run panel
    jobs: new Map(), // id -> the latest job object seen
    polls: new Map(), // id -> {timer, inFlight, failures}
    sentInputs: new Map(), // id -> the whole input this page sent (images included)
    progressPoints: new Map(), // id -> [{t, p}] for the time-left estimate
    errorsShownFor: null, // the failed job whose field errors are in the form
    fromForm: new Set(), // jobs sent from the form in this page: only their field errors mark the form
    postersSent: new Set(),
    posterLoading: false, // a history video being loaded off screen for its poster
    snippets: new Map(),
    settingsShownFor: null, // the job whose settings table is shown
    picks: [], // job ids ticked for comparison, oldest first
    historyOrder: [], // job ids as the history lists them, newest first
    historySeen: false, // the first history answer opens a job still running
    historyLoading: null,
    historyAgain: false,
  };

  // ---- small DOM helpers ----------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** A new element: el("div", {class: "x", id: "y"}, child, "text", ...). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

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

  function truncate(text, max) {
    const s = String(text ?? "");
    return s.length > max ? s.slice(0, max - 1) + "…" : s;
  }

  function seconds(value) {
    if (!Number.isFinite(value)) return "";
    if (value < 60) return `${value < 10 ? value.toFixed(1) : Math.round(value)} s`;
    const m = Math.floor(value / 60);
    const s = Math.round(value % 60);
    return `${m}m ${String(s).padStart(2, "0")}s`;
  }

  function megabytes(bytes) {
    if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  function clockTime(epochSeconds) {
    if (!epochSeconds) return "";
    const date = new Date(epochSeconds * 1000);
    const sameDay = date.toDateString() === new Date().toDateString();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return sameDay ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  function sameValue(a, b) {
    return JSON.stringify(a) === JSON.stringify(b);
  }

  function jobPath(id, tail = "") {
    return `/api/jobs/${encodeURIComponent(id)}${tail}`;
  }

  // ---- token and requests ---------------------------------------------------------------------------

  /** The per-launch token: from the page (put there by the server), else ?token= kept for this tab. */
  function readToken() {
    const meta = document.querySelector('meta[name="wan-token"]');
    let token = meta ? meta.content.trim() : "";
    if (token === "{{TOKEN}}") token = ""; // the page was served without the server's substitution
    const url = new URL(window.location.href);
    const fromUrl = url.searchParams.get("token");
    if (!token && fromUrl) {
      token = fromUrl;
      try {
        sessionStorage.setItem(TOKEN_KEY, token);
      } catch (_) {
        /* storage may be disabled; the token still works for this page */
      }
    }
    if (!token) {
      try {
        token = sessionStorage.getItem(TOKEN_KEY) || "";
      } catch (_) {
        token = "";
      }
    }
    if (fromUrl) {
      // Keep the token out of the address bar (and out of screenshots).
      url.searchParams.delete("token");
      window.history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    state.token = token;
    if (!token) showBanner(`No playground token: ${TOKEN_HELP}.`);
  }

  function showBanner(text) {
    const banner = $("token-error");
    banner.textContent = text;
    banner.hidden = false;
  }

  class ApiError extends Error {
    constructor(message, status, errors) {
      super(message);
      this.status = status;
      this.errors = errors || {};
    }
  }

  /** A request to the playground's server; JSON in and out; ApiError with the server's message. */
  async function api(path, { method = "GET", json, body, headers = {} } = {}) {
    const init = { method, headers: { ...headers }, credentials: "same-origin", cache: "no-store" };
    if (state.token) init.headers["X-Playground-Token"] = state.token;
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    } else if (body !== undefined) {
      init.body = body;
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new ApiError("cannot reach the playground server (is it still running?)", 0);
    }
    if (response.status === 204) return null;
    const type = response.headers.get("Content-Type") || "";
    let data = null;
    let text = "";
    try {
      if (type.includes("json")) data = await response.json();
      else if (type.startsWith("text/plain")) text = (await response.text()).slice(0, 300); // not HTML pages
    } catch (_) {
      /* an unreadable body: the status says enough */
    }
    if (!response.ok) {
      let message = (data && data.message) || text.trim() || `${response.status} ${response.statusText}`;
      if (response.status === 401 || response.status === 403) message += ` (${TOKEN_HELP})`;
      throw new ApiError(message, response.status, data && data.errors);
    }
    return data;
  }

  /** A file the server keeps (a job's input image) as a data: URI, to send it again. */
  async function fetchDataUri(path) {
    const headers = state.token ? { "X-Playground-Token": state.token } : {};
    let response;
    try {
      response = await fetch(path, { headers, credentials: "same-origin" });
    } catch (_) {
      throw new ApiError("cannot reach the playground server (is it still running?)", 0);
    }
    if (!response.ok) throw new ApiError(`the job's image is not available (${response.status})`, response.status);
    return blobToDataUri(await response.blob());
  }

  function blobToDataUri(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error("could not read the file"));
      reader.readAsDataURL(blob);
    });
  }

  // ---- the schema -----------------------------------------------------------------------------------

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

  // ---- building the form ----------------------------------------------------------------------------

  function buildForm() {
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

  function fieldNamed(name) {
    return state.fields.find((f) => f.name === name);
  }

  // ---- reading and writing values -------------------------------------------------------------------

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

  function writeField(field, value) {
    if (field.kind === "list") renderListRows(field, Array.isArray(value) ? value.map((v) => ({ ...listItemDefaults(field), ...v })) : []);
    else if (field.kind === "image") {
      field.setFile(null);
      writeControl(field.input, field.spec, value);
    } else writeControl(field.input, field.spec, value);
  }

  function resetForm() {
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

  function currentResolution() {
    const field = fieldNamed("resolution");
    const read = field ? readControl(field.input, field.spec) : { empty: true };
    return read.empty ? null : read.value;
  }

  /** The mode sets sample_steps' range and default, and (turbo) fixes guidance at 1. */
  function applyModeRules() {
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

  // ---- checks before sending ------------------------------------------------------------------------

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
  function collectInput() {
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

  // ---- messages under fields ------------------------------------------------------------------------

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

  function setError(name, message) {
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

  function showErrors(errors) {
    for (const [name, message] of Object.entries(errors || {})) setError(name, message);
  }

  function clearErrors() {
    document.querySelectorAll(".field-error").forEach((slot) => {
      slot.textContent = "";
    });
    document.querySelectorAll(".invalid").forEach((node) => node.classList.remove("invalid"));
    $("form-error").textContent = "";
    state.errorsShownFor = null;
    if (state.previewError) setError("image", state.previewError);
  }

  function focusFirstInvalid() {
    const first = document.querySelector("#form-panel .invalid");
    if (first) {
      first.scrollIntoView({ behavior: "smooth", block: "center" });
      if (typeof first.focus === "function") first.focus({ preventScroll: true });
    }
  }

  // ---- the image ------------------------------------------------------------------------------------

  function imageFileProblem(file) {
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
  function setImage(image) {
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
  async function requestPreview() {
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

  function bindImageInputs() {
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
    const stageImg = $("run-image");
    stageImg.addEventListener("error", () => {
      stageImg.dataset.failed = stageImg.getAttribute("src") || "";
      $("run-stage").hidden = true;
    });
  }

  // ---- sending a job --------------------------------------------------------------------------------

  async function onSubmit(event) {
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

  // ---- following jobs -------------------------------------------------------------------------------

  /** Poll a job until it ends: every 500 ms while it is on screen, every 2 s otherwise. */
  function track(id) {
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

  // ---- the run panel --------------------------------------------------------------------------------

  /** Put a job in the run panel (a new one, or a card clicked in the history). */
  function viewJob(id) {
    state.viewedId = id;
    $("job-error").textContent = "";
    $("snippet").hidden = true;
    $("copy-status").textContent = "";
    const job = state.jobs.get(id);
    if (job) renderRun(job);
    document.querySelectorAll(".history-item").forEach((card) => card.classList.toggle("active", card.dataset.jobId === id));
    if (job && !settled(job)) pollSoon(id);
  }

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
  function updateClock() {
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

  async function onCancel() {
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

  // ---- the result -----------------------------------------------------------------------------------

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
  function capturePoster(job, video) {
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
  function renderSettings(table, input, highlight = new Set()) {
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

  // ---- job actions: new seed, reuse, snippets -------------------------------------------------------

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

  async function onNewSeed() {
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
  async function onReuse() {
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

  async function copySnippet(kind) {
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

  // ---- history and comparison -----------------------------------------------------------------------

  /** GET /api/history; calls while one is under way run once more after it. */
  async function refreshHistory() {
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

  function updateHistoryCard(job) {
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

  /** The two picked videos side by side, looping; settings that differ are highlighted. */
  function showCompare() {
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

  function closeCompare() {
    const view = $("compare-view");
    view.querySelectorAll("video").forEach((v) => v.pause());
    $("compare-columns").textContent = "";
    view.hidden = true;
  }

  // ---- start --------------------------------------------------------------------------------------

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
    bindActions();
    loadConfig();
    refreshHistory();
    setInterval(updateClock, 250);
  }

  init();
})();

// The job's JSON Schema (GET /api/config) read as flat field specs, and what a value must be to pass it
// (the schema's constraints and the config's field_rules). No DOM.

import { state } from "./state.js";
import { sameValue } from "./util.js";

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
export function describe(prop, required) {
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
export function defaultOf(spec) {
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
export function checkValue(name, value, spec) {
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

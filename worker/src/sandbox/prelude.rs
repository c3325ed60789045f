//! The JavaScript that hardens a fresh context before any user code runs.

/// File name the prelude is evaluated under, so its stack frames are never mistaken for the user's.
pub(super) const PRELUDE_FILE: &str = "floq-sandbox";

/// Evaluates to a function of `(raw, limits)` where `raw` holds the Rust implementations of the `$h` helpers.
/// Calling it hardens the realm (irreversibly) and returns the frozen internal helpers the engine drives:
/// `prepare`, `compile`, `invoke`, `describe` and `health`.
///
/// It is one function expression on purpose: a global script's top-level `let`/`const` would persist as global
/// lexical bindings visible to every later script.
pub(super) const PRELUDE: &str = r#"(function (raw, limits) {
"use strict";
const G = globalThis;
const O = Object;
const freeze = O.freeze;
const getProto = O.getPrototypeOf;
const gopd = O.getOwnPropertyDescriptor;
const defProp = O.defineProperty;
const hasOwn = O.hasOwn;
const keysOf = O.keys;
const ownKeys = Reflect.ownKeys;
const apply = Reflect.apply;
const isArray = Array.isArray;
const isError = Error.isError;
const jsonParse = JSON.parse;
const jsonStringify = JSON.stringify;
const fnToString = Function.prototype.toString;
const dateGetTime = Date.prototype.getTime;
const indirectEval = G.eval;
const PromiseCtor = Promise;
const DateCtor = Date;
const SetCtor = Set;
const StringCtor = String;
const TypeErrorCtor = TypeError;
const RangeErrorCtor = RangeError;
const MAX_ARRAY_LIKE = limits.maxArrayLike;
const MAX_TEXT = limits.maxErrorText;

// Every route back to a code-compiling constructor goes through one of these prototypes.
const FP = Function.prototype;
const AFP = getProto(async function () {});
const GFP = getProto(function* () {});
const AGFP = getProto(async function* () {});
for (const proto of [FP, AFP, GFP, AGFP]) {
  defProp(proto, "constructor", { value: undefined, writable: false, enumerable: false, configurable: false });
}

// These accessors store into engine state rather than into the (frozen) object, so freezing would not stop one
// script from installing a stack-trace hook that sees later scripts' errors.
defProp(Error, "prepareStackTrace", { value: undefined, writable: false, enumerable: false, configurable: false });
defProp(Error, "stackTraceLimit", { value: 10, writable: false, enumerable: false, configurable: false });

// QuickJS runs these over the whole `length` of sparse arrays and array-likes without polling the interrupt
// handler, so `Array(2**32-1).join('')` would hold the thread for minutes. No dense array can exceed the cap
// under the memory limit, so refusing longer receivers only rejects sparse or fake arrays.
const guardLength = (o, method) => {
  if (o !== null && o !== undefined && o.length > MAX_ARRAY_LIKE) {
    throw new RangeErrorCtor(`Array.prototype.${method}: length above the sandbox limit of ${MAX_ARRAY_LIKE}`);
  }
};
const AP = Array.prototype;
const guard = (proto, key, check) => {
  const original = proto[key];
  const wrapper = {
    [key](...args) {
      check(this, args, key);
      return apply(original, this, args);
    },
  }[key];
  defProp(wrapper, "length", { value: original.length });
  defProp(proto, key, { value: wrapper, writable: true, enumerable: false, configurable: true });
  return wrapper;
};
const receiver = (self, args, key) => guardLength(self, key);
guard(AP, "concat", (self, args, key) => {
  guardLength(self, key);
  for (let i = 0; i < args.length; i++) guardLength(args[i], key);
});
for (const key of ["join", "toString", "toLocaleString", "shift", "unshift", "reverse", "sort", "slice", "splice",
  "copyWithin", "flat", "flatMap", "keys", "entries"]) {
  guard(AP, key, receiver);
}
// The array iterator feeds Iterator.prototype.drop/includes/join, which have the same unpolled loops.
defProp(AP, Symbol.iterator, { value: guard(AP, "values", receiver), writable: true, enumerable: false, configurable: true });
guard(Iterator.prototype, "drop", (self, args) => {
  if (args[0] > MAX_ARRAY_LIKE) {
    throw new RangeErrorCtor(`Iterator.prototype.drop: count above the sandbox limit of ${MAX_ARRAY_LIKE}`);
  }
});

// The engine's generator is seeded once per context, so a script could read the state it leaves and reconstruct
// an earlier script's random numbers; this one is reseeded for every job.
defProp(Math, "random", {
  value: { random() { return raw.random(); } }.random,
  writable: true,
  enumerable: false,
  configurable: true,
});

// Freezing turns inherited data properties read-only, and a strict-mode assignment to an own property that
// shadows a read-only inherited one throws (the "override mistake"): `this.name = 'MyError'` in an Error subclass
// would fail. An accessor whose setter defines the own property keeps such code working.
const enable = (obj, key) => {
  const d = gopd(obj, key);
  if (d === undefined || !hasOwn(d, "value") || !d.configurable) return;
  const value = d.value;
  const accessors = {
    get() {
      return value;
    },
    set(v) {
      if (this === obj) {
        throw new TypeErrorCtor(`Cannot assign to read only property '${StringCtor(key)}' of a built-in`);
      }
      defProp(this, key, { value: v, writable: true, enumerable: true, configurable: true });
    },
  };
  defProp(obj, key, { get: accessors.get, set: accessors.set, enumerable: d.enumerable, configurable: false });
};
for (const key of ["constructor", "toString", "toLocaleString", "valueOf", "hasOwnProperty", "isPrototypeOf",
  "propertyIsEnumerable"]) {
  enable(O.prototype, key);
}
for (const name of ["Error", "EvalError", "RangeError", "ReferenceError", "SyntaxError", "TypeError", "URIError",
  "InternalError", "AggregateError", "SuppressedError"]) {
  const ctor = G[name];
  if (typeof ctor !== "function") continue;
  for (const key of ["constructor", "name", "message", "toString"]) enable(ctor.prototype, key);
}

// No dynamic code, no host hooks, nothing that schedules work after a script has returned.
for (const name of ["eval", "Function", "WeakRef", "FinalizationRegistry", "queueMicrotask"]) {
  delete G[name];
}

const asText = (v, fn) => {
  switch (typeof v) {
    case "string":
      return v;
    case "number":
    case "boolean":
    case "bigint":
      return StringCtor(v);
    default:
      throw new TypeErrorCtor(`$h.${fn} expects a string`);
  }
};
const formatArg = (f) => {
  if (f === undefined || f === null) return null;
  if (typeof f !== "string") throw new TypeErrorCtor("$h.formatDate: the format must be a string");
  return f;
};
const H = {
  sha256(s) {
    return raw.sha256(asText(s, "sha256"));
  },
  base64Encode(s) {
    return raw.base64Encode(asText(s, "base64Encode"));
  },
  base64Decode(s) {
    return raw.base64Decode(asText(s, "base64Decode"));
  },
  formatDate(value, format) {
    const f = formatArg(format);
    if (typeof value === "number") return raw.formatMillis(value, f);
    if (typeof value === "string") return raw.formatText(value, f);
    if (typeof value === "object" && value !== null && value instanceof DateCtor) {
      return raw.formatMillis(apply(dateGetTime, value, []), f);
    }
    throw new TypeErrorCtor("$h.formatDate expects an ISO 8601 string, epoch milliseconds or a Date");
  },
  now() {
    return raw.now();
  },
};

// Intrinsics that no global property leads to; user code reaches them through instances.
const hidden = [FP, AFP, GFP, AGFP, H, raw];
const probe = (make) => {
  try {
    hidden.push(getProto(make()));
  } catch (_) {
    // An intrinsic this engine build lacks.
  }
};
probe(() => [][Symbol.iterator]());
probe(() => new Map()[Symbol.iterator]());
probe(() => new Set()[Symbol.iterator]());
probe(() => ""[Symbol.iterator]());
probe(() => /a/g[Symbol.matchAll](""));
probe(() => [][Symbol.iterator]().map((x) => x));
probe(() => Iterator.from({ next() { return { done: true, value: undefined }; } }));
probe(() => Iterator.concat());
probe(() => (function* () {})());
probe(() => (async function* () {})());
probe(() => (async function () {})());
probe(() => gopd((function () { return arguments; })(), "callee").get);

// Freezes everything reachable from the roots through own properties (data and accessor) and prototypes.
const seen = new SetCtor();
const pending = [G, ...hidden];
while (pending.length > 0) {
  const o = pending.pop();
  if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) continue;
  seen.add(o);
  freeze(o);
  pending.push(getProto(o));
  for (const key of ownKeys(o)) {
    const d = gopd(o, key);
    if (d === undefined) continue;
    if (hasOwn(d, "value")) pending.push(d.value);
    else pending.push(d.get, d.set);
  }
}

// Scope values are parsed once per run and shared by its jobs, so they are frozen: one job cannot hand a modified
// input to the next.
const freezeData = (root) => {
  const stack = [root];
  while (stack.length > 0) {
    const o = stack.pop();
    freeze(o);
    if (isArray(o)) {
      for (let i = 0; i < o.length; i++) {
        const v = o[i];
        if (typeof v === "object" && v !== null) stack.push(v);
      }
    } else {
      const keys = keysOf(o);
      for (let i = 0; i < keys.length; i++) {
        const v = o[keys[i]];
        if (typeof v === "object" && v !== null) stack.push(v);
      }
    }
  }
};
const prepare = (json) => {
  const scope = jsonParse(json);
  if (typeof scope === "object" && scope !== null) freezeData(scope);
  const pick = (key) =>
    typeof scope === "object" && scope !== null && !isArray(scope) && hasOwn(scope, key) ? scope[key] : null;
  return freeze([pick("$input"), pick("$node"), pick("$vars"), pick("$run")]);
};

// Returns the function only if it is exactly the wrapper: user text that closes the wrapper early would make the
// evaluated value some other function (or none). Indirect eval gives any such stray declarations a scope of their
// own that dies with this call.
const compile = (text, expected) => {
  const f = indirectEval(text);
  if (typeof f !== "function" || apply(fnToString, f, []) !== expected) return undefined;
  const proto = f.prototype;
  if (typeof proto === "object" && proto !== null) freeze(proto);
  freeze(f);
  return f;
};

class OutputError {
  constructor(message) {
    this.message = message;
  }
}
freeze(OutputError.prototype);
const where = (key) => (key === "" ? "the result is" : `the result contains, at key ${jsonStringify(key)},`);
const replacer = function (key, v) {
  switch (typeof v) {
    case "function":
      throw new OutputError(`${where(key)} a function, which is not JSON`);
    case "symbol":
      throw new OutputError(`${where(key)} a Symbol, which is not JSON`);
    case "bigint":
      throw new OutputError(`${where(key)} a BigInt, which is not JSON`);
    case "object":
      if (v !== null && v instanceof PromiseCtor) {
        throw new OutputError(`${where(key)} a Promise: scripts are synchronous`);
      }
      return v;
    default:
      return v;
  }
};
// A string is the JSON text of the result; a one-element array carries an output error.
const invoke = (f, scope, maxLength) => {
  const r = f(scope[0], scope[1], scope[2], scope[3], H);
  if (r === undefined) return "null";
  let text;
  try {
    text = jsonStringify(r, replacer);
  } catch (e) {
    if (e instanceof OutputError) return [e.message];
    if (e instanceof TypeErrorCtor && e.message === "circular reference") {
      return ["the result contains a circular reference, which is not JSON"];
    }
    throw e;
  }
  if (text === undefined) return "null";
  if (text.length > maxLength) return [`the result is larger than the ${maxLength}-byte limit`];
  return text;
};

const clip = (s) => (s.length > MAX_TEXT ? `${s.slice(0, MAX_TEXT)}…` : s);
// [kind, name, message, stack]; kind 0 = an Error object, 1 = null (what the engine throws when it cannot even
// allocate the out-of-memory error), 2 = any other value, 3 = a value that threw while being described.
const describe = (e) => {
  try {
    if (e === null) return [1, "", "null", ""];
    if (isError(e)) {
      const name = e.name;
      const message = e.message;
      const stack = e.stack;
      return [
        0,
        typeof name === "string" ? clip(name) : "",
        clip(typeof message === "string" ? message : StringCtor(message)),
        typeof stack === "string" ? clip(stack) : "",
      ];
    }
    return [2, "", clip(StringCtor(e)), ""];
  } catch (_) {
    return [3, "", "the script threw a value that cannot be converted to a string", ""];
  }
};

const health = () => 1;

return freeze({ prepare, compile, invoke, describe, health });
})"#;

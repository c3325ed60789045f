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

// QuickJS runs the native loops below without polling the interrupt handler, so a script could hold its thread
// long past its deadline (`Array.prototype.fill.call({ length: 2 ** 32 - 1 }, 0)` would run for minutes). Each is
// either bounded here to a size that finishes within milliseconds or, where a bound would refuse ordinary data,
// rerouted through a JS callback (sorting, stringifying): a call into JS polls the interrupt. Loops that already
// poll (every/some/map/filter/forEach/reduce*/find*/indexOf/lastIndexOf/includes on arrays, regular expressions)
// are left alone; see `sandbox::tests::native_loops_*` for the audit, one test per guard.
const MAX_TYPED = limits.maxTypedLength;
const MAX_NORMALIZE = limits.maxNormalize;
const MAX_SEARCH_WORK = limits.maxSearchWork;
const MAX_BIGINT_TEXT = limits.maxBigIntText;
const MAX_BIGINT = 1n << BigInt(limits.maxBigIntBits);
const refuse = (what, limit) => {
  throw new RangeErrorCtor(`${what} above the sandbox limit of ${limit}`);
};
const guardLength = (o, method, limit = MAX_ARRAY_LIKE) => {
  if (o !== null && o !== undefined && o.length > limit) refuse(`${method}: length`, limit);
};
const AP = Array.prototype;
const guard = (proto, key, check) => {
  const original = proto[key];
  const name = typeof key === "symbol" ? "[Symbol.iterator]" : key;
  const wrapper = {
    [name](...args) {
      const self = check(this, args, key);
      return apply(original, self === undefined ? this : self, args);
    },
  }[name];
  defProp(wrapper, "length", { value: original.length });
  defProp(proto, key, { value: wrapper, writable: true, enumerable: false, configurable: true });
  return wrapper;
};
const arrayMethod = (limit) => (self, args, key) => guardLength(self, `Array.prototype.${key}`, limit);
const receiver = arrayMethod(MAX_ARRAY_LIKE);
guard(AP, "concat", (self, args, key) => {
  guardLength(self, `Array.prototype.${key}`);
  for (let i = 0; i < args.length; i++) guardLength(args[i], `Array.prototype.${key}`);
});
for (const key of ["join", "toString", "toLocaleString", "shift", "unshift", "reverse", "slice", "splice",
  "copyWithin", "flat", "flatMap", "keys", "entries", "fill", "with", "toReversed", "toSpliced"]) {
  guard(AP, key, receiver);
}
// The default order compares strings natively without polling; the same order through a JS comparator polls.
const toText = (v) => {
  if (typeof v === "symbol") throw new TypeErrorCtor("cannot convert symbol to string");
  return StringCtor(v);
};
const textOrder = (a, b) => {
  const x = toText(a);
  const y = toText(b);
  return x < y ? -1 : x > y ? 1 : 0;
};
const sorted = (order, owner) => (self, args, key) => {
  guardLength(self, `${owner}.prototype.${key}`);
  if (args[0] === undefined) args[0] = order;
};
guard(AP, "sort", sorted(textOrder, "Array"));
guard(AP, "toSorted", sorted(textOrder, "Array"));
// The array iterator feeds Iterator.prototype.drop/includes/join, which have the same unpolled loops.
defProp(AP, Symbol.iterator, { value: guard(AP, "values", receiver), writable: true, enumerable: false, configurable: true });
guard(Iterator.prototype, "drop", (self, args) => {
  if (args[0] > MAX_ARRAY_LIKE) refuse("Iterator.prototype.drop: count", MAX_ARRAY_LIKE);
});
// Array.from and the typed-array constructors read every index of an array-like natively.
const arrayLikeSource = (what) => (self, args) => {
  const src = args[0];
  if (typeof src === "object" && src !== null) guardLength(src, what);
};
guard(Array, "from", arrayLikeSource("Array.from: source length"));

// Typed arrays live in the heap, so their length is bounded by memory, but scanning, copying and converting tens of
// millions of elements natively still outlasts a deadline.
const TA = getProto(Uint8Array);
const TAP = TA.prototype;
const typedMethod = (limit) => (self, args, key) => guardLength(self, `TypedArray.prototype.${key}`, limit);
for (const key of ["fill", "indexOf", "lastIndexOf", "includes", "reverse", "toReversed", "with", "slice",
  "copyWithin"]) {
  guard(TAP, key, typedMethod(MAX_TYPED));
}
for (const key of ["join", "toString", "toLocaleString"]) guard(TAP, key, typedMethod(MAX_ARRAY_LIKE));
// Copying converts element by element when the types differ: bounded by what is copied.
guard(TAP, "set", (self, args) => {
  const src = args[0];
  if (typeof src === "object" && src !== null) guardLength(src, "TypedArray.prototype.set: source length");
});
// Numeric order with NaN last and -0 before +0, as the built-in default.
const numberOrder = (a, b) => {
  if (a < b) return -1;
  if (a > b) return 1;
  if (typeof a === "number") {
    if (a !== a) return b !== b ? 0 : 1;
    if (b !== b) return -1;
    if (a === 0 && b === 0) {
      const na = 1 / a < 0;
      const nb = 1 / b < 0;
      return na === nb ? 0 : na ? -1 : 1;
    }
  }
  return 0;
};
guard(TAP, "sort", sorted(numberOrder, "TypedArray"));
guard(TAP, "toSorted", sorted(numberOrder, "TypedArray"));
guard(TA, "from", arrayLikeSource("TypedArray.from: source length"));
const construct = Reflect.construct;
const setProto = O.setPrototypeOf;
// A plain function (not a method) so that `new` and subclassing (`class X extends Uint8Array`) keep working.
const typedCtor = (name, Original) => {
  const check = arrayLikeSource(`${name}: source length`);
  const Ctor = function (...args) {
    if (new.target === undefined) throw new TypeErrorCtor(`constructor ${name} requires 'new'`);
    check(undefined, args);
    return construct(Original, args, new.target);
  };
  defProp(Ctor, "name", { value: name });
  defProp(Ctor, "length", { value: Original.length });
  defProp(Ctor, "prototype", { value: Original.prototype, writable: false, enumerable: false, configurable: false });
  for (const key of ownKeys(Original)) {
    if (key === "length" || key === "name" || key === "prototype") continue;
    defProp(Ctor, key, gopd(Original, key));
  }
  setProto(Ctor, TA);
  defProp(Original.prototype, "constructor", { value: Ctor, writable: true, enumerable: false, configurable: true });
  return Ctor;
};
for (const name of ["Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
  "Uint32Array", "Float16Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array"]) {
  const Original = G[name];
  if (typeof Original !== "function") continue;
  defProp(G, name, { value: typedCtor(name, Original), writable: true, enumerable: false, configurable: true });
}

// Strings: normalising (and so localeCompare) walks the whole text natively, and the substring search is naive
// (its cost is the text's length times the needle's).
const SP = String.prototype;
const thisText = (self, method) => {
  if (self === null || self === undefined) throw new TypeErrorCtor(`String.prototype.${method} called on ${self}`);
  return typeof self === "string" ? self : toText(self);
};
guard(SP, "normalize", (self, args, key) => {
  const s = thisText(self, key);
  if (s.length > MAX_NORMALIZE) refuse(`String.prototype.${key}: length`, MAX_NORMALIZE);
  return s;
});
guard(SP, "localeCompare", (self, args, key) => {
  const s = thisText(self, key);
  args[0] = toText(args[0]);
  if (s.length > MAX_NORMALIZE || args[0].length > MAX_NORMALIZE) {
    refuse(`String.prototype.${key}: length`, MAX_NORMALIZE);
  }
  return s;
});
const searched = (self, args, key) => {
  const s = thisText(self, key);
  const needle = args[0];
  if ((typeof needle === "object" && needle !== null) || needle === undefined) return s;
  const n = toText(needle);
  args[0] = n;
  if (n.length > 1 && s.length * n.length > MAX_SEARCH_WORK) {
    refuse(`String.prototype.${key}: text length times search length`, MAX_SEARCH_WORK);
  }
  return s;
};
for (const key of ["indexOf", "lastIndexOf", "includes", "split", "replace", "replaceAll"]) guard(SP, key, searched);
// Building a string fills it character by character, natively.
const MAX_STRING_BUILD = limits.maxStringBuild;
guard(SP, "repeat", (self, args, key) => {
  const s = thisText(self, key);
  const count = +args[0];
  if (s.length * count > MAX_STRING_BUILD) refuse(`String.prototype.${key}: result length`, MAX_STRING_BUILD);
  return s;
});
for (const key of ["padStart", "padEnd"]) {
  guard(SP, key, (self, args) => {
    if (+args[0] > MAX_STRING_BUILD) refuse(`String.prototype.${key}: result length`, MAX_STRING_BUILD);
    return thisText(self, key);
  });
}
// The string iterator feeds the same unpolled Iterator.prototype loops as the array iterator.
guard(SP, Symbol.iterator, (self, args) => {
  const s = thisText(self, "[Symbol.iterator]");
  if (s.length > MAX_ARRAY_LIKE) refuse("String.prototype[Symbol.iterator]: length", MAX_ARRAY_LIKE);
  return s;
});

// BigInt arithmetic is bounded by the engine (1 Mbit), but parsing and printing are quadratic in the digits.
const BigIntCtor = G.BigInt;
const bigText = (self, args, key) => {
  const v = apply(BigIntCtor.prototype.valueOf, self, []);
  if (v >= MAX_BIGINT || -v >= MAX_BIGINT) refuse(`BigInt.prototype.${key}: magnitude (bits)`, limits.maxBigIntBits);
  return v;
};
guard(BigIntCtor.prototype, "toString", bigText);
guard(BigIntCtor.prototype, "toLocaleString", bigText);
const BigIntWrapped = {
  BigInt(v) {
    if (typeof v === "string" && v.length > MAX_BIGINT_TEXT) refuse("BigInt: text length", MAX_BIGINT_TEXT);
    return BigIntCtor(v);
  },
}.BigInt;
defProp(BigIntWrapped, "length", { value: 1 });
defProp(BigIntWrapped, "prototype", { value: BigIntCtor.prototype, writable: false, enumerable: false, configurable: false });
for (const key of ["asIntN", "asUintN"]) {
  defProp(BigIntWrapped, key, { value: BigIntCtor[key], writable: true, enumerable: false, configurable: true });
  guard(BigIntWrapped, key, (self, args) => {
    if (args[0] > limits.maxBigIntBits) refuse(`BigInt.${key}: bits`, limits.maxBigIntBits);
  });
}
defProp(BigIntCtor.prototype, "constructor", { value: BigIntWrapped, writable: true, enumerable: false, configurable: true });
defProp(G, "BigInt", { value: BigIntWrapped, writable: true, enumerable: false, configurable: true });

// Stringifying walks arrays natively (`JSON.stringify(Array(2 ** 32 - 1))`); with a replacer function every value
// passes through JS, which polls. An identity replacer gives the same text.
// A property list (an array replacer) becomes the function that picks the same properties, in the same order
// (except integer-like names, which objects always list first).
const identity = (k, v) => v;
const picker = (list) => {
  const names = [];
  const seen = new SetCtor();
  for (let i = 0; i < list.length; i++) {
    const item = list[i];
    let name;
    if (typeof item === "string") name = item;
    else if (typeof item === "number" || item instanceof StringCtor || item instanceof Number) name = StringCtor(item);
    else continue;
    if (!seen.has(name)) {
      seen.add(name);
      names.push(name);
    }
  }
  return (k, v) => {
    if (typeof v !== "object" || v === null || isArray(v)) return v;
    // Boxed primitives are serialised as their value, never as objects.
    if (v instanceof Number || v instanceof StringCtor || v instanceof Boolean || v instanceof BigIntCtor) return v;
    const out = {};
    for (let i = 0; i < names.length; i++) {
      const name = names[i];
      const value = v[name];
      if (value !== undefined) out[name] = value;
    }
    return out;
  };
};
guard(JSON, "stringify", (self, args) => {
  if (typeof args[1] === "function") return;
  args[1] = isArray(args[1]) ? picker(args[1]) : identity;
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

// The helpers run in Rust, outside the runtime's memory cap: what they take and make is bounded here and there.
const MAX_HELPER_TEXT = limits.maxHelperText;
const MAX_FORMAT = limits.maxDateFormat;
const asText = (v, fn) => {
  let s;
  switch (typeof v) {
    case "string":
      s = v;
      break;
    case "number":
    case "boolean":
      s = StringCtor(v);
      break;
    case "bigint":
      s = apply(BigIntCtor.prototype.toString, v, []);
      break;
    default:
      throw new TypeErrorCtor(`$h.${fn} expects a string`);
  }
  if (s.length > MAX_HELPER_TEXT) refuse(`$h.${fn}: input length`, MAX_HELPER_TEXT);
  return s;
};
const formatArg = (f) => {
  if (f === undefined || f === null) return null;
  if (typeof f !== "string") throw new TypeErrorCtor("$h.formatDate: the format must be a string");
  if (f.length > MAX_FORMAT) refuse("$h.formatDate: format length", MAX_FORMAT);
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
// Only in the worker's own unit tests: a native call that ignores the interrupt, to prove the pool survives one.
if (typeof raw.testSpin === "function") H.testSpin = (ms) => raw.testSpin(ms);

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

// What every page uses: the API client, a DOM builder that never parses
// strings as HTML, feedback (toasts, busy buttons, dialogs) and formatting.

/** An error answer of the API: `{"error":{"code","message"}}` and its status. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Called with no arguments when the API says the session is gone (401). */
let onSignedOut = () => {};
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

/**
 * A request to `/api/v1{path}`. `json` is sent as a JSON body; `body` as is.
 * Answers the parsed JSON (null for 204), or the Response itself with
 * `raw: true`; throws ApiError for an error answer and for a network failure
 * (status 0).
 */
export async function api(method, path, options = {}) {
  const { json, body, headers = {}, signal, raw = false, quiet401 = false } = options;
  const init = { method, headers: { ...headers }, credentials: "same-origin", signal };
  if (json !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(`/api/v1${path}`, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "Cannot reach the server. Check your connection and try again.");
  }
  if (!response.ok && response.status !== 304) {
    const error = await errorOf(response);
    if (response.status === 401 && !quiet401) onSignedOut();
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** The ApiError an error response stands for. */
export async function errorOf(response) {
  let code = "http_" + response.status;
  let message = response.statusText || `The server answered ${response.status}.`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON (a proxy's page): keep the status text.
  }
  const retry = Number.parseInt(response.headers.get("retry-after") || "", 10);
  return new ApiError(response.status, code, message, Number.isFinite(retry) ? retry : undefined);
}

/** An error in words a person can act on. */
export function describe(err) {
  if (!(err instanceof ApiError)) return err && err.message ? err.message : String(err);
  let text = err.message.endsWith(".") ? err.message : err.message + ".";
  text = text.charAt(0).toUpperCase() + text.slice(1);
  if (err.retryAfter !== undefined) text += ` Try again in ${duration(err.retryAfter)}.`;
  return text;
}

/** `12 s`, `3 min`, `2 h`. */
export function duration(seconds) {
  if (seconds < 90) return `${seconds} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/**
 * An element: `h("button", {class: "primary", onclick: f}, "Save")`.
 * Strings become text nodes, never markup; `null`/`false` children are
 * skipped; arrays are flattened. Keys starting with `on` add listeners,
 * `aria-*`, `data-*` and other attributes are set as attributes, and
 * `text` sets textContent.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "text") {
      el.textContent = value;
    } else if (key === "value" || key === "checked" || key === "disabled" || key === "hidden") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

let fieldIds = 0;

/** A labelled control: `field("Username", h("input", {...}))`. */
export function field(label, control, hint) {
  const id = control.id || `f${++fieldIds}`;
  control.id = id;
  let hintEl = null;
  if (hint) {
    hintEl = h("div", { class: "hint", id: `${id}-hint` }, hint);
    control.setAttribute("aria-describedby", hintEl.id);
  }
  if (control.type === "checkbox") {
    return h("div", { class: "field" }, h("label", { class: "check", for: id }, control, label), hintEl);
  }
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl);
}

/** A message at the bottom right for a few seconds (errors stay longer). */
export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: kind === "error" ? "toast error" : "toast" }, message);
  box.append(el);
  setTimeout(() => el.remove(), kind === "error" ? 9000 : 4000);
}

/**
 * Runs `action` with `button` disabled and showing a spinner; an error is
 * shown as a toast (or in `alertEl` if given) in words. Answers the
 * action's result, or undefined after an error.
 */
export async function busy(button, action, alertEl) {
  const spinner = h("span", { class: "spinner", "aria-hidden": "true" });
  // A disabled button loses focus to <body>; give it back afterwards so a
  // keyboard user stays where they were.
  const hadFocus = button && document.activeElement === button;
  if (button) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    button.prepend(spinner);
  }
  if (alertEl) alertEl.textContent = "";
  try {
    return await action();
  } catch (err) {
    if (err && err.name === "AbortError") return undefined;
    if (alertEl) alertEl.textContent = describe(err);
    else toast(describe(err), "error");
    return undefined;
  } finally {
    if (button) {
      spinner.remove();
      button.disabled = false;
      button.removeAttribute("aria-busy");
      const lost = document.activeElement === document.body || document.activeElement === null;
      if (hadFocus && button.isConnected && lost) button.focus();
    }
  }
}

/**
 * A modal dialog. `fields`: [{name, label, type?, value?, options?, hint?,
 * required?}]. `body`: extra content. Answers the fields' values by name
 * when confirmed, null when cancelled. `submit(values)` may throw to keep
 * the dialog open with the error shown in it.
 */
export function dialog({ title, fields = [], body = null, confirm = "OK", danger = false, submit, cancel = "Cancel" }) {
  return new Promise((resolve) => {
    const controls = {};
    const alertEl = h("div", { class: "alert", role: "alert" });
    const inputs = fields.map((spec) => {
      let control;
      if (spec.options) {
        control = h("select", { name: spec.name },
          spec.options.map(([value, text]) => h("option", { value, selected: value === spec.value ? true : undefined }, text)));
      } else {
        control = h("input", {
          name: spec.name,
          type: spec.type || "text",
          value: spec.type === "checkbox" ? undefined : spec.value ?? "",
          checked: spec.type === "checkbox" ? Boolean(spec.value) : undefined,
          required: spec.required ? true : undefined,
          autocomplete: spec.autocomplete || "off",
          spellcheck: "false",
          min: spec.min,
        });
      }
      controls[spec.name] = control;
      return field(spec.label, control, spec.hint);
    });
    const ok = h("button", { type: "submit", class: danger ? "danger solid" : "primary" }, confirm);
    const titleId = `d${++fieldIds}`;
    const el = h("dialog", { "aria-labelledby": titleId },
      h("form", { method: "dialog" },
        h("h2", { id: titleId }, title),
        body,
        inputs,
        alertEl,
        h("div", { class: "actions" },
          cancel ? h("button", { type: "button", onclick: () => el.close() }, cancel) : null,
          ok)));
    let result = null;
    el.querySelector("form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const values = {};
      for (const [name, control] of Object.entries(controls)) {
        values[name] = control.type === "checkbox" ? control.checked : control.value;
      }
      if (submit) {
        const done = await busy(ok, async () => {
          await submit(values);
          return true;
        }, alertEl);
        if (!done) return;
      }
      result = values;
      el.close();
    });
    el.addEventListener("close", () => {
      el.remove();
      resolve(result);
    });
    document.body.append(el);
    el.showModal();
    // A confirmation that destroys something starts on Cancel, so a stray
    // Enter does not delete.
    const cancelButton = el.querySelector(".actions button[type=button]");
    const first = inputs.length ? el.querySelector("input, select") : danger && cancelButton ? cancelButton : ok;
    if (first) {
      first.focus();
      if (first.select && first.type === "text") {
        // Select the name without its extension, as file managers do.
        const dot = first.value.lastIndexOf(".");
        if (dot > 0) first.setSelectionRange(0, dot);
        else first.select();
      }
    }
  });
}

/** 1536 → "1.5 KiB". */
export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${n} ${n === 1 ? "byte" : "bytes"}`;
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** A timestamp as the reader's local date and time, in a <time> element. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = typeof iso === "number" ? new Date(iso) : new Date(iso);
  if (Number.isNaN(date.getTime())) return h("span", {}, String(iso));
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, relative(date));
}

function relative(date) {
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  if (seconds >= 0 && seconds < 45) return "just now";
  if (seconds >= 0 && seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds >= 0 && seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/**
 * Text from users (file names, commands, user agents, audit fields) as it
 * can be shown: control characters and bidirectional or invisible
 * formatting characters become visible marks such as ⟨U+202E⟩, so a name
 * cannot disguise itself (rtl⟨U+202E⟩txt.exe shown as "rtlexe.txt").
 */
export function shown(text) {
  // Controls, format characters (bidi overrides, zero-width, tags), line
  // and paragraph separators, and the fillers that render as nothing.
  return String(text ?? "").replace(
    /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\u115f\u1160\u3164\uffa0\u034f\u180b-\u180f]/gu,
    (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`);
}

/** A workspace path for a URL: each component percent-encoded. */
export function encodePath(path) {
  const parts = path.split("/").filter(Boolean);
  if (parts.some((part) => part === "." || part === "..")) throw new Error(`Not a workspace path: ${path}`);
  return parts.map(encodeURIComponent).join("/");
}

/** The storage line shared by Home and Files. */
export async function usageBlock() {
  const meter = h("meter", { min: "0", max: "1", value: "0", "aria-label": "Storage used" });
  const text = h("p", { id: "usage-text", class: "muted" }, "…");
  const refresh = async () => {
    try {
      const usage = await api("GET", "/me/usage");
      meter.max = usage.quota_bytes || 1;
      meter.value = usage.bytes_used;
      meter.high = meter.max * 0.9;
      // The second quota counts entries: files, folders and links.
      text.textContent = `${bytes(usage.bytes_used)} of ${bytes(usage.quota_bytes)} used · ` +
        `${usage.entries.toLocaleString()} of ${usage.quota_files.toLocaleString()} entries`;
    } catch (err) {
      text.textContent = `Storage use unknown: ${describe(err)}`;
    }
  };
  await refresh();
  return { el: h("div", { class: "usage" }, meter, text), meter, text, refresh };
}

/** A state as a coloured badge. */
export function badge(state) {
  const good = ["running", "exited", "up", "ready"];
  const bad = ["failed", "killed", "timed_out", "lost", "stopped", "degraded", "ended"];
  const cls = good.includes(state) ? "badge good" : bad.includes(state) ? "badge bad" : "badge busy";
  return h("span", { class: cls }, String(state).replace("_", " "));
}

/** A page heading row: h1 plus actions. */
export function pageHead(title, ...actions) {
  return h("div", { class: "page-head" }, h("h1", {}, title), actions.length ? h("div", { class: "actions" }, actions) : null);
}

/** Removes a table row and keeps keyboard focus nearby. */
export function removeRow(row, fallback) {
  const sibling = row.nextElementSibling || row.previousElementSibling;
  const hadFocus = row.contains(document.activeElement) || document.activeElement === document.body;
  row.remove();
  if (!hadFocus) return;
  const target = sibling && sibling.querySelector("button:not([disabled])");
  if (target) target.focus();
  else if (fallback) fallback.focus();
}

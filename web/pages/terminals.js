// Terminals: a shell on a PTY in the user's sandbox, shown with xterm.js
// over a WebSocket that survives reconnects (the server replays the
// scrollback to each new socket).
//
//   #/terminals        the user's terminals, "New terminal", "Hang up"
//   #/terminals/<id>   one terminal, attached

import { api, h, toast, busy, describe, when, badge, pageHead } from "../lib.js";

const XTERM = "/ui/vendor/xterm/xterm.mjs";
const XTERM_CSS = "/ui/vendor/xterm/xterm.css";
const FIT = "/ui/vendor/addon-fit/addon-fit.mjs";

const FONT_SIZE = 14;
const FONT_FAMILY = 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace';
/** How often the list looks again (attached sockets, ended terminals). */
const LIST_POLL_MS = 5000;
/** The longest wait between two attempts to reconnect. */
const MAX_BACKOFF_MS = 10000;
const SCREEN_READER_KEY = "warren.terminal.screenReaderMode";

export async function render(holder, ctx) {
  if (ctx.rest) return renderTerminal(holder, ctx, ctx.rest);
  return renderList(holder, ctx);
}

// ---- the list ---------------------------------------------------------------

async function renderList(holder, ctx) {
  const create = h("button", { type: "button", class: "primary" }, "New terminal");
  create.addEventListener("click", async () => {
    const { cols, rows } = estimateSize();
    const terminal = await busy(create, () => api("POST", "/terminals", { json: { cols, rows } }));
    if (!terminal) {
      create.focus(); // busy() disabled it, which dropped the focus
      return;
    }
    toast("Terminal opened.");
    location.hash = `#/terminals/${encodeURIComponent(terminal.id)}`;
  });

  const tbody = h("tbody");
  const table = h("table", {},
    h("caption", {}, "Open terminals"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Terminal"),
      h("th", { scope: "col" }, "State"),
      h("th", { scope: "col", class: "optional" }, "Attached"),
      h("th", { scope: "col", class: "optional" }, "Opened"),
      h("th", { scope: "col", class: "optional" }, "Last activity"),
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
    tbody);
  const listAlert = h("div", { class: "alert", role: "alert" });
  let shown = "";

  const draw = (terminals) => {
    // Redrawn only when something changed, keeping the keyboard's place.
    const key = JSON.stringify(terminals.map((t) => [t.id, t.state, t.attached, t.last_activity_at]));
    if (key === shown) return;
    shown = key;
    const focused = document.activeElement && tbody.contains(document.activeElement)
      ? document.activeElement.dataset.focusKey : null;
    tbody.replaceChildren(...terminals.map((terminal, index) => row(terminal, index + 1)));
    if (!terminals.length) {
      tbody.append(h("tr", {}, h("td", { colspan: "6", class: "empty" },
        "No terminals open. Open one with “New terminal”.")));
    }
    if (focused) {
      const again = tbody.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
      (again || create).focus();
    }
  };

  const row = (terminal, number) => {
    const name = `Terminal ${number}`;
    const hangUp = h("button", {
      type: "button",
      class: "small danger nowrap",
      "aria-label": `Hang up ${name}`,
      "data-focus-key": `hangup-${terminal.id}`,
    }, "Hang up");
    hangUp.addEventListener("click", async () => {
      const done = await busy(hangUp, () => hangUpRequest(`/terminals/${encodeURIComponent(terminal.id)}`));
      if (!done) {
        hangUp.focus();
        return;
      }
      toast(`${name} hung up.`);
      hangUp.closest("tr").remove();
      create.focus();
      load();
    });
    return h("tr", {},
      h("td", { class: "nowrap" }, h("a", { href: `#/terminals/${encodeURIComponent(terminal.id)}`, "data-focus-key": `open-${terminal.id}` }, name)),
      h("td", {}, badge(terminal.state)),
      h("td", { class: "optional" }, attachedText(terminal.attached)),
      h("td", { class: "optional nowrap" }, when(terminal.created_at)),
      h("td", { class: "optional nowrap" }, when(terminal.last_activity_at)),
      h("td", { class: "row-actions" }, hangUp));
  };

  const load = async () => {
    const answer = await api("GET", "/terminals");
    listAlert.textContent = "";
    draw(answer.terminals || []);
  };

  try {
    await load();
  } catch (err) {
    listAlert.textContent = `Your terminals could not be loaded: ${describe(err)}`;
  }

  let timer = null;
  let stopped = false;
  const poll = async () => {
    try {
      await load();
    } catch {
      // Shown stale until the next look; a lost session is handled by api().
    }
    if (!stopped) timer = setTimeout(poll, LIST_POLL_MS);
  };
  timer = setTimeout(poll, LIST_POLL_MS);

  holder.append(
    pageHead("Terminals", create),
    h("section", { class: "card" },
      listAlert,
      h("div", { class: "table-wrap" }, table)));
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** DELETE, where a terminal already gone counts as hung up. */
function hangUpRequest(path) {
  return api("DELETE", path).then(() => true, (err) => {
    if (err.status === 404) return true;
    throw err;
  });
}

function attachedText(n) {
  if (!n) return "Not attached";
  return n === 1 ? "1 window" : `${n} windows`;
}

/** Columns and rows that fit the terminal box at this window size, roughly. */
function estimateSize() {
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d");
  let cellWidth = FONT_SIZE * 0.6;
  if (context) {
    context.font = `${FONT_SIZE}px ${FONT_FAMILY}`;
    cellWidth = context.measureText("W".repeat(20)).width / 20 || cellWidth;
  }
  const cellHeight = Math.ceil(FONT_SIZE * 1.2);
  const phone = window.innerWidth <= 640;
  const width = Math.min(window.innerWidth, 1120) - (phone ? 20 : 40) - 12 - 14;
  const height = window.innerHeight - (phone ? 260 : 220) - 12;
  return {
    cols: clamp(Math.floor(width / cellWidth), 20, 1000),
    rows: clamp(Math.floor(height / cellHeight), 5, 1000),
  };
}

function clamp(n, low, high) {
  return Math.max(low, Math.min(high, Number.isFinite(n) ? n : low));
}

// ---- one terminal -----------------------------------------------------------

async function renderTerminal(holder, ctx, id) {
  const path = `/terminals/${encodeURIComponent(id)}`;
  // The list tells whether it exists and its number ("Terminal 2").
  const [list, modules] = await Promise.all([
    api("GET", "/terminals"),
    loadXterm(),
  ]);
  const terminals = list.terminals || [];
  const index = terminals.findIndex((terminal) => terminal.id === id);
  if (index === -1) {
    ctx.setTitle("Terminal");
    holder.append(pageHead("Terminal"), gone());
    return undefined;
  }
  const name = `Terminal ${index + 1}`;
  ctx.setTitle(name);

  const { Terminal, FitAddon } = modules;
  let disposed = false;
  let ended = false;
  let socket = null;
  let attempts = 0;
  let retryTimer = null;
  let resizeTimer = null;
  let tabMovesFocus = false;

  const status = h("span", { role: "status", class: "badge busy terminal-status" }, "Connecting…");
  const hint = h("span", { class: "hint terminal-hint" });
  const showHint = () => {
    hint.textContent = tabMovesFocus
      ? "Tab now moves the focus out of the terminal. Ctrl+M gives Tab back to the program."
      : "Tab goes to the program. Press Ctrl+M to make Tab move the focus out of the terminal.";
  };
  showHint();
  const setStatus = (text, state) => {
    status.textContent = text;
    status.dataset.state = state;
    status.className = `badge ${state === "connected" ? "good" : state === "ended" ? "bad" : "busy"} terminal-status`;
  };

  const hangUp = h("button", { type: "button", class: "danger" }, "Hang up");
  const after = h("p", { hidden: true }, h("a", { href: "#/terminals" }, "Back to terminals"));
  const readerToggle = h("input", { type: "checkbox", id: "terminal-sr" });
  readerToggle.checked = localStorage.getItem(SCREEN_READER_KEY) === "1";
  const inner = h("div", { class: "terminal-inner" });
  inner.style.height = "100%";
  const box = h("div", { class: "terminal-box", role: "region", "aria-label": "Terminal" }, inner);

  const term = new Terminal({
    cursorBlink: !window.matchMedia("(prefers-reduced-motion: reduce)").matches,
    fontFamily: FONT_FAMILY,
    fontSize: FONT_SIZE,
    scrollback: 5000,
    // Every colour a program picks stays readable on the dark box.
    minimumContrastRatio: 4.5,
    screenReaderMode: readerToggle.checked,
    theme: THEME,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);

  const encoder = new TextEncoder();
  const send = (data) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
  };
  const sendSize = () => {
    send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
  };
  const subscriptions = [
    term.onData((data) => send(encoder.encode(data))),
    term.onBinary((data) => {
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i += 1) bytes[i] = data.charCodeAt(i) & 0xff;
      send(bytes);
    }),
    term.onResize(() => sendSize()),
  ];

  // Ctrl+M (a carriage return, the same as Enter) toggles whether Tab goes
  // to the program or moves the focus, so the keyboard is never trapped.
  term.attachCustomKeyEventHandler((event) => {
    const ctrlM = event.ctrlKey && !event.altKey && !event.metaKey && !event.shiftKey &&
      (event.key === "m" || event.key === "M");
    if (ctrlM) {
      if (event.type === "keydown") {
        tabMovesFocus = !tabMovesFocus;
        showHint();
        toast(tabMovesFocus ? "Tab now moves the focus." : "Tab now goes to the program.");
      }
      event.preventDefault();
      return false;
    }
    if (tabMovesFocus && event.key === "Tab") return false;
    return true;
  });

  const fitNow = () => {
    if (disposed || !inner.isConnected) return;
    try {
      fit.fit();
    } catch {
      // Not laid out yet (hidden): the next resize fits it.
    }
  };
  const resizeObserver = new ResizeObserver(() => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(fitNow, 80);
  });

  const finish = (text) => {
    ended = true;
    term.options.disableStdin = true;
    term.options.cursorBlink = false;
    setStatus(text, "ended");
    hangUp.hidden = true;
    hint.hidden = true;
    after.hidden = false;
  };

  const connect = () => {
    if (disposed || ended) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1${path}/ws`);
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.addEventListener("open", () => {
      if (socket !== ws) return;
      attempts = 0;
      // The server replays the scrollback to every new socket.
      term.reset();
      fitNow();
      sendSize();
      setStatus("Connected", "connected");
    });
    ws.addEventListener("message", (event) => {
      if (socket !== ws) return;
      if (typeof event.data !== "string") {
        term.write(new Uint8Array(event.data));
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === "exit") {
        const how = exitWords(message.code, message.signal);
        term.write(`\r\n\x1b[2m[process ${how}]\x1b[0m\r\n`);
        finish(`Ended: ${how}`);
      }
    });
    ws.addEventListener("close", (event) => {
      if (socket !== ws || disposed || ended) return;
      socket = null;
      afterClose(event);
    });
  };

  // The socket closed without an exit: reattach while the terminal lives.
  const afterClose = async (event) => {
    setStatus("Reconnecting…", "reconnecting");
    let terminal = null;
    try {
      terminal = await api("GET", path);
    } catch (err) {
      if (disposed || ended) return;
      if (err.status === 404) {
        finish("Ended: the terminal is gone");
        term.write("\r\n\x1b[2m[this terminal is gone]\x1b[0m\r\n");
        return;
      }
      // The server cannot be reached: keep trying.
    }
    if (disposed || ended) return;
    if (terminal && terminal.state !== "running") {
      finish("Ended");
      return;
    }
    attempts += 1;
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** Math.min(attempts - 1, 5)) * (0.75 + Math.random() / 2);
    setStatus(event.reason ? `Reconnecting… (${event.reason})` : "Reconnecting…", "reconnecting");
    retryTimer = setTimeout(connect, delay);
  };

  hangUp.addEventListener("click", async () => {
    const done = await busy(hangUp, () => hangUpRequest(path));
    if (!done) {
      hangUp.focus();
      return;
    }
    ended = true;
    toast(`${name} hung up.`);
    location.hash = "#/terminals";
  });

  readerToggle.addEventListener("change", () => {
    term.options.screenReaderMode = readerToggle.checked;
    localStorage.setItem(SCREEN_READER_KEY, readerToggle.checked ? "1" : "0");
  });

  holder.append(
    pageHead(name, status, hangUp),
    box,
    h("div", { class: "actions terminal-foot" },
      h("label", { class: "check", for: "terminal-sr" }, readerToggle, "Screen reader mode"),
      hint),
    after);

  // xterm measures its characters, so it opens once the box is on the page.
  let frames = 0;
  const open = () => {
    if (disposed) return;
    if (!inner.isConnected) {
      if (frames++ < 600) requestAnimationFrame(open);
      return;
    }
    term.open(inner);
    fitNow();
    resizeObserver.observe(box);
    term.focus();
    connect();
  };
  requestAnimationFrame(open);

  return () => {
    disposed = true;
    clearTimeout(retryTimer);
    clearTimeout(resizeTimer);
    resizeObserver.disconnect();
    if (socket) {
      const ws = socket;
      socket = null;
      ws.close(1000);
    }
    for (const subscription of subscriptions) subscription.dispose();
    term.dispose();
  };
}

function gone() {
  return h("div", {},
    h("p", { class: "alert warn", role: "status" },
      "This terminal is gone: its program ended or it was hung up."),
    h("p", {}, h("a", { href: "#/terminals" }, "Back to terminals")));
}

function exitWords(code, signal) {
  if (signal) return `was killed by signal ${signal}`;
  if (code === null || code === undefined) return "exited";
  return `exited with code ${code}`;
}

/** xterm.js and its fit add-on, and their stylesheet, loaded once. */
let loading = null;
function loadXterm() {
  if (!loading) {
    loading = Promise.all([import(XTERM), import(FIT), stylesheet(XTERM_CSS)])
      .then(([xterm, fit]) => ({ Terminal: xterm.Terminal, FitAddon: fit.FitAddon }))
      .catch((err) => {
        loading = null;
        throw new Error(`The terminal's code did not load (${err.message}). Reload to try again.`);
      });
  }
  return loading;
}

function stylesheet(href) {
  const present = document.querySelector(`link[rel="stylesheet"][href="${href}"]`);
  if (present) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const link = h("link", { rel: "stylesheet", href });
    link.addEventListener("load", () => resolve(), { once: true });
    link.addEventListener("error", () => {
      link.remove();
      reject(new Error("its stylesheet is missing"));
    }, { once: true });
    document.head.append(link);
  });
}

/** Colours on the box's dark background (#111413) in light and dark themes. */
const THEME = {
  background: "#111413",
  foreground: "#e6e9e7",
  cursor: "#6cc2a8",
  cursorAccent: "#111413",
  selectionBackground: "#2f5f52",
  selectionForeground: "#ffffff",
  black: "#2a2f2d",
  red: "#ff7b72",
  green: "#7fd597",
  yellow: "#e3c267",
  blue: "#79b8ff",
  magenta: "#d2a8ff",
  cyan: "#6cc2c8",
  white: "#d0d5d2",
  brightBlack: "#8b9490",
  brightRed: "#ffa198",
  brightGreen: "#a6e9b5",
  brightYellow: "#f2d98a",
  brightBlue: "#a5d0ff",
  brightMagenta: "#e2c5ff",
  brightCyan: "#9adfe3",
  brightWhite: "#ffffff",
};

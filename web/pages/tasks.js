// Tasks: run a shell line in the workspace, see the history, and follow one
// task's output live as it is written.
//
//   #/tasks        the form and the history (newest first, "Load more")
//   #/tasks/<id>   one task: its state, its output as it comes, Cancel/Delete

import { api, h, field, toast, busy, dialog, describe, when, badge, bytes, pageHead, shown } from "../lib.js";

/** Rows asked for at a time in the history. */
const PAGE = 50;
/** Characters of output kept on the page; older text is dropped from view. */
const SHOWN_LIMIT = 2_000_000;
/** How often the history looks again at the tasks it shows running. */
const POLL_MS = 2000;

export async function render(holder, ctx) {
  if (ctx.rest) return renderTask(holder, ctx, ctx.rest);
  return renderList(holder, ctx);
}

// ---- the list ---------------------------------------------------------------

async function renderList(holder, ctx) {
  const input = h("input", {
    name: "command",
    class: "mono",
    autocomplete: "off",
    autocapitalize: "none",
    spellcheck: "false",
    placeholder: "make test",
  });
  const run = h("button", { type: "submit", class: "primary" }, "Run");
  const alertEl = h("div", { class: "alert", role: "alert" });
  // The hint goes under the row, so "Run" lines up with the field.
  const hint = h("div", { class: "hint", id: "command-hint" }, "A shell line, run with /bin/sh -c in your workspace's folder.");
  input.setAttribute("aria-describedby", hint.id);
  const form = h("form", { class: "card", novalidate: true },
    h("div", { class: "form-row" },
      field("Command", input),
      h("div", { class: "actions" }, run)),
    hint,
    alertEl);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const line = input.value;
    if (!line.trim()) {
      alertEl.textContent = "Enter a command to run.";
      input.focus();
      return;
    }
    const task = await busy(run, () => api("POST", "/tasks", { json: { command: line } }), alertEl);
    if (!task) {
      input.focus();
      return;
    }
    toast(task.state === "failed" ? "The command could not run." : `Started ${shorten(line, 60)}`,
      task.state === "failed" ? "error" : "ok");
    location.hash = `#/tasks/${encodeURIComponent(task.id)}`;
  });

  const rows = new Map(); // task id → { task, tr }
  const tbody = h("tbody");
  const emptyRow = h("tr", {}, h("td", { colspan: "5", class: "empty" }, "No tasks yet. Run a command above."));
  const table = h("table", {},
    h("caption", {}, "Your tasks"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Command"),
      h("th", { scope: "col" }, "State"),
      h("th", { scope: "col", class: "num optional" }, "Exit"),
      h("th", { scope: "col" }, "Started"),
      h("th", { scope: "col", class: "num optional" }, "Duration"))),
    tbody);
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const listAlert = h("div", { class: "alert", role: "alert" });
  let cursor = null;

  const addRows = (tasks) => {
    emptyRow.remove();
    const added = [];
    for (const task of tasks) {
      if (rows.has(task.id)) continue;
      const tr = h("tr");
      rows.set(task.id, { task, tr });
      fillRow(tr, task);
      tbody.append(tr);
      added.push(tr);
    }
    if (!rows.size) tbody.append(emptyRow);
    return added;
  };

  const loadPage = async () => {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (cursor) query.set("cursor", cursor);
    const answer = await api("GET", `/tasks?${query}`);
    cursor = answer.next_cursor || null;
    more.hidden = !cursor;
    return addRows(answer.tasks || []);
  };

  more.addEventListener("click", async () => {
    const added = await busy(more, loadPage);
    // busy() disables the button, which drops the focus: give it back, or
    // when the button goes (nothing more), to the first new row.
    if (!more.hidden) more.focus();
    else if (added && added.length) added[0].querySelector("a").focus();
    if (!added) return;
    toast(added.length === 1 ? "1 more task shown." : `${added.length} more tasks shown.`);
  });

  try {
    await loadPage();
  } catch (err) {
    listAlert.textContent = `Your tasks could not be loaded: ${describe(err)}`;
  }

  // Tasks shown running are looked at again until they end, so the table
  // does not go stale while the page is open.
  let timer = null;
  let stopped = false;
  const poll = async () => {
    timer = null;
    if (stopped) return;
    const running = [...rows.values()].filter((row) => row.task.state === "running").slice(0, 20);
    await Promise.all(running.map(async (row) => {
      try {
        const task = await api("GET", `/tasks/${encodeURIComponent(row.task.id)}`);
        row.task = task;
        if (!stopped) fillRow(row.tr, task);
      } catch (err) {
        if (err.status === 404) {
          row.tr.remove();
          rows.delete(row.task.id);
        }
      }
    }));
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  };
  timer = setTimeout(poll, POLL_MS);

  holder.append(
    pageHead("Tasks"),
    form,
    h("section", { class: "card" },
      listAlert,
      h("div", { class: "table-wrap" }, table),
      h("div", { class: "actions load-more" }, more)),
  );
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}

function fillRow(tr, task) {
  const text = commandText(task.command);
  tr.replaceChildren(
    h("td", {},
      h("div", { class: "name-cell" },
        h("a", { href: `#/tasks/${encodeURIComponent(task.id)}`, class: "mono", title: text.length > 120 ? text : undefined },
          shorten(text, 120)))),
    h("td", {}, badge(task.state)),
    h("td", { class: "num optional" }, exitText(task)),
    h("td", { class: "nowrap" }, when(task.started_at || task.created_at)),
    h("td", { class: "num optional nowrap" }, elapsed(task.duration_ms)),
  );
}

// ---- one task ---------------------------------------------------------------

async function renderTask(holder, ctx, id) {
  const path = `/tasks/${encodeURIComponent(id)}`;
  let task;
  try {
    task = await api("GET", path);
  } catch (err) {
    if (err.status !== 404) throw err;
    ctx.setTitle("Task");
    holder.append(
      pageHead("Task"),
      h("p", { class: "alert warn" }, "There is no such task: it was deleted, or the link is wrong."),
      h("p", {}, h("a", { href: "#/tasks" }, "Back to tasks")));
    return undefined;
  }
  ctx.setTitle("Task");
  let stopped = false;
  const controller = new AbortController();

  const stateEl = h("p", { id: "task-state", "aria-live": "polite" });
  const metaEl = h("p", { class: "muted task-meta" });
  const cancel = h("button", { type: "button", class: "danger" }, "Cancel task");
  const again = h("button", { type: "button" }, "Run again");
  const remove = h("button", { type: "button", class: "danger" }, "Delete");
  const download = h("a", {
    class: "button small",
    href: `/api/v1${path}/output`,
    download: `task-${id}.txt`,
  }, "Download output");
  const output = h("pre", { class: "output", "aria-label": "Output", tabindex: "0" });
  // What the output box holds when it is empty, and why it stopped.
  const emptyNote = h("p", { class: "muted" }, task.state === "running" ? "Waiting for output…" : "Loading the output…");
  const problem = h("p", { class: "alert warn", hidden: true });

  const show = () => {
    const running = task.state === "running";
    stateEl.replaceChildren(badge(task.state), stateDetail(task) ? ` · ${stateDetail(task)}` : "");
    const bits = [];
    bits.push("Started ", when(task.started_at || task.created_at));
    bits.push(running ? " · running for " : " · took ", elapsed(task.duration_ms));
    if (task.cwd) bits.push(" · in ", h("span", { class: "mono" }, task.cwd));
    bits.push(` · ${outputSize(task.output_bytes)}`);
    metaEl.replaceChildren(...bits);
    const hadFocus = document.activeElement === cancel || cancelPressed;
    cancel.hidden = !running;
    remove.hidden = running;
    again.hidden = running || (task.env && task.env.length > 0);
    // "Cancel task" goes when the task ends: keep the keyboard's place.
    if (!running && hadFocus && (document.activeElement === cancel || document.activeElement === document.body)) {
      cancelPressed = false;
      (again.hidden ? remove : again).focus();
    }
  };

  const refresh = async () => {
    try {
      task = await api("GET", path);
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err.status === 404 && !stopped) {
        // Deleted elsewhere (another tab, the API): nothing more to follow.
        stopped = true;
        controller.abort();
        problem.hidden = false;
        problem.textContent = "This task was deleted.";
        cancel.hidden = true;
        again.hidden = true;
        remove.hidden = true;
      }
      return;
    } finally {
      if (!stopped) show();
    }
  };

  let cancelPressed = false;
  cancel.addEventListener("click", async () => {
    cancelPressed = true;
    const done = await busy(cancel, () => api("POST", `${path}/cancel`));
    if (!cancel.hidden) cancel.focus();
    if (done === undefined) {
      // Refused (it ended meanwhile: 409): show how it is now.
      cancelPressed = false;
      await refresh();
      return;
    }
    toast("Cancelling the task: its processes are told to stop.");
    await refresh();
  });

  remove.addEventListener("click", async () => {
    const confirmed = await dialog({
      title: "Delete this task?",
      body: h("p", {}, "The task ", h("span", { class: "mono" }, shorten(commandText(task.command), 80)),
        " and its output will be deleted."),
      confirm: "Delete",
      danger: true,
      submit: () => api("DELETE", path),
    });
    if (!confirmed) {
      remove.focus();
      return;
    }
    toast("Task deleted.");
    location.hash = "#/tasks";
  });

  again.addEventListener("click", async () => {
    const json = { command: task.command };
    if (task.cwd) json.cwd = task.cwd;
    if (task.timeout) json.timeout = task.timeout;
    const next = await busy(again, () => api("POST", "/tasks", { json }));
    if (!next) {
      again.focus();
      return;
    }
    toast(`Started ${shorten(commandText(next.command), 60)}`);
    location.hash = `#/tasks/${encodeURIComponent(next.id)}`;
  });

  // ---- the output, followed live ----
  const view = outputView(output, emptyNote);
  const follow = async () => {
    let offset = null; // absolute offset of the next byte, once known
    let failures = 0;
    // One decoder across reconnections: a character cut by a broken
    // stream is completed by the next one, which starts at `offset`.
    let decoder = new TextDecoder();
    while (!stopped) {
      const headers = {};
      if (offset !== null) headers.range = `bytes=${offset}-`;
      let failed = null;
      try {
        const response = await api("GET", `${path}/output?follow=true`, { raw: true, headers, signal: controller.signal });
        if (offset === null) {
          const dropped = Number(response.headers.get("x-warren-output-dropped") || 0);
          // A plain GET starts with a line about what was dropped.
          offset = dropped > 0 ? dropped - `[warren: ${dropped} earlier bytes of output dropped]\n`.length : 0;
        }
        problem.hidden = true;
        const reader = response.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          offset += value.byteLength;
          failures = 0;
          view.append(decoder.decode(value, { stream: true }));
        }
      } catch (err) {
        if (err.name === "AbortError" || stopped) return;
        failed = err;
        if (err.status === 416) {
          // What we had is no longer kept: start again from what is.
          offset = null;
          decoder = new TextDecoder();
          view.clear();
        }
      }
      if (stopped) return;
      await refresh();
      if (stopped || task.state !== "running") break;
      // The stream broke while the task runs: try again, less and less often.
      failures += 1;
      const wait = failed && failed.retryAfter ? failed.retryAfter * 1000 : Math.min(1000 * 2 ** (failures - 1), 10000);
      problem.hidden = false;
      problem.textContent = failed
        ? `The output stopped (${describe(failed)}). Trying again…`
        : "The output stopped. Trying again…";
      await sleep(wait, controller.signal);
    }
    if (stopped) return;
    view.append(decoder.decode());
    view.flush();
    problem.hidden = true;
    if (view.empty) {
      emptyNote.hidden = false;
      emptyNote.textContent = task.output_bytes > 0 ? "The output is no longer kept." : "No output.";
    }
  };

  show();
  holder.append(
    h("p", { class: "back" }, h("a", { href: "#/tasks" }, "All tasks")),
    pageHead("Task", cancel, again, remove),
    h("section", { class: "card", "aria-label": "Task" },
      h("p", { class: "mono task-command" }, commandText(task.command)),
      stateEl,
      metaEl),
    h("section", { class: "card", "aria-labelledby": "task-output-h" },
      h("div", { class: "page-head" },
        h("h2", { id: "task-output-h" }, "Output"),
        h("div", { class: "actions" }, download)),
      problem,
      output,
      emptyNote),
  );
  follow();
  return () => {
    stopped = true;
    controller.abort();
  };
}

/**
 * The <pre> that output is appended to: control sequences taken out,
 * scrolled to the end as text comes while the reader is at the end, and
 * at most SHOWN_LIMIT characters kept. `note` says when there is none.
 */
function outputView(pre, note) {
  let shown = 0;
  let carry = "";
  let stick = true;
  let scheduled = false;
  // Whether the reader is at the end is decided before the first text of
  // a frame lands; the scroll happens once per frame.
  const scroll = () => {
    scheduled = false;
    if (stick) pre.scrollTop = pre.scrollHeight;
  };
  return {
    get empty() {
      return shown === 0;
    },
    append(text) {
      text = carry + text;
      carry = "";
      // Keep an escape sequence or a CR cut at the chunk's end for the next one.
      const cut = text.match(/\x1b[^a-zA-Z~\x07]{0,32}$|\r$/);
      if (cut) {
        carry = cut[0];
        text = text.slice(0, cut.index);
      }
      text = clean(text);
      if (!text) return;
      if (shown === 0) note.hidden = true;
      if (!scheduled) {
        scheduled = true;
        stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        requestAnimationFrame(scroll);
      }
      pre.append(text);
      shown += text.length;
      while (shown > SHOWN_LIMIT && pre.firstChild) {
        const old = pre.firstChild;
        shown -= old.textContent.length;
        old.remove();
      }
    },
    clear() {
      pre.replaceChildren();
      shown = 0;
      carry = "";
    },
    flush() {
      if (carry) {
        const rest = carry;
        carry = "";
        this.append(rest === "\r" ? "\n" : "");
      }
    },
  };
}

/** Output as plain text: colours and cursor movements taken out. */
function clean(text) {
  return text
    // CSI (colours, cursor), OSC (titles), and other two-byte escapes.
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g, "")
    .replace(/\r\n/g, "\n")
    .replace(/\r/g, "\n")
    // Other control characters (bells, backspaces) show as nothing.
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, "");
}

// ---- words ------------------------------------------------------------------

/** A task's command as a person typed it. */
export function commandText(command) {
  if (!Array.isArray(command)) return shown(String(command || ""));
  if (command.length === 3 && command[0] === "/bin/sh" && command[1] === "-c") return shown(command[2]);
  return shown(command.map(quote).join(" "));
}

function quote(arg) {
  if (arg !== "" && /^[\w@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

function shorten(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function exitText(task) {
  if (task.exit_code !== null && task.exit_code !== undefined) return String(task.exit_code);
  if (task.signal) return `signal ${task.signal}`;
  return "—";
}

function stateDetail(task) {
  const parts = [];
  if (task.exit_code !== null && task.exit_code !== undefined) parts.push(`exit code ${task.exit_code}`);
  else if (task.signal) parts.push(`signal ${task.signal}`);
  if (task.error) parts.push(task.error);
  return parts.join(" · ");
}

/** 850 → "850 ms", 3200 → "3.2 s", 125000 → "2 min 5 s". */
export function elapsed(ms) {
  if (ms === null || ms === undefined || ms < 0) return "—";
  if (ms < 1000) return `${ms} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function outputSize(n) {
  return n ? `${bytes(n)} of output` : "no output";
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

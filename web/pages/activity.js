// Activity: the user's own events as they happen (tasks, file changes),
// and counts of everyone else's. Administrators may watch everyone's.
//
//   #/activity          your events (GET /api/v1/activity)
//   #/activity?all=1    everyone's, with names (GET /api/v1/admin/activity)

import { api, h, encodePath, shown } from "../lib.js";
import { commandText } from "./tasks.js";

/** Events kept on the page; older ones are dropped. */
const KEEP = 200;
/** How long render waits for the first counts, so the page does not jump. */
const FIRST_WAIT_MS = 1500;

export async function render(holder, ctx) {
  const admin = ctx.me && ctx.me.role === "admin";
  const everyone = admin && ctx.query.get("all") === "1";
  if (everyone) ctx.setTitle("Activity (everyone)");

  const status = h("span", { role: "status", class: "badge busy feed-status" }, "Connecting…");
  const setStatus = (text, state) => {
    status.textContent = text;
    status.dataset.state = state;
    status.className = `badge ${state === "live" ? "good" : state === "closed" ? "bad" : "busy"} feed-status`;
  };
  const others = h("p", { id: "others", class: "muted" }, "Counting other users…");
  const list = h("ol", { class: "events", "aria-label": everyone ? "Everyone's events" : "Your events" });
  const empty = h("p", { class: "empty" }, everyone
    ? "Nothing yet. Every user's tasks and file changes, and the workers going down and up, appear here as they happen."
    : "Nothing yet. Your tasks appear here, and your file changes as they happen while this page is open.");
  const commands = new Map(); // task id → command, to name a finished task

  const seen = new Set(); // "task_started:<id>", so history and live do not repeat
  const add = (event) => {
    if (event.task && (event.type === "task_started" || event.type === "task_finished")) {
      const key = `${event.type}:${event.task}`;
      if (seen.has(key)) return;
      seen.add(key);
      if (event.type === "task_started") commands.set(event.task, commandText(event.command));
      if (seen.size > KEEP * 4) seen.delete(seen.values().next().value);
      if (commands.size > KEEP * 2) commands.delete(commands.keys().next().value);
    }
    const mine = !event.user || !ctx.me || event.user.id === ctx.me.id;
    const at = Number(event.at_ms) || Date.now();
    const item = h("li", { "data-at": String(at) },
      timeOf(at),
      " ",
      everyone && event.user ? h("strong", {}, event.user.name, ": ") : null,
      sentence(event, commands, mine));
    // Newest first: live events go on top, history in its place by time.
    let before = list.firstElementChild;
    while (before && Number(before.dataset.at) > at) before = before.nextElementSibling;
    list.insertBefore(item, before);
    while (list.childElementCount > KEEP) list.lastElementChild.remove();
    empty.hidden = true;
  };

  /** The user's recent tasks as events, so the page starts with what happened. */
  const history = async () => {
    let answer;
    try {
      answer = await api("GET", "/tasks?limit=50");
    } catch {
      return; // The live feed still works.
    }
    const events = [];
    for (const task of answer.tasks || []) {
      const started = Date.parse(task.started_at || task.created_at);
      events.push({ type: "task_started", task: task.id, command: task.command, cwd: task.cwd, at_ms: started });
      if (task.state !== "running" && task.ended_at) {
        events.push({
          type: "task_finished",
          task: task.id,
          state: task.state,
          exit_code: task.exit_code,
          signal: task.signal,
          error: task.error,
          at_ms: Date.parse(task.ended_at),
        });
      }
    }
    events.sort((a, b) => a.at_ms - b.at_ms || (a.type === "task_started" ? -1 : 1));
    for (const event of events) add(event);
  };

  let source = null;
  let firstSummary;
  const summarised = new Promise((resolve) => {
    firstSummary = resolve;
  });
  const reconnect = h("button", { type: "button", class: "small", hidden: true }, "Reconnect");
  const connect = () => {
    reconnect.hidden = true;
    setStatus("Connecting…", "connecting");
    const feed = new EventSource(everyone ? "/api/v1/admin/activity" : "/api/v1/activity");
    source = feed;
    feed.addEventListener("open", () => setStatus("Live", "live"));
    feed.addEventListener("error", () => {
      firstSummary();
      if (feed.readyState === EventSource.CLOSED) {
        // The server refused the feed (a lost session, a lost right): the
        // browser does not retry that by itself.
        setStatus("Disconnected", "closed");
        reconnect.hidden = false;
        // If the session ended, this takes the app to the sign-in page.
        api("GET", "/me").catch(() => {});
      } else {
        setStatus("Reconnecting…", "reconnecting");
      }
    });
    feed.addEventListener("activity", (message) => {
      try {
        add(JSON.parse(message.data));
      } catch {
        // A line this page does not understand: skip it.
      }
    });
    feed.addEventListener("summary", (message) => {
      try {
        const counts = JSON.parse(message.data);
        others.textContent = `${plural(counts.users_active, "other user")} active · ` +
          `${plural(counts.tasks_running, "task")} running`;
      } catch {
        // Keep the last counts.
      }
      firstSummary();
    });
  };
  reconnect.addEventListener("click", () => {
    source.close();
    connect();
  });
  connect();

  const tabs = admin
    ? h("nav", { class: "subnav", "aria-label": "Whose activity" }, h("ul", {},
      h("li", {}, h("a", { href: "#/activity", "aria-current": everyone ? undefined : "page" }, "Yours")),
      h("li", {}, h("a", { href: "#/activity?all=1", "aria-current": everyone ? "page" : undefined }, "Everyone (admin)"))))
    : null;

  if (everyone) {
    // The administrators' feed has every event; counts are for users.
    others.textContent = "Showing every user's events, with their names.";
  } else {
    await Promise.all([
      history(),
      Promise.race([summarised, new Promise((resolve) => setTimeout(resolve, FIRST_WAIT_MS))]),
    ]);
  }

  holder.append(
    h("div", { class: "page-head" }, h("h1", {}, "Activity"), h("div", { class: "actions" }, status, reconnect)),
    tabs,
    others,
    h("section", { class: "card" }, empty, list));
  return () => source.close();
}

function plural(n, word) {
  const count = Number(n) || 0;
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

function timeOf(ms) {
  const date = new Date(ms || Date.now());
  const sameDay = date.toDateString() === new Date().toDateString();
  const text = sameDay
    ? date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  return h("time", { datetime: date.toISOString(), title: date.toLocaleString() }, text);
}

/** An event in words; links only to what is the viewer's own. */
function sentence(event, commands, mine) {
  const taskLink = (text, code = true) => {
    const props = { class: code ? "mono" : undefined, title: text.length > 120 ? text : undefined };
    const short = text.length > 120 ? `${text.slice(0, 119)}…` : text;
    return mine && event.task
      ? h("a", { href: `#/tasks/${encodeURIComponent(event.task)}`, ...props }, short)
      : h("span", props, short);
  };
  const fileLink = (path, folder) => {
    // Only a path the API would take is a link (a user's program may have
    // made others); every path is shown with its odd characters marked.
    let href = null;
    try {
      href = mine && shown(path) === path ? `#/${folder ? "files" : "file"}/${encodePath(path)}` : null;
    } catch {
      href = null;
    }
    return href ? h("a", { href, class: "mono" }, path) : h("span", { class: "mono" }, shown(path));
  };
  const path = (p) => h("span", { class: "mono" }, p ? shown(p) : "/");
  switch (event.type) {
    case "task_started":
      return h("span", {}, "Task started: ", taskLink(commandText(event.command)),
        event.cwd ? [" in ", path(event.cwd)] : null);
    case "task_finished": {
      const command = commands.get(event.task);
      return command
        ? h("span", {}, finishedWords(event), ": ", taskLink(command))
        : h("span", {}, taskLink(finishedWords(event), false));
    }
    case "file_written":
      return h("span", {}, "Wrote ", fileLink(event.path, false));
    case "file_deleted":
      return h("span", {}, "Deleted ", path(event.path));
    case "file_moved":
      return h("span", {}, "Moved ", path(event.from), " to ", fileLink(event.to, false));
    case "file_copied":
      return h("span", {}, "Copied ", path(event.from), " to ", fileLink(event.to, false));
    case "dir_created":
      return h("span", {}, "Created folder ", fileLink(event.path, true));
    case "worker_down":
      return h("span", {}, `Worker ${event.slot} (process ${event.worker_pid}) went down`,
        event.reason ? `: ${shown(event.reason)}` : "", ". Its tasks are lost.");
    case "worker_up":
      return h("span", {}, `Worker ${event.slot} came up (process ${event.worker_pid}).`);
    default:
      return h("span", {}, `Event: ${String(event.type || "unknown").replaceAll("_", " ")}`);
  }
}

function finishedWords(event) {
  const extra = event.error ? ` (${shown(event.error)})` : "";
  switch (event.state) {
    case "exited":
      return `Task finished with exit code ${event.exit_code}${extra}`;
    case "failed":
      return `Task failed to run${extra}`;
    case "killed":
      return `Task killed${event.signal ? ` by signal ${event.signal}` : ""}${extra}`;
    case "timed_out":
      return `Task timed out${extra}`;
    case "lost":
      return `Task lost${extra}`;
    default:
      return `Task ended: ${String(event.state).replaceAll("_", " ")}${extra}`;
  }
}


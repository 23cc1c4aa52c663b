// Home: what the user has going on — storage against quota, their apps,
// recent tasks, open terminals — each with the action it needs.

import { api, h, busy, toast, describe, badge, when, usageBlock, pageHead, ApiError } from "../lib.js";
import { commandText } from "./tasks.js";

export async function render(holder, ctx) {
  const [usage, apps, tasks, terminals] = await Promise.all([
    usageBlock(),
    settle(api("GET", "/me/apps")),
    settle(api("GET", "/tasks?limit=5")),
    settle(api("GET", "/terminals")),
  ]);
  const appsBody = h("div", {});
  const timers = [];
  const showApps = (answer) => {
    appsBody.replaceChildren(appsView(answer, showApps, timers));
  };
  showApps(apps);
  holder.append(
    pageHead("Home"),
    h("p", { class: "muted" }, `Welcome, ${ctx.me.username}.`),
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "h-storage" },
        h("h2", { id: "h-storage" }, "Storage"), usage.el,
        h("p", {}, h("a", { href: "#/files" }, "Browse your files"))),
      h("section", { class: "card", "aria-labelledby": "h-apps" },
        h("h2", { id: "h-apps" }, "Apps"), appsBody),
      h("section", { class: "card", "aria-labelledby": "h-tasks" },
        h("h2", { id: "h-tasks" }, "Recent tasks"), tasksView(tasks)),
      h("section", { class: "card", "aria-labelledby": "h-terminals" },
        h("h2", { id: "h-terminals" }, "Terminals"), terminalsView(terminals))));
  return () => timers.forEach(clearTimeout);
}

/** A promise's value, or the error it failed with, without throwing. */
async function settle(promise) {
  try {
    return await promise;
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

function appsView(answer, redraw, timers) {
  if (answer instanceof ApiError && answer.status === 404) {
    return h("p", { class: "empty" }, "No apps are set up on this server.");
  }
  if (answer instanceof Error) return h("p", { class: "alert", role: "alert" }, describe(answer));
  if (!answer.apps.length) return h("p", { class: "empty" }, "No apps are set up on this server.");
  const reload = async () => redraw(await settle(api("GET", "/me/apps")));
  // While one starts, look again every second.
  if (answer.apps.some((app) => app.state === "starting")) {
    timers.push(setTimeout(reload, 1000));
  }
  return h("ul", { class: "plain-list" }, answer.apps.map((app) => {
    const running = app.state === "running";
    const start = h("button", {
      type: "button", class: "small primary", "aria-label": `Start ${app.title}`,
      onclick: () => busy(start, async () => {
        const view = await api("POST", `/me/apps/${encodeURIComponent(app.name)}/start`);
        toast(view.state === "running" ? `${app.title} is running.` : `${app.title} is ${view.state}.`);
        await reload();
      }),
    }, "Start");
    const stop = h("button", {
      type: "button", class: "small", "aria-label": `Stop ${app.title}`,
      onclick: () => busy(stop, async () => {
        await api("POST", `/me/apps/${encodeURIComponent(app.name)}/stop`);
        toast(`${app.title} stopped.`);
        await reload();
      }),
    }, "Stop");
    return h("li", { class: "app-row" },
      h("div", {},
        h("strong", {}, app.title), " ", badge(app.state),
        app.message ? h("div", { class: "hint" }, app.message) : null),
      h("div", { class: "actions" },
        h("a", { class: running ? "button small primary" : "button small", href: app.url, "aria-label": `Open ${app.title}` }, "Open"),
        running || app.state === "starting" ? stop : start));
  }));
}

function tasksView(answer) {
  if (answer instanceof Error) return h("p", { class: "alert", role: "alert" }, describe(answer));
  const list = answer.tasks.length
    ? h("ul", { class: "plain-list" }, answer.tasks.map((task) =>
      h("li", {},
        h("a", { href: `#/tasks/${task.id}`, class: "mono" }, commandText(task.command)), " ",
        badge(task.state), " ", when(task.created_at))))
    : h("p", { class: "empty" }, "No tasks yet.");
  return [list, h("p", {}, h("a", { href: "#/tasks" }, "Run a task"))];
}

function terminalsView(answer) {
  if (answer instanceof Error) return h("p", { class: "alert", role: "alert" }, describe(answer));
  const list = answer.terminals.length
    ? h("ul", { class: "plain-list" }, answer.terminals.map((terminal, index) =>
      h("li", {},
        h("a", { href: `#/terminals/${terminal.id}` }, `Terminal ${index + 1}`), " ",
        badge(terminal.state), " ", h("span", { class: "muted" }, `opened `), when(terminal.created_at))))
    : h("p", { class: "empty" }, "No terminals open.");
  return [list, h("p", {}, h("a", { href: "#/terminals" }, "Open a terminal"))];
}

/** A task's argv as the line a person would type. */

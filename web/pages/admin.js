// Administration: users, everyone's sessions, the audit log, storage use,
// the worker pool and every user's web apps. One tab per route:
// #/admin/users (the default), #/admin/sessions, #/admin/audit,
// #/admin/usage, #/admin/workers, #/admin/apps.

import { api, h, field, toast, busy, dialog, describe, when, bytes, ApiError, shown, removeRow } from "../lib.js";
import { describeDevice } from "./account.js";

const TABS = [
  ["users", "Users", usersTab],
  ["sessions", "Sessions", sessionsTab],
  ["audit", "Audit log", auditTab],
  ["usage", "Usage", usageTab],
  ["workers", "Workers", workersTab],
  ["apps", "Apps", appsTab],
];

export async function render(holder, ctx) {
  const name = ctx.rest.split("/")[0] || "users";
  const tab = TABS.find(([id]) => id === name);
  holder.append(
    h("div", { class: "page-head" }, h("h1", {}, "Administration")),
    h("nav", { class: "subnav", "aria-label": "Administration" },
      h("ul", {}, TABS.map(([id, label]) =>
        h("li", {}, h("a", { href: `#/admin/${id}`, "aria-current": tab && id === name ? "page" : undefined }, label))))));
  if (!tab) {
    holder.append(h("p", {}, "There is no such part of the administration. ",
      h("a", { href: "#/admin/users" }, "Go to Users"), "."));
    return undefined;
  }
  const section = h("div", {});
  holder.append(section);
  try {
    return await tab[2](section, ctx);
  } catch (err) {
    // Keep the navigation; say what failed and offer to try again.
    const retry = async () => {
      const fresh = h("div", {});
      const ok = await busy(null, async () => {
        await tab[2](fresh, ctx);
        return true;
      });
      if (ok) section.replaceChildren(fresh);
    };
    section.replaceChildren(failed(err, retry));
    return undefined;
  }
}

// ---------------------------------------------------------------- helpers

/**
 * A table: `columns` are {label, optional?, num?, hidden?} (hidden: the
 * header is for screen readers only, as over a column of buttons).
 */
function table(caption, columns, rows, { showCaption = false } = {}) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("caption", { class: showCaption ? undefined : "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, columns.map((column) =>
        h("th", { scope: "col", class: classes(column) },
          column.hidden ? h("span", { class: "visually-hidden" }, column.label) : column.label)))),
      h("tbody", {}, rows)));
}

function classes(column) {
  return [column.optional && "optional", column.num && "num"].filter(Boolean).join(" ") || undefined;
}

/** A card with a heading, optional buttons beside it, and contents. */
function card(id, title, actions, ...children) {
  const heading = h("h2", { id, tabindex: "-1" }, title);
  return h("section", { class: "card", "aria-labelledby": id },
    actions && actions.length
      ? h("div", { class: "page-head" }, heading, h("div", { class: "actions" }, actions))
      : heading,
    children);
}

/**
 * A tab's first load into `body` (a failure shown there, with a way to try
 * again), its "Refresh" button wired to `load`, and the card put in place.
 */
async function firstLoad(section, box, body, refresh, load) {
  refresh.addEventListener("click", () => busy(refresh, load));
  try {
    await load();
  } catch (err) {
    body.replaceChildren(failed(err, () => busy(null, load)));
  }
  section.append(box);
  return undefined;
}

/** A card showing why its data did not load, with a way to try again. */
function failed(err, retry) {
  const again = h("button", { type: "button", onclick: retry }, "Try again");
  return h("div", {}, h("p", { class: "alert", role: "alert" }, describe(err)), again);
}



/** A timestamp in full (the audit log wants seconds, not "3 h ago"). */
function exact(value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "—");
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return h("time", { datetime: date.toISOString(), title: date.toISOString() },
    date.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    }));
}

function state(text, kind) {
  return h("span", { class: `badge ${kind}` }, text);
}

const plural = (n, one, many = one + "s") => `${n} ${n === 1 ? one : many}`;
const count = (n) => Number(n).toLocaleString();

/**
 * "2GiB", "500 MiB", "1.5G", "2000000" → bytes; "" → null (the default);
 * undefined when it is not a size.
 */
function parseSize(text) {
  const value = text.trim();
  if (!value) return null;
  const match = /^(\d+(?:\.\d+)?)\s*(b|bytes?|k|kib|kb|m|mib|mb|g|gib|gb|t|tib|tb)?$/i.exec(value);
  if (!match) return undefined;
  const units = {
    b: 1, byte: 1, bytes: 1,
    k: 1024, kib: 1024, kb: 1e3,
    m: 1024 ** 2, mib: 1024 ** 2, mb: 1e6,
    g: 1024 ** 3, gib: 1024 ** 3, gb: 1e9,
    t: 1024 ** 4, tib: 1024 ** 4, tb: 1e12,
  };
  const n = Math.round(Number(match[1]) * units[(match[2] || "b").toLowerCase()]);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** "" → null; a whole number ≥ min → it; else undefined. */
function parseCount(text, min) {
  const value = text.trim();
  if (!value) return null;
  if (!/^\d+$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) && n >= min ? n : undefined;
}

// ---------------------------------------------------------------- Users

async function usersTab(section, ctx) {
  let users = await api("GET", "/admin/users");

  // The new-user form.
  const username = h("input", { type: "text", name: "new-username", autocomplete: "off", autocapitalize: "none", spellcheck: "false", maxlength: "64", required: true });
  const password = h("input", { type: "password", name: "new-user-password", autocomplete: "new-password", required: true, minlength: "10" });
  const administrator = h("input", { type: "checkbox", name: "administrator" });
  const alertEl = h("div", { class: "alert", role: "alert" });
  const create = h("button", { type: "submit", class: "primary" }, "Create user");
  const form = h("form", { novalidate: true, "aria-labelledby": "new-user-heading" },
    h("div", { class: "form-row" },
      field("Username", username, "Letters, digits, “.”, “_” and “-”."),
      field("Password", password, "At least 10 characters.")),
    field("Administrator", administrator),
    alertEl,
    h("div", { class: "actions" }, create));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const el of [username, password]) el.removeAttribute("aria-invalid");
    const name = username.value.trim();
    const bad = (control, message) => {
      alertEl.textContent = message;
      control.setAttribute("aria-invalid", "true");
      control.focus();
    };
    if (!name) return bad(username, "Enter a username.");
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) {
      return bad(username, "Usernames are 1 to 64 letters (a–z, A–Z), digits, “.”, “_” or “-”, starting with a letter or digit.");
    }
    if (users.some((user) => user.username.toLowerCase() === name.toLowerCase())) {
      return bad(username, `A user named “${name}” already exists.`);
    }
    const length = new TextEncoder().encode(password.value).length;
    if (length < 10) return bad(password, "The password is too short: use at least 10 characters.");
    if (length > 1024) return bad(password, "The password is too long: use at most 1024 bytes.");
    const role = administrator.checked ? "admin" : "user";
    const user = await busy(create, async () => {
      try {
        return await api("POST", "/admin/users", { json: { username: name, password: password.value, role } });
      } catch (err) {
        if (err.status === 409) throw new Error(`A user named “${name}” already exists.`);
        throw err;
      }
    }, alertEl);
    if (!user) {
      username.focus();
      return;
    }
    users = [...users.filter((u) => u.id !== user.id), user];
    show();
    form.reset();
    toast(`Created the ${role === "admin" ? "administrator" : "user"} ${user.username}.`);
    username.focus();
  });

  // The table of users.
  const list = h("div", {});
  const listCard = card("users-heading", "Users", null, list);
  const heading = listCard.querySelector("h2");
  const show = () => {
    users.sort((a, b) => a.username.localeCompare(b.username));
    list.replaceChildren(users.length
      ? table("Users", [
        { label: "Username" },
        { label: "Role", optional: true },
        { label: "State" },
        { label: "Last sign-in", optional: true },
        { label: "Quota", optional: true },
        { label: "Actions", hidden: true },
      ], users.map(userRow))
      : h("p", { class: "empty" }, "There are no users."));
  };

  const userRow = (user) => {
    const self = user.id === ctx.me.id;
    const limits = user.limits || {};
    const quota = [
      limits.storage_quota_bytes === null || limits.storage_quota_bytes === undefined
        ? "Default" : bytes(limits.storage_quota_bytes),
      limits.file_quota === null || limits.file_quota === undefined ? null : `${count(limits.file_quota)} entries`,
    ].filter(Boolean).join(" · ");
    const row = h("tr", {},
      h("td", {}, user.username, self ? [" ", h("span", { class: "badge" }, "you")] : null),
      h("td", { class: "optional" }, user.role === "admin" ? "Administrator" : "User"),
      h("td", {}, user.disabled ? state("disabled", "bad") : state("active", "good")),
      h("td", { class: "optional" }, user.last_login_at ? when(user.last_login_at) : h("span", { class: "muted" }, "Never")),
      h("td", { class: "optional" }, quota),
      h("td", { class: "row-actions" }));
    const button = (label, action, extra = "") =>
      h("button", { type: "button", class: `small ${extra}`.trim(), "aria-label": `${label} ${user.username}`, onclick: action }, label);

    const edit = button("Edit", () => editUser(user, edit));
    const unlock = button("Unlock", async () => {
      const ok = await busy(unlock, async () => {
        await api("POST", `/admin/users/${user.id}/unlock`);
        return true;
      });
      if (ok) toast(`Unlocked ${user.username}: addresses locked out after failed sign-ins may try again.`);
    });
    const signOut = button("Sign out", async () => {
      if (self) {
        const sure = await dialog({
          title: "Sign yourself out everywhere?",
          body: h("p", {}, "This ends every one of your sessions, this one too. Your API tokens keep working."),
          confirm: "Sign out",
        });
        if (!sure) {
          signOut.focus();
          return;
        }
      }
      const ok = await busy(signOut, async () => {
        await api("DELETE", `/admin/users/${user.id}/sessions`);
        return true;
      });
      if (ok) toast(`Signed ${user.username} out of every session. Their API tokens still work.`);
    });
    const remove = button("Delete", async () => {
      const sure = await dialog({
        title: `Delete the user ${user.username}?`,
        body: [
          h("p", {}, `${user.username}'s account, sessions and API tokens are deleted, and all of their files are deleted too. This cannot be undone.`),
          self ? h("p", { class: "alert warn" }, "This is your own account: you will be signed out.") : null,
        ],
        confirm: "Delete",
        danger: true,
        submit: () => api("DELETE", `/admin/users/${user.id}`),
      });
      if (!sure) {
        remove.focus();
        return;
      }
      users = users.filter((u) => u.id !== user.id);
      removeRow(row, heading);
      if (!users.length) show();
      toast(`Deleted the user ${user.username} and their files.`);
    }, "danger");
    row.lastChild.append(edit, unlock, signOut, remove);
    return row;
  };

  const editUser = async (user, opener) => {
    const limits = user.limits || {};
    const text = (n) => (n === null || n === undefined ? "" : String(n));
    const overrides = { ...(limits.process || {}) };
    let updated = null;
    let unchanged = false;
    const open = dialog({
      title: `Edit ${user.username}`,
      fields: [
        { name: "role", label: "Role", options: [["user", "User"], ["admin", "Administrator"]], value: user.role },
        { name: "disabled", label: "Disabled", type: "checkbox", value: user.disabled,
          hint: "A disabled user cannot sign in: their sessions end and their API tokens are refused." },
        { name: "storage", label: "Storage quota (bytes)", value: text(limits.storage_quota_bytes),
          hint: `Bytes, or with a unit (500MiB, 2GiB). Empty: the server's default.${
            limits.storage_quota_bytes !== null && limits.storage_quota_bytes !== undefined ? ` Now ${bytes(limits.storage_quota_bytes)}.` : ""}` },
        { name: "files", label: "File quota", value: text(limits.file_quota),
          hint: "Files, folders and links the user may have. Empty: the server's default." },
        { name: "sessions", label: "Maximum sessions", value: text(limits.max_sessions),
          hint: "1 to 1000 at once; a new sign-in ends the oldest. Empty: the server's default." },
        { name: "memory", label: "Memory limit (bytes)", value: text(overrides.memory),
          hint: "For all of the user's processes together (cgroup memory.max); a size such as 2GiB; 0: none. Empty: the server's default." },
        { name: "pids", label: "Process limit", value: text(overrides.pids),
          hint: "Processes and threads at once (cgroup pids.max); 0: none. Empty: the server's default." },
        { name: "tasks", label: "Tasks at once", value: text(overrides.tasks),
          hint: "1 to 10000. Empty: the server's default." },
        { name: "cpu_weight", label: "CPU weight", value: text(overrides.cpu_weight),
          hint: "1 to 10000 (100 is an equal share). Empty: the server's default." },
        { name: "password", label: "New password", type: "password", autocomplete: "new-password",
          hint: "Empty: unchanged. A new password signs the user out everywhere and revokes their API tokens." },
      ],
      confirm: "Save",
      submit: async (values) => {
        const patch = {};
        if (values.role !== user.role) patch.role = values.role;
        if (values.disabled !== user.disabled) patch.disabled = values.disabled;
        const storage = parseSize(values.storage);
        if (storage === undefined) throw new Error("The storage quota must be a number of bytes (or a size such as 2GiB), or empty for the default.");
        if (storage !== (limits.storage_quota_bytes ?? null)) patch.storage_quota_bytes = storage;
        const files = parseCount(values.files, 0);
        if (files === undefined) throw new Error("The file quota must be a whole number, or empty for the default.");
        if (files !== (limits.file_quota ?? null)) patch.file_quota = files;
        const sessions = parseCount(values.sessions, 1);
        if (sessions === undefined || (sessions !== null && sessions > 1000)) {
          throw new Error("The maximum sessions must be a whole number from 1 to 1000, or empty for the default.");
        }
        if (sessions !== (limits.max_sessions ?? null)) patch.max_sessions = sessions;
        // Process limits: the other overrides (set through the API) are kept.
        const process = { ...overrides };
        const memory = parseSize(values.memory);
        if (memory === undefined) throw new Error("The memory limit must be a number of bytes (or a size such as 2GiB), 0 for none, or empty for the default.");
        const pids = parseCount(values.pids, 0);
        if (pids === undefined) throw new Error("The process limit must be a whole number, 0 for none, or empty for the default.");
        const tasks = parseCount(values.tasks, 1);
        if (tasks === undefined || (tasks !== null && tasks > 10000)) throw new Error("Tasks at once must be a whole number from 1 to 10000, or empty for the default.");
        const weight = parseCount(values.cpu_weight, 1);
        if (weight === undefined || (weight !== null && weight > 10000)) throw new Error("The CPU weight must be a whole number from 1 to 10000, or empty for the default.");
        for (const [key, value] of [["memory", memory], ["pids", pids], ["tasks", tasks], ["cpu_weight", weight]]) {
          if (value === null) delete process[key];
          else process[key] = value;
        }
        if (JSON.stringify(process) !== JSON.stringify(overrides)) {
          patch.limits = Object.keys(process).length ? process : null;
        }
        if (values.password) {
          const length = new TextEncoder().encode(values.password).length;
          if (length < 10) throw new Error("The new password is too short: use at least 10 characters.");
          if (length > 1024) throw new Error("The new password is too long: use at most 1024 bytes.");
          patch.password = values.password;
        }
        if (!Object.keys(patch).length) {
          unchanged = true;
          return;
        }
        updated = await api("PATCH", `/admin/users/${user.id}`, { json: patch });
        updated.changedRole = "role" in patch;
      },
    });
    const done = await open;
    if (!done) {
      opener.focus();
      return;
    }
    if (unchanged || !updated) {
      toast("Nothing changed.");
      opener.focus();
      return;
    }
    const { changedRole, ...user2 } = updated;
    users = users.map((u) => (u.id === user2.id ? user2 : u));
    show();
    toast(`Saved the changes to ${user2.username}.`);
    if (user2.id === ctx.me.id && changedRole && user2.role !== "admin") {
      // No longer an administrator: this page is not ours any more.
      await ctx.refreshMe();
      location.hash = "#/";
      return;
    }
    const again = [...list.querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === `Edit ${user2.username}`);
    if (again) again.focus();
  };

  show();
  section.append(card("new-user-heading", "New user", null, form), listCard);
  return undefined;
}

// ---------------------------------------------------------------- Sessions

async function sessionsTab(section, ctx) {
  const body = h("div", {});
  const filter = h("input", { type: "text", name: "filter", autocomplete: "off", spellcheck: "false" });
  const summary = h("p", { class: "muted", role: "status" });
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  const box = card("sessions-heading", "All sessions", [refresh],
    h("div", { class: "form-row" }, field("Filter", filter, "By user, device or address.")),
    summary, body);
  const heading = box.querySelector("h2");
  let sessions = [];
  let names = new Map();

  const load = async () => {
    const [list, users] = await Promise.all([api("GET", "/admin/sessions"), api("GET", "/admin/users")]);
    sessions = list;
    names = new Map(users.map((user) => [user.id, user.username]));
    show();
  };

  const show = () => {
    const needle = filter.value.trim().toLowerCase();
    const shown = sessions.filter((session) => !needle ||
      [names.get(session.user_id), session.user_agent, describeDevice(session.user_agent), session.address]
        .some((text) => text && text.toLowerCase().includes(needle)));
    summary.textContent = needle
      ? `${plural(shown.length, "session")} of ${sessions.length} match.`
      : `${plural(sessions.length, "session")}.`;
    if (!shown.length) {
      body.replaceChildren(h("p", { class: "empty" }, sessions.length ? "No session matches the filter." : "No one is signed in."));
      return;
    }
    body.replaceChildren(table("Every user's sessions", [
      { label: "User" },
      { label: "Device" },
      { label: "Address", optional: true },
      { label: "Signed in", optional: true },
      { label: "Last seen" },
      { label: "Actions", hidden: true },
    ], shown.map(sessionRow)));
  };

  const sessionRow = (session) => {
    const user = names.get(session.user_id) || "(deleted user)";
    const device = describeDevice(session.user_agent);
    const row = h("tr", {},
      h("td", {}, user),
      h("td", {}, h("span", { title: session.user_agent ? shown(session.user_agent) : undefined }, device),
        session.current ? [" ", h("span", { class: "badge good" }, "This session")] : null),
      h("td", { class: "optional mono" }, session.address || "—"),
      h("td", { class: "optional" }, when(session.created_at)),
      h("td", {}, when(session.last_seen_at)),
      h("td", { class: "row-actions" }));
    if (!session.current) {
      const end = h("button", {
        type: "button",
        class: "small",
        "aria-label": `End session of ${user} from ${device}${session.address ? ` (${session.address})` : ""}`,
        onclick: async () => {
          const ok = await busy(end, async () => {
            await api("DELETE", `/admin/sessions/${session.id}`);
            return true;
          });
          if (!ok) return;
          sessions = sessions.filter((s) => s.id !== session.id);
          removeRow(row, heading);
          summary.textContent = `${plural(sessions.length, "session")}.`;
          toast(`Ended ${user}'s session from ${device}.`);
        },
      }, "End");
      row.lastChild.append(end);
    }
    return row;
  };

  filter.addEventListener("input", show);
  return firstLoad(section, box, body, refresh, load);
}

// ---------------------------------------------------------------- Audit log

const AUDIT_EVENTS = [
  "access_denied", "limits_changed", "lockout", "login", "login_failed", "logout",
  "password_changed", "password_check_failed", "password_reset", "role_changed",
  "session_revoked", "sessions_evicted", "sessions_revoked", "task_cancelled", "task_started",
  "token_created", "token_revoked", "unlock", "user_created", "user_deleted",
  "user_disabled", "user_enabled",
];
const PAGE = 100;

async function auditTab(section, ctx) {
  const user = h("input", { type: "text", name: "user", autocomplete: "off", spellcheck: "false", value: ctx.query.get("user") || "" });
  const eventInput = h("input", { type: "text", name: "event", list: "audit-events", autocomplete: "off", spellcheck: "false", value: ctx.query.get("event") || "" });
  const since = h("input", { type: "datetime-local", name: "since" });
  const sinceMs = Number.parseInt(ctx.query.get("since") || "", 10);
  if (Number.isFinite(sinceMs)) since.value = localInput(sinceMs);
  const apply = h("button", { type: "submit", class: "primary" }, "Apply filters");
  const clear = h("button", { type: "button" }, "Clear");
  const alertEl = h("div", { class: "alert", role: "alert" });
  const form = h("form", { novalidate: true, "aria-label": "Filter the audit log" },
    h("datalist", { id: "audit-events" }, AUDIT_EVENTS.map((name) => h("option", { value: name }))),
    h("div", { class: "form-row" },
      field("User", user, "Who acted, or was acted on."),
      field("Event", eventInput, "Such as login_failed."),
      field("Since", since, "In your local time.")),
    alertEl,
    h("div", { class: "actions" }, apply, clear));
  const summary = h("p", { class: "muted", role: "status" });
  const body = h("div", {});
  const more = h("button", { type: "button" }, "Load older events");
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  const footer = h("div", { class: "actions" }, more);
  const box = card("audit-heading", "Audit log", [refresh], form, summary, body, footer);

  let rows = [];
  let active = {};

  const filters = () => {
    const out = {};
    if (user.value.trim()) out.user = user.value.trim();
    if (eventInput.value.trim()) out.event = eventInput.value.trim();
    if (since.value) {
      const ms = new Date(since.value).getTime();
      if (Number.isNaN(ms)) throw new Error("The “Since” time is not a valid date and time.");
      out.since = String(ms);
    }
    return out;
  };

  // Pages of PAGE events, newest first; the next page is what is older than
  // the last event shown (`before` = its id), so events arriving meanwhile
  // neither repeat nor shift a page.
  const fetchPage = (before) => {
    const params = new URLSearchParams({ ...active, limit: String(PAGE) });
    if (before !== undefined) params.set("before", String(before));
    return api("GET", `/admin/audit?${params}`);
  };

  const show = (complete) => {
    if (!rows.length) {
      body.replaceChildren(h("p", { class: "empty" }, Object.keys(active).length
        ? "No event matches these filters." : "The audit log is empty."));
    } else {
      body.replaceChildren(table("Audit events, newest first", [
        { label: "Time" },
        { label: "Event" },
        { label: "Actor" },
        { label: "Subject" },
        { label: "Address", optional: true },
        { label: "Detail", optional: true },
      ], rows.map(auditRow)));
    }
    footer.hidden = complete;
    const matching = Object.keys(active).length ? " matching" : "";
    summary.textContent = rows.length
      ? `${plural(rows.length, `${matching ? "matching " : ""}event`)} shown, newest first${complete ? "; that is all." : "."}`
      : "";
  };

  const reload = async () => {
    rows = await fetchPage();
    show(rows.length < PAGE);
  };

  const loadMore = async () => {
    const next = await fetchPage(rows.length ? rows[rows.length - 1].id : undefined);
    const firstNew = rows.length;
    rows = rows.concat(next);
    show(next.length < PAGE);
    // Go on reading at the first new row.
    const cell = body.querySelectorAll("tbody tr")[firstNew];
    if (cell) {
      cell.setAttribute("tabindex", "-1");
      cell.focus();
    }
  };

  const remember = () => {
    const params = new URLSearchParams(active);
    const query = params.toString();
    history.replaceState(null, "", `#/admin/audit${query ? `?${query}` : ""}`);
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alertEl.textContent = "";
    try {
      active = filters();
    } catch (err) {
      alertEl.textContent = err.message;
      since.focus();
      return;
    }
    remember();
    await busy(apply, reload, alertEl);
  });
  clear.addEventListener("click", async () => {
    form.reset();
    user.value = "";
    eventInput.value = "";
    since.value = "";
    active = {};
    remember();
    await busy(clear, reload, alertEl);
    user.focus();
  });
  more.addEventListener("click", () => busy(more, loadMore));
  refresh.addEventListener("click", () => busy(refresh, reload));

  try {
    active = filters();
    await reload();
  } catch (err) {
    footer.hidden = true;
    alertEl.textContent = describe(err);
  }
  section.append(box);
  return undefined;
}

function auditRow(entry) {
  const actor = entry.actor_name || entry.actor_id;
  return h("tr", {},
    h("td", {}, exact(entry.at_ms)),
    h("td", { class: "mono" }, entry.event),
    h("td", {}, actor ? shown(actor) : h("span", { class: "muted" }, "—")),
    h("td", {}, entry.subject ? shown(entry.subject) : h("span", { class: "muted" }, "—")),
    h("td", { class: "optional mono" }, entry.address ? shown(entry.address) : "—"),
    h("td", { class: "optional" }, shown(entry.detail || "")));
}

/** Milliseconds → the value of a datetime-local input, in local time. */
function localInput(ms) {
  const date = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

// ---------------------------------------------------------------- Usage

async function usageTab(section) {
  const body = h("div", {});
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  const box = card("usage-heading", "Storage use", [refresh], body);

  const load = async () => {
    const usage = await api("GET", "/admin/usage");
    if (!usage.length) {
      body.replaceChildren(h("p", { class: "empty" }, "There are no users."));
      return;
    }
    const counted = usage.filter((entry) => !entry.error);
    const total = counted.reduce((sum, entry) => sum + (entry.bytes_used || 0), 0);
    body.replaceChildren(
      h("p", { class: "muted" }, `${bytes(total)} used by ${plural(counted.length, "user")}`,
        counted.length < usage.length ? ` (${usage.length - counted.length} could not be counted)` : "", "."),
      table("Storage used by each user", [
        { label: "User" },
        { label: "Storage" },
        { label: "Entries", num: true },
        { label: "Files", num: true, optional: true },
      ], usage.map(usageRow)));
  };

  return firstLoad(section, box, body, refresh, load);
}

function usageRow(entry) {
  if (entry.error) {
    return h("tr", {},
      h("td", {}, entry.username),
      h("td", { colspan: "3" }, h("span", { class: "badge bad" }, "unknown"), " ",
        `Could not be counted: ${describe(new ApiError(0, entry.error.code, entry.error.message || entry.error.code))}`));
  }
  const quota = entry.quota_bytes || 0;
  const meter = h("meter", {
    min: "0",
    max: String(quota || 1),
    value: String(Math.min(entry.bytes_used, quota || entry.bytes_used)),
    low: String((quota || 1) * 0.75),
    high: String((quota || 1) * 0.9),
    optimum: "0",
    "aria-label": `Storage used by ${entry.username}`,
  });
  const share = quota ? ` (${Math.round((entry.bytes_used / quota) * 100)} %)` : "";
  return h("tr", {},
    h("td", {}, entry.username),
    h("td", {}, meter, h("div", { class: "muted" }, `${bytes(entry.bytes_used)} of ${bytes(quota)}${share}`)),
    h("td", { class: "num" }, `${count(entry.entries)} of ${count(entry.quota_files)}`),
    h("td", { class: "num optional" }, count(entry.files)));
}

// ---------------------------------------------------------------- Workers

const POLL_MS = 2000;

async function workersTab(section) {
  const status = h("div", {});
  const body = h("div", {});
  const sandbox = h("div", {});
  const alertEl = h("div", { class: "alert", role: "alert" });
  const updated = h("p", { class: "muted" }, "Not updated yet.");
  const box = card("workers-heading", "Worker pool", null, alertEl, status, body, updated);
  const sandboxBox = card("sandbox-heading", "Sandbox", null, sandbox);

  let timer = null;
  let stopped = false;
  let controller = null;
  let lastOk = null;

  const poll = async () => {
    timer = null;
    if (stopped) return;
    if (document.hidden) {
      // Nobody looks: check again when the tab is shown.
      schedule();
      return;
    }
    controller = new AbortController();
    try {
      const response = await fetch("/readyz", {
        credentials: "same-origin",
        headers: { accept: "application/json" },
        signal: controller.signal,
        cache: "no-store",
      });
      let report = null;
      try {
        report = await response.json();
      } catch {
        // Not warren's answer (a proxy's error page, say).
        throw new Error(`The server answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}.`);
      }
      if (stopped) return;
      if (!report || !Array.isArray(report.workers)) {
        throw new Error("The server did not send the workers' details (are you still an administrator?).");
      }
      showReport(report);
      alertEl.textContent = "";
      lastOk = new Date();
      updated.textContent = `Updated ${lastOk.toLocaleTimeString()}; refreshed every ${POLL_MS / 1000} s.`;
    } catch (err) {
      if (stopped || (err && err.name === "AbortError")) return;
      const message = err instanceof TypeError
        ? "Cannot reach the server."
        : describe(err);
      alertEl.textContent = `${message} ${lastOk
        ? `The figures below are from ${lastOk.toLocaleTimeString()}; trying again every ${POLL_MS / 1000} s.`
        : `Trying again every ${POLL_MS / 1000} s.`}`;
    } finally {
      controller = null;
    }
    schedule();
  };

  const schedule = () => {
    if (!stopped && !timer) timer = setTimeout(poll, POLL_MS);
  };

  const showReport = (report) => {
    const ready = report.status === "ready";
    const up = report.workers.filter((slot) => slot.state === "up").length;
    const database = report.database === "ok";
    status.replaceChildren(h("p", {},
      ready ? state("ready", "good") : state("not ready", "bad"), " ",
      `${up} of ${plural(report.workers.length, "worker")} up. Database: `,
      database ? state("ok", "good") : state("failing", "bad"),
      database ? null : [" ", h("span", {}, String(report.database))]));
    body.replaceChildren(table("Worker slots", [
      { label: "Slot", num: true },
      { label: "State" },
      { label: "Restarts", num: true },
      { label: "Requests in flight", num: true },
      { label: "Open at worker", num: true, optional: true },
      { label: "Streams", num: true, optional: true },
      { label: "Users seen", num: true, optional: true },
      { label: "Tasks", num: true },
      { label: "Terminals", num: true, optional: true },
    ], report.workers.map((slot) => h("tr", {},
      h("td", { class: "num" }, String(slot.slot)),
      h("td", {}, slotState(slot.state)),
      h("td", { class: "num" }, count(slot.restarts)),
      h("td", { class: "num" }, count(slot.inflight_requests)),
      h("td", { class: "num optional" }, count(slot.worker_tasks)),
      h("td", { class: "num optional" }, count(slot.open_streams)),
      h("td", { class: "num optional" }, count(slot.users_seen)),
      h("td", { class: "num" }, count(slot.tasks_running)),
      h("td", { class: "num optional" }, count(slot.terminals_open))))));
    showSandbox(report.sandbox);
  };

  const showSandbox = (report) => {
    if (!report) {
      sandboxBox.hidden = true;
      return;
    }
    sandboxBox.hidden = false;
    const levels = Object.entries(report.levels || {});
    const warnings = report.warnings || [];
    sandbox.replaceChildren(h("div", {},
      h("p", {}, `Mode: ${report.mode}; network: ${report.network}.`),
      report.refused ? h("p", { class: "alert" }, `Users' processes are refused: ${report.refused}`) : null,
      warnings.length ? h("ul", { class: "alert warn", "aria-label": "Sandbox warnings" }, warnings.map((w) => h("li", {}, String(w)))) : null,
      levels.length ? h("p", { class: "muted" }, "Levels: ",
        levels.map(([feature, level], i) => [i ? ", " : "", h("span", { class: "mono" }, `${feature} ${level}`)])) : null));
  };

  await poll();
  section.append(box, sandboxBox);
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    timer = null;
    if (controller) controller.abort();
  };
}

function slotState(value) {
  const kind = value === "up" ? "good" : value === "degraded" || value === "stopped" ? "bad" : "busy";
  return state(String(value), kind);
}

// ---------------------------------------------------------------- Apps

async function appsTab(section) {
  const body = h("div", {});
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  const box = card("apps-heading", "Running apps", [refresh], body);
  const heading = box.querySelector("h2");
  let apps = [];

  const load = async () => {
    // Which apps exist: the caller's own list names every defined app.
    const [defined, all] = await Promise.all([
      api("GET", "/me/apps").catch((err) => (err.status === 404 ? { apps: [] } : Promise.reject(err))),
      api("GET", "/admin/apps").catch((err) => (err.status === 404 ? null : Promise.reject(err))),
    ]);
    if (!all || !defined.apps.length) {
      body.replaceChildren(h("p", { class: "empty" }, "No apps are configured (--apps)."));
      refresh.hidden = true;
      return;
    }
    apps = all.apps;
    show();
  };

  const show = () => {
    if (!apps.length) {
      body.replaceChildren(h("p", { class: "empty" }, "No apps are running."));
      return;
    }
    body.replaceChildren(table("Every user's apps", [
      { label: "User" },
      { label: "App" },
      { label: "State" },
      { label: "Since", optional: true },
      { label: "Memory", num: true, optional: true },
      { label: "Restarts", num: true, optional: true },
      { label: "Last activity", optional: true },
      { label: "Actions", hidden: true },
    ], apps.map(appRow)));
  };

  const appRow = (app) => {
    const row = h("tr", {},
      h("td", {}, app.username),
      h("td", {}, app.title || app.name, app.title && app.title !== app.name ? [" ", h("span", { class: "muted mono" }, app.name)] : null),
      h("td", {}, appState(app.state), app.message ? h("div", { class: "muted" }, app.message) : null),
      h("td", { class: "optional" }, when(app.since)),
      h("td", { class: "num optional" }, app.state === "running" ? bytes(app.memory_bytes) : "—"),
      h("td", { class: "num optional" }, count(app.restarts)),
      h("td", { class: "optional" }, when(app.last_activity_at)),
      h("td", { class: "row-actions" }));
    const label = app.title || app.name;
    const stop = h("button", {
      type: "button",
      class: "small",
      "aria-label": `Stop ${label} of ${app.username}`,
      onclick: async () => {
        const ok = await busy(stop, async () => {
          await api("POST", `/admin/apps/${encodeURIComponent(app.user_id)}/${encodeURIComponent(app.name)}/stop`);
          return true;
        });
        if (!ok) return;
        apps = apps.filter((a) => a !== app);
        removeRow(row, heading);
        if (!apps.length) show();
        toast(`Stopped ${app.username}'s ${label}.`);
      },
    }, "Stop");
    row.lastChild.append(stop);
    return row;
  };

  return firstLoad(section, box, body, refresh, load);
}

function appState(value) {
  const kind = value === "running" ? "good" : value === "failed" ? "bad" : "busy";
  return state(String(value), kind);
}

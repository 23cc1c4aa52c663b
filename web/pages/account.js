// The signed-in user's own account: their password, where they are signed
// in, their API tokens, and their settings (the theme).

import { api, h, field, toast, busy, dialog, describe, when, shown, removeRow } from "../lib.js";

export async function render(holder, ctx) {
  // Everything the page shows, fetched together before the page appears.
  const [sessions, tokens, settings] = await Promise.all([
    api("GET", "/me/sessions"),
    api("GET", "/me/tokens"),
    api("GET", "/me/settings").catch(() => ({})),
  ]);

  const sessionsCard = sessionsSection(sessions);
  const top = h("div", { class: "grid" },
    passwordSection(ctx, () => sessionsCard.reload()),
    settingsSection(ctx, settings));
  holder.append(
    h("div", { class: "page-head" }, h("h1", {}, "Account")),
    top,
    sessionsCard.el,
    tokensSection(tokens),
  );
}

// ---------------------------------------------------------------- Password

function passwordSection(ctx, afterChange) {
  const current = h("input", { type: "password", name: "current-password", autocomplete: "current-password", required: true });
  const next = h("input", { type: "password", name: "new-password", autocomplete: "new-password", required: true, minlength: "10" });
  const repeat = h("input", { type: "password", name: "repeat-password", autocomplete: "new-password", required: true });
  const alertEl = h("div", { class: "alert", role: "alert" });
  const submit = h("button", { type: "submit", class: "primary" }, "Change password");
  const account = h("input", { type: "text", name: "username", autocomplete: "username", hidden: true, readonly: true, tabindex: "-1" });
  account.defaultValue = ctx.me.username;
  const form = h("form", { class: "card", novalidate: true, "aria-labelledby": "password-heading" },
    h("h2", { id: "password-heading" }, "Password"),
    // For password managers: which account this password belongs to.
    account,
    field("Current password", current),
    field("New password", next, "At least 10 characters. Your other sessions will be signed out."),
    field("Repeat new password", repeat),
    alertEl,
    h("div", { class: "actions" }, submit));

  const invalid = (control, message) => {
    for (const el of [current, next, repeat]) el.removeAttribute("aria-invalid");
    alertEl.textContent = message;
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!current.value) return invalid(current, "Enter your current password.");
    if (!next.value) return invalid(next, "Enter a new password.");
    const length = new TextEncoder().encode(next.value).length;
    if (length < 10) return invalid(next, "The new password is too short: use at least 10 characters.");
    if (length > 1024) return invalid(next, "The new password is too long: use at most 1024 bytes.");
    if (repeat.value !== next.value) return invalid(repeat, "The repeated password does not match the new password.");
    if (next.value === current.value) return invalid(next, "The new password is the same as the current one.");
    invalid(null, "");
    const done = await busy(submit, async () => {
      try {
        await api("POST", "/me/password", {
          json: { current_password: current.value, new_password: next.value },
          // A wrong current password is a 401 that must not sign us out.
          quiet401: true,
        });
      } catch (err) {
        if (err.status === 401) {
          const wrong = new Error("The current password is wrong.");
          current.setAttribute("aria-invalid", "true");
          current.select();
          current.focus();
          throw wrong;
        }
        throw err;
      }
      return true;
    }, alertEl);
    if (!done) return;
    form.reset();
    toast("Password changed. Your other sessions were signed out.");
    afterChange();
  });
  return form;
}

// ---------------------------------------------------------------- Sessions

function sessionsSection(initial) {
  const body = h("div", {});
  const heading = h("h2", { id: "sessions-heading", tabindex: "-1" }, "Sessions");
  const el = h("section", { class: "card", "aria-labelledby": "sessions-heading" },
    heading,
    h("p", { class: "muted" }, "Where you are signed in. Revoking a session signs that browser out at once."),
    body);

  const show = (sessions) => {
    const sorted = [...sessions].sort((a, b) =>
      (b.current - a.current) || String(b.last_seen_at).localeCompare(String(a.last_seen_at)));
    const rows = sorted.map((session) => {
      const who = describeDevice(session.user_agent);
      const where = session.address || "unknown address";
      const row = h("tr", {},
        h("td", {}, h("span", { title: session.user_agent ? shown(session.user_agent) : undefined }, who),
          session.current ? [" ", h("span", { class: "badge good" }, "This session")] : null),
        h("td", { class: "mono" }, session.address || "—"),
        h("td", { class: "optional" }, when(session.created_at)),
        h("td", {}, when(session.last_seen_at)),
        h("td", { class: "row-actions" }, session.current ? null : revokeButton()));
      function revokeButton() {
        const button = h("button", {
          type: "button",
          class: "small",
          "aria-label": `Revoke session from ${who} (${where}), signed in ${when(session.created_at).textContent}`,
          onclick: async () => {
            const ok = await busy(button, async () => {
              await api("DELETE", `/me/sessions/${encodeURIComponent(session.id)}`);
              return true;
            });
            if (!ok) return;
            removeRow(row, heading);
            toast(`Revoked the session from ${who} (${where}).`);
          },
        }, "Revoke");
        return button;
      }
      return row;
    });
    body.replaceChildren(h("div", { class: "table-wrap" },
      h("table", {},
        h("caption", { class: "visually-hidden" }, "Your sessions"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Device"),
          h("th", { scope: "col" }, "Address"),
          h("th", { scope: "col", class: "optional" }, "Signed in"),
          h("th", { scope: "col" }, "Last seen"),
          h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
        h("tbody", {}, rows))));
  };

  show(initial);
  return {
    el,
    reload: async () => {
      try {
        show(await api("GET", "/me/sessions"));
      } catch (err) {
        toast(`Could not refresh the sessions: ${describe(err)}`, "error");
      }
    },
  };
}

/** "Firefox on Linux" from a User-Agent header; the header itself if unknown. */
export function describeDevice(ua) {
  if (!ua) return "Unknown device";
  ua = shown(ua);
  const browsers = [
    [/Edg(e|A|iOS)?\//, "Edge"],
    [/OPR\//, "Opera"],
    [/Firefox\/|FxiOS\//, "Firefox"],
    [/HeadlessChrome\//, "Headless Chrome"],
    [/Chromium\//, "Chromium"],
    [/Chrome\/|CriOS\//, "Chrome"],
    [/Version\/[\d.]+.*Safari\//, "Safari"],
    [/^curl\//, "curl"],
    [/^Wget\//, "Wget"],
    [/python-requests|python-urllib|aiohttp|httpx/i, "Python"],
    [/^node|undici/i, "Node.js"],
    [/^Go-http-client/, "Go"],
  ];
  const systems = [
    [/Windows/, "Windows"],
    [/Android/, "Android"],
    [/iPhone|iPad|iPod/, "iOS"],
    [/CrOS/, "ChromeOS"],
    [/Mac OS X|Macintosh/, "macOS"],
    [/Linux|X11/, "Linux"],
  ];
  const browser = browsers.find(([re]) => re.test(ua));
  const system = systems.find(([re]) => re.test(ua));
  if (!browser) return ua.length > 60 ? ua.slice(0, 57) + "…" : ua;
  return system ? `${browser[1]} on ${system[1]}` : browser[1];
}


// ---------------------------------------------------------------- API tokens

const LIFETIMES = [
  ["", "Never"],
  [String(86400), "In 1 day"],
  [String(30 * 86400), "In 30 days"],
  [String(365 * 86400), "In 1 year"],
];

function tokensSection(initial) {
  const name = h("input", { type: "text", name: "token-name", autocomplete: "off", spellcheck: "false", maxlength: "100", required: true });
  const scope = h("select", { name: "scope" },
    h("option", { value: "write", selected: true }, "Read and write"),
    h("option", { value: "read" }, "Read only"));
  const expires = h("select", { name: "expires" }, LIFETIMES.map(([value, text]) => h("option", { value }, text)));
  const alertEl = h("div", { class: "alert", role: "alert" });
  const create = h("button", { type: "submit", class: "primary" }, "Create token");
  const heading = h("h2", { id: "tokens-heading", tabindex: "-1" }, "API tokens");
  const form = h("form", { novalidate: true, "aria-label": "New API token" },
    h("div", { class: "form-row" },
      field("Token name", name),
      field("Scope", scope),
      field("Expires", expires),
      h("div", { class: "field" }, create)),
    alertEl);
  const list = h("div", {});
  const el = h("section", { class: "card", "aria-labelledby": "tokens-heading" },
    heading,
    h("p", { class: "muted" }, "For scripts: send a token as ",
      h("code", {}, "Authorization: Bearer TOKEN"), ". A read-only token may only read (GET)."),
    form, list);

  let tokens = [...initial];
  const show = () => {
    if (!tokens.length) {
      list.replaceChildren(h("p", { class: "empty" }, "You have no API tokens."));
      return;
    }
    const sorted = [...tokens].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    list.replaceChildren(h("div", { class: "table-wrap" },
      h("table", {},
        h("caption", { class: "visually-hidden" }, "Your API tokens"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Name"),
          h("th", { scope: "col" }, "Scope"),
          h("th", { scope: "col", class: "optional" }, "Created"),
          h("th", { scope: "col" }, "Last used"),
          h("th", { scope: "col", class: "optional" }, "Expires"),
          h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
        h("tbody", {}, sorted.map(tokenRow)))));
  };

  const tokenRow = (token) => {
    const expired = token.expires_at && new Date(token.expires_at).getTime() <= Date.now();
    const row = h("tr", {},
      h("td", {}, token.name),
      h("td", {}, token.scope === "read" ? "Read only" : "Read and write"),
      h("td", { class: "optional" }, when(token.created_at)),
      h("td", {}, token.last_used_at ? when(token.last_used_at) : h("span", { class: "muted" }, "Never")),
      h("td", { class: "optional" },
        expired ? h("span", { class: "badge bad" }, "expired")
          : token.expires_at ? expiry(token.expires_at) : h("span", { class: "muted" }, "Never")),
      h("td", { class: "row-actions" }));
    const revoke = h("button", {
      type: "button",
      class: "small danger",
      // Names need not be unique: tell same-named tokens apart by age.
      "aria-label": tokens.filter((t) => t.name === token.name).length > 1
        ? `Revoke ${token.name} (created ${when(token.created_at).textContent})`
        : `Revoke ${token.name}`,
      onclick: async () => {
        const confirmed = await dialog({
          title: `Revoke the token “${token.name}”?`,
          body: h("p", {}, "Scripts that use it will be refused from now on. This cannot be undone."),
          confirm: "Revoke",
          danger: true,
          submit: () => api("DELETE", `/me/tokens/${encodeURIComponent(token.id)}`),
        });
        if (!confirmed) {
          revoke.focus();
          return;
        }
        tokens = tokens.filter((t) => t.id !== token.id);
        removeRow(row, heading);
        if (!tokens.length) {
          show();
          heading.focus();
        }
        toast(`Revoked the token ${token.name}.`);
      },
    }, "Revoke");
    row.lastChild.append(revoke);
    return row;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    name.removeAttribute("aria-invalid");
    const wanted = name.value.trim();
    if (!wanted) {
      alertEl.textContent = "Give the token a name, to tell it apart from others (such as “backup script”).";
      name.setAttribute("aria-invalid", "true");
      name.focus();
      return;
    }
    const json = { name: wanted, scope: scope.value };
    if (expires.value) json.expires_in_seconds = Number(expires.value);
    const created = await busy(create, () => api("POST", "/me/tokens", { json }), alertEl);
    if (!created) {
      if (alertEl.textContent) name.focus();
      return;
    }
    const { secret, ...token } = created;
    tokens.push(token);
    show();
    form.reset();
    await showSecret(token, secret);
    name.focus();
  });

  show();
  return el;
}

function expiry(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return h("time", { datetime: date.toISOString(), title: date.toISOString() },
    date.toLocaleDateString(undefined, { dateStyle: "medium" }));
}

/** The new token's secret, once, with a way to copy it. */
async function showSecret(token, secret) {
  const box = h("div", { class: "secret" }, secret);
  const status = h("span", { class: "muted", role: "status" });
  const copy = h("button", {
    type: "button",
    onclick: async () => {
      try {
        if (!navigator.clipboard || !window.isSecureContext) throw new Error("no clipboard");
        await navigator.clipboard.writeText(secret);
        status.textContent = "Copied to the clipboard.";
      } catch {
        // Without the clipboard API (plain HTTP): select it for Ctrl+C.
        const range = document.createRange();
        range.selectNodeContents(box);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        status.textContent = "The browser does not allow copying here: the token is selected, press Ctrl+C (⌘C on a Mac).";
      }
    },
  }, "Copy");
  const shown = dialog({
    title: `Token “${token.name}” created`,
    body: [
      h("p", {}, "Copy this token now and keep it somewhere safe. It will not be shown again."),
      box,
      h("p", {}, copy, " ", status),
    ],
    confirm: "Done",
    cancel: null,
  });
  copy.focus();
  await shown;
}

// ---------------------------------------------------------------- Settings

const THEMES = [["system", "System"], ["light", "Light"], ["dark", "Dark"]];

function settingsSection(ctx, initial) {
  let settings = initial && typeof initial === "object" && !Array.isArray(initial) ? initial : {};
  let saved = themeOf(settings);
  const theme = h("select", { name: "theme" },
    THEMES.map(([value, text]) => h("option", { value, selected: value === saved ? true : undefined }, text)));
  // Seen beside the control; the toast is what screen readers hear.
  const status = h("p", { class: "muted" });
  const alertEl = h("div", { class: "alert", role: "alert" });
  const el = h("section", { class: "card", "aria-labelledby": "settings-heading" },
    h("h2", { id: "settings-heading" }, "Settings"),
    field("Theme", theme, "System follows your device's light or dark setting. Saved to your account, for every browser."),
    alertEl,
    status);

  // One save at a time; a change during a save is saved after it.
  let saving = null;
  let pending = false;
  const save = async () => {
    if (saving) {
      pending = true;
      return;
    }
    saving = (async () => {
      do {
        pending = false;
        const wanted = theme.value;
        status.textContent = "Saving…";
        alertEl.textContent = "";
        try {
          // Read first, so keys another tab or client wrote are kept.
          const fresh = await api("GET", "/me/settings");
          const base = fresh && typeof fresh === "object" && !Array.isArray(fresh) ? fresh : {};
          const ui = base.ui && typeof base.ui === "object" && !Array.isArray(base.ui) ? base.ui : {};
          const next = { ...base, ui: { ...ui, theme: wanted } };
          settings = (await api("PUT", "/me/settings", { json: next })) || next;
          saved = wanted;
          if (!pending) {
            status.textContent = `Theme saved: ${labelOf(wanted)}.`;
            toast(`Theme set to ${labelOf(wanted)}.`);
          }
        } catch (err) {
          pending = false;
          status.textContent = "";
          alertEl.textContent = `The theme was not saved: ${describe(err)}`;
          theme.value = saved;
          ctx.applyTheme(settings);
        }
      } while (pending);
      saving = null;
    })();
  };

  theme.addEventListener("change", () => {
    // Shown at once; stored in the background.
    const ui = settings.ui && typeof settings.ui === "object" ? settings.ui : {};
    ctx.applyTheme({ ...settings, ui: { ...ui, theme: theme.value } });
    save();
  });
  return el;
}

function themeOf(settings) {
  const value = settings && settings.ui && settings.ui.theme;
  return value === "light" || value === "dark" ? value : "system";
}

function labelOf(value) {
  return (THEMES.find(([v]) => v === value) || THEMES[0])[1];
}

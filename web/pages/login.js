// Sign in with a username and password. Lockouts and rate limits are told
// in words, with how long to wait.

import { api, h, field, describe } from "../lib.js";

export async function render(holder, ctx) {
  const username = h("input", { name: "username", autocomplete: "username", required: true, autocapitalize: "none", spellcheck: "false" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const alertEl = h("div", { class: "alert", role: "alert" });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "card", novalidate: true },
    field("Username", username),
    field("Password", password),
    alertEl,
    submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alertEl.textContent = "";
    if (!username.value.trim() || !password.value) {
      alertEl.textContent = "Enter your username and password.";
      (username.value.trim() ? password : username).focus();
      return;
    }
    submit.disabled = true;
    submit.prepend(h("span", { class: "spinner", "aria-hidden": "true" }));
    try {
      const answer = await api("POST", "/auth/login", {
        json: { username: username.value.trim(), password: password.value },
        quiet401: true,
      });
      await ctx.signedIn(answer.user);
      const next = ctx.query.get("next");
      location.hash = next && next.startsWith("#/") ? next : "#/";
    } catch (err) {
      alertEl.textContent = message(err);
      password.select();
      password.focus();
    } finally {
      submit.disabled = false;
      submit.querySelector(".spinner")?.remove();
    }
  });
  holder.append(h("div", { class: "login" },
    h("h1", {}, "Sign in to warren"),
    form));
  queueMicrotask(() => username.focus());
}

function message(err) {
  if (err.status === 401) return "That username and password do not match.";
  // Lockouts and rate limits (429) carry their reason and Retry-After.
  return describe(err);
}

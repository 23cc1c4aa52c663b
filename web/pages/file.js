// One file: a text file opens in an editor that saves with `If-Match`, so a
// change made elsewhere since it was opened is never overwritten unasked;
// an image is shown; anything else can be downloaded.

import { api, h, busy, toast, describe, bytes, when, encodePath, errorOf, ApiError } from "../lib.js";
import { crumbs } from "./files.js";

/** Larger text files are offered for download rather than edited here. */
const MAX_EDIT = 2 * 1024 * 1024;

export async function render(holder, ctx) {
  const path = ctx.rest.split("/").filter(Boolean).join("/");
  const name = path.split("/").pop() || "";
  const parent = path.split("/").slice(0, -1).join("/");
  ctx.setTitle(`${name} · Files`);
  const url = `/api/v1/files/${encodePath(path)}`;
  const head = await api("HEAD", `/files/${encodePath(path)}`, { raw: true }).catch((err) => err);
  if (head instanceof Error) {
    holder.append(h("h1", {}, name || "File"), crumbs(parent),
      h("p", { class: "alert", role: "alert" }, head.status === 404 ? `There is no file “${path}”.` : describe(head)),
      h("p", {}, h("a", { href: parent ? `#/files/${encodePath(parent)}` : "#/files" }, "Back to the folder")));
    return;
  }
  const type = head.headers.get("content-type") || "";
  if (type.includes("json") && !/\.json$/i.test(name)) {
    // A folder's listing: show the folder.
    history.replaceState(null, "", `#/files/${encodePath(path)}`);
    return (await import("./files.js")).render(holder, ctx);
  }
  const size = Number(head.headers.get("content-length") || 0);
  const modified = head.headers.get("last-modified");
  const download = h("a", { class: "button", href: url, download: name, "aria-label": `Download ${name}` }, "Download");
  const info = h("p", { class: "muted" }, `${bytes(size)} · ${type || "unknown type"} · modified `,
    when(modified ? new Date(modified).toISOString() : null));

  let body;
  if (type.startsWith("image/")) {
    body = h("div", { class: "card preview" }, h("img", { src: url, alt: name }));
  } else if (size <= MAX_EDIT) {
    body = await editor(url, path, name);
  } else {
    body = h("p", { class: "card" }, "This file is too large to open here. Download it instead.");
  }
  holder.append(
    h("div", { class: "page-head" }, h("h1", {}, name), h("div", { class: "actions" }, download)),
    crumbs(path),
    info,
    body);
}

async function editor(url, path, name) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw await errorOf(response);
  const buffer = await response.arrayBuffer();
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(buffer);
  } catch {
    return h("p", { class: "card" }, "This file is not text, so it cannot be edited here. Download it instead.");
  }
  if (text.includes("\u0000")) {
    return h("p", { class: "card" }, "This file is not text, so it cannot be edited here. Download it instead.");
  }
  let etag = response.headers.get("etag");
  const area = h("textarea", { id: "editor", spellcheck: "false", "aria-label": `Contents of ${name}` });
  area.value = text;
  const alertEl = h("div", { class: "alert", role: "alert" });
  const status = h("span", { class: "muted", "aria-live": "polite" });
  const save = h("button", { type: "button", class: "primary" }, "Save");
  const put = async (precondition) => {
    const headers = { "content-type": "application/octet-stream" };
    if (precondition) headers["if-match"] = precondition;
    const entry = await api("PUT", `/files/${encodePath(path)}`, { body: area.value, headers });
    etag = entry.etag ? `"${entry.etag.replaceAll('"', "")}"` : etag;
    dirty = false;
    status.textContent = "All changes saved.";
    alertEl.replaceChildren();
    toast(`Saved ${name}`);
  };
  let dirty = false;
  area.addEventListener("input", () => {
    dirty = true;
    status.textContent = "Unsaved changes.";
  });
  const conflict = () => {
    const reload = h("button", {
      type: "button",
      onclick: () => busy(reload, async () => {
        const fresh = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (!fresh.ok) throw await errorOf(fresh);
        area.value = await fresh.text();
        etag = fresh.headers.get("etag");
        dirty = false;
        alertEl.replaceChildren();
        status.textContent = "Reloaded the saved version.";
      }),
    }, "Reload");
    const overwrite = h("button", {
      type: "button", class: "danger",
      onclick: () => busy(overwrite, () => put(null)),
    }, "Overwrite");
    alertEl.replaceChildren(
      h("p", {}, `${name} changed since you opened it. Reload to see the other version (your edits here are lost), or overwrite it with yours.`),
      h("div", { class: "actions" }, reload, overwrite));
  };
  const doSave = () => busy(save, async () => {
    try {
      await put(etag);
    } catch (err) {
      if (err instanceof ApiError && err.status === 412) conflict();
      else throw err;
    }
  }, alertEl);
  save.addEventListener("click", doSave);
  area.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault();
      doSave();
    }
  });
  return h("div", { class: "editor" },
    alertEl,
    area,
    h("div", { class: "actions" }, save, status, h("span", { class: "hint" }, "Ctrl+S saves.")));
}

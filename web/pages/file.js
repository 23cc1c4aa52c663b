// One file: a text file opens in an editor that saves with `If-Match`, so a
// change made elsewhere since it was opened is never overwritten unasked;
// an image is shown; anything else can be downloaded.

import { api, h, busy, toast, describe, bytes, when, encodePath, errorOf, shown, ApiError } from "../lib.js";
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
    holder.append(h("h1", {}, shown(name) || "File"), crumbs(parent),
      h("p", { class: "alert", role: "alert" }, head.status === 404 ? `There is no file “${shown(path)}”.` : describe(head)),
      h("p", {}, h("a", { href: parent ? `#/files/${encodePath(parent)}` : "#/files" }, "Back to the folder")));
    return;
  }
  const type = head.headers.get("content-type") || "";
  // A folder answers with its listing, which has no ETag; a file always
  // has one. Handed over at most once, so the two pages never bounce.
  if (!head.headers.get("etag")) {
    if (ctx.handedOver) throw new Error(`${shown(path)} is neither a file nor a folder warren can show.`);
    history.replaceState(null, "", `#/files/${encodePath(path)}`);
    return (await import("./files.js")).render(holder, { ...ctx, handedOver: true });
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
    h("div", { class: "page-head" }, h("h1", {}, shown(name)), h("div", { class: "actions" }, download)),
    crumbs(path),
    info,
    body);
}

/**
 * A file's bytes as text the editor can give back unchanged: UTF-8 (a byte
 * order mark kept), with its line ends. A textarea turns every line end
 * into LF, so a file with CRLF throughout is saved with CRLF again; one
 * with lone CRs or mixed ends cannot round-trip and opens read-only.
 * Null for what is not text.
 */
function decode(buffer) {
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(buffer);
  } catch {
    return null;
  }
  if (text.includes("\u0000")) return null;
  const crlf = (text.match(/\r\n/g) || []).length;
  const cr = (text.match(/\r/g) || []).length;
  const lf = (text.match(/\n/g) || []).length;
  if (cr === 0) return { text, crlf: false, exact: true };
  if (crlf === cr && crlf === lf) return { text: text.replaceAll("\r\n", "\n"), crlf: true, exact: true };
  return { text, crlf: false, exact: false };
}

/** The open editor's guard against leaving with unsaved edits. */
let unsavedGuard = null;

async function editor(url, path, name) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  let decoded = decode(await response.arrayBuffer());
  if (!decoded) {
    return h("p", { class: "card" }, "This file is not text, so it cannot be edited here. Download it instead.");
  }
  let etag = response.headers.get("etag");
  const area = h("textarea", { id: "editor", spellcheck: "false", "aria-label": `Contents of ${shown(name)}` });
  const alertEl = h("div", { class: "alert", role: "alert" });
  const note = h("p", { class: "alert warn", hidden: true },
    "This file mixes line endings (or has lone carriage returns), which the editor would change: it is shown read-only. Download it to edit it.");
  const show = (fresh) => {
    decoded = fresh;
    area.value = fresh.text;
    area.readOnly = !fresh.exact;
    note.hidden = fresh.exact;
  };
  show(decoded);
  const status = h("span", { class: "muted", "aria-live": "polite" });
  const save = h("button", { type: "button", class: "primary" }, "Save");
  const put = async (precondition) => {
    const headers = { "content-type": "application/octet-stream" };
    if (precondition) headers["if-match"] = precondition;
    // The line ends the file had (the textarea only knows LF).
    const body = decoded.crlf ? area.value.replaceAll("\n", "\r\n") : area.value;
    const entry = await api("PUT", `/files/${encodePath(path)}`, { body, headers });
    etag = entry.etag ? `"${entry.etag.replaceAll('"', "")}"` : etag;
    dirty = false;
    status.textContent = "All changes saved.";
    alertEl.replaceChildren();
    toast(`Saved ${shown(name)}`);
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
        const text = decode(await fresh.arrayBuffer());
        if (!text) throw new Error("The saved version is no longer text; download it instead.");
        show(text);
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
      h("p", {}, `${shown(name)} changed since you opened it. Reload to see the other version (your edits here are lost), or overwrite it with yours.`),
      h("div", { class: "actions" }, reload, overwrite));
  };
  const doSave = () => busy(save, async () => {
    if (area.readOnly) return;
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
  // Unsaved edits are not lost to a closed tab or a reload unasked.
  window.removeEventListener("beforeunload", unsavedGuard);
  unsavedGuard = (event) => {
    if (dirty && area.isConnected) event.preventDefault();
  };
  window.addEventListener("beforeunload", unsavedGuard);
  return h("div", { class: "editor" },
    note,
    alertEl,
    area,
    h("div", { class: "actions" }, save, status, h("span", { class: "hint" }, "Ctrl+S saves.")));
}

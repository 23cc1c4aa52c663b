// Files: one folder of the workspace — breadcrumbs, uploads with progress
// and cancel (picker or drag and drop), new folder, rename, delete, and
// the shared templates at the top level.

import {
  api, h, busy, toast, describe, dialog, bytes, when, usageBlock, encodePath, errorOf, shown,
} from "../lib.js";

/** Uploads running at once; the rest wait their turn. */
const PARALLEL_UPLOADS = 2;

export async function render(holder, ctx) {
  const dir = ctx.rest.split("/").filter(Boolean).join("/");
  let listing;
  let answer;
  try {
    answer = await api("GET", dir ? `/files/${encodePath(dir)}` : "/files", { raw: true });
  } catch (err) {
    holder.append(h("h1", {}, "Files"), crumbs(dir),
      h("p", { class: "alert", role: "alert" }, err.status === 404 ? `There is no folder “${shown(dir)}”.` : describe(err)),
      h("p", {}, h("a", { href: "#/files" }, "Back to your workspace")));
    return undefined;
  }
  // A file has an ETag, a folder's listing none: a file is shown on its
  // own page (handed over at most once, so the two pages never bounce).
  if (answer.headers.get("etag")) {
    answer.body?.cancel();
    if (ctx.handedOver) throw new Error(`${shown(dir)} is neither a folder nor a file warren can show.`);
    history.replaceState(null, "", `#/file/${encodePath(dir)}`);
    return (await import("./file.js")).render(holder, { ...ctx, handedOver: true });
  }
  listing = await answer.json();
  ctx.setTitle(dir ? `${dir.split("/").pop()} · Files` : "Files");

  const usage = await usageBlock();
  const rows = h("tbody", {});
  const table = h("table", { class: "files-table" },
    h("caption", {}, `Contents of ${dir || "Workspace"}`),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Name"),
      h("th", { scope: "col", class: "num optional" }, "Size"),
      h("th", { scope: "col", class: "optional" }, "Modified"),
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
    rows);
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const emptyNote = h("p", { class: "empty", hidden: true }, "This folder is empty. Upload files or drop them here.");
  let cursor = listing.next_cursor;
  const entries = new Map();

  const draw = () => {
    const sorted = [...entries.values()].sort((a, b) =>
      (a.kind === "dir" ? 0 : 1) - (b.kind === "dir" ? 0 : 1) || a.name.localeCompare(b.name));
    rows.replaceChildren(...sorted.map((entry) => row(entry)));
    emptyNote.hidden = entries.size > 0;
    more.hidden = !cursor;
  };
  const addEntries = (list) => list.forEach((entry) => entries.set(entry.name, entry));
  const reload = async () => {
    const fresh = await api("GET", dir ? `/files/${encodePath(dir)}` : "/files");
    entries.clear();
    addEntries(fresh.entries);
    cursor = fresh.next_cursor;
    draw();
    usage.refresh();
  };
  more.addEventListener("click", () => busy(more, async () => {
    const path = dir ? `/files/${encodePath(dir)}` : "/files";
    const page = await api("GET", `${path}?cursor=${encodeURIComponent(cursor)}`);
    addEntries(page.entries);
    cursor = page.next_cursor;
    draw();
  }));

  const pathOf = (name) => (dir ? `${dir}/${name}` : name);

  function row(entry) {
    const path = pathOf(entry.name);
    const isDir = entry.kind === "dir";
    const label = shown(entry.name);
    // A name made by a user's own program that the API's path rules refuse
    // (control or invisible characters, not UTF-8) is shown, marked, but
    // offers no action that would only fail.
    const usable = label === entry.name && entry.name_valid !== false;
    const link = !usable
      ? h("span", {}, label)
      : isDir
        ? h("a", { href: `#/files/${encodePath(path)}` }, label)
        : entry.kind === "file"
          ? h("a", { href: `#/file/${encodePath(path)}` }, label)
          : h("span", {}, label);
    const kindLabel = { dir: "Folder", file: "File", symlink: "Link", fifo: "FIFO", socket: "Socket", device: "Device" }[entry.kind] || entry.kind;
    let actions;
    if (usable) {
      const rename = h("button", {
        type: "button", class: "small", "aria-label": `Rename ${label}`,
        onclick: () => renameEntry(entry),
      }, "Rename");
      const remove = h("button", {
        type: "button", class: "small danger", "aria-label": `Delete ${label}`,
        onclick: () => deleteEntry(entry),
      }, "Delete");
      const download = entry.kind === "file"
        ? h("a", {
          class: "button small", href: `/api/v1/files/${encodePath(path)}`, download: entry.name,
          "aria-label": `Download ${label}`,
        }, "Download")
        : null;
      actions = [download, rename, remove];
    } else {
      actions = h("span", { class: "hint" }, "This name cannot be used here: rename or delete it from a terminal, or delete its folder.");
    }
    return h("tr", {},
      h("td", {}, h("div", { class: "name-cell" },
        h("span", { class: "icon", "aria-hidden": "true" }, isDir ? "▸" : "·"),
        link,
        h("span", { class: "visually-hidden" }, ` (${kindLabel})`),
        entry.name_valid === false ? h("span", { class: "badge bad" }, "name not UTF-8") : null)),
      h("td", { class: "num nowrap optional" }, isDir ? "—" : bytes(entry.size)),
      h("td", { class: "optional nowrap" }, when(entry.modified)),
      h("td", { class: "row-actions" }, actions));
  }

  async function renameEntry(entry) {
    const values = await dialog({
      title: `Rename ${entry.name}`,
      fields: [{ name: "to", label: "New name", value: entry.name, required: true, hint: "A new name, or a path to move it: archive/old.txt is in this folder, /archive/old.txt at the top of your workspace." }],
      confirm: "Rename",
      submit: async ({ to }) => {
        const typed = to.trim();
        const target = typed.replace(/^\/+/, "");
        if (!target) throw new Error("Enter a name.");
        if (target === entry.name) return;
        const destination = typed.startsWith("/") ? target : pathOf(target);
        await api("POST", `/files/${encodePath(pathOf(entry.name))}?op=move`, { json: { to: destination } });
      },
    });
    if (values && values.to.trim() !== entry.name) {
      toast(`Renamed ${entry.name} to ${values.to.trim()}.`);
      await reload();
    }
  }

  async function deleteEntry(entry) {
    const isDir = entry.kind === "dir";
    const values = await dialog({
      title: `Delete ${entry.name}?`,
      body: h("p", {}, isDir
        ? `The folder ${entry.name} and everything in it will be deleted. This cannot be undone.`
        : `${entry.name} will be deleted. This cannot be undone.`),
      confirm: "Delete",
      danger: true,
      submit: async () => {
        await api("DELETE", `/files/${encodePath(pathOf(entry.name))}${isDir ? "?recursive=true" : ""}`);
      },
    });
    if (values) {
      toast(`Deleted ${entry.name}.`);
      await reload();
    }
  }

  const newFolder = h("button", {
    type: "button",
    onclick: async () => {
      const values = await dialog({
        title: "New folder",
        fields: [{ name: "name", label: "Folder name", required: true }],
        confirm: "Create",
        submit: async ({ name }) => {
          const clean = name.trim();
          if (!clean) throw new Error("Enter a name for the folder.");
          await api("POST", `/files/${encodePath(pathOf(clean))}?op=mkdir`);
        },
      });
      if (values) {
        toast(`Created folder ${values.name.trim()}.`);
        await reload();
      }
    },
  }, "New folder");

  // Uploads: one request per file, so each has its own progress and can be
  // cancelled alone; a failed one says why and the others go on.
  const uploadsList = h("ul", { class: "uploads", "aria-label": "Uploads" });
  const queue = [];
  let running = 0;
  const requests = new Set();
  const picker = h("input", { type: "file", multiple: true, id: "upload-input", class: "visually-hidden", tabindex: "-1" });
  const pickerLabel = h("label", { for: "upload-input", class: "visually-hidden" }, "Choose files to upload");
  const uploadButton = h("button", { type: "button", class: "primary", onclick: () => picker.click() }, "Upload files");
  picker.addEventListener("change", () => {
    enqueue([...picker.files]);
    picker.value = "";
  });

  function enqueue(files) {
    for (const file of files) {
      const progress = h("progress", { max: "100", value: "0", "aria-label": `Upload of ${shown(file.name)}` });
      const status = h("span", { class: "muted nowrap" }, "Waiting…");
      const cancel = h("button", { type: "button", class: "small", "aria-label": `Cancel upload of ${shown(file.name)}` }, "Cancel");
      const name = h("span", {}, shown(file.name));
      const item = h("li", {}, h("div", {}, name, " ", status), progress, cancel);
      const job = { file, item, progress, status, cancel, name, xhr: null, cancelled: false };
      cancel.addEventListener("click", () => {
        job.cancelled = true;
        if (job.xhr) job.xhr.abort();
        finish(job, `${file.name}: upload cancelled`, "muted");
      });
      uploadsList.append(item);
      queue.push(job);
    }
    pump();
  }

  function pump() {
    while (running < PARALLEL_UPLOADS && queue.length) {
      const job = queue.shift();
      if (job.cancelled) continue;
      running += 1;
      upload(job).finally(() => {
        running -= 1;
        pump();
      });
    }
  }

  function finish(job, text, cls) {
    job.status.remove();
    job.progress.remove();
    job.cancel.remove();
    job.name.textContent = shown(text);
    job.name.className = cls;
    setTimeout(() => job.item.remove(), 8000);
  }

  // Each file is a PUT of its own bytes (no multipart: the name is exactly
  // the file's), with If-None-Match: * so an existing file is never
  // replaced unasked: on 412 the user chooses to replace it or skip it.
  function upload(job, replace = false) {
    return new Promise((resolve) => {
      let target;
      try {
        target = `/api/v1/files/${encodePath(pathOf(job.file.name))}`;
      } catch (err) {
        finish(job, `${job.file.name} was not uploaded: ${err.message}`, "error-text");
        resolve();
        return;
      }
      const xhr = new XMLHttpRequest();
      job.xhr = xhr;
      requests.add(xhr);
      xhr.open("PUT", target);
      xhr.setRequestHeader("content-type", "application/octet-stream");
      if (!replace) xhr.setRequestHeader("if-none-match", "*");
      job.status.textContent = "0 %";
      job.progress.value = 0;
      xhr.upload.addEventListener("progress", (event) => {
        if (!event.lengthComputable) return;
        const percent = Math.floor((event.loaded / event.total) * 100);
        job.progress.value = percent;
        job.status.textContent = `${percent} %`;
      });
      xhr.addEventListener("loadend", async () => {
        requests.delete(xhr);
        if (job.cancelled) return resolve();
        if (xhr.status === 200 || xhr.status === 201) {
          finish(job, `${job.file.name} uploaded`, "");
          toast(`${job.file.name} uploaded.`);
          reload().catch(() => {});
          return resolve();
        }
        if (xhr.status === 412 && !replace) {
          job.status.textContent = "Already exists";
          const choice = await dialog({
            title: `Replace ${shown(job.file.name)}?`,
            body: h("p", {}, `A file named ${shown(job.file.name)} is already in this folder. Replace it with the one you are uploading?`),
            confirm: "Replace",
            cancel: "Skip",
            danger: true,
          });
          if (choice && !job.cancelled) {
            await upload(job, true);
          } else if (!job.cancelled) {
            finish(job, `${job.file.name}: skipped, the existing file was kept`, "muted");
          }
          return resolve();
        }
        let why = "the connection failed";
        if (xhr.status) {
          why = describe(await errorOf(new Response(xhr.responseText, {
            status: xhr.status,
            headers: { "content-type": "application/json", "retry-after": xhr.getResponseHeader("retry-after") || "" },
          })));
        }
        finish(job, `${job.file.name} was not uploaded: ${why}`, "error-text");
        toast(`${job.file.name} was not uploaded: ${why}`, "error");
        resolve();
      });
      xhr.send(job.file);
    });
  }

  const drop = h("div", { class: "dropzone" }, "Drop files here to upload them to this folder.");
  const page = h("div", {});
  let depth = 0;
  page.addEventListener("dragenter", (event) => {
    if (!event.dataTransfer || ![...event.dataTransfer.types].includes("Files")) return;
    depth += 1;
    drop.classList.add("over");
  });
  page.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) drop.classList.remove("over");
  });
  page.addEventListener("dragover", (event) => {
    if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) event.preventDefault();
  });
  page.addEventListener("drop", (event) => {
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    event.preventDefault();
    depth = 0;
    drop.classList.remove("over");
    enqueue([...event.dataTransfer.files]);
  });

  addEntries(listing.entries);
  draw();

  page.append(
    h("div", { class: "page-head" }, h("h1", {}, "Files"),
      h("div", { class: "actions" }, uploadButton, pickerLabel, picker, newFolder)),
    crumbs(dir),
    h("div", { class: "usage-line" }, usage.el),
    uploadsList,
    drop,
    h("div", { class: "card" }, h("div", { class: "table-wrap" }, table), emptyNote, more));
  if (!dir) page.append(await templatesCard(reload));
  holder.append(page);
  return () => {
    // Leaving the page cancels what has not finished, queued uploads
    // included (they would otherwise start unseen).
    for (const job of queue) job.cancelled = true;
    queue.length = 0;
    requests.forEach((xhr) => xhr.abort());
  };
}

/** The breadcrumb trail of `dir`: Workspace / a / b. */
export function crumbs(dir) {
  const parts = dir ? dir.split("/") : [];
  const items = [h("li", {}, parts.length
    ? h("a", { href: "#/files" }, "Workspace")
    : h("span", { "aria-current": "page" }, "Workspace"))];
  parts.forEach((part, index) => {
    const path = parts.slice(0, index + 1).join("/");
    const last = index === parts.length - 1;
    items.push(h("li", {}, last
      ? h("span", { "aria-current": "page" }, shown(part))
      : h("a", { href: `#/files/${encodePath(path)}` }, shown(part))));
  });
  return h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("ol", {}, items));
}

async function templatesCard(reload) {
  let templates;
  try {
    templates = await api("GET", "/templates");
  } catch (err) {
    return h("section", { class: "card" }, h("h2", {}, "Templates"), h("p", { class: "alert", role: "alert" }, describe(err)));
  }
  const list = templates.length
    ? h("ul", { class: "plain-list" }, templates.map((template) => {
      const clone = h("button", {
        type: "button", class: "small", "aria-label": `Clone ${template.name}`,
        onclick: async () => {
          const values = await dialog({
            title: `Clone ${template.name}`,
            fields: [{ name: "to", label: "Folder name", value: template.name, required: true }],
            confirm: "Clone",
            submit: async ({ to }) => {
              if (!to.trim()) throw new Error("Enter a folder name.");
              await api("POST", `/templates/${encodeURIComponent(template.name)}/clone`, { json: { to: to.trim() } });
            },
          });
          if (values) {
            toast(`Cloned ${template.name} into ${values.to.trim()}.`);
            await reload();
          }
        },
      }, "Clone");
      return h("li", { class: "app-row" },
        h("div", {}, h("strong", {}, template.name),
          template.description ? h("div", { class: "hint" }, template.description) : null),
        clone);
    }))
    : h("p", { class: "empty" }, "No templates on this server.");
  return h("section", { class: "card", "aria-labelledby": "h-templates" }, h("h2", { id: "h-templates" }, "Templates"), list);
}


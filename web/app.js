// The shell: who is signed in, the navigation, the theme, and the router.
// Each page is a module under pages/ exporting
//   render(main, ctx) -> optional cleanup function
// where ctx = { me, rest, query, refreshMe }. Routes are hashes
// (#/files/docs), so the server serves one page and the API stays apart.

import { api, h, whenSignedOut, toast, describe } from "./lib.js";

const pages = {
  "": { title: "Home", load: () => import("./pages/home.js") },
  files: { title: "Files", load: () => import("./pages/files.js"), nav: "files" },
  file: { title: "File", load: () => import("./pages/file.js"), nav: "files" },
  tasks: { title: "Tasks", load: () => import("./pages/tasks.js") },
  terminals: { title: "Terminals", load: () => import("./pages/terminals.js") },
  activity: { title: "Activity", load: () => import("./pages/activity.js") },
  account: { title: "Account", load: () => import("./pages/account.js") },
  admin: { title: "Administration", load: () => import("./pages/admin.js"), admin: true },
  login: { title: "Sign in", load: () => import("./pages/login.js"), public: true },
};

const navItems = [
  ["", "Home"],
  ["files", "Files"],
  ["tasks", "Tasks"],
  ["terminals", "Terminals"],
  ["activity", "Activity"],
  ["account", "Account"],
  ["admin", "Admin", true],
];

const main = document.getElementById("main");
const top = document.getElementById("top");
let me = null;
let cleanup = null;
let generation = 0;
let firstRoute = true;

/** `#/files/a%20b?x=1` → { name: "files", rest: "a b", query }. */
function parseHash() {
  const hash = location.hash.startsWith("#/") ? location.hash.slice(2) : "";
  const [path, search = ""] = hash.split("?");
  const slash = path.indexOf("/");
  const name = slash === -1 ? path : path.slice(0, slash);
  let rest = slash === -1 ? "" : path.slice(slash + 1);
  let parts;
  try {
    parts = rest.split("/").map(decodeURIComponent);
  } catch {
    return { name: "", rest: "", query: new URLSearchParams(), bad: true };
  }
  // "." and ".." would let a link make the page ask for another API path
  // than the one it names (browsers collapse them): never a page.
  if (parts.some((part) => part === "." || part === ".." || part.includes("/"))) {
    return { name: "", rest: "", query: new URLSearchParams(), bad: true };
  }
  rest = parts.join("/");
  return { name, rest, query: new URLSearchParams(search) };
}

function applyTheme(settings) {
  const theme = settings && settings.ui && settings.ui.theme;
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

async function loadMe() {
  try {
    me = await api("GET", "/me", { quiet401: true });
  } catch (err) {
    me = null;
    if (err.status !== 401) {
      // The server is down or failing: say so instead of a blank page.
      return err;
    }
  }
  if (me) {
    try {
      applyTheme(await api("GET", "/me/settings"));
    } catch {
      // The default theme is fine.
    }
  }
  return null;
}

function renderTop(current) {
  const brand = h("a", { class: "brand", href: "#/" }, h("img", { src: "/ui/favicon.svg", alt: "" }), "warren");
  if (!me) {
    top.replaceChildren(brand);
    return;
  }
  const links = navItems
    .filter(([, , adminOnly]) => !adminOnly || me.role === "admin")
    .map(([route, label]) =>
      h("li", {}, h("a", { href: `#/${route}`, "aria-current": route === current ? "page" : undefined }, label)));
  const signOut = h("button", { type: "button", class: "small", onclick: () => signOutNow(signOut) }, "Sign out");
  top.replaceChildren(
    brand,
    h("nav", { "aria-label": "Main" }, h("ul", {}, links)),
    h("div", { class: "who" }, h("span", {}, "Signed in as ", h("strong", {}, me.username)), signOut),
  );
}

async function signOutNow(button) {
  button.disabled = true;
  try {
    await api("POST", "/auth/logout", { quiet401: true });
  } catch (err) {
    // 401: the session had already ended. Anything else: it has not, and
    // saying "signed out" would leave a live session behind.
    if (err.status !== 401) {
      button.disabled = false;
      toast(`Could not sign out: ${describe(err)}`, "error");
      return;
    }
  }
  me = null;
  signOuts?.postMessage("signed-out");
  location.hash = "#/login";
  toast("You are signed out.");
}

// Other tabs of this browser share the cookie: when one signs out, they
// show the sign-in page too instead of the last user's data.
const signOuts = "BroadcastChannel" in window ? new BroadcastChannel("warren-session") : null;
signOuts?.addEventListener("message", () => {
  if (!me) return;
  me = null;
  history.replaceState(null, "", "#/login");
  route();
});

async function route() {
  const mine = ++generation;
  if (cleanup) {
    try {
      cleanup();
    } catch {
      // A page's cleanup failing must not stop the next page.
    }
    cleanup = null;
  }
  const { name, rest, query, bad } = parseHash();
  // Dialogs belong to the page that opened them.
  for (const open of document.querySelectorAll("dialog")) open.close();
  let page = bad ? undefined : pages[name];
  if (!page) {
    page = { title: "Not found", load: async () => ({ render: notFound }) };
  }
  if (!me && !page.public) {
    const back = location.hash && location.hash !== "#/login" ? location.hash : "";
    history.replaceState(null, "", "#/login" + (back ? "?next=" + encodeURIComponent(back) : ""));
    return route();
  }
  if (me && name === "login") {
    history.replaceState(null, "", "#/");
    return route();
  }
  if (page.admin && me.role !== "admin") {
    page = { title: "Not allowed", load: async () => ({ render: notAllowed }) };
  }
  renderTop(page.nav || name);
  document.title = `${page.title} · warren`;
  main.setAttribute("aria-busy", "true");
  let module;
  try {
    module = await page.load();
  } catch {
    if (mine !== generation) return;
    main.replaceChildren(h("h1", {}, "Could not load this page"),
      h("p", { class: "alert", role: "alert" }, "The page's code did not load. Reload to try again."));
    main.setAttribute("aria-busy", "false");
    return;
  }
  if (mine !== generation) return;
  const holder = document.createDocumentFragment();
  const ctx = {
    me,
    rest,
    query,
    setTitle: (title) => {
      document.title = `${title} · warren`;
    },
    isCurrent: () => mine === generation,
    refreshMe: async () => {
      await loadMe();
      renderTop(page.nav || name);
    },
    signedIn: async (user) => {
      me = user;
      await loadMe();
    },
    applyTheme,
  };
  try {
    const result = await module.render(holder, ctx);
    if (mine !== generation) {
      if (typeof result === "function") result();
      return;
    }
    cleanup = typeof result === "function" ? result : null;
    main.replaceChildren(holder);
  } catch (err) {
    if (mine !== generation) return;
    main.replaceChildren(h("h1", {}, page.title),
      h("p", { class: "alert", role: "alert" }, err && err.message ? err.message : String(err)));
  }
  main.setAttribute("aria-busy", "false");
  // After a navigation (not the first load), take focus to the new page so
  // keyboard and screen-reader users start at its heading.
  if (!firstRoute) {
    const heading = main.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: false });
    } else {
      main.focus();
    }
  }
  firstRoute = false;
}

function notFound(holder) {
  holder.append(h("h1", {}, "Not found"), h("p", {}, "There is no page here. ", h("a", { href: "#/" }, "Go home"), "."));
}

function notAllowed(holder) {
  holder.append(h("h1", {}, "Not allowed"), h("p", {}, "This page is for administrators."));
}

whenSignedOut(() => {
  if (!me) return;
  me = null;
  toast("Your session ended. Sign in again.", "error");
  route();
});

document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

// A table that scrolls sideways (phone width) must be reachable by the
// keyboard: every .table-wrap is a focusable region named by its table's
// caption, whenever a page adds one.
function labelScrollRegions(root) {
  for (const wrap of root.querySelectorAll(".table-wrap:not([tabindex])")) {
    const caption = wrap.querySelector("caption");
    wrap.setAttribute("tabindex", "0");
    wrap.setAttribute("role", "region");
    wrap.setAttribute("aria-label", caption ? `${caption.textContent} (table)` : "Table");
  }
}
new MutationObserver(() => labelScrollRegions(main)).observe(main, { childList: true, subtree: true });

window.addEventListener("hashchange", route);

(async () => {
  const failure = await loadMe();
  if (failure) {
    main.replaceChildren(h("h1", {}, "warren is not answering"),
      h("p", { class: "alert", role: "alert" }, failure.message),
      h("button", { type: "button", onclick: () => location.reload() }, "Try again"));
    main.setAttribute("aria-busy", "false");
    return;
  }
  route();
})();

// Browser tests of warren's web UI: playwright-core driving Debian's
// chromium, against a running warren. Run by tests/tests/ui.rs; by hand:
//
//   tests/ui/install.sh
//   WARREN_URL=http://127.0.0.1:8080 WARREN_ADMIN_USER=admin WARREN_ADMIN_PASSWORD=... \
//   NODE_PATH=$PWD/target/ui-node/node_modules node tests/ui/browser.mjs
//
// Environment:
//   WARREN_URL              the server (required)
//   WARREN_ADMIN_USER       an administrator's name and password (required)
//   WARREN_ADMIN_PASSWORD
//   NODE_PATH               where playwright-core and axe-core are (target/ui-node/node_modules)
//   WARREN_SCREENSHOTS      where screenshots go (default target/ui-screenshots)
//   WARREN_UI_SANDBOX=0     skip the flows that run users' processes (terminal, task, app)
//   WARREN_UI_APP           the app to start and open from Home (skipped when empty)
//   WARREN_UI_APP_TITLE     its title (the UI may name it by either)
//   WARREN_UI_TEMPLATE      a shared template holding README.md, to clone from Files
//   WARREN_UI_KEEP_GOING=1  after a failure, go on with the next flow and list every
//                           failure at the end (default: stop at the first)
//   WARREN_UI_ONLY=a,b      run only these flows (after "login"; for working on a page)
//   WARREN_UI_HEADED=1      show the browser (needs a display)
//
// Pages and controls are found the way the UI's contract (web/CONTRACT.md) names
// them: by role and accessible name. Each flow prints one line per step; the
// first failure prints what was expected, what the page holds (its ARIA tree),
// saves FAILED-<flow>.png beside the screenshots and exits 1.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';

// ES modules ignore NODE_PATH: resolve the packages through a CommonJS require,
// which honours it.
const require = createRequire(import.meta.url);
let chromium;
let axeSource;
try {
  ({ chromium } = require('playwright-core'));
  axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
} catch (err) {
  console.error(`FAILED: cannot load playwright-core / axe-core (${err.message}); run tests/ui/install.sh and set NODE_PATH=target/ui-node/node_modules`);
  process.exit(1);
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.WARREN_URL || '').replace(/\/+$/, '');
const ADMIN = process.env.WARREN_ADMIN_USER || 'admin';
const ADMIN_PASSWORD = process.env.WARREN_ADMIN_PASSWORD || '';
const SHOTS = path.resolve(process.env.WARREN_SCREENSHOTS || path.join(HERE, '../../target/ui-screenshots'));
const SANDBOX = process.env.WARREN_UI_SANDBOX !== '0';
const APP = process.env.WARREN_UI_APP || '';
const APP_TITLE = process.env.WARREN_UI_APP_TITLE || APP;
const TEMPLATE = process.env.WARREN_UI_TEMPLATE || '';
const KEEP_GOING = process.env.WARREN_UI_KEEP_GOING === '1';
const HEADED = process.env.WARREN_UI_HEADED === '1';
const ONLY = (process.env.WARREN_UI_ONLY || '').split(',').map((s) => s.trim()).filter(Boolean);
if (!BASE || !ADMIN_PASSWORD) {
  console.error('FAILED: WARREN_URL and WARREN_ADMIN_PASSWORD must be set');
  process.exit(1);
}
fs.mkdirSync(SHOTS, { recursive: true });
for (const stale of fs.readdirSync(SHOTS).filter((f) => /^FAILED-.*\.png$/.test(f))) fs.rmSync(path.join(SHOTS, stale));

// The flags Debian's chromium needs here: no sandbox (root), and nothing that
// reaches for the network (which is closed: those connections are refused).
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const SIZES = [[1280, 800], [360, 740]];
const SCHEMES = ['light', 'dark'];
/** A page must be usable this soon after navigation (issue 13). */
const USABLE_MS = 1000;
/** The most cumulative layout shift a page load may have ("good" in Core Web Vitals). */
const MAX_LAYOUT_SHIFT = 0.1;
/** How long to wait for something the UI should show. */
const PATIENCE = 10_000;
const USER_B = 'uitest-bob';
const USER_B_PASSWORD = 'uitest-bob-password-1';

// ---- reporting -------------------------------------------------------------------

const started = Date.now();
const failures = [];
const warnings = [];
const timings = [];
const shifts = [];
const axeRuns = [];
let currentFlow = '';
let currentStep = '';
/** The page a failure is reported on. */
let activePage = null;

const log = (line) => console.log(line);
const secs = () => ((Date.now() - started) / 1000).toFixed(1).padStart(5);

class Expected extends Error {}
/** Fails the current step with `message` (what the contract asks, what was found). */
function fail(message) {
  throw new Expected(message);
}
function warn(message) {
  warnings.push(`${currentFlow}: ${message}`);
  log(`  WARN ${message}`);
}

async function step(name, fn) {
  currentStep = name;
  const t0 = Date.now();
  const result = await fn();
  await checkPageErrors();
  log(`${secs()}s  ok  ${currentFlow}: ${name} (${Date.now() - t0} ms)`);
  return result;
}

/** Runs one flow; a failure ends it (and the run, unless KEEP_GOING). */
async function flow(name, fn, { skip = '' } = {}) {
  if (ONLY.length && name !== 'login' && !ONLY.includes(name)) return;
  currentFlow = name;
  currentStep = '';
  log(`\n== ${name}`);
  if (skip) {
    warn(`*** SKIPPED: ${skip}`);
    return;
  }
  try {
    await fn();
  } catch (err) {
    await failed(name, err);
  }
}

/** Records a failure of the current step; ends the run unless KEEP_GOING. */
async function failed(name, err) {
  let message = err instanceof Expected ? err.message : `${err.name}: ${err.message.split('\n').slice(0, 8).join('\n    ')}`;
  const errors = pageErrors.splice(0);
  if (errors.length) message += `\n    the page also reported:\n      ${errors.join('\n      ')}`;
  failures.push({ flow: name, step: currentStep, message });
  log(`${secs()}s  FAILED  ${name}: ${currentStep}\n    ${message}`);
  await diagnose(name);
  if (!KEEP_GOING) await finish();
}

/** Runs `fn`; with KEEP_GOING a failure is recorded and the flow goes on (for independent checks). */
async function independently(fn) {
  try {
    await fn();
  } catch (err) {
    if (!KEEP_GOING) throw err;
    await failed(currentFlow, err);
  }
}

/** What the page held when a step failed: URL, busy state, ARIA tree, screenshot. */
async function diagnose(name) {
  const page = activePage;
  if (!page || page.isClosed()) return;
  try {
    const state = await page.evaluate(() => ({
      url: location.href,
      title: document.title,
      busy: document.querySelector('main')?.getAttribute('aria-busy') ?? '(no <main>)',
    }));
    log(`    page: ${state.url}  title: ${JSON.stringify(state.title)}  main aria-busy: ${state.busy}`);
    const tree = await page.locator('body').ariaSnapshot({ timeout: 3000 });
    const lines = tree.split('\n');
    log(`    ARIA tree of the page${lines.length > 80 ? ' (first 80 lines)' : ''}:`);
    for (const line of lines.slice(0, 80)) log(`      ${line}`);
    const file = path.join(SHOTS, `FAILED-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    log(`    screenshot: ${file}`);
  } catch (err) {
    log(`    (could not describe the page: ${err.message.split('\n')[0]})`);
  }
}

let browser = null;
let evilServer = null;
async function finish() {
  log('\n== summary');
  if (timings.length) {
    const worst = [...timings].sort((a, b) => b.ms - a.ms);
    log(`page loads (navigation to main[aria-busy="false"]): worst ${worst[0].ms} ms (${worst[0].name}); ` +
      worst.map((t) => `${t.name} ${t.ms}`).join(', '));
  }
  log(`axe-core runs: ${axeRuns.length}, serious or critical violations: ${axeRuns.reduce((n, r) => n + r.bad, 0)}`);
  log(`screenshots: ${SHOTS}`);
  for (const w of warnings) log(`WARN ${w}`);
  if (failures.length) {
    log(`\n${failures.length} FAILED:`);
    for (const f of failures) log(`  ${f.flow}: ${f.step}\n    ${f.message}`);
  } else {
    log(`\nall flows passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  try { await browser?.close(); } catch { /* already gone */ }
  evilServer?.close();
  process.exit(failures.length ? 1 : 0);
}

// ---- pages -------------------------------------------------------------------------

const pageErrors = [];
/** A page of `context` whose script errors and CSP violations fail the step they happen in. */
async function newPage(context) {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`uncaught in the page: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (/Content Security Policy|Refused to (execute|load|apply|evaluate|connect|frame)/i.test(text)) {
      pageErrors.push(`CSP violation: ${text}`);
    }
  });
  activePage = page;
  return page;
}
async function checkPageErrors() {
  if (pageErrors.length) {
    const errors = pageErrors.splice(0);
    fail(`the page reported errors:\n      ${errors.join('\n      ')}`);
  }
}

/**
 * Evaluates `fn(arg)` in the page every 25 ms until it returns something
 * truthy (or an object without `ok: false`). An answer with `settled: true`
 * (the page shows an error and is done loading) that lasts 2 s fails at once
 * rather than after the whole timeout.
 */
async function poll(page, fn, arg, timeout, what) {
  const deadline = Date.now() + timeout;
  let last;
  let settledSince = null;
  for (;;) {
    try {
      last = await page.evaluate(fn, arg);
    } catch (err) {
      // A navigation in progress destroys the context: try again.
      if (!/context was destroyed|navigat/i.test(err.message)) throw err;
      last = undefined;
    }
    if (last && last.ok !== false) return last;
    settledSince = last?.settled ? (settledSince ?? Date.now()) : null;
    if (settledSince !== null && Date.now() - settledSince > 2000) fail(`${what} (the page settled on something else: ${last.why})`);
    if (Date.now() > deadline) fail(`${what} (not within ${timeout} ms${last?.why ? `: ${last.why}` : ''})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Waits until <main> says aria-busy="false" and its <h1> reads `h1` (any h1 when null). */
async function usable(page, h1, timeout = PATIENCE) {
  return poll(page, (want) => {
    const main = document.querySelector('main#main');
    if (!main) return { ok: false, why: 'no <main id="main">' };
    const busy = main.getAttribute('aria-busy');
    const heading = main.querySelector('h1');
    const text = heading ? heading.textContent.trim() : null;
    if (busy !== 'false') return { ok: false, why: `main aria-busy=${JSON.stringify(busy)}, h1 ${JSON.stringify(text)}` };
    if (want !== null && text !== want) {
      const alert = main.querySelector('[role="alert"]')?.textContent.trim();
      return { ok: false, why: `h1 is ${JSON.stringify(text)}${alert ? `, alert: ${JSON.stringify(alert)}` : ''}`, settled: Boolean(alert) };
    }
    return { ok: true, h1: text };
  }, h1, timeout, `page "${h1 ?? 'any'}" usable: main[aria-busy="false"] with h1 ${JSON.stringify(h1)}`);
}

/**
 * Loads `route` (e.g. "#/files/") afresh and waits until it is usable; the
 * time from navigation to main[aria-busy="false"] counts against USABLE_MS.
 */
async function load(page, route, h1, name) {
  await page.goto('about:blank');
  const t0 = Date.now();
  const response = await page.goto(`${BASE}/${route}`, { waitUntil: 'commit' });
  if (!response || response.status() !== 200) fail(`GET /${route}: HTTP ${response?.status()}`);
  await usable(page, h1);
  const ms = Date.now() - t0;
  timings.push({ name, ms });
  const title = await page.title();
  if (!/ · warren$/.test(title)) fail(`document.title is ${JSON.stringify(title)}; the contract says "<Page> · warren"`);
  if (ms > USABLE_MS) log(`  SLOW ${name}: usable after ${ms} ms (limit ${USABLE_MS})`);
  // No layout jump on load: the cumulative layout shift of the load, as
  // the browser measures it (Core Web Vitals call under 0.1 good).
  const shift = await page.evaluate(() => new Promise((resolve) => {
    let total = 0;
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) if (!entry.hadRecentInput) total += entry.value;
    }).observe({ type: 'layout-shift', buffered: true });
    setTimeout(() => resolve(total), 100);
  }));
  shifts.push({ name, shift });
  if (shift >= MAX_LAYOUT_SHIFT) fail(`${name}: the page jumped while loading (cumulative layout shift ${shift.toFixed(3)}, limit ${MAX_LAYOUT_SHIFT})`);
  return response;
}

async function settle(page) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await page.waitForTimeout(150);
}

/** axe-core on the page: serious or critical violations fail the step. */
async function axe(page, where) {
  // Evaluated rather than added as a <script>: the UI's Content-Security-Policy
  // (rightly) refuses inline scripts, and bypassing CSP would hide the UI's own
  // violations from these tests.
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  axeRuns.push({ where, bad: bad.length });
  const minor = result.violations.filter((v) => !bad.includes(v));
  for (const v of minor) warn(`axe (${v.impact}) on ${where}: ${v.id}: ${v.help} (${v.nodes.length} elements)`);
  if (bad.length) {
    fail(`axe-core: ${bad.length} serious/critical accessibility violation(s) on ${where}:\n` + bad.map((v) =>
      `      [${v.impact}] ${v.id}: ${v.help} (${v.helpUrl})\n` +
      v.nodes.slice(0, 5).map((n) => `        ${n.target.join(' ')}: ${(n.failureSummary || '').replace(/\s+/g, ' ').slice(0, 240)}`).join('\n'),
    ).join('\n'));
  }
}

/**
 * Screenshots of the page at 1280×800 and 360×740, light and dark, to
 * SHOTS/<name>-<width>-<scheme>.png, with axe-core in each; warns when the
 * page scrolls sideways at phone width.
 */
async function capture(page, name) {
  for (const [width, height] of SIZES) {
    for (const scheme of SCHEMES) {
      await page.setViewportSize({ width, height });
      await page.emulateMedia({ colorScheme: scheme, reducedMotion: 'reduce' });
      await settle(page);
      await page.screenshot({ path: path.join(SHOTS, `${name}-${width}-${scheme}.png`) });
      await axe(page, `${name} at ${width}px, ${scheme}`);
      if (scheme === 'light') {
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        if (overflow > 1) warn(`${name} scrolls sideways at ${width}px (${overflow}px wider than the window)`);
      }
    }
  }
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.emulateMedia({ colorScheme: 'light', reducedMotion: 'reduce' });
}

/** Waits for `locator` to be visible; fails naming `what` (as the contract says it). */
async function visible(locator, what, timeout = PATIENCE) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout });
  } catch (err) {
    fail(`${what}: not visible within ${timeout} ms (${err.message.split('\n')[0]})`);
  }
  return locator.first();
}
async function hidden(locator, what, timeout = PATIENCE) {
  try {
    await locator.first().waitFor({ state: 'hidden', timeout });
  } catch (err) {
    fail(`${what}: still visible after ${timeout} ms`);
  }
}
const exact = (name) => ({ name, exact: true });
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const main = (page) => page.locator('main#main');

// ---- the API, beside the UI ----------------------------------------------------------

/** A request with the page's cookies (and our own Origin, as the UI's requests have). */
async function api(page, method, route, { data, headers = {} } = {}) {
  const response = await page.request.fetch(`${BASE}/api/v1/${route}`, {
    method,
    data,
    headers: { origin: BASE, ...headers },
    failOnStatusCode: false,
  });
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: response.status(), text, json, headers: response.headers() };
}
async function loginApi(context, username, password) {
  const response = await context.request.post(`${BASE}/api/v1/auth/login`, {
    data: { username, password }, headers: { origin: BASE }, failOnStatusCode: false,
  });
  if (response.status() !== 200) fail(`API login as ${username}: HTTP ${response.status()} ${await response.text()}`);
}
async function signedIn(page) {
  return (await api(page, 'GET', 'me')).status === 200;
}

// ---- flows ------------------------------------------------------------------------------

async function signIn(page, username, password) {
  await visible(page.getByRole('heading', { level: 1, name: 'Sign in to warren' }), 'h1 "Sign in to warren"');
  await page.getByLabel('Username', { exact: true }).fill(username);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', exact('Sign in')).click();
  await usable(page, 'Home');
}

/** Checks the Main navigation: its links, Admin only for administrators, Sign out, the current link. */
async function checkNav(page, current, admin) {
  const nav = page.getByRole('navigation', exact('Main'));
  await visible(nav, '<nav aria-label="Main">');
  for (const name of ['Home', 'Files', 'Tasks', 'Terminals', 'Activity', 'Account']) {
    await visible(nav.getByRole('link', exact(name)), `Main navigation link "${name}"`);
  }
  const adminLinks = await nav.getByRole('link', exact('Admin')).count();
  if (admin && adminLinks !== 1) fail('Main navigation: no link "Admin" for an administrator');
  if (!admin && adminLinks !== 0) fail('Main navigation: a link "Admin" shown to a user who is not an administrator');
  await visible(page.getByRole('button', exact('Sign out')), 'button "Sign out"');
  if (current) {
    const value = await nav.getByRole('link', exact(current)).getAttribute('aria-current');
    if (value !== 'page') fail(`Main navigation: link "${current}" has aria-current=${JSON.stringify(value)}, want "page"`);
  }
}

async function goByNav(page, link, h1) {
  await page.getByRole('navigation', exact('Main')).getByRole('link', exact(link)).click();
  await usable(page, h1);
}

async function usageText(page) {
  const usage = page.locator('#usage-text');
  await visible(usage, '#usage-text (storage used)');
  return (await usage.textContent()).trim();
}

/** Records, from now on, the accessible names of <progress> elements the page shows. */
async function recordProgress(page) {
  await page.evaluate(() => {
    const seen = (window.__uiTestProgress = new Set());
    const nameOf = (el) => {
      if (el.getAttribute('aria-label')) return el.getAttribute('aria-label');
      const by = el.getAttribute('aria-labelledby');
      if (by) return by.split(/\s+/).map((id) => document.getElementById(id)?.textContent || '').join(' ');
      return el.labels?.[0]?.textContent || '';
    };
    const scan = () => document.querySelectorAll('progress').forEach((el) => seen.add(nameOf(el).trim().replace(/\s+/g, ' ')));
    new MutationObserver(scan).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
    scan();
  });
}

async function main_() {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: HEADED ? CHROMIUM_ARGS.filter((arg) => arg !== '--headless') : CHROMIUM_ARGS,
    headless: !HEADED,
  });
  log(`chromium ${browser.version()}, warren at ${BASE}, screenshots to ${SHOTS}`);
  const contextOptions = { viewport: { width: 1280, height: 800 }, colorScheme: 'light', reducedMotion: 'reduce' };
  const admin = await browser.newContext(contextOptions);
  let page = await newPage(admin);
  const files = { text: 'notes.txt', binary: 'data.bin', renamed: 'renamed.bin' };
  const probe = 'private-to-admin.txt';

  // Every later flow starts signed in, through the API if this one failed.
  const ensureSignedIn = async () => {
    activePage = page;
    if (!(await signedIn(page))) await loginApi(admin, ADMIN, ADMIN_PASSWORD);
  };

  await flow('login', async () => {
    const response = await step('GET / without a session shows "Sign in to warren"', () => load(page, '', 'Sign in to warren', 'login'));
    await step('Content-Security-Policy forbids inline script and eval', async () => {
      const csp = response.headers()['content-security-policy'];
      if (!csp) fail('GET / has no Content-Security-Policy header');
      const scriptSrc = (csp.split(';').map((d) => d.trim()).find((d) => d.startsWith('script-src')) ||
        csp.split(';').map((d) => d.trim()).find((d) => d.startsWith('default-src')) || '');
      if (!scriptSrc) fail(`Content-Security-Policy has neither script-src nor default-src: ${csp}`);
      if (/'unsafe-inline'|'unsafe-eval'|\*/.test(scriptSrc)) fail(`Content-Security-Policy allows too much: ${scriptSrc}`);
    });
    await step('screenshots and axe', () => capture(page, 'login'));
    await step('a wrong password shows an error in words (role=alert)', async () => {
      await page.getByLabel('Username', { exact: true }).fill(ADMIN);
      await page.getByLabel('Password', { exact: true }).fill('not-the-password');
      await page.getByRole('button', exact('Sign in')).click();
      const alert = await visible(page.getByRole('alert').filter({ hasText: /\S/ }), 'role=alert after a wrong password');
      const text = (await alert.textContent()).trim();
      if (text.startsWith('{')) fail(`the login error is raw JSON: ${text}`);
    });
    await step(`sign in as ${ADMIN} → Home`, () => signIn(page, ADMIN, ADMIN_PASSWORD));
  });

  await flow('home', async () => {
    await ensureSignedIn();
    await step('load #/ → h1 "Home"', () => load(page, '#/', 'Home', 'home'));
    await step('Main navigation (Admin for an administrator, Home current)', () => checkNav(page, 'Home', true));
    await step('sections Storage, Apps, Recent tasks, Terminals', async () => {
      for (const name of ['Storage', 'Apps', 'Recent tasks', 'Terminals']) {
        await visible(page.getByRole('heading', { level: 2, ...exact(name) }), `h2 "${name}"`);
      }
    });
    await step('Storage: meter "Storage used" and #usage-text', async () => {
      await visible(page.getByRole('meter', exact('Storage used')), '<meter> labelled "Storage used"');
      const text = await usageText(page);
      if (!/used/.test(text)) fail(`#usage-text is ${JSON.stringify(text)}, like "12 KiB of 1 GiB used · 3 of 100000 files"`);
    });
    await step('screenshots and axe', () => capture(page, 'home'));
  });

  await flow('files', async () => {
    await ensureSignedIn();
    await step('Files from the navigation → h1 "Files"', async () => {
      if (!(await page.getByRole('navigation', exact('Main')).count())) await load(page, '#/', 'Home', 'home');
      await goByNav(page, 'Files', 'Files');
    });
    await step('breadcrumbs, "Upload files", "New folder", table "Contents of Workspace"', async () => {
      await visible(page.getByRole('navigation', exact('Breadcrumb')), '<nav aria-label="Breadcrumb">');
      await visible(page.getByRole('button', exact('Upload files')), 'button "Upload files"');
      await visible(page.getByRole('button', exact('New folder')), 'button "New folder"');
      await visible(page.getByRole('table', exact('Contents of Workspace')), '<table> with caption "Contents of Workspace"');
    });
    const before = await step('storage usage before uploading', () => usageText(page));
    log(`      usage before: ${before}`);
    await step(`upload ${files.text} and ${files.binary} (2 MiB) with per-file progress`, async () => {
      await recordProgress(page);
      // Slow uploads down, as over a real network, so progress is there to see.
      const cdp = await admin.newCDPSession(page);
      await cdp.send('Network.enable');
      await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 20, downloadThroughput: -1, uploadThroughput: 1024 * 1024 });
      try {
        await page.getByLabel('Choose files to upload', { exact: true }).setInputFiles([
          { name: files.text, mimeType: 'text/plain', buffer: Buffer.from('written by the browser test\n') },
          { name: files.binary, mimeType: 'application/octet-stream', buffer: crypto.randomBytes(2 * 1024 * 1024) },
        ]);
        await visible(page.getByRole('list', exact('Uploads')), '<ul aria-label="Uploads">');
        await visible(page.getByRole('progressbar', exact(`Upload of ${files.binary}`)), `<progress> labelled "Upload of ${files.binary}" while it uploads`);
        await visible(page.getByRole('button', exact(`Cancel upload of ${files.binary}`)), `button "Cancel upload of ${files.binary}" while it uploads`);
        for (const name of [files.text, files.binary]) {
          await visible(page.getByRole('list', exact('Uploads')).getByText(`${name} uploaded`), `upload item saying "${name} uploaded"`, 30_000);
        }
      } finally {
        await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
        await cdp.detach();
      }
      const seen = await page.evaluate(() => [...window.__uiTestProgress]);
      for (const name of [files.text, files.binary]) {
        if (!seen.includes(`Upload of ${name}`)) fail(`no <progress> labelled "Upload of ${name}" was shown (progress bars seen: ${JSON.stringify(seen)})`);
      }
    });
    await step('both files are listed, and stored', async () => {
      const table = page.getByRole('table', exact('Contents of Workspace'));
      for (const name of [files.text, files.binary]) {
        await visible(table.getByRole('link', exact(name)), `link "${name}" in the table`);
      }
      await visible(page.getByRole('link', exact(`Download ${files.binary}`)), `link "Download ${files.binary}"`);
      const stored = await api(page, 'GET', `files/${files.binary}`);
      if (stored.status !== 200) fail(`GET /api/v1/files/${files.binary}: HTTP ${stored.status}`);
    });
    await step('the storage usage text changes', async () => {
      const after = await poll(page, (was) => {
        const text = document.querySelector('#usage-text')?.textContent.trim();
        return text && text !== was ? { ok: true, text } : { ok: false, why: `still ${JSON.stringify(text)}` };
      }, before, PATIENCE, '#usage-text changes after the uploads');
      log(`      usage after: ${after.text}`);
    });
    await step(`rename ${files.binary} → ${files.renamed} (dialog "New name", "Rename")`, async () => {
      await page.getByRole('button', exact(`Rename ${files.binary}`)).click();
      const dialog = await visible(page.getByRole('dialog'), 'the rename dialog (<dialog>)');
      await visible(dialog.getByRole('heading'), 'a heading in the rename dialog');
      await visible(dialog.getByRole('button', exact('Cancel')), 'button "Cancel" in the rename dialog');
      await dialog.getByLabel('New name', { exact: true }).fill(files.renamed);
      await dialog.getByRole('button', exact('Rename')).click();
      const table = page.getByRole('table', exact('Contents of Workspace'));
      await visible(table.getByRole('link', exact(files.renamed)), `link "${files.renamed}" after renaming`);
      await hidden(table.getByRole('link', exact(files.binary)), `link "${files.binary}" after renaming`);
      const moved = await api(page, 'GET', `files/${files.renamed}`);
      const gone = await api(page, 'GET', `files/${files.binary}`);
      if (moved.status !== 200 || gone.status !== 404) fail(`after the rename the API says ${files.renamed}: ${moved.status}, ${files.binary}: ${gone.status}`);
    });
    const textarea = () => page.getByLabel(`Contents of ${files.text}`, { exact: true });
    await step(`open ${files.text} → h1 "${files.text}", its text in "Contents of ${files.text}"`, async () => {
      await page.getByRole('table', exact('Contents of Workspace')).getByRole('link', exact(files.text)).click();
      await usable(page, files.text);
      await visible(textarea(), `<textarea> labelled "Contents of ${files.text}"`);
      const value = await textarea().inputValue();
      if (value !== 'written by the browser test\n') fail(`the textarea holds ${JSON.stringify(value)}`);
      await visible(page.getByRole('link', exact(`Download ${files.text}`)), `link "Download ${files.text}"`);
    });
    await step(`edit and Save → toast "Saved ${files.text}"`, async () => {
      await textarea().fill('edited in the browser\n');
      await page.getByRole('button', exact('Save')).click();
      await visible(page.locator('#toasts .toast').filter({ hasText: `Saved ${files.text}` }), `a toast "Saved ${files.text}" in #toasts`);
      const role = await page.locator('#toasts').getAttribute('role');
      if (role !== 'status') fail(`#toasts has role=${JSON.stringify(role)}, want "status"`);
      const stored = await api(page, 'GET', `files/${files.text}`);
      if (stored.text !== 'edited in the browser\n') fail(`after Save the file holds ${JSON.stringify(stored.text)}`);
    });
    await step('a change made elsewhere, then Save → alert "changed since you opened it"', async () => {
      const put = await api(page, 'PUT', `files/${files.text}`, { data: 'changed elsewhere\n' });
      if (put.status >= 300) fail(`PUT through the API: HTTP ${put.status} ${put.text}`);
      await textarea().fill('my conflicting edit\n');
      await page.getByRole('button', exact('Save')).click();
      const alert = await visible(page.getByRole('alert').filter({ hasText: 'changed since you opened it' }), 'role=alert containing "changed since you opened it"');
      await visible(alert.getByRole('button', exact('Reload')), 'button "Reload" in the conflict alert');
      await visible(alert.getByRole('button', exact('Overwrite')), 'button "Overwrite" in the conflict alert');
      const stored = await api(page, 'GET', `files/${files.text}`);
      if (stored.text !== 'changed elsewhere\n') fail(`the conflicting Save overwrote the file: it holds ${JSON.stringify(stored.text)}`);
    });
    await step('"Reload" shows the file as it now is', async () => {
      await page.getByRole('alert').filter({ hasText: 'changed since you opened it' }).getByRole('button', exact('Reload')).click();
      const deadline = Date.now() + PATIENCE;
      while ((await textarea().inputValue()) !== 'changed elsewhere\n') {
        if (Date.now() > deadline) fail(`after "Reload" the textarea holds ${JSON.stringify(await textarea().inputValue())}`);
        await page.waitForTimeout(50);
      }
    });
    await step(`screenshots and axe: #/file/${files.text}`, async () => {
      await load(page, `#/file/${files.text}`, files.text, 'file');
      await capture(page, 'file');
    });
    await step('screenshots and axe: #/files/', async () => {
      await load(page, '#/files/', 'Files', 'files');
      await capture(page, 'files');
    });
    await step('"New folder" → dialog "Folder name", "Create"', async () => {
      await page.getByRole('button', exact('New folder')).click();
      const dialog = await visible(page.getByRole('dialog'), 'the new folder dialog');
      await dialog.getByLabel('Folder name', { exact: true }).fill('made-by-ui');
      await dialog.getByRole('button', exact('Create')).click();
      await visible(page.getByRole('table', exact('Contents of Workspace')).getByRole('link', exact('made-by-ui')), 'link "made-by-ui" after creating it');
    });
    await step('"Delete made-by-ui" asks first (dialog, "Delete"), then deletes', async () => {
      await page.getByRole('button', exact('Delete made-by-ui')).click();
      const dialog = await visible(page.getByRole('dialog'), 'the delete confirmation dialog');
      if ((await api(page, 'GET', 'files/made-by-ui')).status !== 200) fail('the folder was deleted before the confirmation');
      await dialog.getByRole('button', exact('Delete')).click();
      await hidden(page.getByRole('table', exact('Contents of Workspace')).getByRole('link', exact('made-by-ui')), 'link "made-by-ui" after deleting it');
      const gone = await api(page, 'GET', 'files/made-by-ui');
      if (gone.status !== 404) fail(`after Delete the API says made-by-ui: HTTP ${gone.status}`);
    });
    await step('an image previews as <img alt=NAME>', async () => {
      const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==', 'base64');
      const put = await api(page, 'PUT', 'files/pixel.png', { data: png, headers: { 'content-type': 'image/png' } });
      if (put.status >= 300) fail(`PUT pixel.png: HTTP ${put.status}`);
      await load(page, '#/file/pixel.png', 'pixel.png', 'image');
      await visible(main(page).getByRole('img', exact('pixel.png')), '<img alt="pixel.png">');
    });
    if (TEMPLATE) {
      await step(`Templates: "Clone ${TEMPLATE}" → dialog "Folder name", "Clone"`, async () => {
        await load(page, '#/files/', 'Files', 'files');
        await visible(page.getByRole('heading', { level: 2, ...exact('Templates') }), 'h2 "Templates"');
        await page.getByRole('button', exact(`Clone ${TEMPLATE}`)).click();
        const dialog = await visible(page.getByRole('dialog'), 'the clone dialog');
        await dialog.getByLabel('Folder name', { exact: true }).fill('from-template');
        await dialog.getByRole('button', exact('Clone')).click();
        await visible(page.getByRole('table', exact('Contents of Workspace')).getByRole('link', exact('from-template')), 'link "from-template" after cloning');
        const cloned = await api(page, 'GET', 'files/from-template/README.md');
        if (cloned.status !== 200) fail(`after "Clone" the API says from-template/README.md: HTTP ${cloned.status}`);
      });
    }
  });

  await flow('csrf', async () => {
    await ensureSignedIn();
    const evil = await step('a page on another origin POSTs to the API (fetch with credentials, a form, a multipart upload)', async () => {
      evilServer = http.createServer((req, res) => {
        res.setHeader('content-type', 'text/html; charset=utf-8');
        res.end(`<!doctype html><html lang="en"><head><title>not warren</title></head><body>
<form id="form" method="POST" action="${BASE}/api/v1/files/pwned-form?op=mkdir" target="sink"></form>
<iframe name="sink" title="sink"></iframe>
<script>
const done = [];
const report = (what) => { done.push(what); if (done.length === 3) document.title = 'done: ' + done.join(', '); };
fetch(${JSON.stringify(BASE)} + '/api/v1/files/pwned?op=mkdir', { method: 'POST', credentials: 'include', mode: 'no-cors' })
  .then(() => report('fetch'), (e) => report('fetch failed ' + e));
const body = new FormData();
body.append('file', new File(['pwned'], 'pwned-upload.txt', { type: 'text/plain' }));
fetch(${JSON.stringify(BASE)} + '/api/v1/upload', { method: 'POST', body, credentials: 'include', mode: 'no-cors' })
  .then(() => report('upload'), (e) => report('upload failed ' + e));
document.querySelector('iframe').addEventListener('load', () => report('form'), { once: true });
document.getElementById('form').submit();
</script></body></html>`);
      });
      await new Promise((resolve) => evilServer.listen(0, '127.0.0.1', resolve));
      const origin = `http://127.0.0.1:${evilServer.address().port}`;
      const evilPage = await admin.newPage();
      const seen = [];
      evilPage.on('response', (response) => {
        if (response.url().startsWith(BASE)) seen.push({ url: response.url().slice(BASE.length), status: response.status() });
      });
      await evilPage.goto(`${origin}/`);
      await evilPage.waitForFunction(() => document.title.startsWith('done'), null, { timeout: PATIENCE })
        .catch(() => fail('the other origin\'s page did not finish its requests'));
      await evilPage.waitForTimeout(200);
      await evilPage.close();
      return { origin, seen };
    });
    // 403: the session cookie came along and warren's Origin check refused it;
    // 401 would mean the browser did not send the cookie at all.
    log(`      from ${evil.origin}: ${evil.seen.map((s) => `${s.url} → ${s.status}`).join('; ')}`);
    await step('nothing was created, and each attempt was refused', async () => {
      for (const name of ['pwned', 'pwned-form', 'pwned-upload.txt']) {
        const { status } = await api(page, 'GET', `files/${name}`);
        if (status !== 404) fail(`CSRF: "${name}" exists after the cross-origin attempt (GET → HTTP ${status})`);
      }
      for (const s of evil.seen) {
        if (s.status < 400) fail(`CSRF: the cross-origin request ${s.url} was answered HTTP ${s.status}`);
      }
      if (evil.seen.length < 3) warn(`only ${evil.seen.length} of the 3 cross-origin requests were seen answered`);
      if (!evil.seen.some((s) => s.status === 403)) warn('no cross-origin attempt was refused by the Origin check (403): the browser kept the cookie back, so warren\'s own defence went untested');
    });
  });

  await flow('admin', async () => {
    await ensureSignedIn();
    await step('Admin from the navigation → h1 "Administration"', async () => {
      if (!(await page.getByRole('navigation', exact('Main')).count())) await load(page, '#/', 'Home', 'home');
      await goByNav(page, 'Admin', 'Administration');
    });
    const tabs = await step('nav "Administration": Users, Sessions, Audit log, Usage, Workers, Apps', async () => {
      const nav = await visible(page.getByRole('navigation', exact('Administration')), '<nav aria-label="Administration">');
      const found = [];
      for (const name of ['Users', 'Sessions', 'Audit log', 'Usage', 'Workers', 'Apps']) {
        const link = await visible(nav.getByRole('link', exact(name)), `link "${name}" in the Administration navigation`);
        found.push({ name, href: await link.getAttribute('href') });
      }
      return found;
    });
    await step(`Users: create "${USER_B}" with the form`, async () => {
      // The same h1 before and after: wait for the page to be replaced, so
      // the form filled is the new page's, not the one going away.
      const before = await page.locator('main h1').elementHandle();
      await page.getByRole('navigation', exact('Administration')).getByRole('link', exact('Users')).click();
      await before?.waitForElementState('hidden', { timeout: PATIENCE }).catch(() => {});
      await usable(page, 'Administration');
      const form = main(page);
      await form.getByLabel('Username', { exact: true }).fill(USER_B);
      await form.getByLabel('Password', { exact: true }).fill(USER_B_PASSWORD);
      await visible(form.getByRole('checkbox', exact('Administrator')), 'checkbox "Administrator"');
      await form.getByRole('button', exact('Create user')).click();
      await visible(page.getByRole('button', exact(`Edit ${USER_B}`)), `button "Edit ${USER_B}" in the users' table`);
      await visible(page.getByRole('button', exact(`Delete ${USER_B}`)), `button "Delete ${USER_B}"`);
      const users = await api(page, 'GET', 'admin/users');
      if (!JSON.stringify(users.json).includes(USER_B)) fail(`the API does not list ${USER_B} after "Create user"`);
    });
    await step(`"Edit ${USER_B}": Role, Disabled, Storage quota (bytes), File quota, Save, Cancel`, async () => {
      await page.getByRole('button', exact(`Edit ${USER_B}`)).click();
      const dialog = await visible(page.getByRole('dialog'), 'the edit user dialog');
      for (const label of ['Role', 'Disabled', 'Storage quota (bytes)', 'File quota']) {
        await visible(dialog.getByLabel(label, { exact: true }), `field "${label}" in the edit dialog`);
      }
      await visible(dialog.getByRole('button', exact('Save')), 'button "Save" in the edit dialog');
      await dialog.getByRole('button', exact('Cancel')).click();
      await hidden(page.getByRole('dialog'), 'the edit dialog after "Cancel"');
    });
    for (const tab of tabs) {
      const slug = tab.name.toLowerCase().replace(/\s+/g, '-');
      await independently(() => step(`screenshots and axe: ${tab.name} (${tab.href})`, async () => {
        if (!tab.href || !tab.href.startsWith('#/admin')) fail(`link "${tab.name}" goes to ${JSON.stringify(tab.href)}, want #/admin/<tab>`);
        await load(page, tab.href, 'Administration', `admin-${slug}`);
        await capture(page, `admin-${slug}`);
      }));
    }
  });

  await flow('isolation', async () => {
    // The user exists even when the admin flow could not create it.
    await ensureSignedIn();
    if (!JSON.stringify((await api(page, 'GET', 'admin/users')).json).includes(USER_B)) {
      await api(page, 'POST', 'admin/users', { data: { username: USER_B, password: USER_B_PASSWORD } });
    }
    await api(page, 'PUT', `files/${probe}`, { data: 'only the admin may read this\n' });
    const other = await browser.newContext(contextOptions);
    const bob = await newPage(other);
    await step(`${USER_B} signs in in a second browser context`, async () => {
      await load(bob, '', 'Sign in to warren', 'login (second context)');
      await signIn(bob, USER_B, USER_B_PASSWORD);
      await checkNav(bob, 'Home', false);
    });
    await step(`${USER_B}'s Files do not show ${ADMIN}'s files`, async () => {
      await goByNav(bob, 'Files', 'Files');
      const table = await visible(bob.getByRole('table', exact('Contents of Workspace')), 'the table "Contents of Workspace"');
      const text = await table.textContent();
      for (const name of [files.text, files.renamed, probe]) {
        if (text.includes(name)) fail(`${USER_B} sees ${ADMIN}'s file ${name}`);
      }
    });
    await step(`${USER_B} cannot fetch them: 404 through the API`, async () => {
      for (const name of [files.text, files.renamed, probe]) {
        const { status } = await api(bob, 'GET', `files/${name}`);
        if (status !== 404) fail(`${USER_B} GET /api/v1/files/${name}: HTTP ${status}, want 404`);
      }
      const own = await api(page, 'GET', `files/${probe}`);
      if (own.status !== 200) fail(`${ADMIN} cannot read their own ${probe}: HTTP ${own.status}`);
    });
    await step(`${USER_B} signs out`, async () => {
      await bob.getByRole('button', exact('Sign out')).click();
      await usable(bob, 'Sign in to warren');
      if (await signedIn(bob)) fail('the session still works after "Sign out"');
    });
    activePage = page;
    await other.close();
  });

  let terminalId = null;
  await flow('terminal', async () => {
    await ensureSignedIn();
    await step('Terminals from the navigation → h1 "Terminals"', async () => {
      if (!(await page.getByRole('navigation', exact('Main')).count())) await load(page, '#/', 'Home', 'home');
      await goByNav(page, 'Terminals', 'Terminals');
    });
    await step('"New terminal" → an xterm (aria-label "Terminal") at #/terminals/<id>', async () => {
      await page.getByRole('button', exact('New terminal')).click();
      await visible(page.locator('[aria-label="Terminal"]'), 'the terminal (an element with aria-label="Terminal")', 15_000);
      await usable(page, null);
      const match = /#\/terminals\/([^/?]+)$/.exec(page.url());
      if (!match) fail(`after "New terminal" the address is ${page.url()}, want #/terminals/<id>`);
      terminalId = decodeURIComponent(match[1]);
      await visible(page.getByRole('button', exact('Hang up')), 'button "Hang up"');
    });
    const rowsShow = (what) => poll(page, (want) => {
      const rows = [...document.querySelectorAll('[aria-label="Terminal"] .xterm-rows > *')].map((r) => r.textContent.replace(/\u00a0/g, ' ').trim());
      return rows.includes(want) ? { ok: true } : { ok: false, why: `rows: ${JSON.stringify(rows.filter(Boolean).slice(-6))}` };
    }, what, 20_000, `a terminal row reading exactly ${JSON.stringify(what)} (xterm's .xterm-rows)`);
    await step('type "echo hi" + Enter → a row "hi"', async () => {
      await page.locator('[aria-label="Terminal"]').click();
      await page.keyboard.type('echo hi');
      await page.keyboard.press('Enter');
      await rowsShow('hi');
    });
    await step('reload the page → reattached, "hi" still there', async () => {
      const t0 = Date.now();
      await page.reload({ waitUntil: 'commit' });
      await usable(page, null);
      timings.push({ name: 'terminal', ms: Date.now() - t0 });
      await visible(page.locator('[aria-label="Terminal"]'), 'the terminal after a reload');
      await rowsShow('hi');
    });
    await step('screenshots and axe: the terminal', () => capture(page, 'terminal'));
    await step('#/terminals lists it ("Terminal N")', async () => {
      await load(page, '#/terminals', 'Terminals', 'terminals');
      await visible(main(page).getByRole('link', { name: /^Terminal \d+$/ }), 'a link "Terminal N"');
      await capture(page, 'terminals');
    });
    await step('"Hang up" ends it', async () => {
      await load(page, `#/terminals/${encodeURIComponent(terminalId)}`, null, 'terminal');
      await page.getByRole('button', exact('Hang up')).click();
      const deadline = Date.now() + PATIENCE;
      for (;;) {
        const got = await api(page, 'GET', `terminals/${encodeURIComponent(terminalId)}`);
        if (got.status === 404 || (got.json && got.json.state !== 'running')) break;
        if (Date.now() > deadline) fail(`after "Hang up" the terminal is still ${got.json?.state}`);
        await page.waitForTimeout(100);
      }
    });
  }, { skip: SANDBOX ? '' : 'no sandbox on this machine (WARREN_UI_SANDBOX=0): users\' processes cannot run' });

  await flow('task', async () => {
    await ensureSignedIn();
    const command = 'echo task-output; sleep 1; echo done';
    await step('Tasks from the navigation → h1 "Tasks"', async () => {
      if (!(await page.getByRole('navigation', exact('Main')).count())) await load(page, '#/', 'Home', 'home');
      await goByNav(page, 'Tasks', 'Tasks');
    });
    const live = await step(`run "${command}" → #/tasks/<id>, output follows live, then exit code 0`, async () => {
      await page.getByLabel('Command', { exact: true }).fill(command);
      await page.getByRole('button', exact('Run')).click();
      await poll(page, () => /#\/tasks\/[^/]+$/.test(location.hash), null, 5000, '"Run" opens the task (#/tasks/<id>)');
      // From here on: see "task-output" before "done", with "Cancel task" there, then the exit.
      let sawLive = false;
      let cancelShown = false;
      const deadline = Date.now() + 30_000;
      for (;;) {
        const now = await page.evaluate(() => ({
          h1: document.querySelector('main h1')?.textContent.trim(),
          output: document.querySelector('pre[aria-label="Output"]')?.textContent ?? null,
          state: document.querySelector('#task-state')?.textContent.trim() ?? null,
        })).catch(() => ({}));
        if (now.output && now.output.includes('task-output') && !now.output.includes('done')) {
          sawLive = true;
          if (!cancelShown) cancelShown = await page.getByRole('button', exact('Cancel task')).isVisible();
        }
        if (now.output?.includes('done') && /exit/i.test(now.state || '') && /\b0\b/.test(now.state || '')) {
          if (now.h1 !== 'Task') fail(`the task page's h1 is ${JSON.stringify(now.h1)}, want "Task"`);
          if (!/task-output\s*\n\s*done/.test(now.output)) fail(`the output is ${JSON.stringify(now.output)}`);
          return { sawLive, cancelShown, state: now.state };
        }
        if (Date.now() > deadline) {
          fail(`no exit code 0 in #task-state with the whole output within 30 s: ${JSON.stringify(now)}` +
            ' (want <pre aria-label="Output"> and #task-state showing the exit code)');
        }
        await page.waitForTimeout(40);
      }
    });
    log(`      #task-state: ${JSON.stringify(live.state)}`);
    await step('the output followed live (task-output shown before done), with "Cancel task" while running', async () => {
      if (!live.sawLive) fail('"task-output" never appeared alone: the output did not follow the task live (or the page took over 1 s)');
      if (!live.cancelShown) fail('no button "Cancel task" while the task ran');
      await hidden(page.getByRole('button', exact('Cancel task')), 'button "Cancel task" once the task ended');
    });
    await step('screenshots and axe: the task', async () => {
      await load(page, page.url().slice(page.url().indexOf('#')), 'Task', 'task');
      await capture(page, 'task');
    });
    await step('#/tasks lists it', async () => {
      await load(page, '#/tasks', 'Tasks', 'tasks');
      await visible(main(page).getByRole('table'), 'the table of tasks');
      const links = main(page).getByRole('table').getByRole('link');
      if ((await links.count()) < 1) fail('the table of tasks has no link to the task');
      await capture(page, 'tasks');
    });
  }, { skip: SANDBOX ? '' : 'no sandbox on this machine (WARREN_UI_SANDBOX=0): users\' processes cannot run' });

  await flow('app', async () => {
    await ensureSignedIn();
    const names = new RegExp(`^(${esc(APP)}|${esc(APP_TITLE)})$`);
    const named = (verb) => new RegExp(`^${verb} (${esc(APP)}|${esc(APP_TITLE)})$`);
    await step(`Home lists the app "${APP_TITLE}" with "Start …"`, async () => {
      await load(page, '#/', 'Home', 'home');
      await visible(main(page).getByText(names), `the app's title or name (${APP_TITLE} / ${APP})`);
      await visible(page.getByRole('button', { name: named('Start') }), `button "Start ${APP}"`);
    });
    await step('"Start" → it runs ("Stop …" shown, the API says running)', async () => {
      await page.getByRole('button', { name: named('Start') }).click();
      await visible(page.getByRole('button', { name: named('Stop') }), `button "Stop ${APP}" once it runs`, 30_000);
      const deadline = Date.now() + 30_000;
      for (;;) {
        const apps = await api(page, 'GET', 'me/apps');
        const app = apps.json?.apps?.find((a) => a.name === APP);
        if (app?.state === 'running') break;
        if (Date.now() > deadline) fail(`the API says ${APP} is ${app?.state} (${app?.message})`);
        await page.waitForTimeout(200);
      }
    });
    await step('screenshots and axe: Home with a running app', () => capture(page, 'home'));
    await step('"Open …" loads the app through /user/<name>/<app>/', async () => {
      const link = await visible(page.getByRole('link', { name: named('Open') }), `link "Open ${APP}"`);
      const href = await link.getAttribute('href');
      const want = `/user/${ADMIN}/${APP}/`;
      if (!new URL(href, BASE).pathname.startsWith(want)) fail(`link "Open ${APP}" goes to ${href}, want ${want}`);
      const popup = admin.waitForEvent('page', { timeout: 3000 }).catch(() => null);
      await link.click();
      const opened = (await popup) || page;
      await opened.waitForLoadState('load');
      if (!new URL(opened.url()).pathname.startsWith(want)) fail(`"Open ${APP}" loaded ${opened.url()}, want ${BASE}${want}`);
      // The fixture answers its own root with "not found" (text/plain): the
      // proxy reached the app; its health page proves it works in the browser.
      const body = await opened.evaluate(() => document.body.innerText.trim());
      if (body !== 'not found') fail(`the app's page says ${JSON.stringify(body.slice(0, 200))}, want the fixture's own answer`);
      const health = await opened.evaluate(() => fetch('health').then((r) => r.text()));
      if (health.trim() !== 'ok') fail(`the app's health page through the browser: ${JSON.stringify(health)}`);
      if (opened !== page) await opened.close();
      activePage = page;
    });
    await step('"Stop" stops it', async () => {
      await load(page, '#/', 'Home', 'home');
      await page.getByRole('button', { name: named('Stop') }).click();
      await visible(page.getByRole('button', { name: named('Start') }), `button "Start ${APP}" once stopped`, 30_000);
    });
  }, { skip: !SANDBOX ? 'no sandbox on this machine (WARREN_UI_SANDBOX=0): apps cannot run' : !APP ? 'no app to start (WARREN_UI_APP is empty)' : '' });

  await flow('activity', async () => {
    await ensureSignedIn();
    await step('load #/activity → h1 "Activity", "Your events", #others', async () => {
      await load(page, '#/activity', 'Activity', 'activity');
      await checkNav(page, 'Activity', true);
      const list = await visible(page.getByRole('list', exact('Your events')), '<ol aria-label="Your events">');
      if ((await list.getByRole('listitem').count()) < 1) fail('"Your events" is empty after uploads, edits and tasks');
      await visible(page.locator('#others'), '#others (the others\' counts)');
    });
    await step('screenshots and axe', () => capture(page, 'activity'));
  });

  await flow('account', async () => {
    await ensureSignedIn();
    await step('load #/account → h1 "Account" and its sections', async () => {
      await load(page, '#/account', 'Account', 'account');
      for (const name of ['Password', 'Sessions', 'API tokens', 'Settings']) {
        await visible(page.getByRole('heading', { level: 2, ...exact(name) }), `h2 "${name}"`);
      }
      for (const label of ['Current password', 'New password', 'Repeat new password', 'Token name', 'Scope', 'Theme']) {
        await visible(page.getByLabel(label, { exact: true }), `field "${label}"`);
      }
      await visible(page.getByRole('button', exact('Change password')), 'button "Change password"');
      const themes = await page.getByLabel('Theme', { exact: true }).locator('option').allTextContents();
      if (themes.map((t) => t.trim()).join(',') !== 'System,Light,Dark') fail(`select "Theme" offers ${JSON.stringify(themes)}, want System, Light, Dark`);
    });
    await step('screenshots and axe', () => capture(page, 'account'));
    await step('"Create token" shows the new token once, in a dialog; "Revoke NAME" appears', async () => {
      await page.getByLabel('Token name', { exact: true }).fill('ui-test-token');
      await page.getByRole('button', exact('Create token')).click();
      const dialog = await visible(page.getByRole('dialog'), 'the dialog showing the new token');
      await visible(dialog.getByRole('heading'), 'a heading in the token dialog');
      await page.keyboard.press('Escape');
      await hidden(page.getByRole('dialog'), 'the token dialog after Escape');
      await visible(page.getByRole('button', exact('Revoke ui-test-token')), 'button "Revoke ui-test-token"');
    });
  });

  await flow('keyboard', async () => {
    await ensureSignedIn();
    // What the focused element is, and whether a focus ring shows.
    const focused = () => page.evaluate(() => {
      const el = document.activeElement;
      const style = getComputedStyle(el);
      return {
        name: (el.getAttribute('aria-label') || el.textContent || '').trim(),
        tag: el.tagName,
        ring: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2,
      };
    });
    const tabTo = async (name, limit = 40) => {
      for (let i = 0; i < limit; i++) {
        await page.keyboard.press('Tab');
        const now = await focused();
        if (now.name === name) {
          if (!now.ring) fail(`"${name}" has the keyboard focus but no visible focus ring`);
          return now;
        }
      }
      fail(`"${name}" not reached with ${limit} presses of Tab`);
      return null;
    };
    await step('load #/ → h1 "Home"', () => load(page, '#/', 'Home', 'home'));
    await step('the first Tab reaches "Skip to content", with a visible focus ring', async () => {
      await page.keyboard.press('Tab');
      const now = await focused();
      if (now.name !== 'Skip to content') fail(`the first Tab focuses ${JSON.stringify(now.name)} (${now.tag}), want "Skip to content"`);
      if (!now.ring) fail('"Skip to content" shows no focus ring');
    });
    await step('Tab to "Files" in the navigation, Enter → Files', async () => {
      await tabTo('Files');
      await page.keyboard.press('Enter');
      await usable(page, 'Files');
    });
    await step('"New folder" with the keyboard alone: Enter, type, Enter creates it', async () => {
      await tabTo('New folder');
      await page.keyboard.press('Enter');
      await visible(page.getByRole('dialog'), 'the "New folder" dialog');
      const field = await focused();
      if (field.tag !== 'INPUT') fail(`the dialog opened with the focus on ${field.tag} ${JSON.stringify(field.name)}, want its "Folder name" field`);
      await page.keyboard.type('kbd-folder');
      await page.keyboard.press('Enter');
      await hidden(page.getByRole('dialog'), 'the dialog after Enter');
      await visible(page.getByRole('link', exact('kbd-folder')), 'link "kbd-folder" in the table');
    });
    await step('"Delete kbd-folder" by keyboard starts on Cancel; Escape keeps the folder, Enter on "Delete" removes it', async () => {
      await tabTo('Delete kbd-folder', 80);
      await page.keyboard.press('Enter');
      await visible(page.getByRole('dialog'), 'the delete confirmation');
      const start = await focused();
      if (start.name !== 'Cancel') fail(`a destructive confirmation opens on ${JSON.stringify(start.name)}, want "Cancel"`);
      await page.keyboard.press('Escape');
      await hidden(page.getByRole('dialog'), 'the confirmation after Escape');
      await visible(page.getByRole('link', exact('kbd-folder')), 'link "kbd-folder" still there after Escape');
      await page.getByRole('button', exact('Delete kbd-folder')).focus();
      await page.keyboard.press('Enter');
      await visible(page.getByRole('dialog'), 'the delete confirmation');
      await tabTo('Delete', 3);
      await page.keyboard.press('Enter');
      await hidden(page.getByRole('link', exact('kbd-folder')), 'link "kbd-folder" after deleting it');
    });
  });

  await flow('sign-out', async () => {
    await ensureSignedIn();
    await step('"Sign out" → "Sign in to warren", the session ended', async () => {
      await load(page, '#/', 'Home', 'home');
      await page.getByRole('button', exact('Sign out')).click();
      await usable(page, 'Sign in to warren');
      if (await signedIn(page)) fail('GET /api/v1/me still answers 200 after "Sign out"');
    });
    await step('a page after signing out shows the sign-in form', () => load(page, '#/files/', 'Sign in to warren', 'login'));
  });

  await flow('speed', async () => {
    await step(`every page usable within ${USABLE_MS} ms of navigation`, async () => {
      if (!timings.length) fail('no page was measured');
      const slow = timings.filter((t) => t.ms > USABLE_MS).sort((a, b) => b.ms - a.ms);
      const worst = [...timings].sort((a, b) => b.ms - a.ms)[0];
      log(`      worst: ${worst.name} ${worst.ms} ms over ${timings.length} loads`);
      const jumpiest = [...shifts].sort((a, b) => b.shift - a.shift)[0];
      if (jumpiest) log(`      largest layout shift of a load: ${jumpiest.name} ${jumpiest.shift.toFixed(3)} (limit ${MAX_LAYOUT_SHIFT})`);
      if (slow.length) fail(`usable after more than ${USABLE_MS} ms: ${slow.map((t) => `${t.name} ${t.ms} ms`).join(', ')}`);
    });
  });

  await finish();
}

main_().catch(async (err) => {
  failures.push({ flow: currentFlow || 'setup', step: currentStep, message: err.stack || String(err) });
  log(`FAILED outside any flow: ${err.stack || err}`);
  await finish();
});

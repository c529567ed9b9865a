// Browser scenarios for Berth's web UI, run by tests/ui/test_browser.py: `node e2e.mjs NAME`.
// Each drives Debian's Chromium through playwright-core against a registry the Python side
// started and filled (skopeo pushes), and exits non-zero with the first broken expectation.
// Environment: BERTH_URL, BERTH_ACCOUNTS and BERTH_DIGESTS (JSON), BERTH_UI_SCREENSHOTS,
// BERTH_UI_CATALOGS (crates/ui/i18n), CHROMIUM (default /usr/bin/chromium).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const BASE = process.env.BERTH_URL;
const ACCOUNTS = JSON.parse(process.env.BERTH_ACCOUNTS);
const DIGESTS = JSON.parse(process.env.BERTH_DIGESTS);
const SHOTS = process.env.BERTH_UI_SCREENSHOTS;
const HOST = new URL(BASE).host;
const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

class Broken extends Error {}

function expect(condition, message) {
  if (!condition) {
    throw new Broken(message);
  }
}

function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // Nothing but the registry under test: no background downloads, no sandbox (CI runs as
    // root), no GPU (there is none), no QUIC probing of other hosts.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 60_000,
  });
}

async function open(browser, options = {}) {
  const context = await browser.newContext({ baseURL: BASE, ...options });
  context.setDefaultTimeout(15_000);
  const page = await context.newPage();
  return { context, page };
}

async function signIn(page, user) {
  await page.goto("/ui/login");
  await page.fill("#user", user);
  await page.fill("#password", ACCOUNTS[user]);
  await Promise.all([
    page.waitForURL((url) => !url.pathname.startsWith("/ui/login")),
    page.click('form[action="/ui/login"] button[type="submit"]'),
  ]);
  expect((await page.textContent(".account .who strong")) === user, `signed in as ${user}`);
}

// The CSRF token of the page's session, as every form of it carries.
async function csrfOf(page) {
  return page.getAttribute('form[action="/ui/logout"] input[name="csrf"]', "value");
}

// A POST from script on a Berth page itself (same origin, the session's cookie attached): the
// strongest position a forged request can have short of the token.
async function postFromPage(page, path, fields) {
  return page.evaluate(async ({ path, fields }) => {
    const response = await fetch(path, {
      method: "POST",
      body: new URLSearchParams(fields),
      redirect: "manual",
    });
    return response.type === "opaqueredirect" ? 303 : response.status;
  }, { path, fields });
}

// Clicks what navigates and waits until the next page has loaded.
async function follow(page, target) {
  await (typeof target === "string" ? page.click(target) : target.click());
  await page.waitForLoadState();
}

async function tagRows(page) {
  return page.$$eval("tr[data-tag]", (rows) => rows.map((r) => r.dataset.tag).sort());
}

const scenarios = {
  // Sign in, find the pushed repository, open a tag, its manifest and config, copy its pull
  // command, follow an index to a platform, delete a tag, sign out.
  async journey(browser) {
    const { context, page } = await open(browser);
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });

    await page.goto("/");
    expect(new URL(page.url()).pathname === "/ui/", "a browser at / lands on /ui/");
    const anonymous = await page.$$eval("main table a", (links) => links.map((a) => a.textContent));
    expect(anonymous.includes("public/hello"), "anonymous visitors see public projects");
    expect(!anonymous.some((name) => name.startsWith("team/")), "but not private ones");
    await follow(page, '.account a[href="/ui/login"]');
    await signIn(page, "maintainer");

    await page.fill("#q", "app");
    await Promise.all([page.waitForURL(/q=app/), page.press("#q", "Enter")]);
    const found = await page.$$eval("main table a", (links) => links.map((a) => a.textContent));
    expect(found.length === 1 && found[0] === "team/app", `search for "app" finds team/app: ${found}`);
    await follow(page, "main table a >> text=team/app");
    expect(new URL(page.url()).pathname === "/ui/repo/team/app", "the repository page");
    expect(JSON.stringify(await tagRows(page)) === '["v1","v2"]', "both pushed tags are listed");
    const v1 = page.locator('tr[data-tag="v1"]');

    await v1.locator("button.copy", { hasText: "docker" }).click();
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    expect(copied === `docker pull ${HOST}/team/app:v1`, `docker pull command copied: ${copied}`);
    await page.waitForFunction(() => !document.querySelector("button.copy.done"));
    await v1.locator("button.copy", { hasText: "podman" }).click();
    const podman = await page.evaluate(() => navigator.clipboard.readText());
    expect(podman === `podman pull ${HOST}/team/app:v1`, `podman pull command copied: ${podman}`);

    await follow(page, v1.locator("td a").first());
    expect(page.url().endsWith(`/manifest/${DIGESTS["team/app:v1"]}`), "the tag's manifest");
    const layers = await page.$$eval("h2:has-text('Layers') + .table-wrap tbody tr", (r) => r.length);
    expect(layers === 2, `two layers listed, not ${layers}`);
    const config = await page.textContent("main");
    for (const fact of ["/nonexistent", "PATH=/bin", "mkoci.py", "mkoci.py layer 1", "v1"]) {
      expect(config.includes(fact), `the image config shows ${fact}`);
    }
    await page.click("summary");
    const raw = JSON.parse(await page.textContent("details pre"));
    expect(raw.layers.length === 2, "the raw manifest opens and parses");

    await page.goto("/ui/repo/team/multi");
    const listed = await page.locator('tr[data-tag="latest"] td').nth(2).textContent();
    expect(listed.includes("linux/amd64") && listed.includes("linux/arm64"),
      `an index's tag lists its platforms: ${listed}`);
    await follow(page, page.locator('tr[data-tag="latest"] td a').first());
    const platforms = await page.$$eval("h2:has-text('Platforms') + .table-wrap tbody td:first-child",
      (cells) => cells.map((c) => c.textContent).sort());
    expect(JSON.stringify(platforms) === '["linux/amd64","linux/arm64"]', `index platforms: ${platforms}`);
    await follow(page, "td:text-is('linux/arm64') + td a");
    expect((await page.textContent("main")).includes("linux/arm64"), "the arm64 image's config");

    await page.goto("/ui/repo/team/app");
    await follow(page, 'tr[data-tag="v2"] a.danger-link');
    expect(page.url().includes("target=tag:v2"), "a delete asks for confirmation first");
    await follow(page, "main a.button >> text=Cancel");
    expect(JSON.stringify(await tagRows(page)) === '["v1","v2"]', "cancel deletes nothing");
    await follow(page, 'tr[data-tag="v2"] a.danger-link');
    await Promise.all([page.waitForURL((url) => url.pathname === "/ui/repo/team/app"), page.click("button.danger")]);
    expect((await page.textContent("[role=status]")).includes("v2"), "the deletion is reported");
    expect(JSON.stringify(await tagRows(page)) === '["v1"]', "v2 is gone from the page");

    const session = (await context.cookies()).find((c) => c.name === "berth_session");
    expect(session && session.httpOnly && session.sameSite === "Lax", "HttpOnly, SameSite=Lax session");
    await follow(page, 'form[action="/ui/logout"] button');
    expect(!(await context.cookies()).some((c) => c.name === "berth_session"), "sign-out drops the cookie");
    await page.goto("/ui/repo/team/app");
    expect(new URL(page.url()).pathname === "/ui/login", "a private repository asks to sign in again");
    // The old session id is dead on the server, not merely forgotten by the browser.
    await context.addCookies([session]);
    await page.goto("/ui/repo/team/app");
    expect(new URL(page.url()).pathname === "/ui/login", "the signed-out session is refused");
    await context.close();
  },

  // A guest sees no delete control, and no forged delete gets through, whoever's session.
  async permissions(browser) {
    const guest = await open(browser);
    await signIn(guest.page, "viewer");
    await guest.page.goto("/ui/repo/team/app");
    expect(JSON.stringify(await tagRows(guest.page)) === '["v1","v2"]', "a guest sees the tags");
    expect((await guest.page.$$("a.danger-link, .danger-zone, button.danger")).length === 0,
      "a guest sees no delete control on the repository");
    await guest.page.goto(`/ui/repo/team/app/-/manifest/${DIGESTS["team/app:v1"]}`);
    expect((await guest.page.$$(".danger-zone")).length === 0, "nor on the manifest");
    const confirm = await guest.page.goto("/ui/repo/team/app/-/delete?target=tag:v2");
    expect(confirm.status() === 403, `a guest's delete confirmation is refused: ${confirm.status()}`);
    const guestToken = await csrfOf(guest.page);
    expect(guestToken && guestToken.length >= 32, "the guest's pages carry a CSRF token");
    for (const target of ["tag:v2", `digest:${DIGESTS["team/app:v1"]}`, "repository"]) {
      const status = await postFromPage(guest.page, "/ui/repo/team/app/-/delete",
        { csrf: guestToken, target });
      expect(status === 403, `a guest's own valid token cannot delete ${target}: ${status}`);
    }

    const maintainer = await open(browser);
    await signIn(maintainer.page, "maintainer");
    await maintainer.page.goto("/ui/repo/team/app");
    expect((await maintainer.page.$$('tr[data-tag="v2"] a.danger-link')).length === 1,
      "a maintainer sees the delete control");
    for (const [why, fields] of [
      ["no CSRF token", { target: "tag:v2" }],
      ["an empty CSRF token", { csrf: "", target: "tag:v2" }],
      ["the guest's CSRF token", { csrf: guestToken, target: "tag:v2" }],
    ]) {
      const status = await postFromPage(maintainer.page, "/ui/repo/team/app/-/delete", fields);
      expect(status === 403, `a maintainer's delete with ${why} is refused: ${status}`);
    }

    // Another site's page posting a form at Berth: the browser withholds the SameSite=Lax
    // cookie and Berth refuses what arrives without a session, token or same origin.
    await maintainer.context.route("http://attacker.test/**", (route) => route.fulfill({
      contentType: "text/html",
      body: `<form method="post" action="${BASE}/ui/repo/team/app/-/delete">
        <input name="target" value="tag:v2"><input name="csrf" value="${guestToken}"></form>
        <script>document.forms[0].submit()</script>`,
    }));
    const landed = maintainer.page.waitForResponse((r) => r.url().startsWith(`${BASE}/ui/repo/team/app/-/delete`));
    await maintainer.page.goto("http://attacker.test/");
    const answer = await landed;
    expect(answer.status() === 403 || answer.status() === 303,
      `a cross-site form post is refused: ${answer.status()}`);
    await maintainer.page.goto("/ui/repo/team/app");
    expect(JSON.stringify(await tagRows(maintainer.page)) === '["v1","v2"]', "nothing was deleted");
    await guest.context.close();
    await maintainer.context.close();
  },

  "pages-light": (browser) => pages(browser, "light"),
  "pages-dark": (browser) => pages(browser, "dark"),
  chinese,
  narrow,
};

// The main pages, as an admin sees them (the login page anonymously).
function mainPages() {
  return [
    ["repositories", "/ui/"],
    ["repository", "/ui/repo/team/app"],
    ["manifest", `/ui/repo/team/app/-/manifest/${DIGESTS["team/app:v1"]}`],
    ["index", `/ui/repo/team/multi/-/manifest/${DIGESTS["team/multi:latest"]}`],
    ["confirm-delete", "/ui/repo/team/app/-/delete?target=tag:v1"],
    ["projects", "/ui/projects"],
    ["project", "/ui/projects/team"],
    ["retention", "/ui/projects/team/retention"],
    ["status", "/ui/status"],
    ["audit", "/ui/audit"],
    ["not-found", "/ui/repo/team/absent", 404],
  ];
}

async function visit(page, path, status = 200) {
  const response = await page.goto(path);
  expect(response.status() === status, `${path} answers ${response.status()}, not ${status}`);
}

async function axeViolations(page) {
  // Evaluated through the DevTools protocol: the page's CSP (script-src 'self') rightly
  // refuses an injected <script>, and the check must not loosen it.
  await page.evaluate(AXE);
  const results = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  return results.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}

// Each main page passes axe-core with no serious or critical violation and is photographed.
async function pages(browser, scheme) {
  const problems = [];
  const anonymous = await open(browser, { colorScheme: scheme });
  await visit(anonymous.page, "/ui/login");
  problems.push(...(await axeViolations(anonymous.page)).map((v) => `login: ${v}`));
  await anonymous.page.screenshot({ path: join(SHOTS, `login-${scheme}.png`), fullPage: true });
  await anonymous.context.close();

  const { context, page } = await open(browser, { colorScheme: scheme });
  await signIn(page, "admin");
  for (const [name, path, status] of mainPages()) {
    await visit(page, path, status);
    const dark = await page.evaluate(() => matchMedia("(prefers-color-scheme: dark)").matches);
    expect(dark === (scheme === "dark"), `${name} rendered in the ${scheme} scheme`);
    problems.push(...(await axeViolations(page)).map((v) => `${name}: ${v}`));
    await page.screenshot({ path: join(SHOTS, `${name}-${scheme}.png`), fullPage: true });
  }
  await context.close();
  expect(problems.length === 0, `accessibility (${scheme}):\n  ${problems.join("\n  ")}`);
}

// The catalogs as flat key -> text maps (the files are one `"key" = "text"` per line).
function catalog(language) {
  const text = readFileSync(join(process.env.BERTH_UI_CATALOGS, `${language}.toml`), "utf8");
  const entries = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^"([^"]+)"\s*=\s*"((?:[^"\\]|\\.)*)"\s*$/);
    if (m) {
      entries[m[1]] = JSON.parse(`"${m[2]}"`);
    }
  }
  return entries;
}

// Every piece of text a reader meets: text nodes as rendered, and the labels assistive
// technology reads (aria-label, placeholder, title, alt, the document's title).
async function readableText(page) {
  return page.evaluate(() => {
    const pieces = [document.title];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const parent = node.parentElement;
      if (parent && parent.closest("script, style, pre, code, [lang]:not(html)") === null
          && parent.getClientRects().length > 0 && node.textContent.trim()) {
        pieces.push(node.textContent.trim());
      }
    }
    for (const el of document.querySelectorAll("[aria-label], [placeholder], [title], img[alt]")) {
      for (const attribute of ["aria-label", "placeholder", "title", "alt"]) {
        const value = el.getAttribute(attribute);
        if (value && value.trim()) {
          pieces.push(value.trim());
        }
      }
    }
    return pieces;
  });
}

// With Accept-Language: zh-CN every main page speaks Chinese: no text of the English catalog
// appears anywhere a reader would meet it (an English string copied into the Chinese catalog
// included).
async function chinese(browser) {
  const en = catalog("en");
  const zh = catalog("zh-CN");
  const english = [];
  for (const [key, text] of Object.entries(en)) {
    for (const fragment of text.split("{}").map((f) => f.trim())) {
      if (fragment.length >= 2) {
        english.push([key, fragment]);
      }
    }
  }
  expect(english.length > 100, `the English catalog was read (${english.length} strings)`);
  const findings = [];
  const check = async (name, page) => {
    for (const piece of await readableText(page)) {
      for (const [key, fragment] of english) {
        if (piece === fragment || (fragment.length >= 8 && piece.includes(fragment))) {
          findings.push(`${name}: "${piece}" is ${key}`);
        }
      }
    }
  };

  const { context, page } = await open(browser, { locale: "zh-CN" });
  await visit(page, "/ui/login");
  expect((await page.getAttribute("html", "lang")) === "zh-CN", "Accept-Language: zh-CN is honoured");
  await check("login", page);
  await page.fill("#user", "admin");
  await page.fill("#password", "not-the-password");
  await follow(page, 'form[action="/ui/login"] button[type="submit"]');
  expect((await page.$$("[role=alert]")).length === 1, "a wrong password is reported");
  await check("login refused", page);
  await signIn(page, "admin");
  for (const [name, path, status] of mainPages()) {
    await visit(page, path, status);
    await check(name, page);
    if (["repositories", "repository", "manifest", "project", "status"].includes(name)) {
      await page.screenshot({ path: join(SHOTS, `${name}-zh-CN-light.png`), fullPage: true });
    }
  }
  // The switch turns the session's pages to English, and they stay English until switched back.
  await visit(page, "/ui/");
  await follow(page, 'footer a[hreflang="en"]');
  expect((await page.getAttribute("html", "lang")) === "en", "the language switch picks English");
  await visit(page, "/ui/projects");
  expect((await page.textContent("h1")) === en["projects.title"], "English is remembered");
  await follow(page, 'footer a[hreflang="zh-CN"]');
  expect((await page.textContent("h1")) === zh["projects.title"], "and Chinese comes back");
  await context.close();
  expect(findings.length === 0, `English text on zh-CN pages:\n  ${findings.join("\n  ")}`);
}

// A phone-sized screen: no page scrolls sideways (wide tables scroll inside their own box).
// The keyboard alone reaches the content and signs in, and focus is visible.
async function narrow(browser) {
  const { context, page } = await open(browser, { viewport: { width: 360, height: 740 } });
  await visit(page, "/ui/");
  await page.keyboard.press("Tab");
  const skip = await page.evaluate(() => {
    const el = document.activeElement;
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    return { cls: el.className, visible: box.width > 0 && box.top >= 0 && box.bottom <= innerHeight,
      outline: style.outlineStyle !== "none" && style.outlineWidth !== "0px" };
  });
  expect(skip.cls.includes("skip") && skip.visible, "the first Tab shows the skip link");
  expect(skip.outline, "the focused link has a visible outline");
  await page.keyboard.press("Enter");
  expect(await page.evaluate(() => document.activeElement.id === "main"), "skip moves focus to main");
  await visit(page, "/ui/login");
  expect(await page.evaluate(() => document.activeElement.id === "user"), "the username has focus");
  await page.keyboard.type("admin");
  await page.keyboard.press("Tab");
  await page.keyboard.type(ACCOUNTS.admin);
  await Promise.all([page.waitForURL((url) => url.pathname === "/ui/"), page.keyboard.press("Enter")]);

  const wide = [];
  for (const [name, path, status] of mainPages()) {
    await visit(page, path, status);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    if (overflow > 1) {
      wide.push(`${name} is ${overflow}px wider than the screen`);
    }
    if (name === "repository" || name === "manifest") {
      await page.screenshot({ path: join(SHOTS, `${name}-narrow-light.png`), fullPage: true });
    }
  }
  await context.close();
  expect(wide.length === 0, `narrow screen:\n  ${wide.join("\n  ")}`);
}

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`usage: node e2e.mjs (${Object.keys(scenarios).join("|")})`);
  process.exit(2);
}
const browser = await launch();
try {
  await scenarios[name](browser);
  console.log(`${name}: ok`);
} catch (error) {
  for (const context of browser.contexts()) {
    for (const page of context.pages()) {
      await page.screenshot({ path: join(SHOTS, `failed-${name}.png`), fullPage: true }).catch(() => {});
      console.error(`at ${page.url()}`);
    }
  }
  console.error(error instanceof Broken ? `expected: ${error.message}` : error);
  process.exitCode = 1;
} finally {
  await browser.close();
}

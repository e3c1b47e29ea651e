// A walk through the dashboard in headless Chromium, as a first-time user
// would take it, against a daemon serving the demo project
// (tests/dashboard.rs starts it and runs this). Screenshots go to SY_SHOTS.
//
//   SY_URL=http://127.0.0.1:PORT SY_TOKEN=… SY_SHOTS=dir SY_PROMO_SECRET=… node dashboard.mjs
import { chromium } from "playwright-core";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";

const base = process.env.SY_URL;
const token = process.env.SY_TOKEN;
const shots = process.env.SY_SHOTS;
const secret = process.env.SY_PROMO_SECRET;
mkdirSync(shots, { recursive: true });

const step = (text) => console.log(`· ${text}`);
function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Events for the events page: one the filter drops, one that starts a run
// and its second delivery, a duplicate.
async function hook(body, key) {
  const raw = JSON.stringify(body);
  const signature = "sha256=" + createHmac("sha256", secret).update(raw).digest("hex");
  const response = await fetch(`${base}/hooks/promotions`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-signature-256": signature, "idempotency-key": key },
    body: raw,
  });
  check(response.status < 300, `webhook answered ${response.status}: ${await response.text()}`);
}
await hook({ note: "no region" }, "browser-filtered-1");
await hook({ region: "eu" }, "browser-dup-1");
await hook({ region: "eu" }, "browser-dup-1");
// And a run of the campaign, through the API.
const started = await fetch(`${base}/api/v1/workflows/campaign/runs`, {
  method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: "{}",
});
check(started.status === 201, `starting campaign answered ${started.status}`);

const browser = await chromium.launch({
  executablePath: process.env.SY_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run"],
});
const failures = [];
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => failures.push(`script error: ${e.message}`));
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  step("the home page asks for the token first");
  await page.goto(`${base}/`);
  check(page.url().includes("/login"), `expected the login page, got ${page.url()}`);
  await page.fill("#token", "wrong");
  await page.click("button[type=submit]");
  await page.waitForSelector("text=Wrong token.");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("h1:has-text('Overview')");
  // From here on the browser must report no error (the wrong token's 401
  // above is expected).
  page.on("console", (m) => { if (m.type() === "error") failures.push(`console: ${m.text()} at ${page.url()}`); });
  await shot("01-home");
  // Every trigger adapter of the demo project is on the overview with its state.
  const adapters = await page.locator("table[data-adapters] tbody tr").allInnerTexts();
  for (const kind of ["Files", "Cron", "Webhook"]) {
    check(adapters.some((row) => row.startsWith(kind) && /running|served/.test(row)),
      `the overview lists no running ${kind} adapter: ${JSON.stringify(adapters)}`);
  }

  step("home → workflows → publish_promotion");
  await page.click("header nav >> text=Workflows");
  await page.waitForSelector("h1:has-text('Workflows')");
  await shot("02-workflows");
  await page.click("a:has-text('publish_promotion')");
  await page.waitForSelector(".dag svg g.task[data-task='publish']");
  await page.waitForSelector("table.grid tbody tr[data-run]");
  await shot("03-workflow");

  step("workflow → its run → task logs");
  await page.click("table.grid tbody tr[data-run] td a.mono");
  await page.waitForSelector("[data-run-status]");
  await page.waitForFunction(() => document.querySelector("[data-run-status]").textContent === "succeeded",
    null, { timeout: 30000 });
  await page.click("tr[data-task='probe'] button[data-logs]");
  await page.waitForFunction(() => document.querySelector("#logs pre").textContent.includes("probe succeeded"),
    null, { timeout: 15000 });
  await shot("04-run-logs");

  step("Rerun from a task: the new run's status changes live, without a reload");
  await page.selectOption("#rerun-from", "publish");
  const source = page.url();
  await Promise.all([
    page.waitForURL((url) => url.href !== source && url.pathname.startsWith("/runs/")),
    page.click("form.actions button[data-action]"),
  ]);
  await page.waitForLoadState("load");
  await page.evaluate(() => { window.notReloaded = true; });
  await page.waitForFunction(() => document.querySelector("[data-run-status]").textContent === "succeeded",
    null, { timeout: 30000 });
  check(await page.evaluate(() => window.notReloaded === true), "the page reloaded");
  await shot("05-rerun");

  step("start a long run from its workflow page, then Cancel it live");
  await page.goto(`${base}/workflows/long_export`);
  await page.fill("input[data-param='seconds']", "120");
  await Promise.all([
    page.waitForURL((url) => url.pathname.startsWith("/runs/")),
    page.click("button:has-text('Start run')"),
  ]);
  await page.waitForLoadState("load");
  await page.evaluate(() => { window.notReloaded = true; });
  await page.waitForFunction(() => ["running", "queued"].includes(document.querySelector("[data-run-status]").textContent));
  await page.click("button:has-text('Cancel')");
  await page.waitForFunction(() => ["cancelled", "succeeded", "failed"].includes(document.querySelector("[data-run-status]").textContent),
    null, { timeout: 30000 });
  const ended = await page.textContent("[data-run-status]");
  check(await page.evaluate(() => window.notReloaded === true), "the page reloaded");
  await shot("06-cancelled");
  check(ended === "cancelled", `the run ended ${ended}, not cancelled`);

  step("select two running runs in the grid and cancel them at once");
  for (let i = 0; i < 2; i++) {
    const response = await fetch(`${base}/api/v1/workflows/long_export/runs`, {
      method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ params: { seconds: "120" } }),
    });
    check(response.status === 201, `starting long_export answered ${response.status}`);
  }
  await page.goto(`${base}/workflows/long_export`);
  await page.locator("input[data-select]").nth(0).check();
  await page.locator("input[data-select]").nth(1).check();
  await page.click("button[data-bulk='cancel']");
  await page.waitForSelector("#flash:has-text('Cancelled 2 of 2 run(s).')");
  // The grid follows without a reload.
  await page.waitForFunction(() => [...document.querySelectorAll("tr[data-run] .badge")]
    .slice(0, 2).every((b) => b.textContent === "cancelled"), null, { timeout: 15000 });
  await shot("06b-bulk-cancel");

  step("events: why one did not run (filtered) and one ran only once (duplicate)");
  await page.click("header nav >> text=Events");
  await page.waitForSelector(".badge.s-skipped:has-text('filtered')");
  const filtered = await page.textContent("tr:has(.badge:has-text('filtered'))");
  check(filtered.includes("has(event.data.region)") || filtered.includes("false"), `no reason shown: ${filtered}`);
  const duplicate = await page.textContent("tr:has(.badge:has-text('duplicate'))");
  check(duplicate.includes("already started"), `no duplicate reason: ${duplicate}`);
  await shot("07-events");

  step("backtest a binding against the events recorded");
  await page.click("details:has(form[data-kind=backtest]) > summary");
  await page.selectOption("form[data-kind=backtest] select[name=name]", "promotion-webhook");
  await page.click("form[data-kind=backtest] button");
  await page.waitForSelector("#backtest-result:has-text('would have started')");
  await page.waitForSelector("#backtest-result .badge:has-text('filtered')");
  await shot("07b-backtest");

  step("a cron binding's occurrence log and next fires");
  await page.goto(`${base}/workflows/campaign`);
  await page.click("details[data-occurrences] summary");
  await page.waitForSelector("details[data-occurrences] .badge:has-text('next')");

  step("pause and resume a binding");
  await page.goto(`${base}/workflows/publish_promotion`);
  await Promise.all([page.waitForLoadState("load"), page.click("div.panel:has-text('promotion-webhook') button:has-text('Pause')")]);
  await page.waitForSelector("div.panel:has-text('promotion-webhook') .badge:has-text('paused')");
  await shot("08-paused");
  await page.click("div.panel:has-text('promotion-webhook') button:has-text('Resume')");
  await page.waitForSelector("div.panel:has-text('promotion-webhook') button:has-text('Pause')");

  step("workers page");
  await page.click("header nav >> text=Workers");
  await page.waitForSelector("h1:has-text('Workers')");
  await shot("09-workers");

  step("dark mode follows the system");
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(`${base}/`);
  await shot("10-home-dark");
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
console.log("dashboard walk-through passed");

// First paint of dashboard pages in headless Chromium (benches/dashboard.rs
// runs it): each page loaded LOADS times in a fresh tab; prints one JSON
// line {"<path>": [first-contentful-paint ms, …], …}.
//
//   SY_URL=http://127.0.0.1:PORT SY_PATHS=/,/workflows/big LOADS=10 node first_paint.mjs
import { chromium } from "playwright-core";

const base = process.env.SY_URL;
const paths = (process.env.SY_PATHS || "/").split(",");
const loads = Number(process.env.LOADS || 10);
const browser = await chromium.launch({
  executablePath: process.env.SY_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run"],
});
const results = {};
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  // One warm-up load, as a user who has the page open already.
  const warm = await context.newPage();
  await warm.goto(base + paths[0]);
  await warm.close();
  for (const path of paths) {
    results[path] = [];
    for (let i = 0; i < loads; i++) {
      const page = await context.newPage();
      await page.goto(base + path, { waitUntil: "load" });
      // The paint entry may be reported after `load`: wait for it.
      const paint = await page.evaluate(() => new Promise((resolve) => {
        new PerformanceObserver((list) => {
          const entry = list.getEntriesByName("first-contentful-paint")[0];
          if (entry) resolve(entry.startTime);
        }).observe({ type: "paint", buffered: true });
        setTimeout(() => resolve(null), 10000);
      }));
      if (paint === null) throw new Error(`no first-contentful-paint for ${path}`);
      results[path].push(paint);
      await page.close();
    }
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(results));

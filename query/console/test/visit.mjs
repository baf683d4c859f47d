// Visits pages of the web console in headless Chromium (Debian's, driven
// by playwright-core) and prints one JSON report on stdout: per page, the
// console errors, uncaught exceptions, failed or refused requests, what
// the page shows (read from its DOM), and a screenshot. The Rust test
// (tests/console.rs) decides what is right; this script only looks.
//
// usage: node visit.mjs '{"base": "http://127.0.0.1:PORT", "shots": DIR,
//   "chromium": "/usr/bin/chromium", "visits": [{"name": …, "hash": …,
//   "read": "series|drops|anomalies|progress|health", "polls": N}]}'

import { chromium } from 'playwright-core';

/** Longest wait for one page to be drawn (a global read across a slow
 * link, plus Chromium's start on a loaded machine). */
const PAGE_MS = 60_000;

const plan = JSON.parse(process.argv[2]);

/** What each kind of page shows, read from its DOM in the browser. */
const READERS = {
  series: () => {
    const c = document.getElementById('series-chart');
    const cov = document.getElementById('coverage');
    return {
      points: Number(c?.dataset.points), non_null: c ? c.dataset.nonNull.split(',').map(Number) : [],
      from: Number(c?.dataset.from), to: Number(c?.dataset.to), step: c?.dataset.step,
      series: c?.dataset.series, missing: cov?.dataset.missing ?? null,
      lines: c ? c.dataset.lines.split('|') : [],
      canvases: c ? c.querySelectorAll('canvas').length : 0,
      dims: [...document.querySelectorAll('.controls input[name^="d."]')].map((i) => [i.name, i.value]),
    };
  },
  drops: () => ({
    series: [...document.querySelectorAll('#drops > li')].map((li) => li.dataset.series),
    charts: document.querySelectorAll('#drops .chart canvas').length,
  }),
  anomalies: () => ({
    series: [...document.querySelectorAll('#anomalies > li')].map((li) => li.dataset.series),
    charts: document.querySelectorAll('#anomalies .chart canvas').length,
  }),
  progress: () => ({
    rows: [...document.querySelectorAll('#progress tr[data-video]')].map((tr) => ({
      video: tr.dataset.video, value: tr.querySelector('.value').textContent,
    })),
  }),
  health: () => ({
    missing: document.getElementById('health')?.dataset.missing ?? null,
    rows: [...document.querySelectorAll('#health tr[data-dc]')].map((tr) => ({
      dc: tr.dataset.dc, state: tr.dataset.state,
      events_per_s: tr.dataset.eventsPerS === '' ? null : Number(tr.dataset.eventsPerS),
    })),
  }),
};

async function visit(browser, v) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const out = { name: v.name, url: `${plan.base}/console/#${v.hash}`, console_errors: [], page_errors: [], failed_requests: [] };
  page.on('console', (m) => { if (m.type() === 'error') out.console_errors.push(m.text()); });
  page.on('pageerror', (e) => out.page_errors.push(String(e)));
  page.on('requestfailed', (r) => out.failed_requests.push(`${r.url()}: ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) out.failed_requests.push(`${r.url()}: HTTP ${r.status()}`); });
  const seen = {};
  try {
    await page.goto(out.url, { timeout: PAGE_MS });
    await page.waitForSelector(`body[data-ready="${v.read}"]`, { timeout: PAGE_MS });
    if (v.polls) {
      await page.waitForFunction((n) => Number(document.body.dataset.polls || 0) >= n, v.polls, { timeout: PAGE_MS });
    }
    if (v.zoom) {
      // Drag across the middle half of the chart: uPlot zooms in, and the
      // page offers to read that range again at a finer step.
      const box = await page.locator('#series-chart .u-over').boundingBox();
      const y = box.y + box.height / 2;
      await page.mouse.move(box.x + box.width * 0.25, y);
      await page.mouse.down();
      await page.mouse.move(box.x + box.width * 0.75, y, { steps: 5 });
      await page.mouse.up();
      await page.waitForSelector('#zoom:not([hidden]) a', { timeout: PAGE_MS });
      seen.zoom_link = await page.getAttribute('#zoom a', 'href');
    }
    if (v.open_first) {
      // Into the roll-up hierarchy of the first alert.
      await page.click('#anomalies > li:first-child .card-head');
      await page.waitForSelector('#anomalies > li:first-child .hierarchy canvas', { timeout: PAGE_MS });
      seen.hierarchy = await page.$$eval('#anomalies > li:first-child .hierarchy li', (li) => li.map((x) => x.textContent));
    }
    out.error = await page.evaluate(() => document.body.dataset.error ?? null);
    out.data = { ...(await page.evaluate(READERS[v.read])), ...seen };
    out.screenshot = `${plan.shots}/${v.name}.png`;
    await page.screenshot({ path: out.screenshot, fullPage: true });
  } catch (e) {
    out.failure = String(e);
  }
  await context.close();
  return out;
}

const browser = await chromium.launch({
  executablePath: plan.chromium,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pages = [];
try {
  for (const v of plan.visits) pages.push(await visit(browser, v));
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify({ pages })}\n`);

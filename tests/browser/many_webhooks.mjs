// The dashboard with 10,000 webhooks, in headless Chromium: the overview renders within 2 s of
// navigation, the webhook list shows one page and pages on to different webhooks, and the
// search finds one webhook by its name and one by a piece of its URL. Run by
// tests/dashboard.rs, which imports the webhooks through the API first and checks from
// outside that what the page found is the webhook it asked for.
//
// Environment: KIVIHOOK_URL, ADMIN_TOKEN, SCREENSHOT_DIR, CHROMIUM (defaults to
// /usr/bin/chromium); TOTAL_WEBHOOKS and DISABLED_WEBHOOKS (how many there are); NAME_QUERY and
// NAME_EXPECTED (a search by name and the one webhook name it must find); URL_QUERY and
// URL_EXPECTED (a piece of one URL and the name of the one webhook it must find).
// Prints `ok N - …` lines, `overview_ms=…`, and `name_found=<id>` / `url_found=<id>`.
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env('KIVIHOOK_URL');
const adminToken = env('ADMIN_TOKEN');
const shots = env('SCREENSHOT_DIR');
const total = Number(env('TOTAL_WEBHOOKS'));
const disabled = Number(env('DISABLED_WEBHOOKS'));
const nameQuery = env('NAME_QUERY');
const nameExpected = env('NAME_EXPECTED');
const urlQuery = env('URL_QUERY');
const urlExpected = env('URL_EXPECTED');
/** The overview must be fully rendered this soon after navigation starts. */
const OVERVIEW_BUDGET_MS = 2000;
/** The list's page size (WEBHOOKS_PER_PAGE in ingest/assets/app.js). */
const PAGE = 100;
mkdirSync(shots, { recursive: true });
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(10_000);

// Any script error or refused resource (CSP included) fails the run; this script expects no
// error answer at all.
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => {
  if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
});

let step = 0;
function ok(what) {
  step += 1;
  console.log(`ok ${step} - ${what}`);
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}
async function shot(name) {
  const path = join(shots, `many-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot ${path}`);
}
/** Serious and critical accessibility violations fail the run. */
async function accessible(name) {
  const hasAxe = await page.evaluate(() => typeof window.axe !== 'undefined');
  if (!hasAxe) await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of result) console.log(`  axe ${name}: ${v.impact} ${v.id}: ${v.help} (${v.nodes.join(', ')})`);
  check(bad.length === 0, `${name} has ${bad.length} serious accessibility violations`);
}
async function heading(text) {
  await page.getByRole('heading', { level: 1, name: text }).waitFor();
}
/** The number a text starts with ("10,000 webhooks.", "1 found for …"). */
const leading = (text) => Number((text.match(/^[\d,.\s]+/) || ['NaN'])[0].replace(/\D/g, ''));
const rows = page.locator('#webhooks-table tbody tr');
const rowNames = () => page.locator('#webhooks-table tbody tr td[data-label="Name"] a').allInnerTexts();

/** Search the list and wait for the answer to the search typed (not an earlier one's). */
async function search(query) {
  await page.getByLabel('Search by name or URL').fill(query);
  await page.locator('#webhook-count').filter({ hasText: `for “${query}”` }).or(page.locator('#no-webhooks-found')).waitFor();
  check(await page.locator('#no-webhooks-found').count() === 0, `searching for “${query}” found nothing`);
  const count = await page.locator('#webhook-count').innerText();
  const names = await rowNames();
  check(leading(count) === 1 && names.length === 1, `searching for “${query}” finds exactly one webhook (${count}; ${names.length} rows)`);
  return names[0];
}
/** The id of the one webhook listed, from its link. */
async function listedId() {
  const href = await page.locator('#webhooks-table tbody tr td[data-label="Name"] a').getAttribute('href');
  return decodeURIComponent(href.split('#/webhooks/')[1]);
}

try {
  // --- Sign in ---------------------------------------------------------------------------------
  await page.goto(base);
  await heading('Sign in to KiviHook');
  await page.getByLabel('Admin token').fill(adminToken);
  await page.keyboard.press('Enter');
  await heading('Overview');
  ok('signed in with the admin token');

  // --- Overview: a full page load, timed from navigation to the last figure drawn -----------
  // The token stays in this tab's sessionStorage, so the load goes straight to the overview.
  await page.goto('about:blank');
  const started = Date.now();
  await page.goto(`${base}/#/`);
  const webhooksCard = page.locator('#card-webhooks .value').filter({ hasText: `${(total - disabled).toLocaleString('en-US')} active` });
  await webhooksCard.waitFor();
  await page.locator('#card-webhooks .sub').filter({ hasText: `${disabled.toLocaleString('en-US')} disabled` }).waitFor();
  await page.locator('svg.chart').waitFor();
  await page.getByRole('heading', { level: 2, name: 'Needs attention' }).waitFor();
  const overviewMs = Date.now() - started;
  // The same from the page's own clock: from the start of the navigation to now.
  const inPageMs = Math.round(await page.evaluate(() => performance.now()));
  console.log(`overview_ms=${overviewMs}`);
  console.log(`overview_in_page_ms=${inPageMs}`);
  check(overviewMs <= OVERVIEW_BUDGET_MS, `the overview rendered in ${overviewMs} ms, over ${OVERVIEW_BUDGET_MS} ms`);
  const attention = await page.locator('main section.panel').filter({ hasText: 'Needs attention' }).locator('li').count();
  check(attention === disabled, `the ${disabled} disabled webhooks need attention (${attention} listed)`);
  await accessible('overview');
  await shot('01-overview');
  ok(`the overview of ${total.toLocaleString('en-US')} webhooks rendered in ${overviewMs} ms (budget ${OVERVIEW_BUDGET_MS} ms)`);

  // --- The list: one page, and the next page holds other webhooks --------------------------------
  await page.getByRole('link', { name: 'Webhooks', exact: true }).click();
  await heading('Webhooks');
  await rows.first().waitFor();
  check(leading(await page.locator('#webhook-count').innerText()) === total, `the list counts ${total} webhooks`);
  check(await rows.count() === PAGE, `the list shows one page of ${PAGE}, not ${await rows.count()} rows`);
  const first = await rowNames();
  check(new Set(first).size === PAGE, 'the first page lists each webhook once');
  await accessible('webhooks');
  await shot('02-webhooks');
  ok(`the list shows the first ${PAGE} of ${total.toLocaleString('en-US')} webhooks`);
  await page.getByRole('button', { name: 'Load more' }).click();
  await rows.nth(2 * PAGE - 1).waitFor();
  check(await rows.count() === 2 * PAGE, `the next page adds ${PAGE} rows (${await rows.count()} shown)`);
  const second = (await rowNames()).slice(PAGE);
  const seen = new Set(first);
  check(second.every((n) => !seen.has(n)) && new Set(second).size === PAGE, 'the next page holds other webhooks than the first');
  check(await page.getByRole('button', { name: 'Load more' }).isVisible(), 'more pages are left to load');
  ok(`the next page shows ${PAGE} other webhooks`);

  // --- Search by name, and by a piece of the URL ---------------------------------------------
  const byName = await search(nameQuery);
  check(byName === nameExpected, `searching for “${nameQuery}” finds ${nameExpected} (found ${byName})`);
  check(page.url().includes('q='), 'the search is kept in the address');
  console.log(`name_found=${await listedId()}`);
  await accessible('search-by-name');
  await shot('03-search-by-name');
  ok(`searching by name among ${total.toLocaleString('en-US')} finds “${byName}” alone`);
  const byUrl = await search(urlQuery);
  check(byUrl === urlExpected, `searching for “${urlQuery}” finds ${urlExpected} (found ${byUrl})`);
  check((await rows.first().locator('td[data-label="Destination"]').innerText()).toLowerCase().includes(urlQuery.toLowerCase()),
    'the webhook found shows the URL searched for');
  console.log(`url_found=${await listedId()}`);
  await shot('04-search-by-url');
  ok(`searching by a piece of the URL finds “${byUrl}” alone`);

  check(problems.length === 0, `no script errors or refused resources:\n${problems.join('\n')}`);
  console.log(`1..${step}`);
} catch (e) {
  console.error(`not ok ${step + 1} - ${e.message}`);
  for (const p of problems) console.error(p);
  try { await shot('failure'); } catch (_) { /* the page may be gone */ }
  await browser.close();
  process.exit(1);
}
await browser.close();

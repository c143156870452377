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
import { check, env, start } from './harness.mjs';

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
// Every console error counts: this script expects no error answer at all.
const { page, ok, shot, accessible, heading, run } = await start({ shots, prefix: 'many-' });
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

await run(async () => {
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
});

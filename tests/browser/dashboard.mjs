// Drives the dashboard in headless Chromium like a clinic administrator would: sign in,
// create a webhook through the form (with its live preview), send a test and see the attempt,
// replay dead letters, edit, disable and delete, on a desktop and on a phone-sized screen.
// Every page is checked with axe-core and screenshotted. Run by tests/dashboard.rs, which
// starts KiviHook and the receivers and checks from outside what this script did.
//
// Environment: KIVIHOOK_URL, ADMIN_TOKEN, RECEIVER_URL (answers 200), FAILING_WEBHOOK_ID
// (a webhook with dead letters), DEAD_EVENT_ID (one of its events), SCREENSHOT_DIR,
// CHROMIUM (defaults to /usr/bin/chromium).
import { check, env, start } from './harness.mjs';

const base = env('KIVIHOOK_URL');
const adminToken = env('ADMIN_TOKEN');
const receiverUrl = env('RECEIVER_URL');
const failingWebhookId = env('FAILING_WEBHOOK_ID');
const deadEventId = env('DEAD_EVENT_ID');
const shots = env('SCREENSHOT_DIR');
// Chromium logs every 4xx answer as a console error; those are expected here, since the
// script types a wrong token and looks at things that are not there.
const { page, ok, shot, accessible, heading, run } = await start({
  shots,
  expectedConsole: /the server responded with a status of 4\d\d/,
});

async function noHorizontalScroll(name) {
  const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check(scroll <= inner + 1, `${name} scrolls sideways on a narrow screen (${scroll}px in ${inner}px)`);
}

await run(async () => {
  // --- Sign in, with the keyboard only -----------------------------------------------------
  await page.goto(base);
  await heading('Sign in to KiviHook');
  check(await page.evaluate(() => document.activeElement && document.activeElement.id) === 'token', 'the token field has focus');
  await accessible('sign-in');
  await shot('01-sign-in');
  await page.keyboard.type('not-the-token');
  await page.keyboard.press('Enter');
  await page.getByText('That token was not accepted.').waitFor();
  ok('a wrong token is refused with a message');
  await page.getByLabel('Admin token').fill(adminToken);
  await page.keyboard.press('Enter');
  await heading('Overview');
  ok('signed in with the admin token, by keyboard');

  // --- Overview ------------------------------------------------------------------------------
  const dlqCard = await page.locator('#card-dlq .value').innerText();
  check(Number(dlqCard.replace(/\D/g, '')) >= 1, `the overview counts the dead letter (${dlqCard})`);
  check(await page.locator('svg.chart rect.dead').count() >= 1, 'the chart shows the dead attempt');
  check((await page.locator('#card-webhooks .value').innerText()).includes('1 active'), 'one active webhook');
  await accessible('overview');
  await shot('02-overview');
  ok('overview shows figures, the chart and the dead letter');

  // --- Webhooks list ------------------------------------------------------------------------
  await page.getByRole('link', { name: 'Webhooks', exact: true }).click();
  await heading('Webhooks');
  await page.getByRole('link', { name: 'Billing system' }).waitFor();
  await accessible('webhooks');
  await shot('03-webhooks');
  ok('the list shows the existing webhook');
  // The server searches names and URLs, in any case, as one types.
  await page.getByLabel('Search by name or URL').fill('no such webhook');
  await page.locator('#no-webhooks-found').waitFor();
  check(page.url().includes('q=no+such+webhook'), 'the search is kept in the address');
  await page.getByLabel('Search by name or URL').fill('BILLING');
  await page.getByRole('link', { name: 'Billing system' }).waitFor();
  check((await page.locator('#webhook-count').innerText()).includes('1 found'), 'the count says what the search found');
  ok('searching by name finds the webhook, and a search that finds none says so');

  // --- Create through the form, with its live preview -----------------------------------------
  await page.getByRole('link', { name: 'New webhook' }).click();
  await heading('New webhook');
  await page.getByLabel('Name', { exact: true }).fill('Front desk CRM');
  await page.getByLabel('URL', { exact: true }).fill(receiverUrl);
  await page.getByLabel('appointment.booked', { exact: true }).check();
  await page.getByLabel('Clinics').fill('12, 14');
  await page.getByLabel('Format', { exact: true }).selectOption('json');
  check(!(await page.getByLabel('Username').isVisible()), 'credentials fields show only for their auth type');
  await page.locator('#headers-add').click();
  await page.getByLabel('Header 1', { exact: true }).fill('X-Clinic-Chain');
  await page.getByLabel('Value 1', { exact: true }).fill('north');
  // A broken template shows the error live, naming the field.
  await page.getByLabel('Body template').fill('{"patient": "{{ patient_name "}');
  await page.locator('#preview-error').filter({ hasText: 'body.template' }).waitFor();
  ok('the preview names a broken template');
  await page.getByLabel('Body template').fill('{"patient": "{{ patient_name }}", "clinic": "{{ clinic_id }}"}');
  await page.locator('#preview-body').filter({ hasText: '"patient": "Ada Lovelace"' }).waitFor();
  const preview = await page.locator('#preview-output').innerText();
  check(preview.includes(`POST ${receiverUrl}`), 'the preview shows the method and URL');
  check(/x-clinic-chain: north/i.test(preview), 'the preview shows the custom header');
  await accessible('new-webhook');
  await shot('04-new-webhook');
  ok('the live preview renders the template for a sample event');
  await page.getByRole('button', { name: 'Create webhook' }).click();
  await heading('Front desk CRM');
  const secret = (await page.locator('#new-secret').innerText()).trim();
  check(secret.startsWith('whsec_'), 'the new signing secret is shown once');
  console.log(`secret=${secret}`);
  const newId = decodeURIComponent(page.url().split('#/webhooks/')[1]);
  console.log(`webhook_id=${newId}`);
  ok('created the webhook through the form');

  // --- Test button: the real response --------------------------------------------------------
  await page.getByRole('button', { name: 'Send test' }).click();
  await page.locator('#test-result').filter({ hasText: 'HTTP 200' }).waitFor();
  // The test receiver answers 200 with an empty body: its real headers are what is shown.
  check((await page.locator('#test-result').innerText()).includes('content-length: 0'), 'the receiver\'s response headers are shown');
  await accessible('webhook');
  await shot('05-webhook');
  ok('Send test shows the receiver\'s real response');

  // --- The attempt appears in the deliveries log -------------------------------------------------
  await page.getByRole('link', { name: 'See every attempt of this webhook' }).click();
  await heading('Deliveries');
  const row = page.locator('.attempt-row').first();
  await row.waitFor();
  const rowText = await row.innerText();
  check(rowText.includes('200') && rowText.includes('test'), `the test attempt is logged (${rowText})`);
  await row.getByRole('button', { name: 'Details' }).click();
  await page.locator('.detail-row:not([hidden])').filter({ hasText: 'Response body' }).waitFor();
  await accessible('deliveries');
  await shot('06-deliveries');
  ok('the attempt appears with its request and response');
  await page.getByLabel('Outcome').selectOption('dead');
  await page.locator('#no-attempts').waitFor();
  ok('filtering by outcome shows the empty state');

  // --- One event's attempts ---------------------------------------------------------------------
  await page.goto(`${base}/#/events/${encodeURIComponent(deadEventId)}`);
  await heading(`Event ${deadEventId}`);
  await page.locator('.attempt-row').first().waitFor();
  await shot('07-event');
  ok('an event shows each webhook\'s attempts');

  // --- Dead letters: replay all of one webhook -----------------------------------------------------
  await page.getByRole('link', { name: 'Dead letters', exact: true }).click();
  await heading('Dead letters');
  await page.locator('#dead-letters-table tbody tr').first().waitFor();
  await page.getByLabel('Webhook').selectOption(failingWebhookId);
  const replayAll = page.locator('#replay-all');
  await replayAll.waitFor();
  await accessible('dead-letters');
  await shot('08-dead-letters');
  await replayAll.click();
  await page.getByRole('dialog').waitFor();
  await page.getByRole('button', { name: 'Replay all' }).last().click();
  await page.locator('#no-dead-letters').waitFor();
  ok('replayed every dead letter of the failing webhook');

  // --- Edit, disable, delete with confirmation --------------------------------------------------
  await page.goto(`${base}/#/webhooks/${encodeURIComponent(newId)}`);
  await heading('Front desk CRM');
  await page.getByRole('link', { name: 'Edit' }).click();
  await heading('Edit Front desk CRM');
  check(await page.getByLabel('appointment.booked', { exact: true }).isChecked(), 'the form shows the saved events');
  check(await page.getByLabel('Clinics').inputValue() === '12, 14', 'the form shows the saved clinics');
  await page.locator('#preview-body').filter({ hasText: 'Ada Lovelace' }).waitFor();
  await accessible('edit-webhook');
  await shot('09-edit-webhook');
  await page.getByLabel('Name', { exact: true }).fill('Front desk CRM (north)');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await heading('Front desk CRM (north)');
  ok('edited the webhook');
  await page.getByRole('button', { name: 'Disable' }).click();
  await page.getByRole('button', { name: 'Enable' }).waitFor();
  check((await page.locator('dl.props').innerText()).includes('Disabled'), 'the webhook shows as disabled');
  ok('disabled the webhook');
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog').waitFor();
  await page.keyboard.press('Escape');
  await page.getByRole('dialog').waitFor({ state: 'hidden' });
  check(await page.getByRole('heading', { level: 1, name: 'Front desk CRM (north)' }).isVisible(), 'Escape cancels the delete');
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('button', { name: 'Delete webhook' }).click();
  await heading('Webhooks');
  check(await page.getByRole('link', { name: 'Front desk CRM (north)' }).count() === 0, 'the webhook is gone');
  ok('delete asks first, and Escape cancels');

  // --- A phone-sized screen ---------------------------------------------------------------------
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [hash, name, title] of [
    ['#/', '10-narrow-overview', 'Overview'],
    ['#/webhooks', '11-narrow-webhooks', 'Webhooks'],
    ['#/webhooks/new', '12-narrow-new-webhook', 'New webhook'],
    [`#/deliveries?webhook=${encodeURIComponent(failingWebhookId)}`, '13-narrow-deliveries', 'Deliveries'],
    ['#/dead-letters', '14-narrow-dead-letters', 'Dead letters'],
  ]) {
    await page.goto(`${base}/${hash}`);
    await heading(title);
    await page.waitForLoadState('networkidle');
    await noHorizontalScroll(name);
    await shot(name);
  }
  ok('every page fits a 390 px wide screen');

  // --- Sign out --------------------------------------------------------------------------------
  await page.getByRole('button', { name: 'Sign out' }).click();
  await heading('Sign in to KiviHook');
  ok('signed out');
});

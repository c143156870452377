// KiviHook dashboard: a single page over the management API, signed in with the admin token.
// No framework and no build step, so the binary can embed it and it works offline. Every
// piece of text from the API goes into the page as text nodes, never as HTML.
'use strict';

const TOKEN_KEY = 'kivihook.admin-token';
const main = document.getElementById('main');
const nav = document.getElementById('nav');
const signOutButton = document.getElementById('sign-out');
const toastBox = document.getElementById('toast');

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let refreshTimer = null;
let catalogue = null;
// Incremented on every navigation, so that a slow answer for a page left behind is dropped.
let generation = 0;

// ---------------------------------------------------------------------------------------
// DOM helpers

/** Build an element: h('a', {href: '#/', class: 'x', onclick: fn}, 'text', child, ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked' || k === 'selected' || k === 'disabled' || k === 'hidden') el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

function render(...children) {
  main.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

function toast(message) {
  toastBox.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { toastBox.textContent = ''; }, 5000);
}

function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function percent(rate) {
  return rate === null || rate === undefined ? '—' : `${(rate * 100).toFixed(1)} %`;
}

function number(n) {
  return Number(n || 0).toLocaleString();
}

function badge(kind, text) {
  return h('span', { class: `badge ${kind}` }, text);
}

function statusBadge(webhook) {
  return webhook.enabled ? badge('ok', 'Enabled') : badge('off', 'Disabled');
}

function outcomeBadge(outcome, test) {
  const kind = { delivered: 'ok', retry: 'warn', dead: 'bad', disabled: 'bad', failed: 'bad' }[outcome] || 'off';
  return [badge(kind, outcome), test ? [' ', badge('off', 'test')] : null];
}

function httpStatus(status) {
  if (status === null || status === undefined) return badge('bad', 'no response');
  return badge(status >= 200 && status < 300 ? 'ok' : status >= 500 || status === 429 ? 'warn' : 'bad', String(status));
}

/** Ask before something that cannot be undone. Resolves true when confirmed. */
function confirmAction(title, text, confirmLabel) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = confirmLabel;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}

// ---------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** Call the API; an error answer becomes an ApiError. A 401 means the session ended, except
 *  while signing in, when it means the token typed was wrong. */
async function api(method, path, body, signingIn = false) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'network', 'The KiviHook API did not answer. Is the ingest role running?', null);
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const err = (data && data.error) || {};
    if (response.status === 401 && !signingIn) {
      signOut('Your session ended: the admin token was not accepted. Sign in again.');
    }
    throw new ApiError(response.status, err.code || 'error', err.message || `HTTP ${response.status}`, err.field || null);
  }
  return data;
}

function errorText(e) {
  if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
  return e.field ? `${e.field}: ${e.message}` : e.message;
}

/** An error panel for a page that could not load, with a way to try again. */
function loadFailed(what, e) {
  return h('div', { class: 'error-box', role: 'alert' },
    h('strong', {}, `Could not load ${what}. `), errorText(e), ' ',
    h('button', { type: 'button', class: 'quiet small', onclick: () => route() }, 'Try again'));
}

async function eventTypes() {
  if (!catalogue) {
    const data = await api('GET', '/v1/event-types');
    catalogue = data.event_types;
  }
  return catalogue;
}

// ---------------------------------------------------------------------------------------
// Sign in

function signOut(message) {
  token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  signInPage(message);
}

function signInPage(message) {
  stopRefresh();
  nav.hidden = true;
  signOutButton.hidden = true;
  document.title = 'Sign in · KiviHook';
  const error = h('div', { id: 'signin-error', role: 'alert' });
  if (message) error.append(h('p', { class: 'error-box' }, message));
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, 'aria-describedby': 'token-hint signin-error' });
  const form = h('form', { class: 'panel signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in to KiviHook'),
    h('div', { class: 'field' },
      h('label', { for: 'token' }, 'Admin token'),
      input,
      h('span', { class: 'hint', id: 'token-hint' }, 'The value of KIVIHOOK_ADMIN_TOKEN. `kivihook dev` prints it at start. It is kept in this tab only.')),
    error,
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    token = input.value.trim();
    error.replaceChildren();
    try {
      await api('GET', '/v1/webhooks?limit=1', undefined, true);
      sessionStorage.setItem(TOKEN_KEY, token);
      if (!location.hash || location.hash === '#/signin') location.hash = '#/';
      route();
    } catch (e) {
      token = '';
      const text = e.status === 401 ? 'That token was not accepted.'
        : e.status === 403 ? 'That is the ingest token; the dashboard needs the admin token.'
          : errorText(e);
      error.replaceChildren(h('p', { class: 'error-box' }, text));
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
  });
  render(form);
  input.focus();
}

signOutButton.addEventListener('click', () => signOut('You signed out.'));

// ---------------------------------------------------------------------------------------
// Routing: #/page/args?query

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || '') };
}

function link(parts, query) {
  const path = '#/' + parts.map(encodeURIComponent).join('/');
  const q = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v)).toString() : '';
  return q ? `${path}?${q}` : path;
}

function stopRefresh() {
  clearInterval(refreshTimer);
  refreshTimer = null;
}

async function route() {
  stopRefresh();
  generation += 1;
  if (!token) return signInPage();
  nav.hidden = false;
  signOutButton.hidden = false;
  const { parts, query } = parseHash();
  const page = parts[0] || 'overview';
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  render(h('p', { class: 'loading', role: 'status' }, 'Loading…'));
  try {
    if (page === 'overview') await overviewPage();
    else if (page === 'webhooks' && parts[1] === 'new') await webhookForm(null);
    else if (page === 'webhooks' && parts[1] && parts[2] === 'edit') await webhookForm(parts[1]);
    else if (page === 'webhooks' && parts[1]) await webhookPage(parts[1]);
    else if (page === 'webhooks') await webhooksPage(query);
    else if (page === 'deliveries') await deliveriesPage(query);
    else if (page === 'events' && parts[1]) await eventPage(parts[1]);
    else if (page === 'dead-letters') await deadLettersPage(query);
    else render(h('div', { class: 'panel empty' }, h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the overview'))));
  } catch (e) {
    if (token) render(loadFailed('this page', e));
  }
}

/** Focus the page heading after navigation, so screen readers announce the new page. */
function announce(title) {
  document.title = `${title} · KiviHook`;
  const heading = main.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: true });
  }
}

window.addEventListener('hashchange', route);

// ---------------------------------------------------------------------------------------
// Overview

/** The overview; `refresh` redraws it in place, without moving focus or starting a timer. */
async function overviewPage(refresh = false) {
  const mine = generation;
  // Only the webhooks that need attention: with thousands, the rest are counted, not listed.
  const stats = await api('GET', `/v1/stats?${new URLSearchParams({ attention: 'true', limit: String(ATTENTION_SHOWN) })}`);
  if (mine !== generation) return;
  const counts = stats.webhook_counts;
  const d = stats.deliveries;
  const card = (label, value, sub, id) => h('div', { class: 'card', id },
    h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), sub ? h('div', { class: 'sub' }, sub) : null);
  const outcomes = (x) => `${number(x.delivered)} delivered · ${number(x.retrying)} retrying · ${number(x.dead)} dead`;
  render(
    h('div', { class: 'page-head' }, h('h1', {}, 'Overview'),
      h('div', { class: 'actions' }, h('a', { class: 'button quiet', href: '#/webhooks/new' }, 'New webhook'))),
    h('section', { 'aria-label': 'Delivery figures', class: 'cards' },
      card('Attempts today (UTC)', number(d.today.attempts), outcomes(d.today), 'card-today'),
      card('Attempts, last 24 h', number(d.last_24h.attempts), outcomes(d.last_24h), 'card-24h'),
      card('Success rate, last 24 h', percent(d.last_24h.success_rate), 'delivered ÷ attempts', 'card-rate'),
      card('Retry backlog', number(stats.retry_schedule.depth), stats.retry_schedule.lag_seconds > 1 ? `${stats.retry_schedule.lag_seconds.toFixed(0)} s behind` : 'on time', 'card-backlog'),
      card('Dead letters', number(stats.totals.dead_letters), h('a', { href: '#/dead-letters' }, 'Review and replay'), 'card-dlq'),
      card('Webhooks', `${number(counts.enabled)} active`, `${number(counts.disabled)} disabled`, 'card-webhooks')),
    h('section', { class: 'panel', 'aria-labelledby': 'chart-title' },
      h('h2', { id: 'chart-title' }, 'Delivery attempts per minute, last hour'),
      chart(d.per_minute)),
    counts.total === 0
      ? h('section', { class: 'panel empty' }, h('h2', {}, 'No webhooks yet'),
        h('p', {}, 'Create a webhook to start delivering clinic events to your systems.'),
        h('a', { class: 'button', href: '#/webhooks/new' }, 'Create a webhook'))
      : attentionList(stats),
    invalidList(stats.invalid_webhooks || []));
  if (refresh) return;
  announce('Overview');
  refreshTimer = setInterval(() => { if (document.visibilityState === 'visible') refreshOverview(mine); }, 15000);
}

async function refreshOverview(mine) {
  // Only while nobody is using the page: a redraw would take the focus away.
  if (mine !== generation || main.contains(document.activeElement) && document.activeElement !== main.querySelector('h1')) return;
  const y = window.scrollY;
  const onHeading = document.activeElement === main.querySelector('h1');
  try {
    await overviewPage(true);
    window.scrollTo(0, y);
    const heading = main.querySelector('h1');
    if (onHeading && heading) {
      heading.setAttribute('tabindex', '-1');
      heading.focus({ preventScroll: true });
    }
  } catch (e) {
    // The next tick tries again; the figures on screen stay.
  }
}

/** Webhooks listed under "Needs attention" at most; the count says how many there are. */
const ATTENTION_SHOWN = 100;

/** The webhooks that are disabled or failing, as `GET /v1/stats?attention=true` lists them. */
function attentionList(stats) {
  const troubled = stats.webhooks;
  if (troubled.length === 0) {
    return h('section', { class: 'panel' }, h('h2', {}, 'Needs attention'), h('p', {}, 'Every enabled webhook\'s last attempt succeeded.'));
  }
  const all = stats.webhook_counts.disabled + stats.webhook_counts.failing;
  return h('section', { class: 'panel' }, h('h2', {}, 'Needs attention'),
    stats.next_cursor ? h('p', { class: 'hint' }, `${number(all)} webhooks need attention; the first ${number(troubled.length)} are listed.`) : null,
    h('ul', {}, troubled.map((w) => h('li', {}, h('a', { href: link(['webhooks', w.webhook_id]) }, w.name), ' — ',
      w.enabled ? `${w.consecutive_failures} failures in a row` : `disabled${w.disabled_reason ? `: ${w.disabled_reason}` : ''}`))));
}

/** Stored webhook records that cannot be used: shown only when there are some. */
function invalidList(invalid) {
  if (invalid.length === 0) return null;
  return h('section', { class: 'panel', id: 'invalid-webhooks' }, h('h2', {}, 'Unreadable webhook records'),
    h('p', {}, `${number(invalid.length)} stored webhook ${invalid.length === 1 ? 'record cannot' : 'records cannot'} be used; every other webhook keeps delivering.`),
    h('ul', {}, invalid.map((w) => h('li', {}, h('code', {}, w.id), ' — ', w.reason))));
}

/** Stacked bars per minute; the figures are also in a table for screen readers. */
function chart(perMinute) {
  const width = 1000;
  const height = 220;
  const top = 10;
  const bottom = 20;
  const max = Math.max(1, ...perMinute.map((m) => m.delivered + m.retrying + m.dead));
  const barWidth = width / Math.max(perMinute.length, 1);
  const scale = (height - top - bottom) / max;
  const totals = perMinute.reduce((t, m) => ({ delivered: t.delivered + m.delivered, retrying: t.retrying + m.retrying, dead: t.dead + m.dead }), { delivered: 0, retrying: 0, dead: 0 });
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': 'chart-summary', focusable: 'false' },
    s('title', { id: 'chart-summary' }, `Over the last hour: ${totals.delivered} delivered, ${totals.retrying} retrying, ${totals.dead} dead; at most ${max} in one minute.`),
    s('line', { class: 'axis', x1: 0, x2: width, y1: height - bottom, y2: height - bottom }),
    s('text', { x: 0, y: height - 5 }, '60 min ago'),
    s('text', { x: width, y: height - 5, 'text-anchor': 'end' }, 'now'),
    s('text', { x: 2, y: top + 2 }, String(max)));
  perMinute.forEach((m, i) => {
    let y = height - bottom;
    for (const kind of ['delivered', 'retrying', 'dead']) {
      const h2 = m[kind] * scale;
      if (h2 <= 0) continue;
      y -= h2;
      svg.append(s('rect', { class: kind, x: i * barWidth + 1, y, width: Math.max(barWidth - 2, 1), height: h2 },
        s('title', {}, `${new Date(m.minute).toLocaleTimeString()}: ${m[kind]} ${kind}`)));
    }
  });
  return [svg,
    h('div', { class: 'legend', 'aria-hidden': 'true' }, h('span', { class: 'delivered' }, 'delivered'), h('span', { class: 'retrying' }, 'retrying'), h('span', { class: 'dead' }, 'dead')),
    h('details', {}, h('summary', {}, 'Show as a table'),
      h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Minute'), h('th', { scope: 'col' }, 'Delivered'), h('th', { scope: 'col' }, 'Retrying'), h('th', { scope: 'col' }, 'Dead'))),
        h('tbody', {}, perMinute.filter((m) => m.delivered + m.retrying + m.dead > 0).map((m) => h('tr', {},
          h('td', { 'data-label': 'Minute' }, new Date(m.minute).toLocaleTimeString()),
          h('td', { 'data-label': 'Delivered' }, m.delivered), h('td', { 'data-label': 'Retrying' }, m.retrying), h('td', { 'data-label': 'Dead' }, m.dead)))))))];
}

// ---------------------------------------------------------------------------------------
// Webhooks

/** Webhooks per page of the list; "Load more" fetches the next. */
const WEBHOOKS_PER_PAGE = 100;

/** One page of webhooks and their statistics: both listings page the same way (creation
 *  order, the same cursor and search), so the two answers hold the same webhooks. */
async function fetchWebhooks(q, cursor) {
  const params = new URLSearchParams({ limit: String(WEBHOOKS_PER_PAGE) });
  if (q) params.set('q', q);
  if (cursor) params.set('cursor', cursor);
  const [list, stats] = await Promise.all([api('GET', `/v1/webhooks?${params}`), api('GET', `/v1/stats?${params}`)]);
  return { list, byId: new Map(stats.webhooks.map((w) => [w.webhook_id, w])) };
}

function webhookRow(w, st) {
  return h('tr', {},
    h('td', { 'data-label': 'Name' }, h('a', { href: link(['webhooks', w.id]) }, w.name)),
    h('td', { 'data-label': 'Status' }, statusBadge(w), w.disabled_reason ? h('div', { class: 'hint' }, w.disabled_reason) : null),
    h('td', { 'data-label': 'Events' }, w.events.join(', ')),
    h('td', { 'data-label': 'Destination' }, h('span', { class: 'mono' }, `${w.method} ${w.url}`)),
    h('td', { 'data-label': 'Last result' }, st.last_attempt_at ? [httpStatus(st.last_status), ' ', h('span', { class: 'hint' }, when(st.last_attempt_at))] : h('span', { class: 'hint' }, 'no attempts yet')),
    h('td', { 'data-label': 'Success, 24 h' }, percent(st.success_rate_24h)));
}

/** The search's results: a count, the table, and "Load more" while pages are left. */
function webhookResults(box, first, q, mine) {
  const { list } = first;
  if (list.webhooks.length === 0) {
    box.replaceChildren(h('div', { class: 'panel empty', id: 'no-webhooks-found' }, h('p', {}, `No webhook's name or URL contains “${q}”.`)));
    return;
  }
  const tbody = h('tbody', {});
  const count = h('p', { class: 'hint', id: 'webhook-count', role: 'status' },
    q ? `${number(list.total)} found for “${q}”.` : `${number(list.total)} ${list.total === 1 ? 'webhook' : 'webhooks'}.`);
  box.replaceChildren(count, h('div', { class: 'table-wrap' }, h('table', { id: 'webhooks-table' },
    h('caption', { class: 'visually-hidden' }, 'Webhooks, their status and last result'),
    h('thead', {}, h('tr', {}, ['Name', 'Status', 'Events', 'Destination', 'Last result', 'Success, 24 h'].map((t) => h('th', { scope: 'col' }, t)))),
    tbody)));
  const add = ({ list: page, byId }) => {
    for (const w of page.webhooks) tbody.append(webhookRow(w, byId.get(w.id) || {}));
    box.querySelector('.more')?.remove();
    if (!page.next_cursor) return;
    const more = h('button', { type: 'button', class: 'quiet more' }, 'Load more');
    more.addEventListener('click', async () => {
      more.disabled = true;
      try {
        const next = await fetchWebhooks(q, page.next_cursor);
        if (mine === generation) add(next);
      } catch (e) {
        more.disabled = false;
        toast(`Could not load more: ${errorText(e)}`);
      }
    });
    box.append(more);
  };
  add(first);
}

async function webhooksPage(query) {
  const mine = generation;
  let q = (query.get('q') || '').trim();
  const first = await fetchWebhooks(q, null);
  if (mine !== generation) return;
  const head = h('div', { class: 'page-head' }, h('h1', {}, 'Webhooks'),
    h('div', { class: 'actions' }, h('a', { class: 'button', href: '#/webhooks/new', id: 'new-webhook' }, 'New webhook')));
  if (first.list.total === 0 && !q) {
    render(head, h('div', { class: 'panel empty' }, h('h2', {}, 'No webhooks yet'),
      h('p', {}, 'A webhook sends the clinic events it subscribes to, signed, to one URL.'),
      h('a', { class: 'button', href: '#/webhooks/new' }, 'Create your first webhook')));
    return announce('Webhooks');
  }
  // The server searches, so that thousands of webhooks never all come to the page.
  const input = h('input', { type: 'search', id: 'webhook-search', value: q, autocomplete: 'off', 'aria-describedby': 'webhook-search-hint' });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Search webhooks' },
    h('div', { class: 'field' }, h('label', { for: 'webhook-search' }, 'Search by name or URL'), input,
      h('span', { class: 'hint', id: 'webhook-search-hint' }, 'Any part of the name or the URL, in any case.')));
  const results = h('div', { id: 'webhook-results' });
  let asked = 0;
  const search = async () => {
    const v = input.value.trim();
    if (v === q) return;
    q = v;
    const mineSearch = ++asked;
    history.replaceState(null, '', link(['webhooks'], { q }));
    try {
      const page = await fetchWebhooks(q, null);
      if (mine === generation && mineSearch === asked) webhookResults(results, page, q, mine);
    } catch (e) {
      if (mine === generation && mineSearch === asked) results.replaceChildren(loadFailed('the webhooks', e));
    }
  };
  let timer = null;
  input.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(search, 250); });
  form.addEventListener('submit', (ev) => { ev.preventDefault(); clearTimeout(timer); search(); });
  webhookResults(results, first, q, mine);
  render(head, form, results);
  announce('Webhooks');
}

async function webhookPage(id) {
  const mine = generation;
  const [w, st, dead] = await Promise.all([
    api('GET', `/v1/webhooks/${encodeURIComponent(id)}`),
    api('GET', `/v1/webhooks/${encodeURIComponent(id)}/stats`),
    api('GET', `/v1/dead-letters?webhook_id=${encodeURIComponent(id)}&limit=1`),
  ]);
  if (mine !== generation) return;
  const result = h('div', { class: 'result', id: 'test-result', role: 'status', 'aria-live': 'polite' });
  const secretBox = h('div', { id: 'secret-box' });
  const shown = sessionStorage.getItem(`kivihook.new-secret.${id}`);
  if (shown) {
    sessionStorage.removeItem(`kivihook.new-secret.${id}`);
    secretBox.append(secretPanel('Webhook created. Its signing secret is shown this once:', shown));
  }
  const typeSelect = h('select', { id: 'test-type' }, (await eventTypes()).map((t) => h('option', { value: t.type }, t.type)));
  const firstType = firstSubscribedType(w.events);
  if (firstType) typeSelect.value = firstType;

  const testButton = h('button', { type: 'button', id: 'send-test' }, 'Send test');
  testButton.addEventListener('click', async () => {
    testButton.disabled = true;
    result.replaceChildren(h('p', { class: 'loading' }, 'Sending a signed test event…'));
    try {
      const r = await api('POST', `/v1/webhooks/${encodeURIComponent(id)}/test?type=${encodeURIComponent(typeSelect.value)}`);
      result.replaceChildren(testResult(r));
    } catch (e) {
      result.replaceChildren(h('p', { class: 'error-box' }, errorText(e)));
    } finally {
      testButton.disabled = false;
    }
  });

  const toggle = h('button', { type: 'button', class: 'quiet', id: 'toggle-enabled' }, w.enabled ? 'Disable' : 'Enable');
  toggle.addEventListener('click', async () => {
    try {
      await api('PATCH', `/v1/webhooks/${encodeURIComponent(id)}`, { enabled: !w.enabled });
      toast(w.enabled ? `${w.name} is disabled: no deliveries until it is enabled.` : `${w.name} is enabled.`);
      route();
    } catch (e) {
      toast(`Could not change it: ${errorText(e)}`);
    }
  });

  const rotate = h('button', { type: 'button', class: 'quiet', id: 'rotate-secret' }, 'Rotate secret');
  rotate.addEventListener('click', async () => {
    if (!await confirmAction('Rotate the signing secret?', 'A new secret signs from now on. The current one keeps signing beside it for 24 hours, so the receiver can switch without missing a delivery.', 'Rotate')) return;
    try {
      const r = await api('POST', `/v1/webhooks/${encodeURIComponent(id)}/rotate-secret`);
      secretBox.replaceChildren(secretPanel(`New signing secret, shown this once. The previous one keeps signing until ${when(r.previous_secret_expires_at)}:`, r.secret));
      secretBox.querySelector('code').focus();
    } catch (e) {
      toast(`Could not rotate: ${errorText(e)}`);
    }
  });

  const del = h('button', { type: 'button', class: 'danger quiet', id: 'delete-webhook' }, 'Delete');
  del.addEventListener('click', async () => {
    if (!await confirmAction(`Delete ${w.name}?`, 'It stops receiving events at once. Its attempt log and dead letters are kept but can no longer be replayed to it. This cannot be undone.', 'Delete webhook')) return;
    try {
      await api('DELETE', `/v1/webhooks/${encodeURIComponent(id)}`);
      toast(`${w.name} was deleted.`);
      location.hash = '#/webhooks';
    } catch (e) {
      toast(`Could not delete: ${errorText(e)}`);
    }
  });

  const auth = w.auth || { type: 'none' };
  render(
    h('div', { class: 'page-head' }, h('h1', {}, w.name),
      h('div', { class: 'actions' }, h('a', { class: 'button quiet', href: link(['webhooks', id, 'edit']), id: 'edit-webhook' }, 'Edit'), toggle, rotate, del)),
    secretBox,
    h('section', { class: 'panel', 'aria-labelledby': 'props-title' }, h('h2', { id: 'props-title' }, 'Settings'),
      h('dl', { class: 'props' },
        h('dt', {}, 'Status'), h('dd', {}, statusBadge(w), w.disabled_reason ? ` ${w.disabled_reason}` : ''),
        h('dt', {}, 'Destination'), h('dd', { class: 'mono' }, `${w.method} ${w.url}`),
        h('dt', {}, 'Events'), h('dd', {}, w.events.join(', ')),
        h('dt', {}, 'Clinics'), h('dd', {}, w.clinic_ids.length ? w.clinic_ids.join(', ') : 'all clinics'),
        h('dt', {}, 'Authentication'), h('dd', {}, auth.type === 'none' ? 'none' : auth.type.replace('_', ' ')),
        h('dt', {}, 'Signing secret'), h('dd', { class: 'mono' }, w.secret),
        h('dt', {}, 'Last result'), h('dd', {}, st.last_attempt_at ? [httpStatus(st.last_status), ' ', when(st.last_attempt_at)] : 'no attempts yet'),
        h('dt', {}, 'Success, 24 h'), h('dd', {}, `${percent(st.success_rate_24h)} of ${number(st.attempts_24h)} attempts`),
        h('dt', {}, 'Dead letters'), h('dd', {}, dead.total ? h('a', { href: link(['dead-letters'], { webhook: id }) }, `${number(dead.total)} waiting`) : 'none'))),
    h('section', { class: 'panel', 'aria-labelledby': 'test-title' }, h('h2', { id: 'test-title' }, 'Test'),
      h('p', { class: 'hint' }, 'Sends a real, signed request with a sample event and shows the response. It is logged as a test attempt.'),
      h('div', { class: 'filters' },
        h('div', { class: 'field' }, h('label', { for: 'test-type' }, 'Sample event'), typeSelect),
        testButton),
      result),
    h('p', {}, h('a', { href: link(['deliveries'], { webhook: id }) }, 'See every attempt of this webhook')));
  announce(w.name);
}

function secretPanel(text, secret) {
  return h('div', { class: 'secret-box', role: 'status' }, h('p', {}, text),
    h('code', { tabindex: '0', id: 'new-secret' }, secret),
    h('p', { class: 'hint' }, 'Store it where the receiver verifies signatures (Standard Webhooks, webhook-signature header). It will not be shown again.'));
}

function testResult(r) {
  return h('div', {},
    h('p', {}, r.delivered ? badge('ok', 'Delivered') : badge('bad', 'Failed'), ' ',
      r.status ? [`HTTP ${r.status}`] : (r.error_kind || 'no response'), ` in ${r.duration_ms} ms (${r.event_type})`),
    r.error ? h('p', { class: 'error-box' }, r.error) : null,
    h('h3', {}, 'Response headers'), h('pre', {}, Object.entries(r.response_headers || {}).map(([k, v]) => `${k}: ${v}`).join('\n') || '(none)'),
    h('h3', {}, 'Response body'), h('pre', { id: 'test-response-body' }, r.response_body || '(empty)'));
}

function firstSubscribedType(patterns) {
  if (!catalogue) return null;
  for (const p of patterns) {
    if (p === '*') return catalogue[0] && catalogue[0].type;
    if (p.endsWith('.*')) {
      const family = p.slice(0, -1);
      const t = catalogue.find((c) => c.type.startsWith(family));
      if (t) return t.type;
    } else if (catalogue.some((c) => c.type === p)) return p;
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// Create and edit

const METHODS = ['POST', 'PUT', 'PATCH', 'GET', 'DELETE'];

function pairRows(name, initial, keyLabel, valueLabel) {
  const box = h('div', { class: 'pairs', id: `${name}-rows` });
  let n = 0;
  const add = (k, v) => {
    n += 1;
    const idk = `${name}-key-${n}`;
    const idv = `${name}-value-${n}`;
    const row = h('div', { class: 'pair' },
      h('div', {}, h('label', { for: idk, class: 'visually-hidden' }, `${keyLabel} ${n}`), h('input', { type: 'text', id: idk, class: 'pair-key', value: k, placeholder: keyLabel })),
      h('div', {}, h('label', { for: idv, class: 'visually-hidden' }, `${valueLabel} ${n}`), h('input', { type: 'text', id: idv, class: 'pair-value', value: v, placeholder: valueLabel })),
      h('button', { type: 'button', class: 'quiet small', 'aria-label': `Remove ${keyLabel.toLowerCase()} ${n}`, onclick: () => { row.remove(); box.dispatchEvent(new Event('input', { bubbles: true })); } }, 'Remove'));
    box.append(row);
    return row;
  };
  for (const [k, v] of Object.entries(initial || {})) add(k, v);
  const addButton = h('button', { type: 'button', class: 'quiet small', id: `${name}-add` }, `Add ${keyLabel.toLowerCase()}`);
  addButton.addEventListener('click', () => { const row = add('', ''); row.querySelector('input').focus(); });
  const read = () => {
    const out = {};
    for (const row of box.querySelectorAll('.pair')) {
      const k = row.querySelector('.pair-key').value.trim();
      if (k) out[k] = row.querySelector('.pair-value').value;
    }
    return out;
  };
  return { element: h('div', {}, box, addButton), read };
}

function field(id, label, control, hint) {
  return h('div', { class: 'field', id: `field-${id}` },
    h('label', { for: id }, label), control,
    hint ? h('span', { class: 'hint', id: `${id}-hint` }, hint) : null,
    h('span', { class: 'field-error', id: `${id}-error`, role: 'alert' }));
}

async function webhookForm(id) {
  const mine = generation;
  const types = await eventTypes();
  const existing = id ? await api('GET', `/v1/webhooks/${encodeURIComponent(id)}`) : null;
  if (mine !== generation) return;
  const w = existing || { name: '', url: '', method: 'POST', events: [], clinic_ids: [], headers: {}, query: {}, auth: { type: 'none' }, body: { type: 'default' }, enabled: true };

  const name = h('input', { type: 'text', id: 'name', value: w.name, required: true, 'aria-describedby': 'name-hint name-error' });
  const url = h('input', { type: 'url', id: 'url', value: w.url, required: true, placeholder: 'https://example.org/hooks/kivicare', 'aria-describedby': 'url-hint url-error' });
  const method = h('select', { id: 'method' }, METHODS.map((m) => h('option', { value: m, selected: m === w.method }, m)));
  const clinics = h('input', { type: 'text', id: 'clinic_ids', value: (w.clinic_ids || []).join(', '), placeholder: 'all clinics', 'aria-describedby': 'clinic_ids-hint clinic_ids-error' });

  // Events: the catalogue as checkboxes, grouped by family, plus any other patterns.
  const known = new Set(types.map((t) => t.type));
  const chosen = new Set(w.events);
  const families = [...new Set(types.map((t) => t.type.split('.')[0]))];
  const checks = h('div', { class: 'checks' });
  for (const family of families) {
    checks.append(h('div', { class: 'group', 'aria-hidden': 'true' }, family));
    for (const t of types.filter((x) => x.type.startsWith(`${family}.`))) {
      const cid = `event-${t.type.replace(/[^a-z0-9]/g, '-')}`;
      checks.append(h('label', { for: cid, title: t.description },
        h('input', { type: 'checkbox', id: cid, class: 'event-check', value: t.type, checked: chosen.has(t.type) }), t.type));
    }
  }
  const otherEvents = h('input', { type: 'text', id: 'events-other', value: w.events.filter((e) => !known.has(e)).join(', '), placeholder: '*, appointment.*, custom.lab_result', 'aria-describedby': 'events-other-hint events-error' });
  const eventsBox = h('fieldset', { id: 'field-events' }, h('legend', {}, 'Events'),
    checks,
    h('div', { class: 'field' }, h('label', { for: 'events-other' }, 'Other patterns'), otherEvents,
      h('span', { class: 'hint', id: 'events-other-hint' }, 'Comma-separated: * for every event, a family such as appointment.*, or custom.<name>.')),
    h('span', { class: 'field-error', id: 'events-error', role: 'alert' }));

  // Authentication.
  const auth = w.auth || { type: 'none' };
  const authType = h('select', { id: 'auth-type' },
    [['none', 'None (signature only)'], ['api_key', 'API key'], ['bearer', 'Bearer token'], ['basic', 'Basic (user and password)']]
      .map(([v, t]) => h('option', { value: v, selected: auth.type === v }, t)));
  const authName = h('input', { type: 'text', id: 'auth-name', value: auth.name || 'X-API-Key' });
  const authIn = h('select', { id: 'auth-in' }, [['header', 'a header'], ['query', 'the query string']].map(([v, t]) => h('option', { value: v, selected: (auth.in || 'header') === v }, t)));
  const authValue = h('input', { type: 'password', id: 'auth-value', value: auth.value || '', autocomplete: 'off' });
  const authToken = h('input', { type: 'password', id: 'auth-token', value: auth.token || '', autocomplete: 'off' });
  const authUser = h('input', { type: 'text', id: 'auth-username', value: auth.username || '', autocomplete: 'off' });
  const authPass = h('input', { type: 'password', id: 'auth-password', value: auth.password || '', autocomplete: 'off' });
  const authParts = {
    api_key: h('div', { class: 'row2' }, field('auth-name', 'Key name', authName), field('auth-in', 'Sent in', authIn), field('auth-value', 'Key', authValue)),
    bearer: h('div', {}, field('auth-token', 'Token', authToken)),
    basic: h('div', { class: 'row2' }, field('auth-username', 'Username', authUser), field('auth-password', 'Password', authPass)),
  };
  const showAuth = () => { for (const [k, el] of Object.entries(authParts)) el.hidden = authType.value !== k; };
  authType.addEventListener('change', showAuth);
  showAuth();

  const headers = pairRows('headers', w.headers, 'Header', 'Value');
  const query = pairRows('query', w.query, 'Parameter', 'Value');

  // Body.
  const body = w.body || { type: 'default' };
  const bodyType = h('select', { id: 'body-type' },
    [['default', 'The signed event envelope (JSON)'], ['json', 'JSON from a template'], ['form', 'Form fields from templates']]
      .map(([v, t]) => h('option', { value: v, selected: body.type === v }, t)));
  const template = h('textarea', { id: 'body-template', spellcheck: 'false', 'aria-describedby': 'body-template-hint body-template-error' });
  template.value = body.template || '{\n  "patient": "{{ patient_name }}",\n  "doctor": "{{ doctor_name }}",\n  "date": "{{ appointment_date }}"\n}';
  const form = pairRows('form', body.fields || { patient: '{{ patient_name }}' }, 'Field', 'Template');
  const templateBox = field('body-template', 'Body template', template, 'Placeholders such as {{ patient_name }} are filled from each event, escaped for JSON.');
  const formBox = h('div', { id: 'field-body-fields' }, h('div', { class: 'label' }, 'Form fields'), form.element,
    h('span', { class: 'field-error', id: 'body-fields-error', role: 'alert' }));
  const showBody = () => { templateBox.hidden = bodyType.value !== 'json'; formBox.hidden = bodyType.value !== 'form'; };
  bodyType.addEventListener('change', showBody);
  showBody();

  const enabled = h('input', { type: 'checkbox', id: 'enabled', checked: w.enabled });
  const formError = h('div', { id: 'form-error', role: 'alert' });

  const read = () => {
    const events = [...checks.querySelectorAll('.event-check:checked')].map((c) => c.value)
      .concat(otherEvents.value.split(',').map((x) => x.trim()).filter(Boolean));
    const def = {
      name: name.value.trim(),
      url: url.value.trim(),
      method: method.value,
      events,
      clinic_ids: clinics.value.split(',').map((x) => x.trim()).filter(Boolean),
      headers: headers.read(),
      query: query.read(),
      enabled: enabled.checked,
    };
    const a = authType.value;
    def.auth = a === 'api_key' ? { type: a, name: authName.value.trim(), value: authValue.value, in: authIn.value }
      : a === 'bearer' ? { type: a, token: authToken.value }
        : a === 'basic' ? { type: a, username: authUser.value, password: authPass.value }
          : { type: 'none' };
    const b = bodyType.value;
    def.body = b === 'json' ? { type: b, template: template.value } : b === 'form' ? { type: b, fields: form.read() } : { type: 'default' };
    return def;
  };

  // Live preview of the request a sample event makes.
  const previewType = h('select', { id: 'preview-type' }, types.map((t) => h('option', { value: t.type }, t.type)));
  const previewOut = h('div', { id: 'preview-output', 'aria-live': 'polite' });
  let previewTimer = null;
  let previewSeq = 0;
  const refreshPreview = () => {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(async () => {
      const def = read();
      const first = firstSubscribedType(def.events);
      if (first && !previewType.dataset.touched) previewType.value = first;
      const seq = ++previewSeq;
      const draft = { ...def, name: def.name || 'preview', url: def.url || 'https://example.org/', events: def.events.length ? def.events : ['*'] };
      try {
        const p = await api('POST', `/v1/webhooks/preview?type=${encodeURIComponent(previewType.value)}`, draft);
        if (seq !== previewSeq) return;
        previewOut.replaceChildren(
          h('h3', {}, 'Request'), h('pre', { id: 'preview-request' }, `${p.method} ${p.url}`),
          h('h3', {}, 'Headers'), h('pre', {}, Object.entries(p.headers).map(([k, v]) => `${k}: ${v}`).join('\n')),
          h('h3', {}, 'Body'), h('pre', { id: 'preview-body' }, p.body === null ? '(no body)' : p.body));
      } catch (e) {
        if (seq !== previewSeq) return;
        previewOut.replaceChildren(h('p', { class: 'error-box', id: 'preview-error' }, errorText(e)));
      }
    }, 300);
  };
  previewType.addEventListener('change', () => { previewType.dataset.touched = '1'; refreshPreview(); });

  const save = h('button', { type: 'submit', id: 'save-webhook' }, existing ? 'Save changes' : 'Create webhook');
  const formEl = h('form', { id: 'webhook-form', novalidate: true, 'aria-labelledby': 'form-title' },
    field('name', 'Name', name, 'Shown in the dashboard and the logs; unique names make `kivihook webhooks apply` work.'),
    h('div', { class: 'row2' },
      field('url', 'URL', url, 'Placeholders are allowed, e.g. https://crm.example/patients/{{ patient_id }}.'),
      field('method', 'Method', method)),
    eventsBox,
    field('clinic_ids', 'Clinics', clinics, 'Comma-separated clinic ids; empty means every clinic.'),
    h('fieldset', {}, h('legend', {}, 'Authentication'), field('auth-type', 'Type', authType), Object.values(authParts),
      h('span', { class: 'field-error', id: 'auth-error', role: 'alert' })),
    h('fieldset', { id: 'field-headers' }, h('legend', {}, 'Custom headers'), headers.element, h('span', { class: 'field-error', id: 'headers-error', role: 'alert' })),
    h('fieldset', { id: 'field-query' }, h('legend', {}, 'Query parameters'), query.element, h('span', { class: 'field-error', id: 'query-error', role: 'alert' })),
    h('fieldset', {}, h('legend', {}, 'Body'), field('body-type', 'Format', bodyType), templateBox, formBox,
      h('span', { class: 'field-error', id: 'body-error', role: 'alert' })),
    h('div', { class: 'field' }, h('label', { for: 'enabled' }, enabled, ' Enabled')),
    formError,
    h('div', { class: 'actions' }, save, h('a', { class: 'button quiet', href: existing ? link(['webhooks', id]) : '#/webhooks' }, 'Cancel')));
  formEl.addEventListener('input', refreshPreview);
  formEl.addEventListener('change', refreshPreview);
  formEl.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const el of formEl.querySelectorAll('.field-error')) el.textContent = '';
    for (const el of formEl.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    formError.replaceChildren();
    save.disabled = true;
    try {
      const def = read();
      if (existing) {
        await api('PATCH', `/v1/webhooks/${encodeURIComponent(id)}`, def);
        toast('Saved.');
        location.hash = link(['webhooks', id]);
      } else {
        const created = await api('POST', '/v1/webhooks', def);
        sessionStorage.setItem(`kivihook.new-secret.${created.id}`, created.secret);
        location.hash = link(['webhooks', created.id]);
      }
    } catch (e) {
      showFieldError(formEl, e, formError);
    } finally {
      save.disabled = false;
    }
  });

  render(
    h('div', { class: 'page-head' }, h('h1', { id: 'form-title' }, existing ? `Edit ${w.name}` : 'New webhook')),
    h('div', { class: 'editor' },
      h('div', { class: 'panel' }, formEl),
      h('aside', { class: 'panel preview', 'aria-labelledby': 'preview-title' },
        h('h2', { id: 'preview-title' }, 'Preview'),
        h('p', { class: 'hint' }, 'The request a sample event would make, credentials and signature masked.'),
        h('div', { class: 'field' }, h('label', { for: 'preview-type' }, 'Sample event'), previewType),
        previewOut)));
  announce(existing ? `Edit ${w.name}` : 'New webhook');
  refreshPreview();
}

/** Put a 422 next to the control it names, or above the buttons. */
function showFieldError(formEl, e, fallback) {
  const f = e.field || '';
  const root = f.split(/[.[]/)[0];
  const target = {
    name: 'name', url: 'url', method: 'method', events: 'events', clinic_ids: 'clinic_ids',
    headers: 'headers', query: 'query', auth: 'auth', body: f.startsWith('body.template') ? 'body-template' : f.startsWith('body.fields') ? 'body-fields' : 'body',
  }[root];
  const slot = target && formEl.querySelector(`#${target}-error`);
  if (slot) {
    slot.textContent = errorText(e);
    const control = formEl.querySelector(`#${target}`) || formEl.querySelector(`#field-${target} input, #field-${target} textarea`);
    if (control) {
      control.setAttribute('aria-invalid', 'true');
      control.focus();
    }
  } else {
    fallback.replaceChildren(h('p', { class: 'error-box' }, errorText(e)));
  }
}

// ---------------------------------------------------------------------------------------
// Picking one webhook among thousands

/** Webhooks a picker offers at once; its search box finds the others. */
const PICKER_SHOWN = 100;

/** A `Webhook` select (id `filter-webhook`) of the webhooks a search finds, with the search
 *  box that narrows it; `selectedId` stays offered whatever the search. `onPick` runs when
 *  a webhook is chosen. Resolves to the fields once the first list is in. */
async function webhookPicker(selectedId, anyLabel, onPick) {
  const select = h('select', { id: 'filter-webhook' });
  const input = h('input', { type: 'search', id: 'filter-webhook-search', autocomplete: 'off', 'aria-describedby': 'filter-webhook-hint' });
  const hint = h('span', { class: 'hint', id: 'filter-webhook-hint' });
  let selected = null;
  let asked = 0;
  const fill = async (q) => {
    const mine = ++asked;
    const params = new URLSearchParams({ limit: String(PICKER_SHOWN) });
    if (q) params.set('q', q);
    const list = await api('GET', `/v1/webhooks?${params}`);
    if (selectedId && !selected) {
      selected = list.webhooks.find((w) => w.id === selectedId)
        || await api('GET', `/v1/webhooks/${encodeURIComponent(selectedId)}`).catch(() => null);
    }
    if (mine !== asked) return;
    const hooks = selected && !list.webhooks.some((w) => w.id === selected.id) ? [selected, ...list.webhooks] : list.webhooks;
    select.replaceChildren(...(anyLabel ? [h('option', { value: '' }, anyLabel)] : []),
      ...hooks.map((w) => h('option', { value: w.id, selected: w.id === selectedId }, w.name)));
    hint.textContent = list.total > list.webhooks.length
      ? `${number(list.webhooks.length)} of ${number(list.total)} listed; search to find the others.`
      : (q ? `${number(list.total)} found.` : '');
  };
  await fill('');
  let timer = null;
  input.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => fill(input.value.trim()).catch((e) => { hint.textContent = errorText(e); }), 250);
  });
  select.addEventListener('change', () => onPick(select.value));
  return [
    h('div', { class: 'field' }, h('label', { for: 'filter-webhook-search' }, 'Search by name or URL'), input, hint),
    h('div', { class: 'field' }, h('label', { for: 'filter-webhook' }, 'Webhook'), select),
  ];
}

// ---------------------------------------------------------------------------------------
// Deliveries: the attempt log of one webhook, or every attempt of one event

async function deliveriesPage(query) {
  const mine = generation;
  let webhookId = query.get('webhook') || '';
  if (!webhookId) {
    const first = await api('GET', '/v1/webhooks?limit=1');
    webhookId = (first.webhooks[0] && first.webhooks[0].id) || '';
  }
  if (mine !== generation) return;
  const outcome = query.get('outcome') || '';

  const eventInput = h('input', { type: 'text', id: 'event-id', placeholder: 'evt_…', 'aria-describedby': 'event-id-hint' });
  const findEvent = h('form', { class: 'filters', role: 'search', 'aria-label': 'Find an event' },
    h('div', { class: 'field' }, h('label', { for: 'event-id' }, 'Event id'), eventInput,
      h('span', { class: 'hint', id: 'event-id-hint' }, 'Every webhook\'s attempts for one event.')),
    h('button', { type: 'submit', class: 'quiet' }, 'Find event'));
  findEvent.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = eventInput.value.trim();
    if (v) location.hash = link(['events', v]);
  });

  const head = h('div', { class: 'page-head' }, h('h1', {}, 'Deliveries'));
  if (!webhookId) {
    render(head, findEvent, h('div', { class: 'panel empty' }, h('h2', {}, 'Nothing delivered yet'),
      h('p', {}, 'Attempts appear here once a webhook exists and events arrive.'),
      h('a', { class: 'button', href: '#/webhooks/new' }, 'Create a webhook')));
    return announce('Deliveries');
  }
  const outcomeSelect = h('select', { id: 'filter-outcome' },
    [['', 'Any outcome'], ['delivered', 'Delivered'], ['failed', 'Failed (any)'], ['retry', 'Failed, retrying'], ['dead', 'Failed, dead letter'], ['disabled', 'Failed, webhook disabled']]
      .map(([v, t]) => h('option', { value: v, selected: v === outcome }, t)));
  const go = (id) => { location.hash = link(['deliveries'], { webhook: id, outcome: outcomeSelect.value }); };
  const picker = await webhookPicker(webhookId, null, go);
  if (mine !== generation) return;
  outcomeSelect.addEventListener('change', () => go(webhookId));

  const rowsBox = h('div', { id: 'attempts' });
  render(head,
    h('div', { class: 'filters' }, picker,
      h('div', { class: 'field' }, h('label', { for: 'filter-outcome' }, 'Outcome'), outcomeSelect)),
    rowsBox, findEvent);
  announce('Deliveries');
  await attemptsTable(rowsBox, webhookId, { outcome }, mine);
}

async function attemptsTable(box, webhookId, filters, mine, offset = 0, tbody = null) {
  const params = new URLSearchParams({ limit: '25', offset: String(offset) });
  if (filters.outcome) params.set('outcome', filters.outcome);
  if (filters.event) params.set('event_id', filters.event);
  let page;
  try {
    page = await api('GET', `/v1/webhooks/${encodeURIComponent(webhookId)}/attempts?${params}`);
  } catch (e) {
    box.append(loadFailed('the attempt log', e));
    return;
  }
  if (mine !== generation) return;
  if (!tbody) {
    if (page.attempts.length === 0) {
      box.replaceChildren(h('div', { class: 'panel empty', id: 'no-attempts' },
        h('p', {}, filters.outcome ? 'No attempts with this outcome in the log.' : 'No attempts yet. Send a test from the webhook\'s page, or post an event.')));
      return;
    }
    tbody = h('tbody', {});
    box.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { id: 'attempts-table' },
      h('caption', { class: 'visually-hidden' }, 'Attempts, newest first'),
      h('thead', {}, h('tr', {}, ['When', 'Event', 'Attempt', 'Result', 'Outcome'].map((t) => h('th', { scope: 'col' }, t)), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
      tbody)));
  }
  for (const a of page.attempts) tbody.append(...attemptRows(a));
  box.querySelector('.more')?.remove();
  if (page.next_offset !== null && page.next_offset !== undefined) {
    box.append(h('button', { type: 'button', class: 'quiet more', onclick: () => attemptsTable(box, webhookId, filters, mine, page.next_offset, tbody) }, 'Load more'));
  }
}

function attemptRows(a) {
  const detailId = `attempt-${a.id}`;
  const detail = h('tr', { class: 'detail-row', id: detailId, hidden: true }, h('td', { colspan: '6' }, attemptDetail(a)));
  const toggle = h('button', { type: 'button', class: 'quiet small', 'aria-expanded': 'false', 'aria-controls': detailId }, 'Details');
  toggle.addEventListener('click', () => {
    const open = detail.hidden;
    detail.hidden = !open;
    toggle.setAttribute('aria-expanded', String(open));
  });
  const resendable = !a.test && a.request_body;
  const resend = resendable ? h('button', { type: 'button', class: 'quiet small' }, 'Resend') : null;
  if (resend) {
    resend.addEventListener('click', async () => {
      resend.disabled = true;
      try {
        await api('POST', `/v1/attempts/${encodeURIComponent(a.id)}/resend`);
        toast('Resend scheduled: it is attempted again within seconds.');
      } catch (e) {
        toast(`Could not resend: ${errorText(e)}`);
        resend.disabled = false;
      }
    });
  }
  return [h('tr', { class: 'attempt-row' },
    h('td', { 'data-label': 'When' }, when(a.at)),
    h('td', { 'data-label': 'Event' }, a.event_type, h('div', { class: 'hint mono' }, a.test ? 'test send' : h('a', { href: link(['events', a.event_id]) }, a.event_id))),
    h('td', { 'data-label': 'Attempt' }, `#${a.attempt}`),
    h('td', { 'data-label': 'Result' }, httpStatus(a.status), ` ${a.duration_ms} ms`, a.error_kind ? h('div', { class: 'hint' }, a.error_kind) : null),
    h('td', { 'data-label': 'Outcome' }, outcomeBadge(a.outcome, a.test)),
    h('td', {}, h('div', { class: 'actions' }, toggle, resend))), detail];
}

function attemptDetail(a) {
  // Labels, not headings: these rows sit under the page heading at any depth.
  const label = (t) => h('p', { class: 'detail-label' }, h('strong', {}, t));
  return h('div', {},
    label('Request'), h('pre', {}, `${a.method} ${a.url}\nwebhook-id: ${a.message_id}`),
    label('Request body'), h('pre', {}, a.rendered_body || a.request_body || '(not kept)'),
    a.error ? [label('Error'), h('pre', {}, a.error)] : null,
    label('Response headers'), h('pre', {}, Object.entries(a.response_headers || {}).map(([k, v]) => `${k}: ${v}`).join('\n') || '(none)'),
    label('Response body'), h('pre', {}, a.response_body || '(empty)'));
}

async function eventPage(eventId) {
  const mine = generation;
  let ev;
  try {
    ev = await api('GET', `/v1/events/${encodeURIComponent(eventId)}`);
  } catch (e) {
    if (e.status !== 404) throw e;
    render(h('div', { class: 'page-head' }, h('h1', {}, 'Event not found')),
      h('div', { class: 'panel empty' }, h('p', {}, `No event ${eventId} was accepted within the deduplication window.`),
        h('a', { href: '#/deliveries' }, 'Back to deliveries')));
    return announce('Event not found');
  }
  if (mine !== generation) return;
  const sections = ev.webhooks.map((t) => {
    const box = h('div', {});
    attemptsTable(box, t.webhook_id, { event: eventId }, mine);
    return h('section', { class: 'panel' },
      h('h2', {}, t.name || t.webhook_id, ' ', outcomeBadge(t.status === 'retrying' ? 'retry' : t.status)),
      t.next_attempt_at ? h('p', { class: 'hint' }, `Attempt ${t.next_attempt} is due ${when(t.next_attempt_at)}.`) : null,
      box);
  });
  render(h('div', { class: 'page-head' }, h('h1', {}, `Event ${eventId}`)),
    h('p', {}, `${ev.type || 'unknown type'} · clinic ${ev.clinic_id || '—'} · received ${when(ev.received_at)}`),
    sections.length ? sections : h('div', { class: 'panel empty' }, h('p', {}, 'No webhook subscribes to this event.')));
  announce(`Event ${eventId}`);
}

// ---------------------------------------------------------------------------------------
// Dead letters

async function deadLettersPage(query) {
  const mine = generation;
  const webhookId = query.get('webhook') || '';
  const params = new URLSearchParams({ limit: '100' });
  if (webhookId) params.set('webhook_id', webhookId);
  const page = await api('GET', `/v1/dead-letters?${params}`);
  // The names of just the webhooks on this page: there may be thousands of others.
  const ids = [...new Set(page.dead_letters.map((d) => d.webhook_id).concat(webhookId ? [webhookId] : []))];
  const named = await Promise.all(ids.map((id) => api('GET', `/v1/webhooks/${encodeURIComponent(id)}`).catch(() => null)));
  const names = new Map(named.filter(Boolean).map((w) => [w.id, w.name]));
  const picker = await webhookPicker(webhookId, 'Every webhook', (id) => { location.hash = link(['dead-letters'], { webhook: id }); });
  if (mine !== generation) return;

  const replayAll = webhookId && page.total > 0 ? h('button', { type: 'button', id: 'replay-all' }, `Replay all ${number(page.total)}`) : null;
  if (replayAll) {
    replayAll.addEventListener('click', async () => {
      const name = names.get(webhookId) || webhookId;
      if (!await confirmAction(`Replay every dead letter of ${name}?`, `${number(page.total)} events are attempted again now, in the order they failed.`, 'Replay all')) return;
      replayAll.disabled = true;
      try {
        const r = await api('POST', `/v1/webhooks/${encodeURIComponent(webhookId)}/dead-letters/replay`);
        toast(`${number(r.replayed)} replayed${r.remaining ? `; ${number(r.remaining)} remain` : ''}.`);
        route();
      } catch (e) {
        toast(`Could not replay: ${errorText(e)}`);
        replayAll.disabled = false;
      }
    });
  }

  const head = h('div', { class: 'page-head' }, h('h1', {}, 'Dead letters'), h('div', { class: 'actions' }, replayAll));
  const filters = h('div', { class: 'filters' }, picker);
  if (page.dead_letters.length === 0) {
    render(head, filters, h('div', { class: 'panel empty', id: 'no-dead-letters' }, h('h2', {}, 'No dead letters'),
      h('p', {}, 'Events that fail every retry wait here to be replayed. None are waiting.')));
    return announce('Dead letters');
  }
  const rows = page.dead_letters.map((d) => {
    const replay = h('button', { type: 'button', class: 'quiet small' }, 'Replay');
    replay.addEventListener('click', async () => {
      replay.disabled = true;
      try {
        await api('POST', `/v1/dead-letters/${encodeURIComponent(d.id)}/replay`);
        toast('Replay scheduled.');
        route();
      } catch (e) {
        toast(`Could not replay: ${errorText(e)}`);
        replay.disabled = false;
      }
    });
    return h('tr', {},
      h('td', { 'data-label': 'Failed' }, when(d.failed_at)),
      h('td', { 'data-label': 'Webhook' }, h('a', { href: link(['webhooks', d.webhook_id]) }, names.get(d.webhook_id) || d.webhook_id)),
      h('td', { 'data-label': 'Event' }, d.event_type, h('div', { class: 'hint mono' }, h('a', { href: link(['events', d.event_id]) }, d.event_id))),
      h('td', { 'data-label': 'Attempts' }, d.attempts),
      h('td', { 'data-label': 'Last error' }, d.last_status ? [httpStatus(d.last_status), ' '] : null, d.last_error),
      h('td', {}, replay));
  });
  render(head, filters,
    h('p', { class: 'hint' }, `${number(page.total)} waiting${page.total > page.dead_letters.length ? `; the newest ${page.dead_letters.length} are shown` : ''}.`),
    h('div', { class: 'table-wrap' }, h('table', { id: 'dead-letters-table' },
      h('caption', { class: 'visually-hidden' }, 'Dead letters, newest first'),
      h('thead', {}, h('tr', {}, ['Failed', 'Webhook', 'Event', 'Attempts', 'Last error'].map((t) => h('th', { scope: 'col' }, t)), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
      h('tbody', {}, rows))));
  announce('Dead letters');
}

route();

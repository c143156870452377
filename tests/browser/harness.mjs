// What every browser test script shares: its settings from the environment, Chromium on a
// fresh profile with one desktop-sized page, the problems the page reports (a script error,
// a refused resource), numbered `ok N - …` steps, screenshots, the axe-core check, and the
// end of a run (the plan on success; the error, the problems and a screenshot on failure).
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** A setting the script cannot run without. */
export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/**
 * Start Chromium and open one page. Screenshots go to `shots`, named `<prefix><name>.png`.
 * A console error fails the run unless `expectedConsole` matches it.
 */
export async function start({ shots, prefix = '', expectedConsole = null }) {
  mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  // A fresh profile (Playwright's default): nothing from an earlier run leaks in.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);

  // Any script error or refused resource (CSP included) fails the run.
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !(expectedConsole && expectedConsole.test(m.text()))) {
      problems.push(`console error: ${m.text()}`);
    }
  });

  let step = 0;
  const ok = (what) => {
    step += 1;
    console.log(`ok ${step} - ${what}`);
  };
  const shot = async (name) => {
    const path = join(shots, `${prefix}${name}.png`);
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot ${path}`);
  };
  /** Serious and critical accessibility violations fail the run. */
  const accessible = async (name) => {
    const hasAxe = await page.evaluate(() => typeof window.axe !== 'undefined');
    if (!hasAxe) await page.evaluate(axeSource);
    const result = await page.evaluate(async () => {
      const r = await window.axe.run(document, { resultTypes: ['violations'] });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
    });
    const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    for (const v of result) console.log(`  axe ${name}: ${v.impact} ${v.id}: ${v.help} (${v.nodes.join(', ')})`);
    check(bad.length === 0, `${name} has ${bad.length} serious accessibility violations`);
  };
  const heading = async (text) => {
    await page.getByRole('heading', { level: 1, name: text }).waitFor();
  };
  /** Run the script's steps, then close the browser; a failure exits with 1. */
  const run = async (steps) => {
    try {
      await steps();
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
  };
  return { page, ok, shot, accessible, heading, run };
}

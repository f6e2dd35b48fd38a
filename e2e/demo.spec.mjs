// `handoff demo` in a browser: a person opens the one-time sign-in link the demo printed for
// one of its human agents, goes available, gets a screen pop from the demo's simulated IVR,
// accepts it with the keyboard and completes it. Run by crates/handoff/tests/demo.rs, which
// starts the demo and passes HANDOFF_URL, HANDOFF_SIGNIN_LINK, HANDOFF_AGENT_ID, CHROMIUM and
// ARTIFACTS.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { launchChromium } from './chromium.mjs';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through crates/handoff/tests/demo.rs)`);
  return value;
}

const BASE = required('HANDOFF_URL');
const LINK = new URL(required('HANDOFF_SIGNIN_LINK'), BASE).href;
const AGENT = required('HANDOFF_AGENT_ID');
const ARTIFACTS = process.env.ARTIFACTS || path.resolve('e2e/artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

const STEP = 10_000; // the longest any single page condition may take
const POP = 60_000; // the demo's calls arrive every few hundred ms, but routing waits on skills
const TEST = { timeout: 120_000 };

let browser;
let page;
const problems = [];

before(async () => {
  browser = await launchChromium();
  page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(STEP);
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('dialog', (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
});

after(async () => {
  await browser?.close();
});

test('the printed sign-in link opens the desktop of the agent it names', TEST, async () => {
  await page.goto(LINK);
  await page.waitForURL(BASE + '/');
  await page.locator('[data-testid=connection-state][data-state="live"]').waitFor();
  const who = await page.locator('#who').textContent();
  assert.ok(who.includes(`(${AGENT})`), `the desktop is ${AGENT}'s: ${who}`);
});

test('the agent goes available and the demo pops a call, accepted by keyboard and completed', TEST, async () => {
  await page.waitForFunction(() => !document.getElementById('presence-select').disabled);
  await page.getByTestId('presence-select').selectOption('available');
  await page.waitForFunction(() => document.getElementById('presence-select').dataset.status === 'available');
  const pop = page.getByTestId('pop').first();
  await pop.waitFor({ timeout: POP });
  const caller = (await pop.getByTestId('pop-caller').textContent()).trim();
  assert.ok(caller.length > 0, 'the pop names the caller');
  const context = await pop.getByTestId('pop-context').textContent();
  assert.ok(context.includes('account'), `the IVR's context is shown: ${context}`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'demo-desktop-pop.png'), fullPage: true });
  // Away from any input, "a" accepts the oldest ringing offer.
  await page.evaluate(() => document.activeElement?.blur());
  await page.keyboard.press('a');
  await page.getByTestId('work-card').first().waitFor();
  await page.getByTestId('work-disposition').first().fill('resolved');
  await page.getByTestId('work-complete').first().click();
  await page.getByTestId('work-card').first().waitFor({ state: 'detached' });
  // Away again, so the demo's calls stop ringing this desktop while the test ends.
  await page.getByTestId('presence-select').selectOption('away:break');
  await page.waitForFunction(() => document.getElementById('presence-select').dataset.status === 'away');
});

test('no page error or dialog happened', TEST, () => {
  assert.deepEqual(problems, []);
});

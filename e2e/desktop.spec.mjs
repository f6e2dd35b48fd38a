// Browser end-to-end tests of the agent desktop (`/`), the sign-in page and the supervisor view,
// in headless Chromium driven by playwright-core. Run by crates/handoff/tests/browser.rs, which
// starts the real binary, sets it up over HTTP and passes:
//   HANDOFF_URL, HANDOFF_ADMIN_TOKEN, HANDOFF_ALICE_TOKEN, HANDOFF_IVR_TOKEN,
//   HANDOFF_SUPERVISOR_LINK (a one-time sign-in path), CHROMIUM, ARTIFACTS.
// The tests in this file run in order and share one browser: each builds on the state before it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import path from 'node:path';
import { launchChromium } from './chromium.mjs';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through crates/handoff/tests/browser.rs)`);
  return value;
}

const BASE = required('HANDOFF_URL');
const ADMIN = required('HANDOFF_ADMIN_TOKEN');
const ALICE = required('HANDOFF_ALICE_TOKEN');
const IVR = required('HANDOFF_IVR_TOKEN');
const SUPERVISOR_LINK = required('HANDOFF_SUPERVISOR_LINK');
const ARTIFACTS = process.env.ARTIFACTS || path.resolve('e2e/artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

const STEP = 5_000; // the longest any single page condition may take
const TEST = { timeout: 30_000 };

async function http(method, urlPath, token, body) {
  const init = { method, headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(STEP) };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method === 'PATCH') init.headers['content-type'] = 'application/merge-patch+json';
  const response = await fetch(BASE + urlPath, init);
  const text = await response.text();
  assert.ok(response.ok, `${method} ${urlPath}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const offer = (body) => http('POST', '/v1/interactions', IVR, { target: { agent: 'alice' }, ...body });

let browser;
let desk; // alice's desktop
const problems = []; // page errors and dialogs: none are expected

function watch(page, name) {
  page.on('pageerror', (error) => problems.push(`${name}: page error: ${error.message}`));
  page.on('dialog', (dialog) => {
    problems.push(`${name}: dialog: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
}

const live = (page) =>
  page.locator('[data-testid=connection-state][data-state="live"]').waitFor({ timeout: STEP });

before(async () => {
  browser = await launchChromium();
  const context = await browser.newContext();
  // Counts the most pop elements ever present at once, across the page's whole life.
  await context.addInitScript(() => {
    window.__maxPops = 0;
    const count = () => {
      const n = document.querySelectorAll('[data-testid=pop]').length;
      if (n > window.__maxPops) window.__maxPops = n;
    };
    new MutationObserver(count).observe(document, { childList: true, subtree: true });
  });
  desk = await context.newPage();
  desk.setDefaultTimeout(STEP);
  watch(desk, 'desktop');
});

after(async () => {
  await browser?.close();
});

test('alice signs in with her token', TEST, async () => {
  await desk.goto(BASE + '/');
  await desk.waitForURL(/\/signin/);
  await desk.getByTestId('signin-agent').fill('alice');
  await desk.getByTestId('signin-token').fill(ALICE);
  await desk.getByTestId('signin-submit').click();
  await desk.waitForURL(BASE + '/');
  await live(desk);
});

/** Picks a presence on alice's desktop and waits for the server's answer to show there. */
async function setPresence(value) {
  const status = value.split(':')[0];
  const select = desk.getByTestId('presence-select');
  await desk.waitForFunction(() => !document.getElementById('presence-select').disabled, null, { timeout: STEP });
  if ((await select.inputValue()) === value && (await select.getAttribute('data-status')) === status) return;
  await select.selectOption(value);
  await desk.waitForFunction(
    (wanted) => document.getElementById('presence-select').dataset.status === wanted,
    status,
    { timeout: STEP },
  );
}

test('alice sets herself available', TEST, async () => {
  await setPresence('available');
});

test('the IVR posts an interaction and the pop appears within a second', TEST, async () => {
  const started = performance.now();
  const posted = offer({ caller: '+15551234567', context: { account: 'A-1' } });
  // Wait for any pop, so the clock stops when it shows, not when the POST's answer arrives.
  await desk.getByTestId('pop').waitFor({ timeout: STEP });
  const elapsed = performance.now() - started;
  const created = await posted;
  console.log(`pop shown ${elapsed.toFixed(0)} ms after the IVR's POST started`);
  assert.ok(elapsed < 1000, `the pop took ${elapsed.toFixed(0)} ms`);
  const pop = desk.locator(`[data-testid=pop][data-interaction-id="${created.id}"]`);
  await pop.waitFor();
  assert.equal((await pop.getByTestId('pop-caller').textContent()).trim(), '+15551234567');

  // Accept, note, complete.
  await pop.getByTestId('pop-accept').click();
  await desk.getByTestId('work-card').waitFor();
  assert.equal(await desk.getByTestId('pop').count(), 0, 'the pop is gone once accepted');
  await desk.getByTestId('work-notes').fill('Asked about the March invoice');
  await desk.getByTestId('work-disposition').fill('resolved');
  await desk.getByTestId('work-complete').click();
  await desk.getByTestId('work-card').waitFor({ state: 'detached' });
  const view = await http('GET', `/v1/interactions/${created.id}`, ADMIN);
  assert.equal(view.state, 'completed');
  assert.equal(view.notes, 'Asked about the March invoice');
});

/**
 * The page's own record of the most pops ever shown since it loaded must never pass one: gives
 * any replayed or duplicate offer a moment to land, failing at once if it does.
 */
async function assertExactlyOnePop() {
  const watched = performance.now();
  const duplicate = await desk
    .waitForFunction(() => window.__maxPops > 1, null, { timeout: 750, polling: 50 })
    .then(
      () => 'a second pop element appeared',
      (error) => (error.name === 'TimeoutError' ? null : `watching for a second pop failed: ${error.message}`),
    );
  assert.equal(duplicate, null);
  assert.ok(performance.now() - watched >= 700, 'the page was watched for duplicate pops');
  assert.equal(await desk.evaluate(() => window.__maxPops), 1, 'the observer saw exactly one pop');
  assert.equal(await desk.getByTestId('pop').count(), 1);
}

test('a pop offered while the desktop was closed is shown once, and "a" accepts it', TEST, async () => {
  await desk.goto('about:blank');
  const created = await offer({ caller: '+15550000004', context: { account: 'A-4' } });
  await desk.goto(BASE + '/');
  await live(desk);
  const pop = desk.locator(`[data-testid=pop][data-interaction-id="${created.id}"]`);
  await pop.waitFor();
  await assertExactlyOnePop();
  await desk.evaluate(() => document.activeElement?.blur());
  await desk.keyboard.press('a');
  await desk.getByTestId('work-card').waitFor();
  await desk.getByTestId('work-complete').click();
  await desk.getByTestId('work-card').waitFor({ state: 'detached' });
  const view = await http('GET', `/v1/interactions/${created.id}`, ADMIN);
  assert.equal(view.state, 'completed');
});

test("today's list comes from the server: a new tab shows the calls completed today", TEST, async () => {
  const tab = await desk.context().newPage();
  tab.setDefaultTimeout(STEP);
  watch(tab, 'second tab');
  try {
    await tab.goto(BASE + '/');
    await live(tab);
    const completed = tab.locator('[data-testid=today-row][data-state="completed"]');
    await tab.waitForFunction(
      () => document.querySelectorAll('[data-testid=today-row][data-state="completed"]').length >= 2,
    );
    const outcomes = await completed.getByTestId('today-outcome').allTextContents();
    assert.ok(
      outcomes.some((text) => text.includes('Completed · resolved')),
      `the first call's disposition is shown: ${JSON.stringify(outcomes)}`,
    );
  } finally {
    await tab.close();
  }
});

test('a reload during an offer shows the pop exactly once', TEST, async () => {
  const created = await offer({ caller: '+15550000002' });
  const pop = desk.locator(`[data-testid=pop][data-interaction-id="${created.id}"]`);
  await pop.waitFor();
  await desk.reload();
  await live(desk);
  await pop.waitFor();
  await assertExactlyOnePop();
  await pop.getByTestId('pop-reject').click();
  await pop.waitFor({ state: 'detached' });
});

test('a hostile context renders as text and runs no script', TEST, async () => {
  const created = await offer({
    caller: '+15550000003',
    context: {
      name: '<img src=x onerror=window.__xss=1>',
      link: 'javascript:alert(1)',
      note: '<script>window.__xss=2</script>',
    },
  });
  const pop = desk.locator(`[data-testid=pop][data-interaction-id="${created.id}"]`);
  await pop.waitFor();
  const context = pop.getByTestId('pop-context');
  const text = await context.textContent();
  assert.ok(text.includes('<img src=x onerror=window.__xss=1>'), `context shown as text: ${text}`);
  assert.ok(text.includes('javascript:alert(1)'), `javascript: value shown as text: ${text}`);
  assert.equal(await pop.locator('img').count(), 0, 'no <img> inside the pop');
  assert.equal(await pop.locator('script').count(), 0, 'no <script> inside the pop');
  assert.equal(await pop.locator('a[href^="javascript" i]').count(), 0, 'no javascript: link');
  assert.equal(await desk.evaluate(() => window.__xss), undefined, 'window.__xss stays undefined');
  await desk.screenshot({ path: path.join(ARTIFACTS, 'desktop-pop.png'), fullPage: true });
  await pop.getByTestId('pop-reject').click();
  await pop.waitFor({ state: 'detached' });
  assert.equal(await desk.evaluate(() => window.__xss), undefined, 'window.__xss stays undefined');
});

test('what the CRM finds after the pop and an update of the context redraw the card', TEST, async () => {
  // A CRM on loopback that holds its answer until the pop is on screen.
  let release;
  const released = new Promise((resolve) => (release = resolve));
  const crm = createServer(async (request, response) => {
    await released;
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ contacts: [{ name: 'Zoë Ångström', tier: 'gold' }] }));
  });
  await new Promise((resolve) => crm.listen(0, '127.0.0.1', resolve));
  const { port } = crm.address();
  await http('PUT', '/v1/connectors/crm', ADMIN, {
    lookup: {
      url: `http://127.0.0.1:${port}/contacts?phone={{ caller }}`,
      fields: { name: '$.contacts[0].name', tier: '$.contacts[0].tier' },
    },
  });
  // Two rejected pops in a row set alice away (max_missed_offers): she comes back first.
  await http('PUT', '/v1/agents/alice/presence', ALICE, { status: 'available' });
  try {
    const created = await offer({ caller: '+15550000004', context: { intent: 'billing' } });
    const pop = desk.locator(`[data-testid=pop][data-interaction-id="${created.id}"]`);
    await pop.waitFor();
    assert.ok(await pop.getByTestId('pop-crm-fields').isHidden(), 'nothing found yet');
    release();
    const found = pop.locator('[data-testid=crm-connector][data-connector="crm"]');
    await found.waitFor();
    const text = await found.textContent();
    assert.ok(text.includes('Zoë Ångström') && text.includes('gold'), `CRM fields shown: ${text}`);
    await http('PATCH', `/v1/interactions/${created.id}/context`, IVR, { verified: 'by PIN' });
    await pop.getByTestId('pop-context').filter({ hasText: 'by PIN' }).waitFor();
    await desk.screenshot({ path: path.join(ARTIFACTS, 'desktop-pop-crm.png'), fullPage: true });
    await pop.getByTestId('pop-reject').click();
    await pop.waitFor({ state: 'detached' });
  } finally {
    await http('PUT', '/v1/agents/alice/presence', ALICE, { status: 'away' });
    release();
    await http('DELETE', '/v1/connectors/crm', ADMIN);
    crm.close();
  }
});

test("the supervisor view shows alice's presence change live", TEST, async () => {
  const context = await browser.newContext();
  const board = await context.newPage();
  board.setDefaultTimeout(STEP);
  watch(board, 'supervisor');
  try {
    const opened = Date.now();
    await board.goto(BASE + SUPERVISOR_LINK);
    await board.waitForURL(BASE + '/supervisor');
    await live(board);
    // The chart starts from the hour the server kept, not from when the page opened.
    await board.getByTestId('chart-queue').selectOption('billing');
    const chart = board.locator('[data-testid=queue-chart][data-first-at]:not([data-first-at=""])');
    await chart.waitFor();
    const firstAt = Date.parse(await chart.getAttribute('data-first-at'));
    assert.ok(firstAt < opened, `the chart's first point (${new Date(firstAt).toISOString()}) is from before the page opened`);
    const row = (presence) =>
      board.locator(`[data-testid=agent-row][data-agent-id="alice"]${presence ? `[data-presence="${presence}"]` : ''}`);
    // Two rejected offers in a row set alice away (a missed-offers rule): make her available
    // again. Her desk learns of the rule from its stream; until it has, its selector still says
    // "available" and setPresence would change nothing (a race seen once under CI's load).
    await desk.waitForFunction(
      () => document.getElementById('presence-select').dataset.status === 'away',
      null,
      { timeout: STEP },
    );
    await setPresence('available');
    await row('available').waitFor();
    await setPresence('away:lunch');
    await row('away').waitFor();
    const queue = board.getByTestId('queue-row').filter({ hasText: 'billing' });
    await queue.waitFor();
    await board.screenshot({ path: path.join(ARTIFACTS, 'supervisor.png'), fullPage: true });
    await setPresence('available');
    await row('available').waitFor();
  } finally {
    await context.close();
  }
});

test("alice's page cannot open bob's stream", TEST, async () => {
  const outcome = await desk.evaluate(
    (limit) =>
      new Promise((resolve) => {
        const result = { opened: false, messages: 0, closed: false, code: null };
        const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/agents/bob/stream`);
        ws.onopen = () => { result.opened = true; };
        ws.onmessage = () => { result.messages += 1; };
        ws.onclose = (event) => { result.closed = true; result.code = event.code; resolve(result); };
        setTimeout(() => { ws.close(); resolve(result); }, limit);
      }),
    STEP,
  );
  console.log(`bob's stream from alice's page: ${JSON.stringify(outcome)}`);
  assert.equal(outcome.closed, true, 'the socket is refused or closed by the server');
  assert.equal(outcome.messages, 0, 'no message from bob\'s stream reaches alice\'s page');
});

test('on a call: the CRM page opens in a frame when chosen, and a transfer carries its note', TEST, async () => {
  // Another origin on loopback, where nothing listens: the frame's address is what is checked.
  const crm = 'http://127.0.0.1:9/crm/search?phone={{ caller }}&acct={{ context.account }}';
  await http('PUT', '/v1/queues/crm', ADMIN, { pop_url: crm, wrap_up_s: 0 });
  await desk.getByTestId('crm-mode').selectOption('frame');
  const created = await http('POST', '/v1/interactions', IVR, {
    caller: '+1 555 & Co/#1',
    context: { account: 'Å-7' },
    target: { queue: 'crm' },
  });
  const pop = desk.locator(`[data-testid=pop][data-interaction-id="${created.id}"]`);
  await pop.waitFor();
  await pop.getByTestId('pop-crm-link').click();
  const frame = desk.getByTestId('crm-frame');
  await frame.waitFor({ state: 'attached' });
  assert.equal(
    await frame.getAttribute('src'),
    'http://127.0.0.1:9/crm/search?phone=%2B1%20555%20%26%20Co%2F%231&acct=%C3%85-7',
  );
  await pop.getByTestId('pop-accept').click();
  const card = desk.locator(`[data-testid=work-card][data-interaction-id="${created.id}"]`);
  await card.waitFor();
  await card.getByTestId('work-transfer').locator('summary').click();
  await card.getByTestId('transfer-kind').selectOption('agent');
  await card.getByTestId('transfer-target').fill('bob');
  await card.getByTestId('transfer-note').fill('Wants the March invoice resent');
  await card.getByTestId('transfer-submit').click();
  await card.waitFor({ state: 'detached' });
  const view = await http('GET', `/v1/interactions/${created.id}`, ADMIN);
  assert.deepEqual(view.target, { queue: 'crm' }, 'the original target stays on record');
  assert.equal(view.transfer_note, 'Wants the March invoice resent');
  const transferred = view.history.find((event) => event.type === 'interaction.transferred');
  assert.deepEqual(transferred.data.target, { agent: 'bob' });
  assert.equal(transferred.data.from, 'alice');
  // Bob is offline: the caller waits for him. The IVR hangs up to end it.
  await http('POST', `/v1/interactions/${created.id}/hangup`, IVR);
  await desk.getByTestId('crm-mode').selectOption('tab');
});

test('a hidden tab gets a notification and a tone for a new pop; a visible one does not', TEST, async () => {
  const context = await browser.newContext();
  // Records what the page asks of the Notification and Web Audio APIs: headless Chromium has
  // neither a notification centre nor speakers.
  await context.addInitScript(() => {
    window.__notifications = [];
    window.__tones = 0;
    window.__hidden = false;
    Object.defineProperty(document, 'hidden', { get: () => window.__hidden, configurable: true });
    window.Notification = class {
      static permission = 'granted';
      static requestPermission() {
        return Promise.resolve('granted');
      }
      constructor(title, options = {}) {
        window.__notifications.push({ title, body: options.body, tag: options.tag });
      }
      addEventListener() {}
      close() {}
    };
    window.AudioContext = class {
      constructor() {
        this.state = 'running';
        this.currentTime = 0;
        this.destination = {};
      }
      resume() {
        return Promise.resolve();
      }
      createOscillator() {
        return { frequency: {}, connect() {}, start() { window.__tones += 1; }, stop() {} };
      }
      createGain() {
        return { gain: { setValueAtTime() {}, exponentialRampToValueAtTime() {} }, connect() {} };
      }
    };
  });
  const tab = await context.newPage();
  tab.setDefaultTimeout(STEP);
  watch(tab, 'alerting tab');
  const ringing = (id) => tab.locator(`[data-testid=pop][data-interaction-id="${id}"]`);
  const answer = async (id) => {
    for (const step of ['accept', 'complete']) await http('POST', `/v1/interactions/${id}/${step}`, ALICE, {});
    await ringing(id).waitFor({ state: 'detached' });
  };
  try {
    await tab.goto(BASE + '/signin');
    await tab.getByTestId('signin-agent').fill('alice');
    await tab.getByTestId('signin-token').fill(ALICE);
    await tab.getByTestId('signin-submit').click();
    await tab.waitForURL(BASE + '/');
    await live(tab);
    await tab.keyboard.press('Shift'); // the agent's first touch lets the page make sound

    const seen = await offer({ caller: '+15550000005' });
    await ringing(seen.id).waitFor();
    assert.deepEqual(await tab.evaluate(() => window.__notifications), [], 'no notification in a visible tab');
    assert.equal(await tab.evaluate(() => window.__tones), 0, 'no tone in a visible tab');
    await answer(seen.id);

    await tab.evaluate(() => {
      window.__hidden = true;
      document.dispatchEvent(new Event('visibilitychange'));
    });
    const unseen = await offer({ caller: '+15550000006' });
    await ringing(unseen.id).waitFor();
    await tab.waitForFunction(() => window.__notifications.length > 0);
    const [notification] = await tab.evaluate(() => window.__notifications);
    assert.equal(notification.title, 'Incoming call');
    assert.ok(notification.body.includes('+15550000006'), `the caller is in it: ${notification.body}`);
    assert.ok((await tab.evaluate(() => window.__tones)) > 0, 'a tone played');
    await answer(unseen.id);
  } finally {
    await context.close();
  }
});

test('no page error or dialog happened', TEST, () => {
  assert.deepEqual(problems, []);
});

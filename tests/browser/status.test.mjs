// Browser test of the status page on the admin port (issue 15, item 3),
// run with `node --test status.test.mjs`.
//
// Real processes: two chat backends and wsgate with a plain listener and
// the admin API. Headless Debian Chromium (playwright-core) opens the
// status page, which asks for the token; the test logs in through the
// form, opens WebSockets (from a second tab) so a backend has sessions,
// drains that backend through the JSON API with the bearer token, and
// watches the page: the backend turns `draining`, the drain's progress bar
// fills while wsgate sends the 1012s, the closes-per-second figure shows,
// and the close-code chart gets its 1012 bar once the control task
// samples the counters (every 5 s). Screenshots: tests/artifacts/status-page-draining.png
// (mid-drain) and tests/artifacts/status-page.png (after).
//
// Needs: `cargo build --workspace --bins`, chromium, and `npm ci` here.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARTIFACTS, BIN, CHROMIUM, STEP_MS, killAll, start } from './support.mjs';

const SESSIONS = 12;

/// A JSON API call with the bearer token, bounded in time.
async function api(admin, token, method, p, body) {
  const r = await fetch(`http://${admin}${p}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body && JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const json = await r.json();
  assert.equal(r.status, 200, `${method} ${p}: ${JSON.stringify(json)}`);
  return json;
}

test('Chromium logs in to the status page and watches a drain', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-status-browser-'));
  let context;
  try {
    const backends = [];
    for (const id of ['chat-a', 'chat-b']) {
      const [[, addr]] = await start(BIN('chat-backend'), ['--listen', '127.0.0.1:0', '--id', id],
        [/ listening on (\S+)$/]);
      backends.push(`      - { id: ${id}, address: "${addr}" }`);
    }
    fs.writeFileSync(path.join(dir, 'wsgate.yaml'), `listeners:
  - name: public
    address: "127.0.0.1:0"
routes:
  - path_prefix: /
    pool: chat
    sticky_key: [ "query:user" ]
pools:
  chat:
    backends:
${backends.join('\n')}
admin: { address: "127.0.0.1:0", token_file: admin.token }
`);
    const [[, port], [, admin]] = await start(BIN('wsgate'), ['run', '-c', path.join(dir, 'wsgate.yaml')],
      [/^wsgate: listener public on http:\/\/127\.0\.0\.1:(\d+)/, /^wsgate: admin API on http:\/\/(\S+)$/]);
    const token = fs.readFileSync(path.join(dir, 'admin.token'), 'utf8').trim();

    context = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1100, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    context.setDefaultTimeout(STEP_MS);

    // The page loads without the token, asks for it, and shows no data yet.
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // The 401s before the login and for the wrong token are expected.
    page.on('console', (m) => { if (m.type() === 'error' && !/ 401 /.test(m.text())) errors.push(m.text()); });
    await page.goto(`http://${admin}/`);
    await page.waitForSelector('#login-box:not([hidden])');
    assert.equal(await page.isHidden('#main'), true);
    await page.fill('#token', 'not the token');
    await page.click('#login button[type=submit]');
    await page.waitForFunction(() => document.getElementById('login-error').textContent === 'Wrong token.');
    await page.fill('#token', token);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#main:not([hidden])');
    await page.waitForSelector('tr[data-backend="chat/chat-a"][data-state="active"]');
    const cookies = await context.cookies(`http://${admin}/`);
    const session = cookies.find((c) => c.name === 'wsgate_session');
    assert.ok(session && session.httpOnly && session.sameSite === 'Strict', JSON.stringify(cookies));
    assert.notEqual(session.value, token, 'the cookie is not the token');

    // Live sessions, opened from a second tab (the status page's CSP
    // allows connections to the admin API only).
    const clients = await context.newPage();
    const opened = await clients.evaluate(async ({ port, n }) => {
      const open = (i) => new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?user=u${i}`);
        ws.onopen = () => resolve(ws);
        ws.onerror = () => reject(new Error(`WebSocket u${i} failed`));
      });
      window.sockets = await Promise.all(Array.from({ length: n }, (_, i) => open(i)));
      return window.sockets.length;
    }, { port, n: SESSIONS });
    assert.equal(opened, SESSIONS);
    await page.waitForFunction((n) => document.getElementById('sessions').dataset.live === String(n), SESSIONS);

    // Drain the backend with more sessions, through the API, over 8 s.
    const status = await api(admin, token, 'GET', '/v1/status');
    const busiest = status.pools[0].backends.reduce((a, b) => (b.connections > a.connections ? b : a));
    assert.ok(busiest.connections > 0, JSON.stringify(status));
    const n = busiest.connections;
    const key = `chat/${busiest.id}`;
    const drained = await api(admin, token, 'POST', `/v1/pools/chat/backends/${busiest.id}/drain`, { window: '8s' });
    assert.equal(drained.closing, n);

    // The page shows the drain and its progress as the closes go out.
    await page.waitForSelector(`tr[data-backend="${key}"][data-state="draining"]`);
    const bar = `.drain[data-backend="${key}"]`;
    await page.waitForSelector(`${bar}[data-total="${n}"] progress`);
    const seen = new Set();
    const watch = setInterval(async () => {
      const sent = await page.getAttribute(bar, 'data-sent').catch(() => null);
      if (sent !== null) seen.add(Number(sent));
    }, 200);
    await page.waitForFunction((sel) => {
      const d = document.querySelector(sel);
      return d && Number(d.dataset.sent) > 0;
    }, bar);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'status-page-draining.png'), fullPage: true });
    await page.waitForSelector(`${bar}[data-done="true"][data-sent="${n}"]`);
    clearInterval(watch);
    const progress = await page.$eval(`${bar} progress`, (p) => [p.value, p.max]);
    assert.deepEqual(progress, [n, n], 'the bar is full');
    const numbers = await page.textContent(`${bar} .numbers`);
    assert.match(numbers, new RegExp(`^${n} / ${n} closed · \\d+(\\.\\d+)? closes/s`), numbers);
    assert.ok(!numbers.startsWith('0.00 closes/s'), numbers);
    console.log(`drain of ${n} sessions; the page showed sent = ${[...seen].sort((a, b) => a - b).join(', ')}`);

    // The clients got 1012; the page's counts and chart follow.
    await page.waitForFunction((sel) => document.querySelector(`${sel} .connections`).textContent === '0',
      `tr[data-backend="${key}"]`);
    await page.waitForSelector('#legend span[data-code="1012"]', { timeout: 3 * STEP_MS });
    await page.waitForSelector('#chart rect[data-code="1012"]');
    await page.screenshot({ path: path.join(ARTIFACTS, 'status-page.png'), fullPage: true });
    assert.deepEqual(errors, [], 'no script errors or CSP violations');

    // Logging out ends the session: the page asks for the token again.
    await page.click('#logout');
    await page.waitForSelector('#login-box:not([hidden])');
    const r = await page.evaluate(async () => (await fetch('/v1/status')).status);
    assert.equal(r, 401);
  } finally {
    if (context) await context.close();
    killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Browser test of HTTP/2 through wsgate, run with `node --test h2.test.mjs`.
//
// Real processes: one chat backend (rooms in memory) and wsgate with its
// generated dev certificate, offering h2 and http/1.1 in ALPN (the
// default). Headless Debian Chromium (playwright-core) loads the chat page;
// the DevTools protocol says which protocol the page came over (it must be
// h2) and how the page's WebSocket was opened: a 200 to an extended
// CONNECT is RFC 8441 over HTTP/2, a 101 is an HTTP/1.1 upgrade. Either is
// a pass for the WebSocket (which one Chromium uses is its choice); the
// test prints which, and the page must chat.
//
// Needs: `cargo build --workspace --bins`, chromium, and `npm ci` here.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, CHROMIUM, STEP_MS, killAll, start } from './support.mjs';

test('Chromium loads the chat page over HTTP/2 through wsgate and chats', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-h2-browser-'));
  let context;
  try {
    const [, backend] = await start(BIN('chat-backend'), ['--listen', '127.0.0.1:0', '--id', 'chat-a'],
      / listening on (\S+)$/);
    fs.writeFileSync(path.join(dir, 'wsgate.yaml'), `listeners:
  - name: public
    address: "127.0.0.1:0"
    tls:
      certificates:
        - { cert: dev.crt, key: dev.key, generate_if_missing: true }
routes:
  - path_prefix: /
    pool: chat
    sticky_key: [ "query:user" ]
pools:
  chat:
    backends:
      - { id: chat-a, address: "${backend}" }
`);
    const [, port] = await start(BIN('wsgate'), ['run', '-c', path.join(dir, 'wsgate.yaml')],
      /^wsgate: listener public on https:\/\/127\.0\.0\.1:(\d+)/);

    context = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      ignoreHTTPSErrors: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    context.setDefaultTimeout(STEP_MS);
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const protocols = new Map();
    cdp.on('Network.responseReceived', (e) => protocols.set(e.response.url, e.response.protocol));
    let wsStatus;
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => { wsStatus = e.response.status; });

    const url = `https://localhost:${port}/?user=alice&room=h2`;
    await page.goto(url);
    assert.equal(protocols.get(url), 'h2', `the page came over ${protocols.get(url)}`);
    await page.click('#join button[type=submit]');
    await page.waitForSelector('#status[data-state="connected"]');
    assert.equal(await page.textContent('#backend'), 'chat-a');
    await page.fill('#text', 'hello over h2');
    await page.press('#text', 'Enter');
    await page.waitForFunction(
      (t) => [...document.querySelectorAll('#messages li.message .text')].some((e) => e.textContent === t),
      'hello over h2',
    );
    assert.ok(wsStatus === 200 || wsStatus === 101, `WebSocket handshake status ${wsStatus}`);
    console.log(`page protocol: h2; WebSocket: ${wsStatus === 200 ? 'HTTP/2 (RFC 8441, 200)' : 'HTTP/1.1 (101)'}`);
  } finally {
    if (context) await context.close();
    killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Browser test of the example chat page, run with `node --test`.
//
// Real processes: a redis-server on a free loopback port, two chat backends
// using it, and wsgate in front with its generated dev certificate. A
// headless Debian Chromium (driven by playwright-core, never downloading a
// browser) opens the page over wss:// through wsgate as two users on
// different backends, chats, then lives through a SIGTERM restart of the
// first user's backend: its status line shows the reconnect, and afterwards
// every message is on screen exactly once. Saves tests/artifacts/chat-browser.png.
//
// Needs: `cargo build --workspace --bins`, redis-server and chromium on the
// machine, and `npm ci` in this directory.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
const BIN = (name) => path.join(TARGET, 'debug', name);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');
/// Upper bound for any single step (process start, page state, message).
const STEP_MS = 20000;

const procs = [];

/// Spawns a process and resolves once a stdout line matches `ready`.
function start(cmd, args, { env = {}, ready }) {
  const child = spawn(cmd, args, {
    env: { ...process.env, RUST_LOG: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  procs.push(child);
  const lines = createInterface({ input: child.stdout });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} not ready in time`)), STEP_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited with ${code} before it was ready`));
    });
    lines.on('line', (line) => {
      const m = line.match(ready);
      if (m) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve({ child, match: m });
      }
    });
  });
}

async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

async function startRedis() {
  for (let i = 0; i < 5; i += 1) {
    const port = await freePort();
    try {
      await start('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
        '--save', '', '--appendonly', 'no', '--logfile', ''], { ready: /Ready to accept connections/ });
      return `redis://127.0.0.1:${port}`;
    } catch (err) {
      if (i === 4) throw err;
    }
  }
  throw new Error('unreachable');
}

const FLAGS = ['--drain-window', '500ms'];

async function startBackend(id, listen, redisUrl) {
  const { child, match } = await start(BIN('chat-backend'), ['--listen', listen, '--id', id, ...FLAGS], {
    env: { CHAT_REDIS_URL: redisUrl },
    ready: / listening on (\S+)$/,
  });
  return { id, child, addr: match[1] };
}

async function startGate(dir, backends) {
  const pool = backends.map((b) => `      - { id: ${b.id}, address: "${b.addr}" }`).join('\n');
  const yaml = `listeners:
  - name: public
    address: "127.0.0.1:0"
    tls:
      certificates:
        - { cert: dev.crt, key: dev.key, generate_if_missing: true }
routes:
  - path_prefix: /
    pool: chat
    sticky_key: [ "query:user", "header:x-user-id", "cookie:session" ]
pools:
  chat:
    backends:
${pool}
`;
  fs.writeFileSync(path.join(dir, 'wsgate.yaml'), yaml);
  const { match } = await start(BIN('wsgate'), ['run', '-c', path.join(dir, 'wsgate.yaml')], {
    ready: /^wsgate: listener public on https:\/\/127\.0\.0\.1:(\d+)/,
  });
  return { port: Number(match[1]), ca: fs.readFileSync(path.join(dir, 'dev.crt')) };
}

/// Which backend wsgate sends `user` to (GET /whoami is sticky on ?user= too).
function backendOf(gate, user) {
  return new Promise((resolve, reject) => {
    const req = https.get({
      host: '127.0.0.1', port: gate.port, servername: 'localhost', ca: gate.ca,
      path: `/whoami?user=${user}`, headers: { host: 'localhost' }, timeout: STEP_MS,
    }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => {
        try { resolve(JSON.parse(body).backend); } catch (e) { reject(e); }
      });
    });
    req.on('timeout', () => req.destroy(new Error('whoami timed out')));
    req.on('error', reject);
  });
}

async function userOn(gate, backend, prefix) {
  for (let i = 0; i < 100; i += 1) {
    const user = `${prefix}${i}`;
    if (await backendOf(gate, user) === backend) return user;
  }
  throw new Error(`no user maps to ${backend}`);
}

async function stop(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), STEP_MS);
  await exited;
  clearTimeout(timer);
}

/// Texts of the delivered (not pending) messages on a page.
const delivered = (page) => page.$$eval('#messages li.message .text', (els) => els.map((e) => e.textContent));

async function openChat(context, gate, user, room) {
  const page = await context.newPage();
  await page.goto(`https://localhost:${gate.port}/?user=${user}&room=${room}`);
  await page.click('#join button[type=submit]');
  await page.waitForSelector('#status[data-state="connected"]');
  return page;
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

async function waitForText(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages li.message .text')].some((e) => e.textContent === t),
    text,
  );
}

test('the chat page works through wsgate and survives a backend restart', { timeout: 180000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-browser-'));
  let context;
  try {
    const redisUrl = await startRedis();
    const a = await startBackend('chat-a', '127.0.0.1:0', redisUrl);
    let b = await startBackend('chat-b', '127.0.0.1:0', redisUrl);
    const gate = await startGate(dir, [a, b]);
    const alice = await userOn(gate, 'chat-b', 'alice');
    const bob = await userOn(gate, 'chat-a', 'bob');

    context = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      ignoreHTTPSErrors: true, // wsgate's generated dev certificate
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1000, height: 700 },
    });
    context.setDefaultTimeout(STEP_MS);

    const pageA = await openChat(context, gate, alice, 'demo');
    const pageB = await openChat(context, gate, bob, 'demo');
    assert.equal(await pageA.textContent('#backend'), 'chat-b');
    assert.equal(await pageB.textContent('#backend'), 'chat-a');
    await pageA.waitForFunction((u) => document.querySelector('#presence').textContent.includes(u), bob);

    await say(pageA, 'hello from alice');
    await waitForText(pageB, 'hello from alice');
    await say(pageB, 'hello from bob');
    await waitForText(pageA, 'hello from bob');

    // Restart alice's backend: 1012, the page reconnects (502s while the
    // backend is down), resumes, and receives what bob said meanwhile.
    const bAddr = b.addr;
    const exited = once(b.child, 'exit');
    b.child.kill('SIGTERM');
    await pageA.waitForSelector('#status[data-state="reconnecting"]');
    const [code] = await exited;
    assert.equal(code, 0, 'chat-b exits cleanly after draining');
    await say(pageB, 'said during the restart');
    await waitForText(pageB, 'said during the restart');
    b = await startBackend('chat-b', bAddr, redisUrl);

    await pageA.waitForSelector('#status[data-state="connected"]');
    await waitForText(pageA, 'said during the restart');
    assert.equal(await pageA.textContent('#backend'), 'chat-b');
    await say(pageA, 'back again');
    await waitForText(pageB, 'back again');
    await waitForText(pageA, 'back again');

    const want = ['hello from alice', 'hello from bob', 'said during the restart', 'back again'];
    assert.deepEqual(await delivered(pageA), want, 'alice sees each message once, in order');
    assert.deepEqual(await delivered(pageB), want, 'bob sees the same');
    assert.match(await pageA.textContent('#status'), /Connected to chat-b \(resumed\)/);

    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await pageA.screenshot({ path: path.join(ARTIFACTS, 'chat-browser.png') });
  } finally {
    if (context) await context.close();
    // Like the Rust harness: kill by PID, nothing graceful left to test.
    for (const child of procs.reverse()) await stop(child, 'SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

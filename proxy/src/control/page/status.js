// The wsgate status page: polls GET /v1/status and GET /v1/activity once a
// second with the session cookie (HttpOnly: this script never sees it) and
// draws what they say. Text goes in through textContent only, never as
// HTML. Calls that change state carry X-Wsgate-Csrf: 1, which the admin
// API requires of every such call made with the cookie.
'use strict';

const POLL_MS = 1000;
const COLORS = ['#0969da', '#1a7f37', '#9a6700', '#cf222e', '#8250df', '#bf3989', '#1b7c83', '#57606a'];
const $ = (id) => document.getElementById(id);
let timer = null;
let last = null;

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function setState(state, text) {
  $('state').dataset.state = state;
  $('state').textContent = text;
}

function showLogin(message) {
  clearTimeout(timer);
  timer = null;
  $('main').hidden = true;
  $('logout').hidden = true;
  $('login-box').hidden = false;
  $('login-error').textContent = message || '';
  setState('login', 'not logged in');
}

async function getJson(path) {
  const r = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (r.status === 401) throw Object.assign(new Error('unauthorized'), { unauthorized: true });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

async function poll() {
  try {
    const [status, activity] = await Promise.all([getJson('/v1/status'), getJson('/v1/activity')]);
    $('login-box').hidden = true;
    $('main').hidden = false;
    $('logout').hidden = false;
    last = { status, activity };
    render(status, activity);
    setState('live', `live · ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    if (e.unauthorized) return showLogin();
    setState('error', `cannot reach the admin API (${e.message}); retrying`);
  }
  timer = setTimeout(poll, POLL_MS);
}

function render(status, activity) {
  renderPools(status);
  renderDrains(activity.drains);
  renderChart(activity.closes);
  renderReloads(activity.reloads);
}

function renderPools(status) {
  const body = $('pools').tBodies[0];
  body.replaceChildren();
  let live = 0;
  for (const pool of status.pools) {
    const head = el('tr', { class: 'pool' });
    const title = el('td', { colspan: 7 }, `pool ${pool.name} · rebalance ${pool.rebalance}`);
    head.append(title);
    body.append(head);
    for (const b of pool.backends) {
      live += b.connections;
      const key = `${pool.name}/${b.id}`;
      const row = el('tr', { 'data-backend': key, 'data-state': b.state });
      const state = b.reason ? `${b.state} (${b.reason.by})` : b.state;
      row.append(
        el('td', {}, b.id),
        el('td', {}, b.address ?? '—'),
        el('td', {}, b.weight ?? '—'),
        el('td', { class: `state state-${b.state}` }, state),
        el('td', { class: 'connections' }, b.connections),
        el('td', { class: 'pending' }, b.pending_closes),
      );
      const actions = el('td');
      if (b.state === 'active' || b.state === 'down') {
        actions.append(action('drain', pool.name, b.id));
      } else if (b.state === 'draining') {
        actions.append(action('undrain', pool.name, b.id));
      }
      row.append(actions);
      body.append(row);
    }
  }
  $('sessions').textContent = `· ${live} live session${live === 1 ? '' : 's'}`;
  $('sessions').dataset.live = String(live);
}

function action(verb, pool, id) {
  const button = el('button', { type: 'button', class: verb }, verb);
  button.addEventListener('click', async () => {
    const path = `/v1/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(id)}/${verb}`;
    if (verb === 'drain' && !confirm(`Drain ${pool}/${id}? Its sessions get a Close over the pool's drain window.`)) return;
    const r = await fetch(path, { method: 'POST', credentials: 'same-origin', headers: { 'X-Wsgate-Csrf': '1' } });
    if (r.status === 401) return showLogin();
    if (!r.ok) setState('error', `${verb} ${pool}/${id}: ${(await r.json()).error}`);
  });
  return button;
}

function renderDrains(drains) {
  const box = $('drains');
  box.replaceChildren();
  if (drains.length === 0) {
    box.append(el('p', { class: 'empty' }, 'No drain in progress.'));
    return;
  }
  for (const d of drains) {
    const done = d.pending === 0;
    const div = el('div', {
      class: 'drain', 'data-backend': d.backend ?? d.kind, 'data-sent': d.sent,
      'data-total': d.total, 'data-done': String(done),
    });
    div.append(el('strong', {}, d.backend ? `${d.kind} ${d.backend}` : d.kind));
    const bar = el('progress', { max: Math.max(d.total, 1), value: d.total === 0 ? 1 : d.sent });
    div.append(bar);
    const rate = d.closes_per_second.toFixed(d.closes_per_second < 10 ? 2 : 0);
    const secs = (ms) => (ms / 1000).toFixed(1);
    const text = `${d.sent} / ${d.total} closed · ${rate} closes/s · ${secs(d.elapsed_ms)} s of ${secs(d.window_ms)} s`
      + (done ? ' · done' : ` · ${d.pending} pending`);
    div.append(el('div', { class: 'numbers' }, text));
    box.append(div);
  }
}

function renderChart(closes) {
  const chart = $('chart');
  chart.replaceChildren();
  const side = $('side').value;
  const W = 600, H = 150, top = 8, bottom = 18, left = 30;
  const slots = 120;
  const samples = closes.samples.slice(-slots);
  const codes = new Set();
  const bars = samples.map((s) => {
    const by = new Map();
    for (const c of s.counts) {
      if (side && c.side !== side) continue;
      codes.add(c.code);
      by.set(c.code, (by.get(c.code) || 0) + c.count);
    }
    return { at: s.at_unix, by };
  });
  const order = [...codes].sort();
  const color = (code) => COLORS[order.indexOf(code) % COLORS.length];
  const max = Math.max(1, ...bars.map((b) => [...b.by.values()].reduce((x, y) => x + y, 0)));
  const bw = (W - left) / slots;
  const scale = (H - top - bottom) / max;
  chart.append(svg('line', { x1: left, y1: H - bottom, x2: W, y2: H - bottom, stroke: '#d5d9df' }));
  chart.append(svg('text', { x: 2, y: top + 8 }, max));
  chart.append(svg('text', { x: 2, y: H - bottom }, 0));
  const offset = slots - bars.length;
  bars.forEach((b, i) => {
    let y = H - bottom;
    for (const code of order) {
      const n = b.by.get(code);
      if (!n) continue;
      const h = n * scale;
      y -= h;
      const rect = svg('rect', {
        x: left + (offset + i) * bw, y, width: Math.max(bw - 1, 1), height: h,
        fill: color(code), 'data-code': code, 'data-count': n,
      });
      rect.append(svg('title', {}, `${new Date(b.at * 1000).toLocaleTimeString()}: ${n} × ${code}`));
      chart.append(rect);
    }
  });
  const minutes = Math.round((slots * closes.interval_secs) / 60);
  chart.append(svg('text', { x: left, y: H - 4 }, `−${minutes} min`));
  chart.append(svg('text', { x: W - 24, y: H - 4 }, 'now'));
  const legend = $('legend');
  legend.replaceChildren();
  if (order.length === 0) legend.append(el('span', { class: 'empty' }, 'No close frames in this window.'));
  for (const code of order) {
    const total = bars.reduce((x, b) => x + (b.by.get(code) || 0), 0);
    const item = el('span', { 'data-code': code });
    const swatch = el('i');
    swatch.style.background = color(code);
    item.append(swatch, document.createTextNode(`${code}: ${total}`));
    legend.append(item);
  }
}

function renderReloads(reloads) {
  const body = $('reloads').tBodies[0];
  body.replaceChildren();
  if (reloads.length === 0) {
    const row = el('tr');
    row.append(el('td', { colspan: 3, class: 'empty' }, 'No reload since wsgate started.'));
    body.append(row);
  }
  for (const r of [...reloads].reverse()) {
    const row = el('tr');
    row.append(
      el('td', {}, new Date(r.at_unix * 1000).toLocaleString()),
      el('td', { class: r.ok ? 'state-active' : 'bad' }, r.ok ? 'applied' : 'rejected'),
      el('td', {}, r.summary),
    );
    body.append(row);
  }
}

async function login(event) {
  event.preventDefault();
  const token = $('token').value;
  const r = await fetch('/login', {
    method: 'POST',
    credentials: 'same-origin',
    body: new URLSearchParams({ token }),
    redirect: 'manual',
  });
  // 303 to the page: with `manual`, an opaque redirect.
  if (r.type === 'opaqueredirect' || r.ok) {
    $('token').value = '';
    $('login-error').textContent = '';
    clearTimeout(timer);
    return poll();
  }
  $('login-error').textContent = r.status === 401 ? 'Wrong token.' : `Login failed (${r.status}).`;
}

async function logout() {
  await fetch('/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-Wsgate-Csrf': '1' } });
  showLogin('Logged out.');
}

document.addEventListener('DOMContentLoaded', () => {
  $('login').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('side').addEventListener('change', () => last && renderChart(last.activity.closes));
  poll();
});

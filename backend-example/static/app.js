// wsgate chat demo page: plain JavaScript, no build step.
//
// One connection to wss://<this host>/ws?user=NAME, one room. The page keeps
// its position in the room ({epoch, offset}) and a list of sent messages not
// yet acknowledged. When the connection drops (a backend restart closes it
// with 1012), it reconnects after an exponential backoff with full jitter,
// rejoins with `since` to receive exactly what it missed, and resends the
// unacknowledged messages under their original ids (the server stores each
// id once). So a backend restart shows only in the status line.
'use strict';

(() => {
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), backend: $('backend'), engine: $('engine'), join: $('join'), user: $('user'),
    room: $('room'), chat: $('chat'), roomName: $('room-name'), messages: $('messages'),
    presence: $('presence'), compose: $('compose'), text: $('text'),
  };

  const state = {
    user: null,
    room: null,
    ws: null,
    attempt: 0,          // reconnect attempts since the last successful join
    cursor: null,        // {epoch, offset} of the last message shown
    pending: new Map(),  // client id -> {text, li}
    present: new Set(),
    joined: false,
    counter: 0,
  };

  function setStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.dataset.state = kind;
  }

  // Full jitter: a uniform delay in [0, min(cap, base * 2^attempt)).
  function backoff(attempt) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    return Math.floor(Math.random() * ceiling);
  }

  function newId() {
    state.counter += 1;
    const rand = (self.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Math.random()).slice(2);
    return `${rand}-${state.counter}`;
  }

  function scrollDown() {
    const log = ui.messages.parentElement;
    log.scrollTop = log.scrollHeight;
  }

  function line(cls) {
    const li = document.createElement('li');
    if (cls) li.className = cls;
    ui.messages.appendChild(li);
    return li;
  }

  function fillMessage(li, from, text, ts) {
    li.textContent = '';
    const time = document.createElement('span');
    time.className = 'time';
    time.textContent = ts ? new Date(ts).toLocaleTimeString() : '…';
    const who = document.createElement('span');
    who.className = 'from';
    who.textContent = from;
    const body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    li.append(time, who, body);
  }

  function notice(text) {
    line('notice').textContent = text;
    scrollDown();
  }

  function renderPresence() {
    ui.presence.textContent = '';
    for (const name of [...state.present].sort()) {
      const li = document.createElement('li');
      li.textContent = name;
      ui.presence.appendChild(li);
    }
  }

  function send(obj) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  function showMessage(m) {
    const c = state.cursor;
    if (c && c.epoch === m.epoch && m.offset <= c.offset) return; // already shown
    state.cursor = { epoch: m.epoch, offset: m.offset };
    const mine = m.from === state.user && state.pending.get(m.id);
    const li = mine ? mine.li : line('message');
    if (mine) {
      state.pending.delete(m.id);
      ui.messages.appendChild(li); // move to its place in room order
    }
    li.className = 'message';
    li.dataset.offset = m.offset;
    li.dataset.id = m.id;
    fillMessage(li, m.from, m.text, m.ts);
    scrollDown();
  }

  function onMessage(msg) {
    switch (msg.type) {
      case 'hello':
        ui.backend.textContent = msg.backend;
        ui.engine.textContent = msg.engine === 'memory'
          ? '(rooms in this backend only: run with Redis to share them)'
          : '';
        send({ type: 'join', room: state.room,
               since: state.cursor || { epoch: '', offset: 0 } });
        break;
      case 'joined': {
        const resumed = state.cursor !== null;
        state.joined = true;
        state.attempt = 0;
        state.present = new Set(msg.presence);
        renderPresence();
        setStatus(`Connected to ${ui.backend.textContent}${resumed ? ' (resumed)' : ''}`, 'connected');
        break;
      }
      case 'recovered':
        if (!msg.complete && state.cursor && state.cursor.offset > 0 && state.resuming) {
          notice('Some earlier messages are no longer available.');
        }
        state.resuming = false;
        // Resend what the server has not acknowledged; ids make it idempotent.
        for (const [id, p] of state.pending) send({ type: 'send', room: state.room, id, text: p.text });
        break;
      case 'message':
        showMessage(msg);
        break;
      case 'ack': {
        const p = state.pending.get(msg.id);
        if (p) p.acked = msg.offset;
        break;
      }
      case 'presence':
        if (msg.members) state.present = new Set(msg.members);
        if (msg.joined) state.present.add(msg.joined);
        if (msg.left) state.present.delete(msg.left);
        renderPresence();
        break;
      case 'error':
        if (msg.code === 'rate_limited' && msg.id) {
          // Leave it pending: it is resent on the next reconnect or send.
          notice('Slow down a little.');
        } else if (msg.code === 'unavailable' && !state.joined) {
          state.ws.close(4000, 'retry');
        } else {
          notice(`Server says: ${msg.message}`);
        }
        break;
      default:
        break;
    }
  }

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${proto}://${location.host}/ws?user=${encodeURIComponent(state.user)}`;
    const ws = new WebSocket(url);
    state.ws = ws;
    state.joined = false;
    state.resuming = state.cursor !== null;
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      onMessage(msg);
    };
    ws.onclose = (e) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.joined = false;
      const delay = backoff(state.attempt);
      state.attempt += 1;
      const why = e.code === 1012 ? 'Server restarting' : 'Connection lost';
      setStatus(`${why}; reconnecting in ${(delay / 1000).toFixed(1)} s…`, 'reconnecting');
      setTimeout(connect, delay);
    };
  }

  ui.join.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!ui.join.reportValidity()) return;
    state.user = ui.user.value.trim();
    state.room = ui.room.value.trim();
    ui.join.hidden = true;
    ui.chat.hidden = false;
    ui.roomName.textContent = state.room;
    setStatus('Connecting…', 'connecting');
    connect();
    ui.text.focus();
  });

  ui.compose.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = ui.text.value.trim();
    if (!text) return;
    ui.text.value = '';
    const id = newId();
    const li = line('pending');
    fillMessage(li, state.user, text, null);
    scrollDown();
    state.pending.set(id, { text, li });
    if (state.joined) send({ type: 'send', room: state.room, id, text });
  });

  // Prefill from ?user=&room= so links (and tests) can skip typing.
  const params = new URLSearchParams(location.search);
  if (params.get('user')) ui.user.value = params.get('user');
  if (params.get('room')) ui.room.value = params.get('room');
})();

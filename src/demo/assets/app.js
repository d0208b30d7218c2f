// The demo page: a chat room with who is online, a notification badge, a real background
// job and an AI token stream, all over one subscription of the TypeScript client
// (@herald/client, embedded as /demo/herald-client.js). No framework.
//
// Identity: in dev mode the page mints a dev token (POST /api/dev/token) for a user of its
// own, kept per tab (sessionStorage), so two tabs are two users. `?user=ann&name=Ann` picks
// one. With auth configured it asks for a token to paste.

import { AiStreams, HeraldClient, HeraldError, PresenceTracker, devToken } from './herald-client.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const store = sessionStorage;
const NAMES = ['Ada', 'Grace', 'Linus', 'Margaret', 'Alan', 'Barbara', 'Dennis', 'Frances', 'Ken', 'Radia'];

const config = await fetch('/demo/config').then((r) => r.json());
const ROOM = config.room;

/** The user this tab is: from the URL, this tab's storage, or made up. */
function identity() {
  let name = params.get('name') || store.getItem('herald-demo-name');
  if (!name) name = NAMES[Math.floor(Math.random() * NAMES.length)];
  let id = params.get('user') || store.getItem('herald-demo-user');
  if (!id) id = `${name.toLowerCase().replace(/[^a-z0-9]+/g, '')}-${Math.random().toString(36).slice(2, 6)}`;
  store.setItem('herald-demo-name', name);
  store.setItem('herald-demo-user', id);
  return { id, name };
}

/** The claims of a pasted JWT (for the user id; the server verifies it). */
function claims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

let me;
let token = null;
async function getToken() {
  if (token) return token;
  if (!config.devTokens) throw new HeraldError('no token', 401, 'unauthorized');
  token = await devToken('', me.id, me.name);
  return token;
}

if (config.devTokens) {
  me = identity();
  start();
} else {
  const pasted = store.getItem('herald-demo-token');
  if (pasted) {
    token = pasted;
    const c = claims(pasted);
    me = { id: c.sub, name: c.name || c.sub };
    start();
  } else {
    showAuth('');
  }
}

/** Asks for a token to paste (auth configured), with why if one was refused. */
function showAuth(why) {
  $('app').hidden = true;
  $('auth').hidden = false;
  $('auth-error').textContent = why;
  $('me-name').textContent = 'signed out';
  $('status').dataset.state = 'closed';
  $('status-text').textContent = 'waiting for a token';
  $('auth-form').onsubmit = (e) => {
    e.preventDefault();
    store.setItem('herald-demo-token', $('auth-token').value.trim());
    location.reload();
  };
}

function start() {
  $('me-name').textContent = me.name;
  $('room-name').textContent = ROOM;
  for (const el of document.querySelectorAll('.uid')) el.textContent = me.id;

  const client = new HeraldClient({ auth: { mode: 'ticket', token: getToken } });
  const transport = params.get('transport') === 'fetch' ? 'fetch' : 'eventsource';
  const ai = new AiStreams();
  const job = { id: null };

  const sub = client.subscribe([ROOM, `user:${me.id}`], {
    transport,
    onStateChange: (state, info) => showState(state, info),
    onError: (e) => {
      if (!(e instanceof HeraldError && e.status === 401)) return;
      if (config.devTokens) {
        // A restarted dev server has a new secret: mint a new token on the next attempt.
        token = null;
      } else {
        sub.close();
        store.removeItem('herald-demo-token');
        showAuth(`The server refused that token: ${e.message}`);
      }
    },
    onReset: (e) => note(`Missed events on ${e.channel} could not be replayed (${e.reason}).`),
    onEvent: (e) => {
      $('last-id').textContent = sub.lastEventId ? `last id ${sub.lastEventId}` : '';
    },
  });
  window.heraldDemo = { client, sub, me };
  addEventListener('pagehide', () => sub.close());

  // --- Chat and who is online --------------------------------------------------------
  sub.on('chat', (e) => addMessage(e));
  new PresenceTracker(client, sub, ROOM, renderOnline);
  sub.on('presence', (e) => {
    if (e.channel !== ROOM || e.userId === me.id) return;
    if (e.status === 'online') note(`${e.userName || e.userId} is here`);
    if (e.status === 'offline') note(`${e.userName || e.userId} left`);
  });
  $('chat-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('chat-input');
    const content = input.value.trim();
    if (!content) return;
    input.value = '';
    try {
      await client.publish(ROOM, 'chat', { content });
    } catch (err) {
      note(`Not sent: ${err.message}`);
    }
  });
  document.addEventListener('visibilitychange', () => {
    client.setStatus(document.hidden ? 'away' : 'online').catch(() => {});
  });

  // --- Notifications -----------------------------------------------------------------
  sub.on('badge_update', (e) => {
    const badge = $('badge');
    badge.textContent = String(e.count);
    badge.dataset.count = String(e.count);
    badge.hidden = e.count === 0;
  });
  sub.on('notification', (e) => {
    const list = $('notification-list');
    list.querySelector('.empty')?.remove();
    const li = document.createElement('li');
    li.innerHTML = '<div class="title"></div><div class="when"></div>';
    li.querySelector('.title').textContent = e.title || e.message || e.kind;
    li.querySelector('.when').textContent = `${e.message || ''} · ${time(e.timestamp)}`;
    list.prepend(li);
  });
  $('bell').addEventListener('click', () => ($('notifications').hidden = !$('notifications').hidden));
  $('mark-read').addEventListener('click', () => client.request('POST', '/demo/notifications/read').catch(() => {}));

  // --- The job -----------------------------------------------------------------------
  $('job-start').addEventListener('click', async () => {
    $('job-start').disabled = true;
    setProgress(0, 'Starting…');
    $('job-result').textContent = '';
    try {
      const rounds = Number(params.get('rounds')) || undefined;
      const started = await client.request('POST', '/demo/jobs', { rounds });
      job.id = started.jobId;
    } catch (err) {
      setProgress(0, `Not started: ${err.message}`);
      $('job-start').disabled = false;
    }
  });
  sub.on('generation_started', (e) => {
    job.id = e.jobId;
    setProgress(0, `Job ${e.jobId} started`);
  });
  sub.on('generation_progress', (e) => {
    if (e.jobId === job.id) setProgress(e.progress, e.message);
  });
  sub.on('generation_complete', (e) => {
    if (e.jobId !== job.id) return;
    setProgress(100, `Done in ${e.result.latencyMs} ms`);
    $('job-result').textContent = `sha256^${e.result.rounds} = ${e.result.digest}`;
    $('job-start').disabled = false;
  });
  sub.on('generation_failed', (e) => {
    if (e.jobId !== job.id) return;
    setProgress(0, `Failed: ${e.error}`);
    $('job-start').disabled = false;
  });

  // --- AI streams --------------------------------------------------------------------
  sub.on('ai_chat_chunk', (e) => {
    const stream = ai.apply(e);
    if (stream) renderStream(stream, e);
  });
  $('ai-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('ai-input');
    const prompt = input.value.trim();
    if (!prompt) return;
    input.value = '';
    try {
      await client.request('POST', '/demo/ai', { prompt, channel: ROOM });
    } catch (err) {
      note(`The AI is busy: ${err.message}`);
    }
  });
}

// --- Rendering ---------------------------------------------------------------------------

function showState(state, info) {
  const el = $('status');
  el.dataset.state = state;
  const text = {
    connecting: 'connecting…',
    open: 'live',
    reconnecting: `reconnecting in ${((info.delayMs ?? 0) / 1000).toFixed(1)} s (attempt ${info.attempt})`,
    closed: `closed${info.error ? `: ${info.error.message}` : ''}`,
  }[state];
  $('status-text').textContent = text;
}

function time(ts) {
  const d = ts ? new Date(ts) : new Date();
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function scrollDown(list) {
  list.scrollTop = list.scrollHeight;
}

function addMessage(e) {
  const list = $('messages');
  const li = document.createElement('li');
  li.className = `msg${e.userId === me.id ? ' mine' : ''}`;
  li.dataset.id = e.id;
  li.innerHTML = '<span class="who"></span><span class="text"></span>';
  li.querySelector('.who').textContent = `${e.userName || e.userId || 'anonymous'} · ${time(e.timestamp)}`;
  li.querySelector('.text').textContent = e.content;
  list.append(li);
  scrollDown(list);
}

function note(text) {
  const list = $('messages');
  const li = document.createElement('li');
  li.className = 'note';
  li.textContent = text;
  list.append(li);
  scrollDown(list);
}

function renderOnline(users) {
  const ul = $('online');
  ul.replaceChildren();
  for (const u of users) {
    const li = document.createElement('li');
    li.dataset.user = u.userId;
    li.dataset.status = u.status;
    li.innerHTML = '<span class="pip"></span><span class="name"></span>';
    li.querySelector('.name').textContent = `${u.userName || u.userId}${u.userId === me.id ? ' (you)' : ''}`;
    if (u.userId !== me.id) {
      const wave = document.createElement('button');
      wave.textContent = 'wave';
      wave.title = `Wave at ${u.userName || u.userId}`;
      wave.addEventListener('click', () =>
        window.heraldDemo.client.request('POST', '/demo/poke', { userId: u.userId }).catch(() => {}),
      );
      li.append(wave);
    }
    ul.append(li);
  }
  $('online-count').textContent = String(users.length);
}

function setProgress(pct, text) {
  $('job-progress').setAttribute('aria-valuenow', String(pct));
  $('job-bar').style.width = `${pct}%`;
  $('job-pct').textContent = `${pct}%`;
  if (text) $('job-text').textContent = text;
}

function renderStream(stream, e) {
  let card = document.querySelector(`.ai-stream[data-stream="${CSS.escape(stream.streamId)}"]`);
  if (!card) {
    card = document.createElement('div');
    card.className = 'ai-stream';
    card.dataset.stream = stream.streamId;
    card.innerHTML = '<div class="q"></div><div class="a"></div>';
    $('ai-streams').prepend(card);
  }
  card.querySelector('.q').textContent = `${e.askedBy || 'someone'} asked: ${e.prompt || ''}`;
  card.querySelector('.a').textContent = stream.text;
  card.dataset.done = String(stream.done);
}

// The agent desktop (`/`): presence, the screen pop of every `interaction.offered`, the calls in
// hand (notes, disposition, transfer, complete, wrap-up) and today's interactions.
//
// The stream: opened WITHOUT `after`, so the server resumes after this agent's durable ack
// cursor; each event is rendered, then saved, then acknowledged. The last seq rendered is kept
// in sessionStorage only as a de-duplication guard: after a reload, an event at or below it was
// shown already (its effect is in the saved desk) and is not shown, notified or beeped again.
// On every (re)connect `GET /v1/session` says what the agent holds now, so a pop or a call in
// hand is never lost, even in a new tab.
//
// Untrusted data (caller, context, notes, routing, URLs) is rendered as text only, through
// el() / renderValue(); only absolute http(s) URLs become links or frames.

import {
  api,
  Backoff,
  byId,
  el,
  externalLink,
  fmtClock,
  fmtDuration,
  getSession,
  localDay,
  observeEventTime,
  renderValue,
  replaceChildren,
  safeHttpUrl,
  serverNow,
  setText,
  setupHeader,
  showConnection,
  targetText,
  toSignin,
} from './common.js';

const OPEN = new Set(['offered', 'accepted', 'wrap_up']);
const STATE_LABEL = {
  offered: 'Ringing',
  accepted: 'On call',
  wrap_up: 'Wrap-up',
};

const desk = {
  me: null,
  agent: null,
  items: new Map(),
  lastSeq: 0,
  ws: null,
  backoff: new Backoff(),
  retryAt: 0,
  retryTimer: null,
  pendingAck: 0,
  ackSent: 0,
  ackScheduled: false,
  stopped: false,
  crmMode: 'tab',
  crmFor: null,
  pops: new Map(),
  work: new Map(),
  todayDirty: true,
};

// ----- storage ---------------------------------------------------------------------------------

function storageKey() {
  return `handoff.desk.v1.${desk.me}`;
}

function loadDesk() {
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(storageKey()) || 'null');
  } catch (error) {
    saved = null;
  }
  if (!saved || typeof saved !== 'object') return;
  desk.lastSeq = Number(saved.lastSeq) || 0;
  const today = localDay(Date.now());
  for (const item of Array.isArray(saved.items) ? saved.items : []) {
    if (!item || typeof item.id !== 'string') continue;
    if (OPEN.has(item.state) || localDay(Date.parse(item.seenAt)) === today) {
      desk.items.set(item.id, item);
    }
  }
}

/** What is kept of a closed interaction: enough for today's list, not the caller's data. */
function compact(item) {
  if (OPEN.has(item.state)) return item;
  const { context, enrichment, lookupErrors, routing, draft, popUrl, popUrlError, transferNote, ...rest } = item;
  return rest;
}

function saveDesk() {
  const today = localDay(Date.now());
  const items = [];
  for (const item of desk.items.values()) {
    if (OPEN.has(item.state) || localDay(Date.parse(item.seenAt)) === today) items.push(compact(item));
  }
  try {
    sessionStorage.setItem(storageKey(), JSON.stringify({ v: 1, lastSeq: desk.lastSeq, items }));
  } catch (error) {
    // Storage full or disabled: the desk still works, a reload just shows less.
  }
}

let saveTimer = null;
function saveSoon() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveDesk, 300);
}

// ----- items -----------------------------------------------------------------------------------

function newItem(id, seenAt) {
  return {
    id,
    seenAt,
    caller: null,
    dialed: null,
    channel: null,
    callId: null,
    context: {},
    contextVersion: 1,
    // What CRM lookups found, by connector, and why a lookup failed; `dataVersion` counts
    // changes to the caller's data so cards redraw it.
    enrichment: {},
    lookupErrors: {},
    dataVersion: 0,
    target: null,
    offerTarget: null,
    priority: 0,
    routing: null,
    transferNote: null,
    popUrl: null,
    popUrlError: null,
    state: 'offered',
    offeredAt: seenAt,
    expiresAt: null,
    acceptedAt: null,
    endedAt: null,
    wrapUpUntil: null,
    closedAt: null,
    outcome: null,
    disposition: null,
    snapshotAt: null,
    draft: { notes: '', disposition: '' },
  };
}

function fillFromInteraction(item, i) {
  if (!i || typeof i !== 'object') return;
  item.caller = typeof i.caller === 'string' ? i.caller : null;
  item.dialed = typeof i.dialed === 'string' ? i.dialed : null;
  item.channel = typeof i.channel === 'string' ? i.channel : null;
  item.callId = typeof i.call_id === 'string' ? i.call_id : null;
  item.context = i.context && typeof i.context === 'object' ? i.context : {};
  if (Number(i.context_version)) item.contextVersion = Number(i.context_version);
  if (i.enrichment && typeof i.enrichment === 'object') item.enrichment = { ...i.enrichment };
  item.dataVersion = (item.dataVersion || 0) + 1;
  item.target = i.target || null;
  item.priority = Number(i.priority) || 0;
  if (typeof i.transfer_note === 'string') item.transferNote = i.transfer_note;
  if (typeof i.pop_url === 'string') item.popUrl = i.pop_url;
}

/** Ends an open item; a closed one keeps its first outcome. */
function close(item, state, outcome, at) {
  if (!OPEN.has(item.state)) return false;
  item.state = state;
  item.outcome = outcome;
  item.closedAt = at || new Date(serverNow()).toISOString();
  item.draft = { notes: '', disposition: '' };
  if (desk.crmFor === item.id) hideCrm();
  return true;
}

/** An event older than the last snapshot of this interaction changes nothing of its state. */
function stale(item, time) {
  return item.snapshotAt && Date.parse(time) < Date.parse(item.snapshotAt);
}

const REVOKED = {
  timed_out: 'Missed: the offer timed out',
  abandoned: 'Caller hung up while ringing',
  answered_elsewhere: 'Answered by another agent',
  agent_deleted: 'Offer withdrawn',
};

/** Applies one stream event; says whether to alert the agent and show the CRM. */
function apply(ev) {
  const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
  const type = String(ev.type || '');
  if (type === 'agent.presence_changed' || type === 'agent.created') {
    if (d.agent === desk.me || (d.agent && d.agent.id === desk.me)) {
      if (d.presence && desk.agent) desk.agent.presence = d.presence;
    }
    return {};
  }
  if (type === 'agent.updated') {
    if (d.agent && d.agent.id === desk.me && desk.agent) desk.agent.name = d.agent.name;
    return {};
  }
  if (type === 'agent.deleted') {
    if (d.agent === desk.me) sessionEnded('Your agent was deleted.');
    return {};
  }
  if (!type.startsWith('interaction.')) return {};
  const id = d.interaction_id || (d.interaction && d.interaction.id) || ev.subject;
  if (typeof id !== 'string') return {};
  let item = desk.items.get(id);
  desk.todayDirty = true;
  switch (type) {
    case 'interaction.offered': {
      if (d.agent !== desk.me) return {};
      if (!item) {
        item = newItem(id, ev.time);
        desk.items.set(id, item);
      }
      fillFromInteraction(item, d.interaction);
      item.offerTarget = d.offer_target || item.target;
      item.routing = d.routing || null;
      const popUrl = typeof d.pop_url === 'string' ? d.pop_url : item.popUrl;
      item.popUrl = popUrl;
      item.popUrlError = typeof d.pop_url_error === 'string' ? d.pop_url_error : null;
      if (stale(item, ev.time)) return {};
      item.state = 'offered';
      item.offeredAt = ev.time;
      item.expiresAt = d.offer_expires_at || null;
      item.outcome = null;
      item.closedAt = null;
      const open = Date.parse(item.expiresAt) > serverNow();
      return open ? { alert: item, crm: item } : {};
    }
    case 'interaction.offer_revoked':
      if (item && d.agent === desk.me && item.state === 'offered' && !stale(item, ev.time)) {
        const text = d.cause === 'connection_lost' ? 'Missed: connection lost' : REVOKED[d.reason] || 'Offer withdrawn';
        if (close(item, 'missed', text, ev.time) && d.reason === 'abandoned') notice('The caller hung up before you answered.', 'warn');
      }
      return {};
    case 'interaction.accepted':
      if (!item || stale(item, ev.time)) return {};
      if (d.agent === desk.me) {
        if (item.state === 'offered') {
          item.state = 'accepted';
          item.acceptedAt = ev.time;
        }
      } else {
        close(item, 'missed', 'Answered by another agent', ev.time);
      }
      return {};
    case 'interaction.rejected':
      if (item && d.agent === desk.me && !stale(item, ev.time)) close(item, 'rejected', 'Rejected', ev.time);
      return {};
    case 'interaction.transferred':
      if (item && d.from === desk.me && !stale(item, ev.time)) {
        close(item, 'transferred', `Transferred to ${targetText(d.target)}`, ev.time);
      }
      return {};
    case 'interaction.ended':
      if (item && d.agent === desk.me && !stale(item, ev.time) && item.state === 'accepted') {
        item.state = 'wrap_up';
        item.endedAt = ev.time;
        // The event carries the deadline; the session is still asked, for older servers.
        item.wrapUpUntil = typeof d.wrap_up_until === 'string' ? d.wrap_up_until : null;
        return { refreshHeld: !item.wrapUpUntil };
      }
      return {};
    case 'interaction.completed':
      if (item && d.agent === desk.me) {
        const disposition = typeof d.disposition === 'string' && d.disposition ? ` · ${d.disposition}` : '';
        const text = d.wrap_up_expired ? 'Completed (wrap-up time ran out)' : `Completed${disposition}`;
        if (!close(item, 'completed', text, ev.time) && item.state === 'completed') item.outcome = text;
      }
      return {};
    case 'interaction.abandoned':
      if (item && !stale(item, ev.time)) {
        const wasRinging = item.state === 'offered';
        if (close(item, 'abandoned', 'Caller hung up', ev.time) && wasRinging) {
          notice('The caller hung up before you answered.', 'warn');
        }
      }
      return {};
    case 'interaction.unanswered':
      if (item && !stale(item, ev.time)) close(item, 'unanswered', 'Unanswered', ev.time);
      return {};
    case 'interaction.timed_out':
      if (item && !stale(item, ev.time)) close(item, 'timed_out', 'Timed out', ev.time);
      return {};
    case 'interaction.context_updated':
      if (item && d.context && typeof d.context === 'object') {
        const version = Number(d.context_version) || 0;
        if (version >= (item.contextVersion || 0)) {
          item.context = d.context;
          item.contextVersion = version;
          item.dataVersion = (item.dataVersion || 0) + 1;
        }
      }
      return {};
    case 'interaction.enriched':
      if (item && typeof d.connector === 'string' && d.fields && typeof d.fields === 'object') {
        item.enrichment = { ...(item.enrichment || {}), [d.connector]: d.fields };
        if (item.lookupErrors) delete item.lookupErrors[d.connector];
        item.dataVersion = (item.dataVersion || 0) + 1;
      }
      return {};
    case 'interaction.enrichment_failed':
      if (item && typeof d.connector === 'string') {
        item.lookupErrors = { ...(item.lookupErrors || {}), [d.connector]: String(d.reason || 'failed') };
        item.dataVersion = (item.dataVersion || 0) + 1;
      }
      return {};
    default:
      return {};
  }
}

// ----- the stream ------------------------------------------------------------------------------

function onFrame(text) {
  let ev;
  try {
    ev = JSON.parse(text);
  } catch (error) {
    return;
  }
  if (!ev || typeof ev !== 'object') return;
  const seq = Number(ev.seq) || 0;
  if (seq && seq <= desk.lastSeq) {
    // Shown before a reload: its effect is in the saved desk. Acknowledge it, show nothing.
    scheduleAck(seq);
    return;
  }
  if (typeof ev.time === 'string') observeEventTime(ev.time);
  const effect = apply(ev);
  render();
  if (seq) desk.lastSeq = Math.max(desk.lastSeq, seq);
  saveDesk();
  if (effect.alert) alertAgent(effect.alert);
  if (effect.crm && desk.crmMode === 'frame') showCrm(effect.crm);
  if (effect.refreshHeld) refreshHeld();
  if (seq) scheduleAck(seq);
}

function scheduleAck(seq) {
  desk.pendingAck = Math.max(desk.pendingAck, seq);
  if (desk.ackScheduled) return;
  desk.ackScheduled = true;
  setTimeout(() => {
    desk.ackScheduled = false;
    const ws = desk.ws;
    if (ws && ws.readyState === WebSocket.OPEN && desk.pendingAck > desk.ackSent) {
      ws.send(JSON.stringify({ ack: desk.pendingAck }));
      desk.ackSent = desk.pendingAck;
    }
  }, 0);
}

async function connect(session) {
  clearTimeout(desk.retryTimer);
  desk.retryAt = 0;
  if (desk.stopped) return;
  if (!navigator.onLine) {
    showConnection('offline', 'No network: waiting for it to come back');
    return;
  }
  showConnection(desk.backoff.failures ? 'reconnecting' : 'connecting', 'Connecting…');
  try {
    await reconcile(session);
  } catch (error) {
    if (error && error.status === 401) {
      sessionEnded();
      return;
    }
    retry();
    return;
  }
  if (desk.stopped) return;
  openSocket();
}

function openSocket() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = `${scheme}//${location.host}/v1/agents/${encodeURIComponent(desk.me)}/stream`;
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (error) {
    retry();
    return;
  }
  desk.ws = ws;
  desk.ackSent = 0;
  ws.addEventListener('open', () => {
    if (desk.ws !== ws) return;
    desk.backoff.reset();
    showConnection('live', 'Live');
  });
  ws.addEventListener('message', (message) => {
    if (desk.ws === ws && typeof message.data === 'string') onFrame(message.data);
  });
  ws.addEventListener('close', (event) => {
    if (desk.ws !== ws) return;
    desk.ws = null;
    if (desk.stopped) return;
    if (event.code === 1008) {
      // The session key was revoked: signed out here or elsewhere.
      sessionEnded();
      return;
    }
    retry();
  });
}

function retry() {
  if (desk.stopped) return;
  const delay = desk.backoff.next();
  desk.retryAt = Date.now() + delay;
  showRetry();
  clearTimeout(desk.retryTimer);
  desk.retryTimer = setTimeout(() => connect(), delay);
}

function showRetry() {
  if (!desk.retryAt) return;
  const seconds = Math.max(0, Math.ceil((desk.retryAt - Date.now()) / 1000));
  showConnection(
    'reconnecting',
    `Connection lost · reconnecting in ${seconds} s (attempt ${desk.backoff.failures})`,
  );
}

/**
 * What the agent holds now, from `GET /v1/session`: pops and calls in hand come back even if
 * their events were acknowledged by another tab; open items no longer held are settled.
 */
async function reconcile(session) {
  const current = session || (await getSession());
  if (!current) {
    const error = new Error('signed out');
    error.status = 401;
    throw error;
  }
  if (current.agent_id !== desk.me) {
    // Another agent signed in in this browser: start over as that agent.
    desk.stopped = true;
    location.reload();
    return;
  }
  try {
    desk.agent = await api('GET', `/v1/agents/${encodeURIComponent(desk.me)}`);
  } catch (error) {
    if (error.status === 401) throw error;
  }
  const held = new Set();
  const fresh = [];
  for (const h of Array.isArray(current.held) ? current.held : []) {
    const v = h.interaction || {};
    if (typeof v.id !== 'string' || !OPEN.has(v.state)) continue;
    held.add(v.id);
    let item = desk.items.get(v.id);
    if (!item) {
      item = newItem(v.id, v.created_at || new Date(serverNow()).toISOString());
      fillFromInteraction(item, v);
      item.offeredAt = v.updated_at || item.seenAt;
      desk.items.set(v.id, item);
      if (v.state === 'offered') fresh.push(item);
    }
    item.state = v.state;
    item.offerTarget = h.offer_target || item.offerTarget || item.target;
    item.expiresAt = v.offer_expires_at || item.expiresAt;
    item.wrapUpUntil = h.wrap_up_until || null;
    item.snapshotAt = v.updated_at || null;
    if (typeof v.transfer_note === 'string') item.transferNote = v.transfer_note;
  }
  const settle = [];
  for (const item of desk.items.values()) {
    if (OPEN.has(item.state) && !held.has(item.id)) settle.push(settleItem(item));
  }
  await Promise.all(settle);
  desk.todayDirty = true;
  render();
  saveDesk();
  for (const item of fresh) {
    if (Date.parse(item.expiresAt) > serverNow()) alertAgent(item);
  }
}

/** An item the agent no longer holds: how it ended, from the interaction itself. */
async function settleItem(item) {
  let view = null;
  try {
    view = await api('GET', `/v1/interactions/${encodeURIComponent(item.id)}`);
  } catch (error) {
    if (error.status === 401) throw error;
  }
  const state = view && view.state;
  const outcomes = {
    completed: 'Completed',
    abandoned: 'Caller hung up',
    unanswered: 'Unanswered',
    timed_out: 'Timed out',
  };
  if (state && outcomes[state]) {
    const disposition = view.disposition ? ` · ${view.disposition}` : '';
    close(item, state, state === 'completed' ? `Completed${disposition}` : outcomes[state]);
  } else {
    close(item, 'missed', item.state === 'offered' ? 'Missed' : 'No longer yours');
  }
  if (view) item.snapshotAt = view.updated_at || item.snapshotAt;
}

/**
 * Today's interactions as the server has them, so the list is the same in a new tab, after a
 * sign-in on another machine, or after the browser forgot its storage. Open ones come from the
 * session and the stream; this adds the ones that ended.
 */
async function loadToday() {
  const midnight = new Date();
  midnight.setHours(0, 0, 0, 0);
  const since = encodeURIComponent(midnight.toISOString());
  let listed;
  try {
    listed = await api('GET', `/v1/interactions?since=${since}&limit=500`);
  } catch (error) {
    if (error.status === 401) throw error;
    return; // The list is a convenience: the desk works without it.
  }
  const outcomes = {
    completed: 'Completed',
    abandoned: 'Caller hung up',
    unanswered: 'Unanswered',
    timed_out: 'Timed out',
  };
  for (const v of (listed && listed.interactions) || []) {
    if (!v || typeof v.id !== 'string' || desk.items.has(v.id)) continue;
    const mine = Boolean(v.agent && v.agent.id === desk.me);
    if (mine && OPEN.has(v.state)) continue;
    const item = newItem(v.id, v.updated_at || v.created_at);
    fillFromInteraction(item, v);
    item.offeredAt = v.created_at || item.seenAt;
    item.closedAt = v.updated_at || null;
    if (mine && outcomes[v.state]) {
      const disposition = v.state === 'completed' && v.disposition ? ` · ${v.disposition}` : '';
      item.state = v.state;
      item.outcome = `${outcomes[v.state]}${disposition}`;
    } else {
      // Offered to this agent, then handled elsewhere: missed, rejected or transferred on.
      item.state = 'missed';
      item.outcome = 'Passed on';
    }
    desk.items.set(v.id, compact(item));
  }
  desk.todayDirty = true;
}

/** After a hangup: when does wrap-up end by itself? */
async function refreshHeld() {
  let session;
  try {
    session = await getSession();
  } catch (error) {
    return;
  }
  if (!session) return;
  for (const h of session.held || []) {
    const item = h.interaction && desk.items.get(h.interaction.id);
    if (item && h.wrap_up_until) item.wrapUpUntil = h.wrap_up_until;
  }
  saveSoon();
}

function sessionEnded(text) {
  if (desk.stopped) return;
  desk.stopped = true;
  clearTimeout(desk.retryTimer);
  if (desk.ws) {
    const ws = desk.ws;
    desk.ws = null;
    ws.close();
  }
  showConnection('signed-out', 'Signed out');
  byId('desk').hidden = true;
  byId('presence-select').disabled = true;
  fatal(text || 'Your session has ended: you signed out (here or in another tab), or it expired. Sign in again to take calls.');
}

function fatal(text) {
  setText(byId('fatal-text'), text);
  byId('fatal').hidden = false;
}

// ----- alerts ----------------------------------------------------------------------------------

let audio = null;

function unlockAudio() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!audio && Context) {
    try {
      audio = new Context();
    } catch (error) {
      audio = null;
    }
  }
  if (audio && audio.state === 'suspended') audio.resume().catch(() => {});
}

function beep() {
  if (!audio || audio.state !== 'running') return;
  const start = audio.currentTime;
  for (const [offset, frequency] of [[0, 880], [0.25, 660]]) {
    const oscillator = audio.createOscillator();
    const gain = audio.createGain();
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(0.0001, start + offset);
    gain.gain.exponentialRampToValueAtTime(0.25, start + offset + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.2);
    oscillator.connect(gain);
    gain.connect(audio.destination);
    oscillator.start(start + offset);
    oscillator.stop(start + offset + 0.22);
  }
}

/** A new pop: a notification and a beep when the tab is hidden; the title always. */
function alertAgent(item) {
  desk.lastAlert = Date.now();
  if (!document.hidden) return;
  beep();
  if ('Notification' in window && Notification.permission === 'granted') {
    try {
      const notification = new Notification('Incoming call', {
        body: `${item.caller || 'Unknown caller'} · ${targetText(item.offerTarget)}`,
        tag: `handoff-${item.id}`,
        requireInteraction: true,
      });
      notification.addEventListener('click', () => {
        window.focus();
        notification.close();
      });
    } catch (error) {
      // Some browsers allow notifications only from a service worker.
    }
  }
}

function notice(text, kind = 'info') {
  const box = byId('notices');
  const node = el('p', { class: `notice ${kind}`, testid: 'notice' }, text);
  box.appendChild(node);
  while (box.children.length > 4) box.removeChild(box.firstChild);
  setTimeout(() => node.remove(), 10000);
}

function setupNotifications() {
  const button = byId('notify-enable');
  const update = () => {
    button.hidden = !('Notification' in window) || Notification.permission !== 'default';
  };
  update();
  button.addEventListener('click', async () => {
    unlockAudio();
    try {
      await Notification.requestPermission();
    } catch (error) {
      // Refused or unsupported.
    }
    update();
  });
  document.addEventListener('pointerdown', unlockAudio);
  document.addEventListener('keydown', unlockAudio);
}

// ----- actions ---------------------------------------------------------------------------------

async function act(item, action, body, card) {
  if (card && card.busy) return;
  if (card) {
    card.busy = true;
    card.node.classList.add('busy');
    showCardError(card, '');
  }
  try {
    const view = await api(
      'POST',
      `/v1/interactions/${encodeURIComponent(item.id)}/${action}`,
      body,
    );
    const now = new Date(serverNow()).toISOString();
    if (action === 'accept' && view && view.state === 'accepted' && item.state === 'offered') {
      item.state = 'accepted';
      item.acceptedAt = now;
    } else if (action === 'reject') {
      close(item, 'rejected', 'Rejected', now);
    } else if (action === 'complete') {
      const disposition = body && body.disposition ? ` · ${body.disposition}` : '';
      close(item, 'completed', `Completed${disposition}`, now);
    } else if (action === 'transfer') {
      close(item, 'transferred', `Transferred to ${targetText(body.target)}`, now);
    }
    desk.todayDirty = true;
    render();
    saveDesk();
  } catch (error) {
    if (error.status === 401) {
      sessionEnded();
      return;
    }
    if (error.status === 409 || error.status === 404) {
      showCardError(card, 'This call is no longer in that state; refreshing.');
      await settleOrRefresh(item);
    } else if (error.status === 422) {
      showCardError(card, error.message);
    } else {
      showCardError(card, `Could not ${action}: ${error.message}`);
    }
  } finally {
    if (card) {
      card.busy = false;
      card.node.classList.remove('busy');
    }
  }
}

/** After a 409: the interaction as it is now. */
async function settleOrRefresh(item) {
  let session = null;
  try {
    session = await getSession();
  } catch (error) {
    return;
  }
  if (!session) {
    sessionEnded();
    return;
  }
  const held = (session.held || []).find((h) => h.interaction && h.interaction.id === item.id);
  if (held) {
    item.state = held.interaction.state;
    item.wrapUpUntil = held.wrap_up_until || null;
    item.snapshotAt = held.interaction.updated_at || null;
  } else {
    await settleItem(item).catch(() => {});
  }
  desk.todayDirty = true;
  render();
  saveDesk();
}

function showCardError(card, text) {
  if (!card || !card.error) return;
  card.error.hidden = !text;
  setText(card.error, text);
}

function firstOffered() {
  let first = null;
  for (const item of desk.items.values()) {
    if (item.state !== 'offered') continue;
    if (!first || Date.parse(item.offeredAt) < Date.parse(first.offeredAt)) first = item;
  }
  return first;
}

function setupKeyboard() {
  document.addEventListener('keydown', (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    if (target && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName))) return;
    const key = event.key.toLowerCase();
    if (key !== 'a' && key !== 'r') return;
    const item = firstOffered();
    if (!item || desk.stopped) return;
    event.preventDefault();
    act(item, key === 'a' ? 'accept' : 'reject', undefined, desk.pops.get(item.id));
  });
}

// ----- the CRM ---------------------------------------------------------------------------------

function crmBits(item, testid) {
  const href = safeHttpUrl(item.popUrl);
  if (!href) {
    if (!item.popUrlError) return null;
    return el('p', { class: 'muted small', testid: `${testid}-error` }, `CRM link unavailable: ${item.popUrlError}`);
  }
  const link = externalLink(href, 'Open CRM', { class: 'button crm-link', testid });
  link.addEventListener('click', (event) => {
    if (desk.crmMode === 'frame') {
      event.preventDefault();
      showCrm(item);
    }
  });
  return link;
}

/**
 * Shows the pop's CRM page in a frame (the agent's choice). The frame is made only now, for an
 * absolute http(s) URL of another origin: a page of this origin is never framed with scripts.
 * It keeps its own origin (allow-same-origin) so the CRM's own sign-in works; it cannot reach
 * this page, which is of another origin.
 */
function showCrm(item) {
  const href = safeHttpUrl(item.popUrl);
  if (!href || new URL(href).origin === location.origin) return;
  let frame = byId('crm-frame');
  if (!frame) {
    frame = el('iframe', {
      id: 'crm-frame',
      testid: 'crm-frame',
      title: 'CRM',
      referrerPolicy: 'no-referrer',
      attrs: { sandbox: 'allow-scripts allow-same-origin allow-forms allow-popups allow-popups-to-escape-sandbox' },
    });
    byId('crm-body').appendChild(frame);
  }
  if (frame.getAttribute('src') !== href) frame.src = href;
  desk.crmFor = item.id;
  setText(byId('crm-for'), `${item.caller || 'Unknown caller'} · ${targetText(item.offerTarget)}`);
  byId('crm-panel').hidden = false;
}

function hideCrm() {
  desk.crmFor = null;
  byId('crm-panel').hidden = true;
  replaceChildren(byId('crm-body'));
}

function setupCrmMode() {
  const select = byId('crm-mode');
  try {
    desk.crmMode = localStorage.getItem('handoff.crmMode') === 'frame' ? 'frame' : 'tab';
  } catch (error) {
    desk.crmMode = 'tab';
  }
  select.value = desk.crmMode;
  select.addEventListener('change', () => {
    desk.crmMode = select.value === 'frame' ? 'frame' : 'tab';
    try {
      localStorage.setItem('handoff.crmMode', desk.crmMode);
    } catch (error) {
      // A preference only.
    }
    if (desk.crmMode === 'tab') hideCrm();
  });
  byId('crm-close').addEventListener('click', hideCrm);
}

// ----- presence --------------------------------------------------------------------------------

function presenceValue(presence) {
  if (presence.status === 'available' || presence.status === 'offline') return presence.status;
  return `${presence.status}:${presence.reason || ''}`;
}

function showPresence() {
  const presence = desk.agent && desk.agent.presence;
  if (!presence) return;
  const select = byId('presence-select');
  const value = presenceValue(presence);
  if (![...select.options].some((option) => option.value === value)) {
    const label = `${presence.status[0].toUpperCase()}${presence.status.slice(1)} — ${presence.reason || ''}`;
    select.appendChild(el('option', { value, dataset: { dynamic: '1' } }, label));
  }
  if (document.activeElement !== select) select.value = value;
  select.dataset.status = presence.status;
  const hint = byId('presence-hint');
  let text = '';
  if (presence.status === 'offline') {
    text = presence.reason === 'connection_lost'
      ? 'You were set offline when your connection was lost. Choose Available to take calls again.'
      : 'You are offline: no calls are offered to you. Choose Available to take calls.';
  } else if (presence.status !== 'available') {
    text = `You are ${presence.status}${presence.reason ? ` (${presence.reason.replace(/_/g, ' ')})` : ''}: no calls are offered to you.`;
  }
  hint.hidden = !text;
  hint.dataset.status = presence.status;
  setText(hint, text);
}

function setupPresence() {
  const select = byId('presence-select');
  select.disabled = false;
  select.addEventListener('change', async () => {
    const [status, reason] = select.value.split(':');
    select.disabled = true;
    try {
      desk.agent = await api('PUT', `/v1/agents/${encodeURIComponent(desk.me)}/presence`, {
        status,
        reason: reason ? reason : null,
      });
    } catch (error) {
      if (error.status === 401) {
        sessionEnded();
        return;
      }
      notice(`Could not change presence: ${error.message}`, 'error');
    } finally {
      select.disabled = desk.stopped;
      select.blur();
      showPresence();
    }
  });
}

// ----- rendering -------------------------------------------------------------------------------

function domId(prefix, id) {
  return `${prefix}-${String(id).replace(/[^A-Za-z0-9_-]/g, '_')}`;
}

function routingText(routing) {
  if (!routing || typeof routing !== 'object') return null;
  const parts = [];
  if (routing.strategy && routing.strategy !== 'direct') {
    parts.push(`Chosen by ${String(routing.strategy).replace(/_/g, ' ')}`);
  } else {
    parts.push('Addressed to you');
  }
  if (Number.isFinite(routing.eligible)) {
    parts.push(`${routing.eligible} eligible agent${routing.eligible === 1 ? '' : 's'}`);
  }
  const head = parts.join(' · ');
  return routing.reason ? `${head}: ${routing.reason}` : head;
}

function fact(label, value, testid) {
  if (value === null || value === undefined || value === '') return null;
  return [el('dt', {}, label), el('dd', { testid }, String(value))];
}

function queueText(item) {
  const target = item.offerTarget || item.target;
  if (target && target.agent === desk.me) return 'Direct to you';
  return targetText(target);
}

function popCard(item) {
  const card = { busy: false };
  card.countdown = el('span', { class: 'countdown', testid: 'pop-countdown' });
  card.bar = el('progress', { class: 'countdown-bar', testid: 'pop-countdown-bar', max: 1, value: 1 });
  card.accept = el(
    'button',
    {
      type: 'button',
      class: 'primary accept',
      id: domId('accept', item.id),
      testid: 'pop-accept',
      attrs: { 'aria-keyshortcuts': 'A' },
      on: { click: () => act(item, 'accept', undefined, card) },
    },
    'Accept ',
    el('kbd', {}, 'A'),
  );
  card.reject = el(
    'button',
    {
      type: 'button',
      class: 'reject',
      id: domId('reject', item.id),
      testid: 'pop-reject',
      attrs: { 'aria-keyshortcuts': 'R' },
      on: { click: () => act(item, 'reject', undefined, card) },
    },
    'Reject ',
    el('kbd', {}, 'R'),
  );
  card.error = el('p', { class: 'error', testid: 'pop-error', hidden: true, attrs: { role: 'alert' } });
  card.context = el('section', { class: 'context', testid: 'pop-context' });
  card.crmFields = el('section', { class: 'crm-fields', testid: 'pop-crm-fields' });
  fillCallerData(card, item);
  const routing = routingText(item.routing);
  card.node = el(
    'article',
    {
      class: 'pop',
      id: domId('pop', item.id),
      testid: 'pop',
      dataset: { interactionId: item.id },
      attrs: { 'aria-label': `Incoming call from ${item.caller || 'unknown caller'}` },
    },
    el('header', { class: 'pop-head' },
      el('span', { class: 'pop-label' }, item.transferNote ? 'Transferred call' : 'Incoming call'),
      el('span', { class: 'spacer' }),
      card.countdown),
    card.bar,
    el('div', { class: 'pop-caller', testid: 'pop-caller' }, item.caller || 'Unknown caller'),
    el('dl', { class: 'facts' },
      fact('Queue', queueText(item), 'pop-queue'),
      fact('Dialed', item.dialed, 'pop-dialed'),
      fact('Channel', item.channel, 'pop-channel'),
      item.priority ? fact('Priority', item.priority, 'pop-priority') : null,
      fact('Call id', item.callId, 'pop-call-id')),
    item.transferNote
      ? el('p', { class: 'note', testid: 'pop-transfer-note' }, el('strong', {}, 'Transfer note: '), item.transferNote)
      : null,
    card.context,
    card.crmFields,
    routing ? el('p', { class: 'routing muted', testid: 'pop-routing' }, routing) : null,
    el('div', { class: 'actions' }, card.accept, card.reject, crmBits(item, 'pop-crm-link')),
    card.error,
  );
  return card;
}

/**
 * Draws the caller's data on a card: the context, then what each CRM connector found (or why
 * its lookup failed). Drawn again whenever an update of either arrives.
 */
function fillCallerData(card, item, collapsible) {
  card.dataVersion = item.dataVersion;
  const heading = collapsible ? el('summary', {}, 'Caller data') : el('h3', {}, 'Caller data');
  replaceChildren(card.context, heading, renderValue(item.context));
  const found = Object.entries(item.enrichment || {});
  const failed = Object.entries(item.lookupErrors || {}).filter(([name]) => !(item.enrichment || {})[name]);
  card.crmFields.hidden = found.length === 0 && failed.length === 0;
  replaceChildren(
    card.crmFields,
    el('h3', {}, 'From the CRM'),
    ...found.map(([name, fields]) =>
      el('div', { class: 'crm-connector', testid: 'crm-connector', dataset: { connector: name } },
        el('h4', {}, name), renderValue(fields))),
    ...failed.map(([name, reason]) =>
      el('p', { class: 'muted', testid: 'crm-lookup-failed', dataset: { connector: name } },
        `${name}: lookup failed (${reason})`)),
  );
}

function updatePop(card, item) {
  if (card.dataVersion !== item.dataVersion) fillCallerData(card, item);
  const left = Date.parse(item.expiresAt) - serverNow();
  const total = Math.max(1000, Date.parse(item.expiresAt) - Date.parse(item.offeredAt));
  if (Number.isNaN(left)) {
    setText(card.countdown, '');
    return;
  }
  const expired = left <= 0;
  setText(card.countdown, expired ? 'Expired' : `${Math.ceil(left / 1000)} s left`);
  card.bar.max = total;
  card.bar.value = Math.max(0, Math.min(total, left));
  card.node.classList.toggle('urgent', !expired && left <= 5000);
  card.node.classList.toggle('expired', expired);
  card.accept.disabled = expired;
}

function workCard(item) {
  const card = { busy: false };
  const notesId = domId('notes', item.id);
  const dispositionId = domId('disposition', item.id);
  card.state = el('span', { class: 'work-state', testid: 'work-state' });
  card.notes = el('textarea', { id: notesId, testid: 'work-notes', rows: 4, value: item.draft.notes || '' });
  card.disposition = el('input', {
    id: dispositionId,
    testid: 'work-disposition',
    value: item.draft.disposition || '',
    attrs: { list: 'dispositions', autocomplete: 'off' },
  });
  const keepDraft = () => {
    item.draft = { notes: card.notes.value, disposition: card.disposition.value };
    saveSoon();
  };
  card.notes.addEventListener('input', keepDraft);
  card.disposition.addEventListener('input', keepDraft);
  card.complete = el(
    'button',
    { type: 'submit', class: 'primary', testid: 'work-complete', id: domId('complete', item.id) },
    'Complete',
  );
  const form = el(
    'form',
    { class: 'work-form', testid: 'work-form' },
    el('label', { htmlFor: notesId }, 'Notes'),
    card.notes,
    el('label', { htmlFor: dispositionId }, 'Disposition'),
    card.disposition,
    el('div', { class: 'actions' }, card.complete, crmBits(item, 'work-crm-link')),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const body = {};
    const notes = card.notes.value.trim();
    const disposition = card.disposition.value.trim();
    if (notes) body.notes = notes;
    if (disposition) body.disposition = disposition;
    act(item, 'complete', body, card);
  });

  const kindId = domId('transfer-kind', item.id);
  const targetId = domId('transfer-target', item.id);
  const noteId = domId('transfer-note', item.id);
  card.kind = el('select', { id: kindId, testid: 'transfer-kind' },
    el('option', { value: 'queue' }, 'Queue'),
    el('option', { value: 'agent' }, 'Agent'));
  card.target = el('input', {
    id: targetId,
    testid: 'transfer-target',
    placeholder: 'queue name or agent id',
    required: true,
    attrs: { autocomplete: 'off', spellcheck: 'false' },
  });
  card.note = el('textarea', { id: noteId, testid: 'transfer-note', rows: 2, placeholder: 'What the next agent should know' });
  const transfer = el(
    'form',
    { class: 'transfer-form', testid: 'transfer-form' },
    el('div', { class: 'row' },
      el('label', { htmlFor: kindId }, 'Transfer to'),
      card.kind,
      el('label', { htmlFor: targetId, class: 'visually-hidden' }, 'Target'),
      card.target),
    el('label', { htmlFor: noteId }, 'Note for the next agent'),
    card.note,
    el('div', { class: 'actions' }, el('button', { type: 'submit', testid: 'transfer-submit', id: domId('transfer', item.id) }, 'Transfer')),
  );
  transfer.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = card.target.value.trim();
    if (!name) return;
    const body = { target: { [card.kind.value === 'agent' ? 'agent' : 'queue']: name } };
    const note = card.note.value.trim();
    if (note) body.note = note;
    act(item, 'transfer', body, card);
  });
  card.transfer = el('details', { class: 'transfer', testid: 'work-transfer' }, el('summary', {}, 'Transfer…'), transfer);
  card.error = el('p', { class: 'error', testid: 'work-error', hidden: true, attrs: { role: 'alert' } });
  card.context = el('details', { class: 'context', testid: 'work-context', open: true });
  card.crmFields = el('section', { class: 'crm-fields', testid: 'work-crm-fields' });
  fillCallerData(card, item, true);

  card.node = el(
    'article',
    { class: 'work-card', id: domId('work', item.id), testid: 'work-card', dataset: { interactionId: item.id } },
    el('header', { class: 'work-head' },
      el('span', { class: 'work-caller', testid: 'work-caller' }, item.caller || 'Unknown caller'),
      el('span', { class: 'muted', testid: 'work-queue' }, queueText(item)),
      el('span', { class: 'spacer' }),
      card.state),
    item.transferNote
      ? el('p', { class: 'note', testid: 'work-transfer-note' }, el('strong', {}, 'Transfer note: '), item.transferNote)
      : null,
    card.context,
    card.crmFields,
    form,
    card.transfer,
    card.error,
  );
  return card;
}

function updateWork(card, item) {
  if (card.dataVersion !== item.dataVersion) fillCallerData(card, item, true);
  card.node.dataset.state = item.state;
  card.transfer.hidden = item.state !== 'accepted';
  const now = serverNow();
  let text;
  if (item.state === 'wrap_up') {
    const until = Date.parse(item.wrapUpUntil);
    text = Number.isNaN(until)
      ? `Wrap-up · caller left ${fmtDuration(now - Date.parse(item.endedAt))} ago`
      : `Wrap-up · ${fmtDuration(until - now)} left`;
  } else {
    const since = Date.parse(item.acceptedAt || item.offeredAt);
    text = Number.isNaN(since) ? 'On call' : `On call · ${fmtDuration(now - since)}`;
  }
  setText(card.state, text);
}

function sortByOffer(items) {
  return items.sort((a, b) => Date.parse(a.offeredAt) - Date.parse(b.offeredAt));
}

/** Keeps one card per item of `state`s in `box`, in offer order; returns the items. */
function syncCards(box, cards, states, build) {
  const items = sortByOffer([...desk.items.values()].filter((item) => states.has(item.state)));
  const wanted = new Set(items.map((item) => item.id));
  for (const [id, card] of cards) {
    if (!wanted.has(id)) {
      card.node.remove();
      cards.delete(id);
    }
  }
  let fresh = null;
  items.forEach((item, index) => {
    let card = cards.get(item.id);
    if (!card) {
      card = build(item);
      cards.set(item.id, card);
      fresh = fresh || card;
    }
    if (box.children[index] !== card.node) box.insertBefore(card.node, box.children[index] || null);
  });
  return { items, fresh };
}

function render() {
  const pops = syncCards(byId('pops'), desk.pops, new Set(['offered']), popCard);
  for (const item of pops.items) updatePop(desk.pops.get(item.id), item);
  if (pops.fresh) {
    const active = document.activeElement;
    if (!active || active === document.body) pops.fresh.accept.focus();
  }
  const work = syncCards(byId('work'), desk.work, new Set(['accepted', 'wrap_up']), workCard);
  for (const item of work.items) updateWork(desk.work.get(item.id), item);
  byId('idle').hidden = pops.items.length > 0 || work.items.length > 0;
  document.body.classList.toggle('ringing', pops.items.length > 0);
  if (desk.todayDirty) renderToday();
  showPresence();
  updateTitle();
}

function renderToday() {
  desk.todayDirty = false;
  const today = localDay(Date.now());
  const items = [...desk.items.values()]
    .filter((item) => localDay(Date.parse(item.seenAt)) === today || OPEN.has(item.state))
    .sort((a, b) => Date.parse(b.offeredAt) - Date.parse(a.offeredAt));
  const rows = items.map((item) =>
    el(
      'tr',
      { testid: 'today-row', dataset: { interactionId: item.id, state: item.state } },
      el('td', { class: 'time' }, fmtClock(item.offeredAt, false)),
      el('td', { testid: 'today-caller' }, item.caller || 'Unknown'),
      el('td', {}, queueText(item)),
      el('td', { testid: 'today-outcome' }, OPEN.has(item.state) ? STATE_LABEL[item.state] : item.outcome || item.state),
    ));
  replaceChildren(byId('today-list'), rows);
  const handled = items.filter((item) => item.state === 'completed').length;
  setText(byId('today-count'), items.length ? `${items.length} · ${handled} completed` : '');
  byId('today-empty').hidden = items.length > 0;
}

let titleFlip = false;
function updateTitle() {
  const ringing = [...desk.items.values()].filter((item) => item.state === 'offered').length;
  if (ringing === 0) {
    document.title = 'Desktop · handoff';
    return;
  }
  titleFlip = !titleFlip;
  document.title = document.hidden && titleFlip ? '☎ Incoming call' : `(${ringing}) Incoming call · handoff`;
}

function tick() {
  for (const [id, card] of desk.pops) {
    const item = desk.items.get(id);
    if (item) updatePop(card, item);
  }
  for (const [id, card] of desk.work) {
    const item = desk.items.get(id);
    if (item) updateWork(card, item);
  }
  const presence = desk.agent && desk.agent.presence;
  if (presence) {
    setText(byId('presence-since'), `for ${fmtDuration(serverNow() - Date.parse(presence.since))}`);
  }
  if (desk.retryAt && !desk.ws) showRetry();
  updateTitle();
}

// ----- start -----------------------------------------------------------------------------------

async function main() {
  let session;
  try {
    session = await getSession();
  } catch (error) {
    showConnection('offline', 'The server cannot be reached');
    fatal('The server cannot be reached. This page retries in a few seconds.');
    setTimeout(() => location.reload(), 5000);
    return;
  }
  if (!session) {
    toSignin();
    return;
  }
  if (session.role !== 'agent' || !session.agent_id) {
    location.replace('/supervisor');
    return;
  }
  desk.me = session.agent_id;
  setupHeader(session, desk.me);
  loadDesk();
  try {
    desk.agent = await api('GET', `/v1/agents/${encodeURIComponent(desk.me)}`);
    setText(byId('who'), `${desk.agent.name} (${desk.me})`);
  } catch (error) {
    if (error.status === 401) {
      toSignin();
      return;
    }
  }
  try {
    await loadToday();
  } catch (error) {
    toSignin();
    return;
  }
  byId('desk').hidden = false;
  setupPresence();
  setupCrmMode();
  setupNotifications();
  setupKeyboard();
  render();
  window.addEventListener('online', () => {
    if (!desk.ws && !desk.stopped) connect();
  });
  window.addEventListener('offline', () => {
    if (!desk.ws) showConnection('offline', 'No network: waiting for it to come back');
  });
  document.addEventListener('visibilitychange', updateTitle);
  setInterval(tick, 500);
  connect(session);
}

main();

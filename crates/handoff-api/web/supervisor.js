// The supervisor view (`/supervisor`): every agent with presence, activity, time in state and
// current interaction; every queue with waiting, longest wait, service level and ASA; a chart of
// the last hour. A snapshot over HTTP, then `/v1/events` (Server-Sent Events, with the session
// cookie) from the log's head at the snapshot, so nothing falls between the two.

import {
  api,
  Backoff,
  byId,
  el,
  fmtDuration,
  getSession,
  observeEventTime,
  percent,
  replaceChildren,
  serverNow,
  setText,
  setupHeader,
  showConnection,
  svg,
  targetText,
  toSignin,
} from './common.js';

const HOUR = 60 * 60 * 1000;
const ACTIVITY_RANK = { idle: 0, wrap_up: 1, offered: 2, engaged: 3 };
const HELD_ACTIVITY = { offered: 'offered', accepted: 'engaged', wrap_up: 'wrap_up' };

const board = {
  agents: new Map(), // id → AgentView
  held: new Map(), // agent id → Map(interaction id → {state, caller, queue, since})
  queues: new Map(), // name → {config, stats}
  history: new Map(), // name → [{t, waiting, sl, weight}]
  lastSeq: 0,
  source: null,
  backoff: new Backoff(),
  retryTimer: null,
  agentRows: new Map(),
  queueRows: new Map(),
  dirty: { agents: true, queues: true, chart: true },
  stopped: false,
  lastEventAt: 0,
};

// ----- the model -------------------------------------------------------------------------------

function heldOf(agent) {
  let held = board.held.get(agent);
  if (!held) {
    held = new Map();
    board.held.set(agent, held);
  }
  return held;
}

/** The busiest of an agent's interactions (engaged > offered > wrap_up > idle). */
function deriveActivity(agent) {
  const view = board.agents.get(agent);
  if (!view) return;
  let best = 'idle';
  for (const entry of heldOf(agent).values()) {
    const activity = HELD_ACTIVITY[entry.state] || 'idle';
    if (ACTIVITY_RANK[activity] > ACTIVITY_RANK[best]) best = activity;
  }
  view.activity = best;
}

function hold(agent, id, state, extra) {
  if (typeof agent !== 'string' || typeof id !== 'string') return;
  const held = heldOf(agent);
  const entry = held.get(id) || { caller: null, queue: null, since: null };
  Object.assign(entry, extra || {}, { state });
  held.set(id, entry);
  deriveActivity(agent);
}

function release(agent, id) {
  if (typeof agent !== 'string') return;
  heldOf(agent).delete(id);
  deriveActivity(agent);
}

function releaseEverywhere(id) {
  for (const [agent, held] of board.held) {
    if (held.delete(id)) deriveActivity(agent);
  }
}

function findHeld(id) {
  for (const held of board.held.values()) {
    const entry = held.get(id);
    if (entry) return entry;
  }
  return null;
}

function setStats(name, stats, at) {
  const queue = board.queues.get(name) || { config: { name }, stats: null };
  queue.stats = stats;
  board.queues.set(name, queue);
  const points = board.history.get(name) || [];
  const last15 = stats.last_15m || {};
  points.push({
    t: at,
    waiting: Number(stats.waiting) || 0,
    sl: Number(last15.service_level),
    weight: (Number(last15.answered) || 0) + (Number(last15.abandoned) || 0),
  });
  // Keep one point older than the hour: it says where the line starts.
  const cutoff = Date.now() - HOUR;
  while (points.length > 1 && points[1].t < cutoff) points.shift();
  board.history.set(name, points);
  board.dirty.queues = true;
  board.dirty.chart = true;
}

function apply(ev) {
  const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
  const type = String(ev.type || '');
  const at = Date.parse(ev.time) || Date.now();
  board.dirty.agents = true;
  switch (type) {
    case 'queue.stats':
      board.dirty.agents = false;
      if (typeof ev.subject === 'string') setStats(ev.subject, d, Date.now());
      return;
    case 'queue.created':
    case 'queue.updated':
      if (d.queue && typeof d.queue.name === 'string') {
        const queue = board.queues.get(d.queue.name) || { stats: null };
        queue.config = d.queue;
        board.queues.set(d.queue.name, queue);
        if (!queue.stats) loadStats(d.queue.name);
        board.dirty.queues = true;
        refreshChartChoices();
      }
      return;
    case 'queue.deleted':
      board.queues.delete(d.queue);
      board.history.delete(d.queue);
      board.dirty.queues = true;
      board.dirty.chart = true;
      refreshChartChoices();
      return;
    case 'agent.created':
      if (d.agent && typeof d.agent.id === 'string') {
        board.agents.set(d.agent.id, {
          ...d.agent,
          presence: d.presence || { status: 'offline', reason: null, source: 'system', since: ev.time },
          activity: 'idle',
          connected: false,
        });
      }
      return;
    case 'agent.updated':
      if (d.agent && board.agents.has(d.agent.id)) Object.assign(board.agents.get(d.agent.id), d.agent);
      return;
    case 'agent.deleted':
      board.agents.delete(d.agent);
      board.held.delete(d.agent);
      return;
    case 'agent.presence_changed': {
      const view = board.agents.get(d.agent);
      if (view && d.presence) view.presence = d.presence;
      return;
    }
    case 'interaction.offered': {
      const i = d.interaction || {};
      hold(d.agent, i.id || ev.subject, 'offered', {
        caller: typeof i.caller === 'string' ? i.caller : null,
        queue: targetText(d.offer_target || i.target),
        since: at,
      });
      return;
    }
    case 'interaction.accepted': {
      const id = d.interaction_id;
      const entry = findHeld(id);
      hold(d.agent, id, 'accepted', { ...(entry || {}), since: at });
      return;
    }
    case 'interaction.offer_revoked':
    case 'interaction.rejected':
    case 'interaction.completed':
      release(d.agent, d.interaction_id);
      return;
    case 'interaction.transferred':
      release(d.from, d.interaction_id);
      return;
    case 'interaction.ended':
      hold(d.agent, d.interaction_id, 'wrap_up', { since: at });
      return;
    case 'interaction.abandoned':
    case 'interaction.unanswered':
    case 'interaction.timed_out':
      releaseEverywhere(d.interaction_id);
      return;
    default:
      board.dirty.agents = false;
  }
}

// ----- loading ---------------------------------------------------------------------------------

async function loadStats(name) {
  const path = `/v1/queues/${encodeURIComponent(name)}/stats`;
  const [stats, history] = await Promise.all([
    api('GET', path).catch(() => null),
    api('GET', `${path}/history`).catch(() => null),
  ]);
  // The hour before this page opened, as the server kept it; the chart goes on live from there.
  if (history && Array.isArray(history.samples)) {
    const points = board.history.get(name) || [];
    const firstLive = points.length ? points[0].t : Infinity;
    const earlier = history.samples
      .map((sample) => ({
        t: Date.parse(sample.at),
        waiting: Number(sample.waiting_max) || 0,
        sl: Number(sample.service_level),
        weight: Number(sample.answered_and_abandoned) || 0,
      }))
      .filter((point) => Number.isFinite(point.t) && point.t < firstLive);
    board.history.set(name, [...earlier, ...points]);
    board.dirty.chart = true;
  }
  // Without an answer the queue.stats events fill it in.
  if (stats) setStats(name, stats, Date.now());
  scheduleRender();
}

/** Everything as of now; returns the log's head it is at least as new as. */
async function loadSnapshot() {
  const health = await api('GET', '/healthz');
  const head = Number(health && health.head_seq) || 0;
  const open = (state) => api('GET', `/v1/interactions?state=${state}&limit=1000`);
  const [agents, queues, offered, accepted, wrapUp] = await Promise.all([
    api('GET', '/v1/agents'),
    api('GET', '/v1/queues'),
    open('offered'),
    open('accepted'),
    open('wrap_up'),
  ]);
  board.agents.clear();
  for (const agent of agents.agents || []) board.agents.set(agent.id, agent);
  board.held.clear();
  for (const list of [offered, accepted, wrapUp]) {
    for (const v of list.interactions || []) {
      if (!v.agent || typeof v.agent.id !== 'string') continue;
      heldOf(v.agent.id).set(v.id, {
        state: v.state,
        caller: v.caller,
        queue: targetText(v.target),
        since: Date.parse(v.updated_at) || null,
      });
    }
  }
  for (const id of board.agents.keys()) {
    if (heldOf(id).size > 0) deriveActivity(id);
  }
  const names = (queues.queues || []).map((q) => q.name);
  for (const q of queues.queues || []) {
    const queue = board.queues.get(q.name) || { stats: null };
    queue.config = q;
    board.queues.set(q.name, queue);
  }
  for (const name of [...board.queues.keys()]) {
    if (!names.includes(name)) board.queues.delete(name);
  }
  await Promise.all(names.map((name) => loadStats(name)));
  refreshChartChoices();
  board.dirty = { agents: true, queues: true, chart: true };
  return head;
}

// ----- the event stream ------------------------------------------------------------------------

function openEvents() {
  const source = new EventSource(`/v1/events?after=${board.lastSeq}`);
  board.source = source;
  source.addEventListener('open', () => {
    if (board.source !== source) return;
    board.backoff.reset();
    showConnection('live', 'Live');
  });
  source.addEventListener('message', (message) => {
    if (board.source !== source) return;
    let ev;
    try {
      ev = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    if (!ev || typeof ev !== 'object') return;
    const seq = Number(ev.seq) || 0;
    if (seq && seq <= board.lastSeq) return;
    if (seq) board.lastSeq = seq;
    if (typeof ev.time === 'string' && ev.type !== 'queue.stats') observeEventTime(ev.time);
    board.lastEventAt = Date.now();
    apply(ev);
    scheduleRender();
  });
  source.addEventListener('error', () => {
    if (board.source !== source) return;
    // Reconnect ourselves, from the last seq seen (EventSource would resend `after` from the URL).
    source.close();
    board.source = null;
    retry();
  });
}

function retry() {
  if (board.stopped) return;
  const delay = board.backoff.next();
  const until = Date.now() + delay;
  const show = () => {
    const seconds = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    showConnection('reconnecting', `Connection lost · reconnecting in ${seconds} s (attempt ${board.backoff.failures})`);
  };
  show();
  clearInterval(board.retryTimer);
  board.retryTimer = setInterval(async () => {
    if (Date.now() < until) {
      show();
      return;
    }
    clearInterval(board.retryTimer);
    let session;
    try {
      session = await getSession();
    } catch (error) {
      retry();
      return;
    }
    if (!session) {
      ended();
      return;
    }
    showConnection('connecting', 'Connecting…');
    openEvents();
  }, 250);
}

function ended() {
  board.stopped = true;
  if (board.source) board.source.close();
  board.source = null;
  showConnection('signed-out', 'Signed out');
  byId('board').hidden = true;
  fatal('Your session has ended: you signed out (here or in another tab), or it expired.');
}

function fatal(text, link, linkText) {
  setText(byId('fatal-text'), text);
  if (link) {
    byId('fatal-link').setAttribute('href', link);
    setText(byId('fatal-link'), linkText);
  }
  byId('fatal').hidden = false;
}

// ----- rendering -------------------------------------------------------------------------------

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function render() {
  if (board.dirty.agents) renderAgents();
  if (board.dirty.queues) renderQueues();
  if (board.dirty.chart) renderChart();
  board.dirty = { agents: false, queues: false, chart: false };
  tickAgents();
}

function presenceText(presence) {
  if (!presence) return '—';
  return presence.reason ? `${presence.status} · ${String(presence.reason).replace(/_/g, ' ')}` : presence.status;
}

function currentOf(agent) {
  const entries = [...heldOf(agent).entries()];
  if (entries.length === 0) return { text: '—', id: '' };
  const rank = (e) => ACTIVITY_RANK[HELD_ACTIVITY[e[1].state]] || 0;
  entries.sort((a, b) => rank(b) - rank(a));
  const [id, entry] = entries[0];
  const parts = [entry.caller || 'Unknown caller'];
  if (entry.queue) parts.push(entry.queue);
  let text = parts.join(' · ');
  if (entries.length > 1) text += ` (+${entries.length - 1})`;
  return { text, id };
}

function agentRow(id) {
  const cells = {
    name: el('td', { testid: 'agent-name' }),
    presence: el('td', { testid: 'agent-presence' }),
    since: el('td', { class: 'num', testid: 'agent-since' }),
    activity: el('td', { testid: 'agent-activity' }),
    interaction: el('td', { testid: 'agent-interaction' }),
    connected: el('td', { testid: 'agent-connected' }),
  };
  const tr = el('tr', { testid: 'agent-row', dataset: { agentId: id } }, Object.values(cells));
  return { tr, cells };
}

function renderAgents() {
  const body = byId('agent-rows');
  const agents = [...board.agents.values()].sort(
    (a, b) => String(a.name).localeCompare(String(b.name)) || String(a.id).localeCompare(String(b.id)),
  );
  const wanted = new Set(agents.map((a) => a.id));
  for (const [id, row] of board.agentRows) {
    if (!wanted.has(id)) {
      row.tr.remove();
      board.agentRows.delete(id);
    }
  }
  const counts = { available: 0, away: 0, busy: 0, offline: 0 };
  agents.forEach((agent, index) => {
    let row = board.agentRows.get(agent.id);
    if (!row) {
      row = agentRow(agent.id);
      board.agentRows.set(agent.id, row);
    }
    if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
    const status = (agent.presence && agent.presence.status) || 'offline';
    counts[status] = (counts[status] || 0) + 1;
    row.tr.dataset.presence = status;
    row.tr.dataset.activity = agent.activity || 'idle';
    setText(row.cells.name, agent.name && agent.name !== agent.id ? `${agent.name} (${agent.id})` : agent.id);
    setText(row.cells.presence, presenceText(agent.presence));
    row.cells.presence.dataset.status = status;
    setText(row.cells.activity, String(agent.activity || 'idle').replace('_', '-'));
    row.cells.activity.dataset.activity = agent.activity || 'idle';
    const current = currentOf(agent.id);
    setText(row.cells.interaction, current.text);
    row.cells.interaction.dataset.interactionId = current.id;
    setText(row.cells.connected, agent.connected ? 'connected' : '—');
    row.cells.connected.dataset.connected = agent.connected ? 'true' : 'false';
  });
  byId('agents-empty').hidden = agents.length > 0;
  setText(
    byId('agents-summary'),
    agents.length
      ? `${counts.available} available · ${counts.away} away · ${counts.busy} busy · ${counts.offline} offline`
      : '',
  );
}

function tickAgents() {
  const now = serverNow();
  for (const [id, row] of board.agentRows) {
    const agent = board.agents.get(id);
    const since = agent && agent.presence && Date.parse(agent.presence.since);
    setText(row.cells.since, since ? fmtDuration(now - since) : '—');
  }
}

function seconds(value) {
  return Number.isFinite(value) ? fmtDuration(value * 1000) : '—';
}

function queueRow(name) {
  const cells = {
    name: el('td', { testid: 'queue-name' }, name),
    waiting: el('td', { class: 'num', testid: 'queue-waiting' }),
    longest: el('td', { class: 'num', testid: 'queue-longest' }),
    sl: el('td', { class: 'num', testid: 'queue-sl' }),
    asa: el('td', { class: 'num', testid: 'queue-asa' }),
    today: el('td', { class: 'num', testid: 'queue-today' }),
    agents: el('td', { class: 'num', testid: 'queue-agents' }),
  };
  const tr = el('tr', { testid: 'queue-row', dataset: { queue: name } }, Object.values(cells));
  return { tr, cells };
}

function renderQueues() {
  const body = byId('queue-rows');
  const names = [...board.queues.keys()].sort();
  for (const [name, row] of board.queueRows) {
    if (!board.queues.has(name)) {
      row.tr.remove();
      board.queueRows.delete(name);
    }
  }
  names.forEach((name, index) => {
    let row = board.queueRows.get(name);
    if (!row) {
      row = queueRow(name);
      board.queueRows.set(name, row);
    }
    if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
    const stats = board.queues.get(name).stats;
    if (!stats) return;
    const last = stats.last_15m || {};
    const today = stats.today || {};
    const agents = stats.agents || {};
    row.tr.dataset.waiting = String(stats.waiting);
    row.tr.classList.toggle('alert', stats.waiting > 0 && (agents.available || 0) === 0);
    setText(row.cells.waiting, stats.waiting);
    setText(row.cells.longest, stats.waiting > 0 ? seconds(stats.longest_wait_s) : '—');
    setText(row.cells.sl, `${percent(last.service_level)} · ${percent(today.service_level)}`);
    setText(row.cells.asa, `${seconds(last.asa_s)} · ${seconds(today.asa_s)}`);
    setText(row.cells.today, `${today.answered ?? '—'} · ${today.abandoned ?? '—'}`);
    setText(row.cells.agents, `${agents.available ?? 0} · ${(agents.engaged ?? 0) + (agents.offered ?? 0) + (agents.wrap_up ?? 0)}`);
  });
  byId('queues-empty').hidden = names.length > 0;
}

// ----- the chart -------------------------------------------------------------------------------

function refreshChartChoices() {
  const select = byId('chart-queue');
  const chosen = select.value;
  const names = [...board.queues.keys()].sort();
  replaceChildren(
    select,
    el('option', { value: '' }, 'All queues'),
    names.map((name) => el('option', { value: name }, name)),
  );
  select.value = names.includes(chosen) ? chosen : '';
}

/** The chosen queue's points, or every queue's summed waiting and pooled service level. */
function series(name) {
  if (name) return board.history.get(name) || [];
  const all = [...board.history.entries()];
  const times = [...new Set(all.flatMap(([, points]) => points.map((p) => p.t)))].sort((a, b) => a - b);
  return times.map((t) => {
    let waiting = 0;
    let served = 0;
    let weight = 0;
    for (const [, points] of all) {
      let last = null;
      for (const p of points) {
        if (p.t <= t) last = p;
        else break;
      }
      if (!last) continue;
      waiting += last.waiting;
      if (Number.isFinite(last.sl)) {
        served += last.sl * last.weight;
        weight += last.weight;
      }
    }
    return { t, waiting, sl: weight > 0 ? served / weight : 1, weight };
  });
}

function renderChart() {
  const W = 640;
  const H = 200;
  const pad = { l: 36, r: 44, t: 28, b: 26 };
  const now = Date.now();
  const start = now - HOUR;
  const points = series(byId('chart-queue').value);
  const x = (t) => pad.l + ((Math.max(t, start) - start) / HOUR) * (W - pad.l - pad.r);
  const maxWaiting = Math.max(1, ...points.filter((p) => p.t >= start).map((p) => p.waiting), ...points.slice(-1).map((p) => p.waiting));
  const top = maxWaiting <= 2 ? 2 : Math.ceil(maxWaiting / 2) * 2;
  const plotH = H - pad.t - pad.b;
  const yW = (w) => pad.t + plotH - (w / top) * plotH;
  const yS = (s) => pad.t + plotH - Math.max(0, Math.min(1, s)) * plotH;

  const grid = [];
  for (const fraction of [0, 0.5, 1]) {
    const y = pad.t + plotH - fraction * plotH;
    grid.push(svg('line', { x1: pad.l, x2: W - pad.r, y1: y, y2: y, class: 'grid-line' }));
    const count = top * fraction;
    if (Number.isInteger(count)) {
      grid.push(svg('text', { x: pad.l - 6, y: y + 4, class: 'axis-label', 'text-anchor': 'end' }, String(count)));
    }
    grid.push(svg('text', { x: W - pad.r + 6, y: y + 4, class: 'axis-label sl-label' }, `${Math.round(fraction * 100)}%`));
  }
  for (const minutes of [60, 45, 30, 15, 0]) {
    const t = now - minutes * 60000;
    grid.push(svg('text', { x: x(t), y: H - 8, class: 'axis-label', 'text-anchor': 'middle' }, minutes ? `−${minutes} min` : 'now'));
  }

  const shapes = [];
  if (points.length > 0) {
    // Steps: a value holds until the next statistics event changes it.
    let area = `M ${x(points[0].t).toFixed(1)} ${yW(0).toFixed(1)}`;
    let line = '';
    points.forEach((p, i) => {
      const x0 = x(p.t);
      const x1 = i + 1 < points.length ? x(points[i + 1].t) : x(now);
      area += ` L ${x0.toFixed(1)} ${yW(p.waiting).toFixed(1)} L ${x1.toFixed(1)} ${yW(p.waiting).toFixed(1)}`;
      const sl = Number.isFinite(p.sl) ? p.sl : 1;
      line += `${i === 0 ? 'M' : ' L'} ${x0.toFixed(1)} ${yS(sl).toFixed(1)} L ${x1.toFixed(1)} ${yS(sl).toFixed(1)}`;
    });
    area += ` L ${x(now).toFixed(1)} ${yW(0).toFixed(1)} Z`;
    shapes.push(svg('path', { d: area, class: 'waiting-area' }));
    shapes.push(svg('path', { d: line, class: 'sl-line' }));
  } else {
    shapes.push(svg('text', { x: W / 2, y: H / 2, class: 'axis-label', 'text-anchor': 'middle' }, 'Waiting for statistics…'));
  }
  const legend = svg('g', { class: 'legend' },
    svg('rect', { x: pad.l, y: 6, width: 10, height: 10, class: 'waiting-area' }),
    svg('text', { x: pad.l + 14, y: 15, class: 'axis-label' }, 'waiting callers'),
    svg('line', { x1: pad.l + 114, x2: pad.l + 128, y1: 11, y2: 11, class: 'sl-line' }),
    svg('text', { x: pad.l + 132, y: 15, class: 'axis-label' }, 'service level (15 min)'));
  const last = points[points.length - 1];
  const chart = svg(
    'svg',
    {
      viewBox: `0 0 ${W} ${H}`,
      class: 'chart-svg',
      role: 'img',
      'data-testid': 'queue-chart',
      'data-points': points.length,
      'data-first-at': points.length ? new Date(points[0].t).toISOString() : '',
      'aria-label': last
        ? `Last hour: ${last.waiting} waiting now, service level ${percent(last.sl)}`
        : 'Last hour: no statistics yet',
    },
    grid,
    shapes,
    legend,
  );
  replaceChildren(byId('chart'), chart);
}

// ----- start -----------------------------------------------------------------------------------

async function refreshConnected() {
  try {
    const agents = await api('GET', '/v1/agents');
    for (const agent of agents.agents || []) {
      const view = board.agents.get(agent.id);
      if (view) view.connected = agent.connected;
    }
    board.dirty.agents = true;
    scheduleRender();
  } catch (error) {
    if (error.status === 401) ended();
  }
}

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
  setupHeader(session, session.agent_id ? `agent ${session.agent_id}` : session.role);
  if (session.role !== 'supervisor' && session.role !== 'admin') {
    showConnection('forbidden', 'Not a supervisor');
    fatal('This view is for supervisors and admins.', '/', 'Go to the agent desktop');
    return;
  }
  try {
    board.lastSeq = await loadSnapshot();
  } catch (error) {
    if (error.status === 401) {
      toSignin();
      return;
    }
    showConnection('offline', 'The server cannot be reached');
    fatal(`Could not load the board: ${error.message}. This page retries in a few seconds.`);
    setTimeout(() => location.reload(), 5000);
    return;
  }
  byId('board').hidden = false;
  byId('chart-queue').addEventListener('change', () => {
    board.dirty.chart = true;
    scheduleRender();
  });
  render();
  openEvents();
  setInterval(() => {
    tickAgents();
    setText(
      byId('updated'),
      board.lastEventAt ? `last event ${fmtDuration(Date.now() - board.lastEventAt)} ago` : '',
    );
  }, 1000);
  // The chart's time axis moves; the `connected` flags have no events.
  setInterval(() => {
    board.dirty.chart = true;
    scheduleRender();
  }, 10000);
  setInterval(refreshConnected, 15000);
}

main();

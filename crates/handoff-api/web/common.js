// Shared by the pages: the API over fetch (the session cookie goes along by itself), a DOM
// builder that only ever creates text nodes for data, and small formatting helpers.
//
// Untrusted data (anything from the IVR, the CRM or another agent) is rendered with
// textContent and createElement only; links are made only from absolute http(s) URLs.

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code || 'http_' + status;
    this.field = field || null;
  }
}

// ----- the server's clock ------------------------------------------------------------------

// Offers expire at a server time; a desktop whose clock is off would count down wrongly.
// The skew is learnt from the `Date` header (1 s resolution, so only a larger skew is used)
// and from live event times (a lower bound of the server's now).
let skew = 0;

export function serverNow() {
  return Date.now() + skew;
}

function observeDate(response, sentAt) {
  const header = response.headers.get('date');
  if (!header) return;
  const server = Date.parse(header) + 500;
  if (Number.isNaN(server)) return;
  const local = (sentAt + Date.now()) / 2;
  const measured = server - local;
  skew = Math.abs(measured) > 1500 ? measured : 0;
}

/** A live event's time is at most the server's now: the skew is at least that far ahead. */
export function observeEventTime(iso) {
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return;
  const ahead = at - Date.now();
  if (ahead > skew + 1000) skew = ahead;
}

// ----- the API -------------------------------------------------------------------------------

/**
 * Calls the API with the session cookie. `body` undefined sends no body and no Content-Type
 * (the action endpoints want none). Resolves to the parsed JSON (or null on 204); rejects with
 * an ApiError carrying the contract's error code.
 */
export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const sentAt = Date.now();
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, 'network', 'the server cannot be reached');
  }
  observeDate(response, sentAt);
  if (response.status === 204) return null;
  const text = await response.text();
  let value = null;
  try {
    value = text ? JSON.parse(text) : null;
  } catch (error) {
    value = null;
  }
  if (!response.ok) {
    const detail = (value && value.error) || {};
    throw new ApiError(response.status, detail.code, detail.message, detail.field);
  }
  return value;
}

/** The session of the cookie, or null when nobody is signed in. */
export async function getSession() {
  try {
    return await api('GET', '/v1/session');
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

/** Signs out (the session key is revoked, its streams close) and goes to the sign-in page. */
export async function signOut() {
  try {
    await api('DELETE', '/v1/session');
  } catch (error) {
    // Gone already, or the server is down: the sign-in page says which.
  }
  try {
    sessionStorage.clear();
  } catch (error) {
    // Storage may be disabled.
  }
  location.assign('/signin');
}

/** Where a session's role belongs. */
export function homeOf(session) {
  return session && session.role === 'agent' ? '/' : '/supervisor';
}

/** Sends the browser to the sign-in page, coming back here afterwards. */
export function toSignin() {
  const next = location.pathname === '/' ? '' : '?next=' + encodeURIComponent(location.pathname);
  location.assign('/signin' + next);
}

// ----- the DOM -------------------------------------------------------------------------------

// URLs are set only where they were checked (externalLink, the CRM frame), never through el().
const FORBIDDEN_PROPS = new Set([
  'innerHTML', 'outerHTML', 'srcdoc', 'style', 'href', 'src', 'action', 'formAction', 'data',
]);

function append(node, child) {
  if (child === null || child === undefined || child === false) return;
  if (Array.isArray(child)) {
    for (const c of child) append(node, c);
  } else if (child instanceof Node) {
    node.appendChild(child);
  } else {
    node.appendChild(document.createTextNode(String(child)));
  }
}

function setProps(node, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === 'class') {
      node.setAttribute('class', value);
    } else if (key === 'testid') {
      node.setAttribute('data-testid', value);
    } else if (key === 'text') {
      node.textContent = String(value);
    } else if (key === 'dataset') {
      for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    } else if (key === 'on') {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (key === 'attrs') {
      for (const [name, v] of Object.entries(value)) {
        const lower = name.toLowerCase();
        if (lower.startsWith('on') || FORBIDDEN_PROPS.has(name) || ['style', 'srcdoc', 'href', 'src', 'action', 'formaction', 'xlink:href'].includes(lower)) {
          throw new Error('refusing attribute ' + name);
        }
        node.setAttribute(name, String(v));
      }
    } else if (key.startsWith('on') || FORBIDDEN_PROPS.has(key)) {
      throw new Error('refusing property ' + key);
    } else {
      node[key] = value;
    }
  }
}

/** `el('p', {class: 'x', testid: 'y'}, 'text', child)`: strings become text nodes, always. */
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  append(node, children);
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element; `attrs` are plain attributes (no event handlers, no style). */
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    const lower = name.toLowerCase();
    if (lower.startsWith('on') || lower === 'style' || lower === 'href' || lower === 'xlink:href') {
      throw new Error('refusing attribute ' + name);
    }
    node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

export function byId(id) {
  return document.getElementById(id);
}

/** Replaces a node's children. */
export function replaceChildren(node, ...children) {
  while (node.firstChild) node.removeChild(node.firstChild);
  append(node, children);
}

/** Sets textContent only when it changes (keeps selections and screen readers calm). */
export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** An absolute http(s) URL as a string, or null: the only URLs ever used as links or frames. */
export function safeHttpUrl(text) {
  if (typeof text !== 'string' || text.length > 8192) return null;
  let url;
  try {
    url = new URL(text.trim());
  } catch (error) {
    return null;
  }
  return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
}

/** A link that opens in a new tab and tells the target nothing about us. */
export function externalLink(href, text, props) {
  const link = el('a', props, text);
  link.href = href;
  link.target = '_blank';
  link.rel = 'noopener noreferrer';
  link.referrerPolicy = 'no-referrer';
  return link;
}

const MAX_DEPTH = 8;
const MAX_ENTRIES = 200;

/**
 * Any JSON value as a readable nested list: objects as key/value items, arrays as numbered
 * items, every key and value as text. An absolute http(s) URL becomes a link to a new tab;
 * anything else (`javascript:`, markup) stays text.
 */
export function renderValue(value, depth = 0) {
  if (value === null || value === undefined) return el('span', { class: 'v v-null' }, '—');
  if (typeof value !== 'object') {
    const text = String(value);
    const href = typeof value === 'string' ? safeHttpUrl(text) : null;
    if (href) return externalLink(href, text, { class: 'v v-link' });
    return el('span', { class: 'v v-' + typeof value }, text === '' ? '(empty)' : text);
  }
  if (depth >= MAX_DEPTH) return el('span', { class: 'v v-more' }, '…');
  const isArray = Array.isArray(value);
  const entries = isArray ? value.map((v, i) => [String(i + 1), v]) : Object.entries(value);
  if (entries.length === 0) return el('span', { class: 'v v-null' }, isArray ? '(none)' : '(empty)');
  const list = el(isArray ? 'ol' : 'ul', { class: 'kv' });
  for (const [key, inner] of entries.slice(0, MAX_ENTRIES)) {
    const nested = inner !== null && typeof inner === 'object';
    list.appendChild(
      el(
        'li',
        { class: nested ? 'kv-nested' : 'kv-leaf' },
        isArray ? null : el('span', { class: 'k' }, humanKey(key)),
        renderValue(inner, depth + 1),
      ),
    );
  }
  if (entries.length > MAX_ENTRIES) {
    list.appendChild(el('li', { class: 'kv-leaf' }, `… ${entries.length - MAX_ENTRIES} more`));
  }
  return list;
}

/** `account_id` and `accountId` read as "account id". */
export function humanKey(key) {
  return String(key)
    .replace(/[_-]+/g, ' ')
    .replace(/([a-z])([A-Z])/g, '$1 $2')
    .trim();
}

// ----- formatting ------------------------------------------------------------------------------

/** 42s, 5m 03s, 1h 02m. */
export function fmtDuration(ms) {
  if (!Number.isFinite(ms)) return '—';
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m ${String(s).padStart(2, '0')}s`;
  return `${s}s`;
}

/** A time of day in the browser's zone, e.g. 14:03:27 (14:03 without seconds). */
export function fmtClock(iso, seconds = true) {
  const at = typeof iso === 'number' ? iso : Date.parse(iso);
  if (Number.isNaN(at)) return '—';
  const options = { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' };
  if (seconds) options.second = '2-digit';
  return new Date(at).toLocaleTimeString([], options);
}

/** `{"queue": "billing"}` → billing; `{"agent": "bob"}` → agent bob. */
export function targetText(target) {
  if (!target || typeof target !== 'object') return '—';
  if (typeof target.queue === 'string') return target.queue;
  if (typeof target.agent === 'string') return 'agent ' + target.agent;
  return '—';
}

export function percent(fraction) {
  if (typeof fraction !== 'number' || !Number.isFinite(fraction)) return '—';
  return Math.round(fraction * 100) + '%';
}

/** The local calendar day of a time, e.g. 2024-05-01. */
export function localDay(at) {
  const d = new Date(at);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

// ----- reconnecting ----------------------------------------------------------------------------

/** Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... up to 15 s. */
export class Backoff {
  constructor(first = 500, max = 15000) {
    this.first = first;
    this.max = max;
    this.failures = 0;
  }
  next() {
    const base = Math.min(this.max, this.first * 2 ** this.failures);
    this.failures += 1;
    return Math.round(base * (0.75 + Math.random() * 0.5));
  }
  reset() {
    this.failures = 0;
  }
}

/** The connection indicator every page shows: `data-state` and a sentence. */
export function showConnection(state, text) {
  const node = byId('connection');
  if (!node) return;
  node.dataset.state = state;
  setText(node, text);
}

/** Fills the header's "who" and wires the sign-out button. */
export function setupHeader(session, label) {
  const who = byId('who');
  if (who) setText(who, label);
  const out = byId('signout');
  if (out) {
    out.hidden = !session;
    out.addEventListener('click', () => signOut());
  }
}

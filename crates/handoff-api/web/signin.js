// The sign-in page: a one-time code from the link's fragment (`/signin#code=...`), or an agent
// id and token typed in, traded for the session cookie by POST /v1/session; then on to the
// page of the session's role.

import { api, byId, getSession, homeOf, setText } from './common.js';

const form = byId('signin-form');
const status = byId('signin-status');
const error = byId('signin-error');

function say(text) {
  status.hidden = !text;
  setText(status, text || '');
}

function fail(text) {
  error.hidden = !text;
  setText(error, text || '');
}

/** `?next=/supervisor`: only a path of this site. */
function nextPath(session) {
  const next = new URLSearchParams(location.search).get('next');
  if (next && next.startsWith('/') && !next.startsWith('//') && !next.includes('\\')) {
    if (next === '/supervisor' && session.role === 'agent') return '/';
    return next;
  }
  return homeOf(session);
}

function who(session) {
  return session.agent_id ? `agent ${session.agent_id}` : session.role;
}

function showForm() {
  form.hidden = false;
  byId(byId('signin-agent').value ? 'signin-token' : 'signin-agent').focus();
}

async function redeem(code) {
  // The code leaves the address bar and the history at once; it is single use anyway.
  history.replaceState(null, '', location.pathname + location.search);
  say('Signing you in…');
  try {
    const session = await api('POST', '/v1/session', { code });
    say(`Signed in as ${who(session)}.`);
    location.replace(nextPath(session));
  } catch (e) {
    say('');
    fail(
      e.status === 401
        ? 'This sign-in link is no longer valid: it was used already, it expired (links last ten minutes), or the server restarted. Ask for a new one, or sign in with your token.'
        : `Sign-in failed: ${e.message}`,
    );
    showForm();
  }
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  fail('');
  const agent = byId('signin-agent').value.trim();
  const token = byId('signin-token').value.trim();
  if (!token) {
    fail('Enter your token.');
    return;
  }
  const submit = byId('signin-submit');
  submit.disabled = true;
  say('Signing in…');
  try {
    const body = { token };
    if (agent) body.agent = agent;
    const session = await api('POST', '/v1/session', body);
    byId('signin-token').value = '';
    location.replace(nextPath(session));
  } catch (e) {
    say('');
    if (e.status === 401) fail(agent ? 'That token is not valid for this agent.' : 'That token is not valid.');
    else if (e.status === 403) fail(e.message);
    else fail(`Sign-in failed: ${e.message}`);
    submit.disabled = false;
  }
});

byId('signin-switch').addEventListener('click', async () => {
  try {
    await api('DELETE', '/v1/session');
  } catch (e) {
    // Already gone.
  }
  byId('signin-current').hidden = true;
  showForm();
});

async function main() {
  const code = new URLSearchParams(location.hash.slice(1)).get('code');
  if (code) {
    await redeem(code);
    return;
  }
  let session = null;
  try {
    session = await getSession();
  } catch (e) {
    fail(`The server cannot be reached: ${e.message}`);
  }
  if (session) {
    setText(byId('signin-current-who'), who(session));
    byId('signin-continue').setAttribute('href', nextPath(session));
    byId('signin-current').hidden = false;
    return;
  }
  showForm();
}

main();

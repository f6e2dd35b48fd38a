// handoff + Twilio Programmable Voice: a TwiML app with no dependencies (Node.js 18+).
//
// Point a Twilio number's "A call comes in" webhook at POST https://<this host>/voice and
// its "Call status changes" callback at POST https://<this host>/status. The caller picks
// a topic, keys an account number, and this app hands the call off:
//
//   /voice    <Gather> one digit: 1 billing, 2 anything else          -> /account
//   /account  <Gather> the account number                              -> /handoff
//   /handoff  POST /v1/interactions to handoff (call_id = CallSid, context = what was
//             collected), then <Dial><Sip> to the agent handoff picked, with the
//             interaction id as a SIP header: X-Handoff-Interaction
//   /wait     while handoff has the call queued: a long poll (GET /v1/interactions/{id}
//             ?state=queued&wait_s=10), "please hold" and a <Redirect> back here
//   /dial-ended  the <Dial> is over (its action URL): the conversation ended -> tell
//             handoff (POST .../hangup); the agent's phone failed -> /redial waits for
//             handoff's offer to the next agent and dials it
//   /status   the caller hung up at any point -> POST .../hangup
//
// Environment:
//   HANDOFF_URL         handoff's base URL (required), e.g. https://handoff.example.com
//   HANDOFF_TOKEN       an ivr key: POST /v1/keys {"role": "ivr"} (required)
//   HANDOFF_QUEUE       the queue these calls go to (support)
//   PORT, HOST          where this app listens (3000, 127.0.0.1)
//   PUBLIC_URL          the URL Twilio uses to reach this app, e.g. https://ivr.example.com;
//                       with TWILIO_AUTH_TOKEN, every request's X-Twilio-Signature is checked
//   TWILIO_AUTH_TOKEN   the account's auth token (see above)
//   SIP_TRANSPORT       added as ;transport= to the agent's SIP URI when it has none (udp)
//
// Twilio turns query parameters of a <Sip> URI that start with X- into SIP headers of the
// INVITE: sip:alice@pbx.example.com;transport=udp?X-Handoff-Interaction=ix_123.

"use strict";

const http = require("node:http");
const crypto = require("node:crypto");

const HANDOFF_URL = (process.env.HANDOFF_URL || "").replace(/\/+$/, "");
const HANDOFF_TOKEN = process.env.HANDOFF_TOKEN || "";
const QUEUE = process.env.HANDOFF_QUEUE || "support";
const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || "127.0.0.1";
const PUBLIC_URL = (process.env.PUBLIC_URL || "").replace(/\/+$/, "");
const TWILIO_AUTH_TOKEN = process.env.TWILIO_AUTH_TOKEN || "";
const SIP_TRANSPORT = process.env.SIP_TRANSPORT || "udp";

if (!HANDOFF_URL || !HANDOFF_TOKEN) {
  console.error("HANDOFF_URL and HANDOFF_TOKEN must be set");
  process.exit(2);
}

// CallSid -> interaction id, so the end of the call can be reported. A process-local map
// is enough for one instance; several instances behind a balancer need a shared store (or
// GET /v1/interactions?call_id=CallSid with a supervisor key).
const interactions = new Map();

// ---- handoff ------------------------------------------------------------------------

// Twilio waits 15 s for a webhook's answer: every handoff request must finish well before.
async function handoff(method, path, body, timeoutMs = 5000) {
  const headers = { Authorization: `Bearer ${HANDOFF_TOKEN}` };
  const init = { method, headers, signal: AbortSignal.timeout(timeoutMs) };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method === "POST" && path === "/v1/interactions") {
    // A retried webhook (Twilio retries on timeouts) must not pop the agent twice.
    headers["Idempotency-Key"] = `twilio-${body.call_id}`;
  }
  const response = await fetch(HANDOFF_URL + path, init);
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // Not JSON: reported below with the status.
  }
  if (!response.ok) {
    const reason = json && json.error ? `${json.error.code}: ${json.error.message}` : text;
    throw new Error(`handoff ${method} ${path} answered ${response.status} (${reason})`);
  }
  return json;
}

async function hangUp(callSid) {
  const id = interactions.get(callSid);
  if (!id) return;
  interactions.delete(callSid);
  try {
    // An action endpoint: no body, no Content-Type.
    await handoff("POST", `/v1/interactions/${encodeURIComponent(id)}/hangup`);
  } catch (error) {
    // 409: it had ended already (completed by the agent, say). Nothing to undo.
    if (!/answered 409/.test(String(error))) console.error(String(error));
  }
}

// ---- TwiML ----------------------------------------------------------------------------

function xml(text) {
  return String(text)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}

function twiml(inner) {
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Response>${inner}</Response>\n`;
}

// The agent's SIP URI with the interaction id as an X- header Twilio will send.
function sipUriFor(address, interactionId) {
  let uri = address;
  const [base] = uri.split("?");
  if (!/;transport=/i.test(base)) {
    uri = uri.includes("?")
      ? uri.replace("?", `;transport=${SIP_TRANSPORT}?`)
      : `${uri};transport=${SIP_TRANSPORT}`;
  }
  const header = `X-Handoff-Interaction=${encodeURIComponent(interactionId)}`;
  return uri + (uri.includes("?") ? "&" : "?") + header;
}

function dialAgent(interaction) {
  const address = interaction.agent && interaction.agent.address;
  if (!address || !/^sips?:/i.test(address)) {
    // An agent without a SIP address cannot take a phone call: say so, keep the record.
    return twiml(
      "<Say>Sorry, we cannot connect you right now. Please call again later.</Say><Hangup/>",
    );
  }
  const action =
    `/dial-ended?id=${encodeURIComponent(interaction.id)}` +
    `&offer=${encodeURIComponent(interaction.offer_expires_at || "")}`;
  // answerOnBridge: the caller hears ringing, not silence, until the agent answers.
  return twiml(
    `<Dial answerOnBridge="true" timeout="20" action="${xml(action)}">` +
      `<Sip>${xml(sipUriFor(address, interaction.id))}</Sip></Dial>`,
  );
}

function holdAndWait(interactionId) {
  const next = `/wait?id=${encodeURIComponent(interactionId)}`;
  return twiml(
    `<Say>All our agents are busy. Please hold.</Say><Redirect method="POST">${xml(next)}</Redirect>`,
  );
}

function sorry() {
  return twiml(
    "<Say>Sorry, we cannot take your call right now. Please call again later.</Say><Hangup/>",
  );
}

// GET /v1/interactions/{id}?state=S&wait_s=10 answers as soon as the state is no longer S
// (or after 10 s): a long poll that fits in Twilio's 15 s webhook timeout.
function waitWhile(id, state) {
  return handoff(
    "GET",
    `/v1/interactions/${encodeURIComponent(id)}?state=${state}&wait_s=10`,
    undefined,
    12000,
  );
}

// The offer whose agent's phone failed is known by its deadline (offer_expires_at): a new
// offer, even to the same agent, has another one.
async function redial(id, failedOffer, callSid) {
  const interaction = await waitWhile(id, "offered");
  if (interaction.state === "offered") {
    if ((interaction.offer_expires_at || "") !== failedOffer) return dialAgent(interaction);
    // Still the offer whose phone failed: look again shortly.
    const next = `/redial?id=${encodeURIComponent(id)}&offer=${encodeURIComponent(failedOffer)}`;
    return twiml(`<Say>Please hold.</Say><Redirect method="POST">${xml(next)}</Redirect>`);
  }
  if (interaction.state === "queued") return holdAndWait(id);
  interactions.delete(callSid);
  return sorry();
}

// ---- webhooks -------------------------------------------------------------------------

const TOPICS = { 1: "billing", 2: "support" };

async function route(path, query, form) {
  const callSid = form.CallSid || "";
  switch (path) {
    case "/voice":
      return twiml(
        '<Gather numDigits="1" action="/account" method="POST" timeout="6">' +
          "<Say>For billing, press 1. For anything else, press 2.</Say></Gather>" +
          '<Redirect method="POST">/account</Redirect>',
      );

    case "/account": {
      const intent = TOPICS[form.Digits] || "support";
      const action = `/handoff?intent=${intent}`;
      return twiml(
        `<Gather numDigits="10" finishOnKey="#" action="${xml(action)}" method="POST" timeout="8">` +
          "<Say>Please key in your account number, then the hash key.</Say></Gather>" +
          `<Redirect method="POST">${xml(action)}</Redirect>`,
      );
    }

    case "/handoff": {
      // What the IVR collected becomes the screen pop's context.
      const context = { intent: query.get("intent") || "support" };
      // Digits: from this app's own <Gather>, or in the URL when a Studio flow's TwiML
      // Redirect widget sends the call here (...?Digits={{widgets.account.Digits}}).
      const digits = form.Digits || query.get("Digits") || "";
      if (/^[0-9]{1,20}$/.test(digits)) context.account = digits;
      if (form.CallerName) context.caller_name = form.CallerName;
      const interaction = await handoff("POST", "/v1/interactions", {
        channel: "voice",
        caller: form.From || null,
        dialed: form.To || null,
        call_id: callSid,
        context,
        target: { queue: QUEUE },
      });
      interactions.set(callSid, interaction.id);
      if (interaction.state === "offered") return dialAgent(interaction);
      return holdAndWait(interaction.id);
    }

    case "/wait": {
      // Queued: wait for handoff to offer the call, shorter than Twilio's webhook timeout.
      const id = query.get("id") || "";
      const interaction = await waitWhile(id, "queued");
      if (interaction.state === "offered") return dialAgent(interaction);
      if (interaction.state === "queued") return holdAndWait(id);
      // timed_out, unanswered, abandoned: nobody will take it.
      interactions.delete(callSid);
      return sorry();
    }

    case "/dial-ended": {
      const id = query.get("id") || "";
      if (form.DialCallStatus === "completed") {
        // The agent talked to the caller and one of them hung up.
        await hangUp(callSid);
        return twiml("<Hangup/>");
      }
      // busy, no-answer, failed: the agent's phone did not take the call. handoff's offer
      // to that agent ends (rejected on the desktop, or offer_timeout_s) and handoff offers
      // the call to the next agent: wait for that offer.
      return redial(id, query.get("offer") || "", callSid);
    }

    case "/redial":
      return redial(query.get("id") || "", query.get("offer") || "", callSid);

    case "/status":
      // Twilio's status callback: the call is over for good.
      if (["completed", "busy", "failed", "no-answer", "canceled"].includes(form.CallStatus)) {
        await hangUp(callSid);
      }
      return null;

    default:
      return undefined;
  }
}

// Twilio's request signature: HMAC-SHA1 (auth token) over the full URL followed by every
// POST parameter, sorted by name, as name + value; base64, in X-Twilio-Signature.
function signatureValid(request, path, params) {
  if (!TWILIO_AUTH_TOKEN || !PUBLIC_URL) return true;
  const names = Object.keys(params).sort();
  const data = PUBLIC_URL + path + names.map((name) => name + params[name]).join("");
  const expected = crypto.createHmac("sha1", TWILIO_AUTH_TOKEN).update(data).digest("base64");
  const given = request.headers["x-twilio-signature"] || "";
  return (
    given.length === expected.length &&
    crypto.timingSafeEqual(Buffer.from(given), Buffer.from(expected))
  );
}

const server = http.createServer((request, response) => {
  const chunks = [];
  let size = 0;
  request.on("data", (chunk) => {
    size += chunk.length;
    if (size > 64 * 1024) request.destroy();
    else chunks.push(chunk);
  });
  request.on("end", async () => {
    const url = new URL(request.url, "http://localhost");
    const form = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString("utf8")));
    if (!signatureValid(request, url.pathname + url.search, form)) {
      response.writeHead(403).end();
      return;
    }
    try {
      const answer = await route(url.pathname, url.searchParams, form);
      if (answer === undefined) {
        response.writeHead(404).end();
      } else if (answer === null) {
        response.writeHead(204).end();
      } else {
        response.writeHead(200, { "Content-Type": "text/xml" }).end(answer);
      }
    } catch (error) {
      // handoff down or refusing: the caller hears an apology, not Twilio's error prompt.
      console.error(String(error));
      response.writeHead(200, { "Content-Type": "text/xml" }).end(sorry());
    }
  });
});

server.listen(PORT, HOST, () => {
  console.log(`twilio handoff app listening on http://${HOST}:${server.address().port}`);
});

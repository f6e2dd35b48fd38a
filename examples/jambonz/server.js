// handoff + jambonz: a webhook application with no dependencies (Node.js 18+).
//
// In the jambonz portal, create an application whose calling webhook is POST
// https://<this host>/call and whose call status webhook is POST https://<this host>/status,
// and route a number to it. jambonz resolves the relative actionHook paths below against
// the application's base URL. The caller picks a topic, keys an account number, and this
// app hands the call off:
//
//   /call       gather one digit: 1 billing, 2 anything else              -> /account
//   /account    gather the account number                                 -> /handoff
//   /handoff    POST /v1/interactions to handoff (call_id = call_sid, context = what was
//               collected), then a dial verb to the agent handoff picked, with the
//               interaction id as a SIP header: "headers": {"X-Handoff-Interaction": id}
//   /wait       while handoff has the call queued: a long poll (GET /v1/interactions/{id}
//               ?state=queued&wait_s=10), "please hold" and a redirect back here
//   /dial-ended the dial verb's actionHook: the conversation ended -> tell handoff
//               (POST .../hangup); the agent's phone failed -> /redial waits for
//               handoff's offer to the next agent and dials it
//   /status     the caller hung up at any point -> POST .../hangup
//
// Environment:
//   HANDOFF_URL         handoff's base URL (required)
//   HANDOFF_TOKEN       an ivr key: POST /v1/keys {"role": "ivr"} (required)
//   HANDOFF_QUEUE       the queue these calls go to (support)
//   PORT, HOST          where this app listens (3000, 127.0.0.1)
//   WEBHOOK_USER, WEBHOOK_PASSWORD  when set, every request must carry them as HTTP Basic
//                       auth (set the same pair on the application in jambonz)

"use strict";

const http = require("node:http");
const crypto = require("node:crypto");

const HANDOFF_URL = (process.env.HANDOFF_URL || "").replace(/\/+$/, "");
const HANDOFF_TOKEN = process.env.HANDOFF_TOKEN || "";
const QUEUE = process.env.HANDOFF_QUEUE || "support";
const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || "127.0.0.1";
const WEBHOOK_USER = process.env.WEBHOOK_USER || "";
const WEBHOOK_PASSWORD = process.env.WEBHOOK_PASSWORD || "";

if (!HANDOFF_URL || !HANDOFF_TOKEN) {
  console.error("HANDOFF_URL and HANDOFF_TOKEN must be set");
  process.exit(2);
}

// call_sid -> interaction id, so the end of the call can be reported (one instance; several
// need a shared store).
const interactions = new Map();

// ---- handoff ------------------------------------------------------------------------

async function handoff(method, path, body, timeoutMs = 5000) {
  const headers = { Authorization: `Bearer ${HANDOFF_TOKEN}` };
  const init = { method, headers, signal: AbortSignal.timeout(timeoutMs) };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method === "POST" && path === "/v1/interactions") {
    // jambonz retries a webhook that failed: the retry must not pop the agent twice.
    headers["Idempotency-Key"] = `jambonz-${body.call_id}`;
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
    await handoff("POST", `/v1/interactions/${encodeURIComponent(id)}/hangup`);
  } catch (error) {
    // 409: it had ended already (completed by the agent, say).
    if (!/answered 409/.test(String(error))) console.error(String(error));
  }
}

// A long poll: answers as soon as the interaction is no longer in `state`, or after 10 s.
function waitWhile(id, state) {
  return handoff(
    "GET",
    `/v1/interactions/${encodeURIComponent(id)}?state=${state}&wait_s=10`,
    undefined,
    12000,
  );
}

// ---- verbs ----------------------------------------------------------------------------

function dialAgent(interaction) {
  const address = interaction.agent && interaction.agent.address;
  if (!address || !/^sips?:/i.test(address)) {
    return sorry();
  }
  return [
    {
      verb: "dial",
      // The caller hears ringing until the agent answers, then the call is bridged.
      answerOnBridge: true,
      timeout: 20,
      actionHook:
        `/dial-ended?id=${encodeURIComponent(interaction.id)}` +
        `&offer=${encodeURIComponent(interaction.offer_expires_at || "")}`,
      target: [{ type: "sip", sipUri: address }],
      // SIP headers added to the INVITE sent to the agent's phone.
      headers: { "X-Handoff-Interaction": interaction.id },
    },
  ];
}

function holdAndWait(id) {
  return [
    { verb: "say", text: "All our agents are busy. Please hold." },
    { verb: "redirect", actionHook: `/wait?id=${encodeURIComponent(id)}` },
  ];
}

function sorry() {
  return [
    { verb: "say", text: "Sorry, we cannot take your call right now. Please call again later." },
    { verb: "hangup" },
  ];
}

// The offer whose agent's phone failed is known by its deadline (offer_expires_at): a new
// offer, even to the same agent, has another one.
async function redial(id, failedOffer, callSid) {
  const interaction = await waitWhile(id, "offered");
  if (interaction.state === "offered") {
    if ((interaction.offer_expires_at || "") !== failedOffer) return dialAgent(interaction);
    // Still the offer whose phone failed: look again shortly.
    return [
      { verb: "say", text: "Please hold." },
      {
        verb: "redirect",
        actionHook: `/redial?id=${encodeURIComponent(id)}&offer=${encodeURIComponent(failedOffer)}`,
      },
    ];
  }
  if (interaction.state === "queued") return holdAndWait(id);
  interactions.delete(callSid);
  return sorry();
}

// ---- webhooks -------------------------------------------------------------------------

const TOPICS = { 1: "billing", 2: "support" };

async function route(path, query, payload) {
  const callSid = payload.call_sid || "";
  switch (path) {
    case "/call":
      return [
        {
          verb: "gather",
          input: ["digits"],
          numDigits: 1,
          timeout: 6,
          actionHook: "/account",
          say: { text: "For billing, press 1. For anything else, press 2." },
        },
      ];

    case "/account": {
      const intent = TOPICS[payload.digits] || "support";
      return [
        {
          verb: "gather",
          input: ["digits"],
          minDigits: 1,
          maxDigits: 10,
          finishOnKey: "#",
          timeout: 8,
          actionHook: `/handoff?intent=${intent}`,
          say: { text: "Please key in your account number, then the hash key." },
        },
      ];
    }

    case "/handoff": {
      const context = { intent: query.get("intent") || "support" };
      if (/^[0-9]{1,20}$/.test(payload.digits || "")) context.account = payload.digits;
      // The SIP Call-ID of the caller's leg, for matching SIP traces.
      if (payload.call_id) context.sip_call_id = payload.call_id;
      const interaction = await handoff("POST", "/v1/interactions", {
        channel: "voice",
        caller: payload.from || null,
        dialed: payload.to || null,
        call_id: callSid,
        context,
        target: { queue: QUEUE },
      });
      interactions.set(callSid, interaction.id);
      if (interaction.state === "offered") return dialAgent(interaction);
      return holdAndWait(interaction.id);
    }

    case "/wait": {
      const id = query.get("id") || "";
      const interaction = await waitWhile(id, "queued");
      if (interaction.state === "offered") return dialAgent(interaction);
      if (interaction.state === "queued") return holdAndWait(id);
      interactions.delete(callSid);
      return sorry();
    }

    case "/dial-ended":
      if (payload.dial_call_status === "completed") {
        await hangUp(callSid);
        return [{ verb: "hangup" }];
      }
      // busy, no-answer, failed: handoff's offer to that agent ends (rejected on the
      // desktop, or offer_timeout_s) and the next agent is offered the call.
      return redial(query.get("id") || "", query.get("offer") || "", callSid);

    case "/redial":
      return redial(query.get("id") || "", query.get("offer") || "", callSid);

    case "/status":
      if (["completed", "failed", "no-answer", "busy"].includes(payload.call_status)) {
        await hangUp(callSid);
      }
      return null;

    default:
      return undefined;
  }
}

function authorized(request) {
  if (!WEBHOOK_USER) return true;
  const expected = Buffer.from(
    "Basic " + Buffer.from(`${WEBHOOK_USER}:${WEBHOOK_PASSWORD}`).toString("base64"),
  );
  const given = Buffer.from(request.headers.authorization || "");
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

const server = http.createServer((request, response) => {
  const chunks = [];
  let size = 0;
  request.on("data", (chunk) => {
    size += chunk.length;
    if (size > 256 * 1024) request.destroy();
    else chunks.push(chunk);
  });
  request.on("end", async () => {
    if (!authorized(request)) {
      response.writeHead(401, { "WWW-Authenticate": 'Basic realm="jambonz"' }).end();
      return;
    }
    const url = new URL(request.url, "http://localhost");
    let payload = {};
    try {
      const text = Buffer.concat(chunks).toString("utf8");
      payload = text ? JSON.parse(text) : {};
    } catch {
      response.writeHead(400).end();
      return;
    }
    try {
      const verbs = await route(url.pathname, url.searchParams, payload);
      if (verbs === undefined) {
        response.writeHead(404).end();
      } else if (verbs === null) {
        response.writeHead(204).end();
      } else {
        response.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(verbs));
      }
    } catch (error) {
      console.error(String(error));
      response
        .writeHead(200, { "Content-Type": "application/json" })
        .end(JSON.stringify(sorry()));
    }
  });
});

server.listen(PORT, HOST, () => {
  console.log(`jambonz handoff app listening on http://${HOST}:${server.address().port}`);
});

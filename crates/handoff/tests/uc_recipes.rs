//! The recipes of `docs/recipes.md` that can run without their platform, against the real
//! `handoff serve`:
//!
//! - Twilio and jambonz: `node examples/twilio/server.js` and `node examples/jambonz/server.js`,
//!   each sent the webhooks Twilio or jambonz would send (form-encoded and signed for Twilio,
//!   JSON for jambonz). The answers must dial the agent handoff picked with the interaction id
//!   as a SIP header, and the interaction must carry the platform's call id and what the IVR
//!   collected. Skipped (and passing) when `node` is not on PATH.
//! - Asterisk: `examples/asterisk/handoff.agi` spoken to over the AGI protocol by a stand-in
//!   for Asterisk (the dialplan itself needs a real Asterisk). Skipped without `python3`.
//! - FreeSWITCH: `examples/freeswitch/handoff.lua` under a plain Lua with a stand-in for
//!   mod_lua's `session` (`uc_fixtures/freeswitch_stub.lua`). Skipped without `lua`/`curl`.

mod serve_process;
mod uc_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use uc_common::{passed_within, repo_root, HandoffServer, PATIENCE};

const ADMIN: &str = "hk_uc_recipes_admin_0123456789abcdef0123";
const AGENT_ADDRESS: &str = "sip:a1@pbx.example.com";
/// What the Twilio app checks X-Twilio-Signature with.
const TWILIO_AUTH_TOKEN: &str = "twilio-auth-token-for-the-test";

/// A child process killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `program <arg>` runs and succeeds: how a test finds out that a tool it needs is on
/// PATH, to skip (and pass) without it.
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `node <script>` on a free port with `env`; returns once it accepts connections.
fn start_node(script: &Path, env: &[(&str, &str)]) -> (Killed, String) {
    let port = free_tcp_port();
    let mut command = Command::new("node");
    command
        .arg(script)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = Killed(command.spawn().expect("node starts"));
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("{} exited early: {status}", script.display());
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            script.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("http://127.0.0.1:{port}"))
}

/// Whether `program` is not on PATH (`program --version` fails), having said that `test` is
/// skipped: the recipes' tests pass without the tools they drive.
fn missing(program: &str, test: &str) -> bool {
    let missing = !runs(program, "--version");
    if missing {
        println!("skipped {test}: {program} is not on PATH");
    }
    missing
}

/// `handoff serve` for one test, its data in `temporary` (requests time out after 20 s), with
/// agent a1 at [`AGENT_ADDRESS`] (of `capacity`, else the default) available in queue
/// `support`; returns it and the token of a new IVR key named `ivr_name`.
async fn start_server(
    temporary: &Path,
    capacity: Option<u32>,
    ivr_name: &str,
) -> (HandoffServer, String) {
    let server =
        HandoffServer::start(&temporary.join("data"), ADMIN, Duration::from_secs(20)).await;
    let mut agent = json!({"name": "Agent One", "address": AGENT_ADDRESS});
    if let Some(capacity) = capacity {
        agent["capacity"] = capacity.into();
    }
    let ivr_token = server.support_queue_with_agent_a1(agent, ivr_name).await;
    (server, ivr_token)
}

/// Twilio's X-Twilio-Signature: base64(HMAC-SHA1(auth token, URL + each POST parameter
/// sorted by name as name + value)), computed by node's crypto so the test needs no crate.
fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let data: String = std::iter::once(url.to_string())
        .chain(sorted.iter().map(|(name, value)| format!("{name}{value}")))
        .collect();
    let output = Command::new("node")
        .args([
            "-e",
            "process.stdout.write(require('node:crypto').createHmac('sha1', process.argv[1])\
             .update(process.argv[2]).digest('base64'))",
            TWILIO_AUTH_TOKEN,
            &data,
        ])
        .output()
        .expect("node runs");
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// POSTs a Twilio webhook: form-encoded, signed as Twilio signs it for `public`.
async fn twilio(
    http: &reqwest::Client,
    app: &str,
    public: &str,
    path: &str,
    params: &[(&str, &str)],
) -> (u16, String) {
    let signature = twilio_signature(&format!("{public}{path}"), params);
    let response = http
        .post(format!("{app}{path}"))
        .header("X-Twilio-Signature", signature)
        .form(params)
        .send()
        .await
        .expect("the Twilio app answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn jambonz(http: &reqwest::Client, app: &str, path: &str, payload: Value) -> Value {
    let response = http
        .post(format!("{app}{path}"))
        .json(&payload)
        .send()
        .await
        .expect("the jambonz app answers");
    assert_eq!(response.status().as_u16(), 200, "{path}");
    response.json().await.expect("verbs as JSON")
}

/// Asserts what every recipe hands over with the call: the platform's call id, the caller's
/// number and what the IVR collected (`context`).
fn assert_handed_over(interaction: &Value, call_id: &str, caller: &str, context: Value) {
    assert_eq!(interaction["call_id"], call_id, "{interaction:#}");
    assert_eq!(interaction["caller"], caller, "{interaction:#}");
    assert_eq!(interaction["context"], context, "{interaction:#}");
}

/// The text between `start` and the next `end` in `text`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twilio_and_jambonz_recipes_hand_off_and_dial_the_agent_with_the_interaction_id() {
    let test = "uc_recipes";
    if missing("node", test) {
        return;
    }
    let started = Instant::now();
    let root = repo_root();
    let temporary = tempfile::tempdir().unwrap();
    // Room for both recipes' calls at once.
    let (server, ivr_token) = start_server(temporary.path(), Some(5), "recipes").await;
    let (http, base) = (server.http.clone(), server.base.clone());

    // ---- Twilio ----
    let public = "https://ivr.example.com";
    let (_twilio_app, twilio_url) = start_node(
        &root.join("examples/twilio/server.js"),
        &[
            ("HANDOFF_URL", &base),
            ("HANDOFF_TOKEN", &ivr_token),
            ("HANDOFF_QUEUE", "support"),
            ("PUBLIC_URL", public),
            ("TWILIO_AUTH_TOKEN", TWILIO_AUTH_TOKEN),
        ],
    );
    let call_sid = "CA0123456789abcdef0123456789abcdef";
    let call = [
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("CallSid", call_sid),
        ("From", "+15551234567"),
        ("To", "+18005550100"),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
    ];
    // The menu, then the account number: each answer leads to the next webhook.
    let (status, menu) = twilio(&http, &twilio_url, public, "/voice", &call).await;
    assert_eq!(status, 200, "{menu}");
    assert!(
        menu.contains(r#"<Gather numDigits="1" action="/account""#),
        "{menu}"
    );
    let mut with_digit = call.to_vec();
    with_digit.push(("Digits", "1"));
    let (_, account) = twilio(&http, &twilio_url, public, "/account", &with_digit).await;
    assert!(
        account.contains(r#"action="/handoff?intent=billing""#),
        "{account}"
    );
    // A request without a valid signature is refused.
    let forged = http
        .post(format!("{twilio_url}/voice"))
        .header("X-Twilio-Signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .form(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);

    let mut gathered = call.to_vec();
    gathered.push(("Digits", "12345"));
    let (status, twiml) = twilio(
        &http,
        &twilio_url,
        public,
        "/handoff?intent=billing",
        &gathered,
    )
    .await;
    assert_eq!(status, 200, "{twiml}");
    let sip = between(&twiml, "<Sip>", "</Sip>").unwrap_or_else(|| panic!("no <Sip>: {twiml}"));
    let prefix = format!("{AGENT_ADDRESS};transport=udp?X-Handoff-Interaction=");
    let twilio_interaction = sip
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("not the agent's address with the header: {twiml}"))
        .to_string();
    assert!(twiml.contains("<Dial answerOnBridge=\"true\""), "{twiml}");
    let interaction = server.interaction(&twilio_interaction).await;
    assert_eq!(interaction["state"], "offered", "{interaction:#}");
    assert_eq!(interaction["agent"]["id"], "a1", "{interaction:#}");
    assert_eq!(interaction["dialed"], "+18005550100", "{interaction:#}");
    assert_handed_over(
        &interaction,
        call_sid,
        "+15551234567",
        json!({"intent": "billing", "account": "12345"}),
    );
    // Twilio retries a webhook that timed out: the same interaction, no second pop.
    let (_, again) = twilio(
        &http,
        &twilio_url,
        public,
        "/handoff?intent=billing",
        &gathered,
    )
    .await;
    assert!(again.contains(&twilio_interaction), "{again}");
    // The agent's phone does not answer and the agent rejects the offer on the desktop:
    // <Dial>'s action URL waits for handoff's next offer (a1 again, the only agent, but a
    // new offer) and dials it.
    let action = between(&twiml, "action=\"", "\"")
        .unwrap()
        .replace("&amp;", "&");
    assert!(
        action.starts_with(&format!("/dial-ended?id={twilio_interaction}&offer=")),
        "{twiml}"
    );
    let agent_token = server.a1_token().await;
    let mut no_answer = call.to_vec();
    no_answer.push(("DialCallStatus", "no-answer"));
    let redial = {
        let (http, twilio_url, action) = (http.clone(), twilio_url.clone(), action.clone());
        let no_answer: Vec<(String, String)> = no_answer
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        tokio::spawn(async move {
            let params: Vec<(&str, &str)> = no_answer
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            twilio(&http, &twilio_url, public, &action, &params).await
        })
    };
    let rejected = http
        .post(format!(
            "{base}/v1/interactions/{twilio_interaction}/reject"
        ))
        .bearer_auth(&agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status().as_u16(), 200);
    let (status, redialled) = tokio::time::timeout(PATIENCE, redial)
        .await
        .expect("the redial answers in time")
        .unwrap();
    assert_eq!(status, 200, "{redialled}");
    assert!(
        redialled.contains(&format!("<Sip>{prefix}{twilio_interaction}</Sip>")),
        "{redialled}"
    );
    assert_ne!(
        between(&redialled, "action=\"", "\"")
            .unwrap()
            .replace("&amp;", "&"),
        action,
        "a new offer: {redialled}"
    );
    // The caller hangs up: Twilio's status callback ends the interaction.
    let mut completed = call.to_vec();
    completed[4] = ("CallStatus", "completed");
    let (status, _) = twilio(&http, &twilio_url, public, "/status", &completed).await;
    assert_eq!(status, 204);
    let interaction = server.interaction(&twilio_interaction).await;
    assert_eq!(interaction["state"], "abandoned", "{interaction:#}");

    // ---- jambonz ----
    let (_jambonz_app, jambonz_url) = start_node(
        &root.join("examples/jambonz/server.js"),
        &[
            ("HANDOFF_URL", &base),
            ("HANDOFF_TOKEN", &ivr_token),
            ("HANDOFF_QUEUE", "support"),
        ],
    );
    let call = json!({
        "call_sid": "5f3e0d5f-ba6f-4b18-8d80-0123456789ab",
        "call_id": "4ebb574f-2772-123d-6a91-0123456789ab",
        "direction": "inbound",
        "from": "+15557654321",
        "to": "+18005550100",
        "caller_name": "",
        "call_status": "in-progress",
        "sip_status": 200,
        "account_sid": "66acafce-44c2-417a-a7c0-0123456789ab",
        "application_sid": "db7ba948-2410-4845-949f-0123456789ab",
    });
    let with = |extra: Value| {
        let mut payload = call.clone();
        payload
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        payload
    };
    let menu = jambonz(&http, &jambonz_url, "/call", call.clone()).await;
    assert_eq!(menu[0]["verb"], "gather", "{menu:#}");
    assert_eq!(menu[0]["actionHook"], "/account", "{menu:#}");
    let account = jambonz(
        &http,
        &jambonz_url,
        "/account",
        with(json!({"digits": "1", "reason": "dtmfDetected"})),
    )
    .await;
    assert_eq!(
        account[0]["actionHook"], "/handoff?intent=billing",
        "{account:#}"
    );
    let gathered = with(json!({"digits": "12345", "reason": "dtmfDetected"}));
    let verbs = jambonz(
        &http,
        &jambonz_url,
        "/handoff?intent=billing",
        gathered.clone(),
    )
    .await;
    let dial = &verbs[0];
    assert_eq!(dial["verb"], "dial", "{verbs:#}");
    assert_eq!(dial["target"][0]["type"], "sip", "{verbs:#}");
    assert_eq!(dial["target"][0]["sipUri"], AGENT_ADDRESS, "{verbs:#}");
    let jambonz_interaction = dial["headers"]["X-Handoff-Interaction"]
        .as_str()
        .unwrap_or_else(|| panic!("no X-Handoff-Interaction header: {verbs:#}"))
        .to_string();
    assert_ne!(jambonz_interaction, twilio_interaction);
    let interaction = server.interaction(&jambonz_interaction).await;
    assert_eq!(interaction["state"], "offered", "{interaction:#}");
    assert_handed_over(
        &interaction,
        call["call_sid"].as_str().unwrap(),
        "+15557654321",
        json!({"intent": "billing", "account": "12345", "sip_call_id": call["call_id"]}),
    );
    // The conversation ends: the dial verb's actionHook reports it.
    let ended = jambonz(
        &http,
        &jambonz_url,
        // The hook the dial verb named, as jambonz calls it when the dial ends.
        dial["actionHook"].as_str().unwrap(),
        with(json!({"dial_call_status": "completed", "dial_sip_status": 200})),
    )
    .await;
    assert_eq!(ended, json!([{"verb": "hangup"}]));
    let interaction = server.interaction(&jambonz_interaction).await;
    assert_eq!(interaction["state"], "abandoned", "{interaction:#}");

    // No agent available: the caller is held, then dialled once handoff offers the call.
    server.set_a1_presence("away").await;
    let second = json!({"call_sid": "c2-0123", "call_id": "sip-c2", "from": "+15550000002",
        "to": "+18005550100", "digits": "777", "reason": "dtmfDetected"});
    let held = jambonz(
        &http,
        &jambonz_url,
        "/handoff?intent=support",
        second.clone(),
    )
    .await;
    assert_eq!(held[0]["verb"], "say", "{held:#}");
    assert_eq!(held[1]["verb"], "redirect", "{held:#}");
    let wait_hook = held[1]["actionHook"].as_str().unwrap().to_string();
    assert!(wait_hook.starts_with("/wait?id="), "{held:#}");
    // The long poll behind /wait answers as soon as a1 is back.
    let waiting = {
        let http = http.clone();
        let jambonz_url = jambonz_url.clone();
        let second = second.clone();
        tokio::spawn(async move { jambonz(&http, &jambonz_url, &wait_hook, second).await })
    };
    server.set_a1_presence("available").await;
    let verbs = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("/wait answers in time")
        .unwrap();
    assert_eq!(verbs[0]["verb"], "dial", "{verbs:#}");
    assert_eq!(verbs[0]["target"][0]["sipUri"], AGENT_ADDRESS, "{verbs:#}");

    server.kill();
    passed_within(test, started, Duration::from_secs(60));
}

/// Runs `examples/asterisk/handoff.agi` with `args` the way Asterisk runs an AGI: the `agi_*`
/// environment block on its standard input, then one reply per command. `variables` are the
/// channel's (`GET FULL VARIABLE ${NAME}` answers from them, `SET VARIABLE` writes them).
fn run_agi(
    script: &Path,
    handoff_url: &str,
    token: &str,
    args: &[&str],
    agi_env: &[(&str, &str)],
    variables: &mut std::collections::HashMap<String, String>,
) {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Killed(
        Command::new("python3")
            .arg(script)
            .args(args)
            .env("HANDOFF_URL", handoff_url)
            .env("HANDOFF_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts"),
    );
    // The AGI's own HTTP timeouts bound it; this bounds the test if it hangs anyway. The
    // child is reaped only after `done`, so the pid cannot belong to anyone else meanwhile.
    let pid = child.0.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(Duration::from_secs(30))
        {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let mut stdin = child.0.stdin.take().unwrap();
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    for (name, value) in agi_env {
        writeln!(stdin, "{name}: {value}").unwrap();
    }
    writeln!(stdin).unwrap();
    for line in stdout.lines() {
        let line = line.unwrap();
        let reply = if let Some(expression) = line.strip_prefix("GET FULL VARIABLE ") {
            let name = expression
                .strip_prefix("${")
                .and_then(|rest| rest.strip_suffix('}'))
                .unwrap_or(expression);
            match variables.get(name) {
                Some(value) => format!("200 result=1 ({value})"),
                None => "200 result=0".to_string(),
            }
        } else if let Some(rest) = line.strip_prefix("SET VARIABLE ") {
            let (name, value) = rest.split_once(' ').unwrap();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
                .replace("\\\"", "\"")
                .replace("\\\\", "\\");
            variables.insert(name.to_string(), value);
            "200 result=1".to_string()
        } else if line.starts_with("VERBOSE ") {
            "200 result=1".to_string()
        } else {
            panic!("an AGI command Asterisk's stand-in does not know: {line}");
        };
        writeln!(stdin, "{reply}").unwrap();
    }
    let _ = done.send(());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "handoff.agi {args:?} exited {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asterisk_agi_hands_off_and_leaves_the_agent_and_interaction_id_for_the_dialplan() {
    let test = "uc_recipes (Asterisk AGI)";
    if missing("python3", test) {
        return;
    }
    let started = Instant::now();
    let script = repo_root().join("examples/asterisk/handoff.agi");
    let temporary = tempfile::tempdir().unwrap();
    let (server, ivr) = start_server(temporary.path(), None, "asterisk").await;
    let base = server.base.clone();

    // What extensions.conf has set on the caller's channel by the time it runs the AGI.
    let channel = |uniqueid: &str, call_id: &str| {
        let mut variables = std::collections::HashMap::new();
        variables.insert("CHANNEL(pjsip,call-id)".to_string(), call_id.to_string());
        variables.insert("CALLERID(num)".to_string(), "+15551234567".to_string());
        variables.insert("IVR_ACCOUNT".to_string(), "12345".to_string());
        variables.insert("IVR_INTENT".to_string(), "billing".to_string());
        let agi_env = vec![
            ("agi_request".to_string(), "handoff.agi".to_string()),
            (
                "agi_channel".to_string(),
                "PJSIP/trunk-00000001".to_string(),
            ),
            ("agi_uniqueid".to_string(), uniqueid.to_string()),
            ("agi_callerid".to_string(), "+15551234567".to_string()),
            ("agi_dnid".to_string(), "18005550100".to_string()),
            ("agi_extension".to_string(), "s".to_string()),
        ];
        (variables, agi_env)
    };
    let agi = |args: Vec<&'static str>,
               agi_env: Vec<(String, String)>,
               mut variables: std::collections::HashMap<String, String>| {
        let script = script.clone();
        let base = base.clone();
        let ivr = ivr.clone();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = agi_env
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            run_agi(&script, &base, &ivr, &args, &env, &mut variables);
            variables
        })
    };

    // An agent is free: offered, with the address Dial() calls and the id for the header.
    let (variables, agi_env) = channel("1733390000.1", "a84b4c76e66710@pbx.example.com");
    let variables = agi(vec!["create", "support"], agi_env.clone(), variables)
        .await
        .unwrap();
    assert_eq!(variables["HANDOFF_STATE"], "offered", "{variables:?}");
    assert_eq!(variables["HANDOFF_ADDRESS"], AGENT_ADDRESS, "{variables:?}");
    assert_eq!(variables["HANDOFF_AGENT"], "a1", "{variables:?}");
    let id = variables["HANDOFF_ID"].clone();
    let interaction = server.interaction(&id).await;
    assert_eq!(interaction["dialed"], "18005550100", "{interaction:#}");
    assert_handed_over(
        &interaction,
        "a84b4c76e66710@pbx.example.com",
        "+15551234567",
        json!({"account": "12345", "intent": "billing"}),
    );
    // The hangup handler.
    agi(vec!["hangup"], agi_env, variables).await.unwrap();
    let interaction = server.interaction(&id).await;
    assert_eq!(interaction["state"], "abandoned", "{interaction:#}");

    // Nobody free: queued; the hold loop's long poll returns once a1 is back, offered.
    server.set_a1_presence("away").await;
    let (variables, agi_env) = channel("1733390000.2", "b2@pbx.example.com");
    let variables = agi(vec!["create", "support"], agi_env.clone(), variables)
        .await
        .unwrap();
    assert_eq!(variables["HANDOFF_STATE"], "queued", "{variables:?}");
    assert_eq!(variables["HANDOFF_ADDRESS"], "", "{variables:?}");
    let waiting = agi(vec!["wait", "10"], agi_env, variables);
    server.set_a1_presence("available").await;
    let variables = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the long poll answers in time")
        .unwrap();
    assert_eq!(variables["HANDOFF_STATE"], "offered", "{variables:?}");
    assert_eq!(variables["HANDOFF_ADDRESS"], AGENT_ADDRESS, "{variables:?}");

    server.kill();
    println!("{test}: passed in {:?}", started.elapsed());
}

/// A Lua interpreter: FreeSWITCH 1.10 embeds Lua 5.2 to 5.4; the script is written for all.
fn lua() -> Option<&'static str> {
    ["lua5.4", "lua5.3", "lua5.2", "lua"]
        .into_iter()
        .find(|lua| runs(lua, "-v"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_freeswitch_script_hands_off_and_bridges_with_the_interaction_id_header() {
    let test = "uc_recipes (FreeSWITCH Lua, outside FreeSWITCH)";
    let Some(lua) = lua() else {
        println!("skipped {test}: no lua interpreter on PATH");
        return;
    };
    if missing("curl", test) {
        return;
    }
    let started = Instant::now();
    let root = repo_root();
    let temporary = tempfile::tempdir().unwrap();
    let (server, ivr) = start_server(temporary.path(), None, "freeswitch").await;
    let base = server.base.clone();

    // The caller presses 1 (billing) and keys 12345; the stub records what the script does.
    let sip_call_id = "7d1f0c2e-freeswitch@pbx.example.com";
    let output = {
        let mut command = Command::new(lua);
        command
            .arg(root.join("crates/handoff/tests/uc_fixtures/freeswitch_stub.lua"))
            .arg(root.join("examples/freeswitch/handoff.lua"))
            .args(["support", "1", "12345", sip_call_id])
            .env("HANDOFF_URL", &base)
            .env("HANDOFF_TOKEN", &ivr)
            .stdin(Stdio::null());
        tokio::time::timeout(
            PATIENCE,
            tokio::task::spawn_blocking(move || command.output().expect("lua runs")),
        )
        .await
        .expect("the script finishes in time")
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success() && stdout.ends_with("end\n"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bridge = stdout
        .lines()
        .find_map(|line| line.strip_prefix("bridge "))
        .unwrap_or_else(|| panic!("no bridge: {stdout}"));
    let id = between(bridge, "{sip_h_X-Handoff-Interaction=", ",")
        .unwrap_or_else(|| panic!("no header variable: {bridge}"))
        .to_string();
    assert_eq!(
        bridge,
        format!(
            "{{sip_h_X-Handoff-Interaction={id},call_timeout=20}}sofia/external/{AGENT_ADDRESS}"
        )
    );
    let interaction = server.interaction(&id).await;
    assert_handed_over(
        &interaction,
        sip_call_id,
        "+15551234567",
        json!({"intent": "billing", "account": "12345"}),
    );
    // The hangup hook told handoff.
    assert_eq!(interaction["state"], "abandoned", "{interaction:#}");

    server.kill();
    println!("{test}: passed in {:?}", started.elapsed());
}

//! The CSTA bridge against a small PBX simulator: a CSTA XML server on loopback speaking the
//! TR/88-style framing (0x0000, 16-bit total length, 4-character invoke id), which answers
//! the session and monitor requests and plays event sequences written from ECMA-269/323.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_api::uc::csta::CstaSettings;
use handoff_api::uc::UcSettings;
use handoff_api::ApiSettings;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::*;
use crate::uc_support::wait_until;

const CSTA: &str = "http://www.ecma-international.org/standards/ecma-323/csta/ed3";
const SESSION: &str = "http://www.ecma-international.org/standards/ecma-354/appl_session";

/// One message the simulator received.
#[derive(Debug, Clone)]
struct Received {
    connection: usize,
    invoke_id: String,
    name: String,
    xml: String,
}

enum ToClient {
    Frame(Vec<u8>),
    Close,
}

#[derive(Default)]
struct SimState {
    connections: usize,
    received: Vec<Received>,
    /// Device → monitorCrossRefID, on the current connection.
    monitors: HashMap<String, String>,
    /// How many MonitorStart requests to refuse (CSTAErrorCode) before accepting.
    refuse_monitors: usize,
    next_cross_ref: u32,
    to_client: Option<mpsc::UnboundedSender<ToClient>>,
}

struct PbxSimulator {
    address: String,
    session_duration_s: u64,
    state: Arc<Mutex<SimState>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for PbxSimulator {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn frame(invoke_id: &str, xml: &str) -> Vec<u8> {
    let mut out = vec![0, 0];
    out.extend_from_slice(&u16::try_from(8 + xml.len()).unwrap().to_be_bytes());
    out.extend_from_slice(invoke_id.as_bytes());
    out.extend_from_slice(xml.as_bytes());
    out
}

/// The local name of the root element.
fn root_name(xml: &str) -> String {
    let mut rest = xml;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        if !rest.starts_with('?') && !rest.starts_with('!') {
            let name: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '>' && *c != '/')
                .collect();
            return name.rsplit(':').next().unwrap_or_default().to_owned();
        }
    }
    String::new()
}

/// The text of the first `<name>…</name>`.
fn text_of(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].to_owned())
}

impl PbxSimulator {
    async fn start(session_duration_s: u64) -> PbxSimulator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(SimState {
            next_cross_ref: 100,
            ..SimState::default()
        }));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (sender, receiver) = mpsc::unbounded_channel();
                let connection = {
                    let mut state = shared.lock().unwrap();
                    state.connections += 1;
                    state.monitors.clear();
                    state.to_client = Some(sender);
                    state.connections
                };
                tokio::spawn(serve_connection(
                    socket,
                    connection,
                    session_duration_s,
                    shared.clone(),
                    receiver,
                ));
            }
        });
        PbxSimulator {
            address,
            session_duration_s,
            state,
            accept,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap()
    }

    fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    fn connections(&self) -> usize {
        self.lock().connections
    }

    fn send(&self, message: ToClient) {
        let sender = self.lock().to_client.clone().expect("a client connected");
        let _ = sender.send(message);
    }

    /// Sends an unsolicited message with the events' invoke id.
    fn event(&self, xml: &str) {
        self.send(ToClient::Frame(frame("9999", xml)));
    }

    /// Returns once handoff has handled everything sent before: it answers a SystemStatus in
    /// order, after the messages ahead of it.
    async fn barrier(&self, invoke_id: &str) {
        self.send(ToClient::Frame(frame(
            invoke_id,
            &format!(
                r#"<SystemStatus xmlns="{CSTA}"><systemStatus>normal</systemStatus></SystemStatus>"#
            ),
        )));
        wait_until("SystemStatus is answered", PATIENCE, || async {
            self.received()
                .iter()
                .any(|r| r.name == "SystemStatusResponse" && r.invoke_id == invoke_id)
        })
        .await;
    }

    /// Waits until `device` is monitored on connection `connection`; its monitorCrossRefID.
    async fn monitored(&self, device: &str, connection: usize) -> String {
        wait_until(
            &format!("{device} monitored on connection {connection}"),
            PATIENCE,
            || async {
                self.connections() == connection && self.lock().monitors.contains_key(device)
            },
        )
        .await;
        self.lock().monitors[device].clone()
    }
}

async fn serve_connection(
    mut socket: tokio::net::TcpStream,
    connection: usize,
    session_duration_s: u64,
    state: Arc<Mutex<SimState>>,
    mut to_client: mpsc::UnboundedReceiver<ToClient>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            read = socket.read(&mut chunk) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                buffer.extend_from_slice(&chunk[..n]);
                while buffer.len() >= 8 {
                    assert_eq!(&buffer[..2], &[0, 0], "format indicator from handoff");
                    let length = usize::from(u16::from_be_bytes([buffer[2], buffer[3]]));
                    assert!(length >= 8, "frame length from handoff");
                    if buffer.len() < length {
                        break;
                    }
                    let invoke_id = String::from_utf8(buffer[4..8].to_vec()).expect("ASCII invoke id");
                    let xml = String::from_utf8(buffer[8..length].to_vec()).expect("UTF-8 XML");
                    buffer.drain(..length);
                    let name = root_name(&xml);
                    let reply = answer(&state, connection, session_duration_s, &name, &xml);
                    state.lock().unwrap().received.push(Received { connection, invoke_id: invoke_id.clone(), name, xml });
                    if let Some(reply) = reply {
                        if socket.write_all(&frame(&invoke_id, &reply)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            message = to_client.recv() => match message {
                Some(ToClient::Frame(bytes)) => {
                    if socket.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(ToClient::Close) | None => return,
            },
        }
    }
}

/// What the simulated server answers to a request.
fn answer(
    state: &Mutex<SimState>,
    connection: usize,
    session_duration_s: u64,
    name: &str,
    xml: &str,
) -> Option<String> {
    let mut state = state.lock().unwrap();
    match name {
        "StartApplicationSession" => Some(format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><StartApplicationSessionPosResponse xmlns="{SESSION}"><sessionID>sim-{connection}</sessionID><actualProtocolVersion>{CSTA}</actualProtocolVersion><actualSessionDuration>{session_duration_s}</actualSessionDuration></StartApplicationSessionPosResponse>"#
        )),
        "ResetApplicationSessionTimer" => Some(format!(
            r#"<ResetApplicationSessionTimerPosResponse xmlns="{SESSION}"><actualSessionDuration>{session_duration_s}</actualSessionDuration></ResetApplicationSessionTimerPosResponse>"#
        )),
        "MonitorStart" => {
            if state.refuse_monitors > 0 {
                state.refuse_monitors -= 1;
                return Some(format!(
                    r#"<CSTAErrorCode xmlns="{CSTA}"><operation>invalidMonitorObject</operation></CSTAErrorCode>"#
                ));
            }
            let device = text_of(xml, "deviceObject").expect("a deviceObject");
            state.next_cross_ref += 1;
            let cross_ref = state.next_cross_ref.to_string();
            state.monitors.insert(device, cross_ref.clone());
            Some(format!(
                r#"<MonitorStartResponse xmlns="{CSTA}"><monitorCrossRefID>{cross_ref}</monitorCrossRefID><actualMonitorFilter/></MonitorStartResponse>"#
            ))
        }
        "MonitorStop" => {
            let cross_ref = text_of(xml, "monitorCrossRefID").expect("a monitorCrossRefID");
            state.monitors.retain(|_, c| *c != cross_ref);
            Some(format!(r#"<MonitorStopResponse xmlns="{CSTA}"/>"#))
        }
        _ => None,
    }
}

// Events as ECMA-269 clause 17 describes them, in ECMA-323's XML.

/// A call from `caller` alerting at `device` (17.2.5).
fn delivered(
    cross_ref: &str,
    call: &str,
    device: &str,
    caller: &str,
    correlator: Option<&str>,
) -> String {
    let correlator = correlator
        .map(|c| format!("<correlatorData>{c}</correlatorData>"))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<DeliveredEvent xmlns="{CSTA}">
  <monitorCrossRefID>{cross_ref}</monitorCrossRefID>
  <connection><callID>{call}</callID><deviceID>{device}</deviceID></connection>
  <alertingDevice><deviceIdentifier>{device}</deviceIdentifier></alertingDevice>
  <callingDevice><deviceIdentifier>{caller}</deviceIdentifier></callingDevice>
  <calledDevice><deviceIdentifier>{device}</deviceIdentifier></calledDevice>
  <lastRedirectionDevice><notRequired/></lastRedirectionDevice>
  <localConnectionInfo>alerting</localConnectionInfo>
  {correlator}
  <cause>newCall</cause>
</DeliveredEvent>"#
    )
}

/// `device` answers the call from `caller` (17.2.8).
fn established(cross_ref: &str, call: &str, device: &str, caller: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<EstablishedEvent xmlns="{CSTA}">
  <monitorCrossRefID>{cross_ref}</monitorCrossRefID>
  <establishedConnection><callID>{call}</callID><deviceID>{device}</deviceID></establishedConnection>
  <answeringDevice><deviceIdentifier>{device}</deviceIdentifier></answeringDevice>
  <callingDevice><deviceIdentifier>{caller}</deviceIdentifier></callingDevice>
  <calledDevice><deviceIdentifier>{device}</deviceIdentifier></calledDevice>
  <lastRedirectionDevice><notRequired/></lastRedirectionDevice>
  <localConnectionInfo>connected</localConnectionInfo>
  <cause>normal</cause>
</EstablishedEvent>"#
    )
}

/// `dropped` leaves the call (17.2.2); `local` is the monitored device's connection state
/// afterwards, when the server reports it.
fn connection_cleared(cross_ref: &str, call: &str, dropped: &str, local: Option<&str>) -> String {
    let local = local
        .map(|l| format!("<localConnectionInfo>{l}</localConnectionInfo>"))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<ConnectionClearedEvent xmlns="{CSTA}">
  <monitorCrossRefID>{cross_ref}</monitorCrossRefID>
  <droppedConnection><callID>{call}</callID><deviceID>{dropped}</deviceID></droppedConnection>
  <releasingDevice><deviceIdentifier>{dropped}</deviceIdentifier></releasingDevice>
  {local}
  <cause>normalClearing</cause>
</ConnectionClearedEvent>"#
    )
}

fn settings(sim: &PbxSimulator, application: &str, password: Option<&str>) -> ApiSettings {
    ApiSettings {
        uc: UcSettings {
            csta: Some(CstaSettings {
                server: sim.address.clone(),
                application: application.to_owned(),
                password: password.map(str::to_owned),
                reconnect: Duration::from_millis(200),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Creates an available agent at `address`.
async fn agent_at(app: &TestApp, id: &str, address: &str) -> String {
    let (status, body) = app
        .put(
            &format!("/v1/agents/{id}"),
            &app.admin,
            json!({"name": format!("Agent {id}"), "address": address}),
        )
        .await;
    assert_eq!(status, 201, "create agent {id}: {body}");
    let (status, body) = app
        .post(&format!("/v1/agents/{id}/tokens"), &app.admin, None)
        .await;
    assert_eq!(status, 201, "agent token: {body}");
    let token = body["token"].as_str().unwrap().to_owned();
    app.presence(id, &token, "available").await;
    token
}

async fn interaction(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/interactions/{id}"), &app.admin)
        .await
        .1
}

async fn presence(app: &TestApp, agent: &str) -> Value {
    app.get(&format!("/v1/agents/{agent}"), &app.admin).await.1["presence"].clone()
}

async fn wait_state(app: &TestApp, id: &str, state: &str) {
    wait_until(&format!("{id} is {state}"), PATIENCE, || async {
        interaction(app, id).await["state"] == state
    })
    .await;
}

async fn wait_presence(app: &TestApp, agent: &str, status: &str) -> Value {
    wait_until(&format!("{agent} is {status}"), PATIENCE, || async {
        presence(app, agent).await["status"] == status
    })
    .await;
    presence(app, agent).await
}

fn of_connection<'a>(received: &'a [Received], connection: usize, name: &str) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.connection == connection && r.name == name)
        .collect()
}

#[tokio::test]
async fn an_answered_call_carrying_the_interaction_accepts_it_and_the_callers_hangup_wraps_up() {
    let sim = PbxSimulator::start(2).await;
    let app = spawn_app_with(settings(&sim, "handoff", Some("s3cret"))).await;
    let _alice = agent_at(&app, "alice", "tel:2001").await;
    let cross_ref = sim.monitored("2001", 1).await;

    // The session first, then exactly one monitor, of alice's device, each its own invoke id.
    let received = sim.received();
    let session = &received[0];
    assert_eq!(session.name, "StartApplicationSession", "{received:?}");
    assert_eq!(
        text_of(&session.xml, "applicationID").as_deref(),
        Some("handoff")
    );
    assert_eq!(text_of(&session.xml, "password").as_deref(), Some("s3cret"));
    let monitors = of_connection(&received, 1, "MonitorStart");
    assert_eq!(monitors.len(), 1, "{received:?}");
    assert_eq!(
        text_of(&monitors[0].xml, "deviceObject").as_deref(),
        Some("2001")
    );
    assert!(monitors[0].xml.contains(CSTA), "{}", monitors[0].xml);
    for message in [session, monitors[0]] {
        assert!(
            message.invoke_id.bytes().all(|b| b.is_ascii_digit()),
            "{message:?}"
        );
    }
    assert_ne!(session.invoke_id, monitors[0].invoke_id);

    let ivr = app.key("ivr").await;
    let created = app
        .create_interaction(
            &ivr,
            json!({"target": {"agent": "alice"}, "caller": "+15551234567", "call_id": "ivr-7"}),
        )
        .await;
    assert_eq!(created["state"], "offered");
    let id = created["id"].as_str().unwrap().to_owned();

    // The IVR transferred the call with the interaction id as correlator data (hexBinary).
    sim.event(&delivered(
        &cross_ref,
        "41",
        "2001",
        "+15551234567",
        Some(&hex::encode(&id)),
    ));
    sim.event(&established(&cross_ref, "41", "2001", "+15551234567"));
    wait_state(&app, &id, "accepted").await;
    let accepted = interaction(&app, &id).await;
    assert_eq!(accepted["agent"]["id"], "alice", "{accepted}");

    // The caller hangs up: the server clears the caller's connection; alice's is null after.
    sim.event(&connection_cleared(
        &cross_ref,
        "41",
        "+15551234567",
        Some("null"),
    ));
    wait_state(&app, &id, "wrap_up").await;
    let history = interaction(&app, &id).await["history"].clone();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["type"] == "interaction.ended"),
        "{history}"
    );

    // The session granted 2 s is kept alive.
    wait_until("the session timer is reset", PATIENCE, || async {
        sim.received().iter().any(|r| {
            r.name == "ResetApplicationSessionTimer"
                && text_of(&r.xml, "sessionID").as_deref() == Some("sim-1")
        })
    })
    .await;
    assert_eq!(sim.session_duration_s, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_call_that_is_no_handoff_makes_the_agent_busy_and_routing_passes_it_by() {
    let sim = PbxSimulator::start(180).await;
    // No application id: the server wants no session, handoff monitors at once.
    let app = spawn_app_with(settings(&sim, "", None)).await;
    let (status, body) = app
        .put("/v1/queues/sales", &app.admin, json!({"skills": {}}))
        .await;
    assert!(status == 200 || status == 201, "queue: {body}");
    let _alice = agent_at(&app, "alice", "tel:2001").await;
    let _bob = agent_at(&app, "bob", "sip:2002@pbx.example.com").await;
    let alice_ref = sim.monitored("2001", 1).await;
    let _bob_ref = sim.monitored("2002", 1).await;
    assert!(of_connection(&sim.received(), 1, "StartApplicationSession").is_empty());

    // A personal call reaches alice and she answers it.
    sim.event(&delivered(&alice_ref, "77", "2001", "+15550001111", None));
    sim.event(&established(&alice_ref, "77", "2001", "+15550001111"));
    let busy = wait_presence(&app, "alice", "busy").await;
    assert_eq!(busy["source"], "uc", "{busy}");
    assert_eq!(busy["reason"], "on_another_call", "{busy}");

    let ivr = app.key("ivr").await;
    let created = app
        .create_interaction(&ivr, json!({"target": {"queue": "sales"}}))
        .await;
    assert_eq!(created["state"], "offered", "{created}");
    assert_eq!(created["agent"]["id"], "bob", "{created}");

    // Alice hangs up; this server leaves out localConnectionInfo.
    sim.event(&connection_cleared(&alice_ref, "77", "2001", None));
    wait_presence(&app, "alice", "available").await;

    // A second personal call, cleared by the caller: a two-party call ends with either party.
    sim.event(&delivered(&alice_ref, "78", "2001", "+15550002222", None));
    sim.event(&established(&alice_ref, "78", "2001", "+15550002222"));
    wait_presence(&app, "alice", "busy").await;
    sim.event(&connection_cleared(&alice_ref, "78", "+15550002222", None));
    wait_presence(&app, "alice", "available").await;

    // A device that was never a party of alice's call leaving it (an IVR port dropping out
    // after its transfer) does not end it; the caller leaving does.
    sim.event(&delivered(&alice_ref, "79", "2001", "+15550003333", None));
    sim.event(&established(&alice_ref, "79", "2001", "+15550003333"));
    wait_presence(&app, "alice", "busy").await;
    sim.event(&connection_cleared(&alice_ref, "79", "3001", None));
    sim.barrier("0601").await;
    assert_eq!(presence(&app, "alice").await["status"], "busy");
    sim.event(&connection_cleared(&alice_ref, "79", "+15550003333", None));
    wait_presence(&app, "alice", "available").await;
    app.stop().await;
}

#[tokio::test]
async fn when_the_link_drops_handoff_forgets_the_calls_reconnects_and_monitors_again() {
    let sim = PbxSimulator::start(180).await;
    let app = spawn_app_with(settings(&sim, "handoff", None)).await;
    let _alice = agent_at(&app, "alice", "csta:2001").await;
    let first_ref = sim.monitored("2001", 1).await;
    sim.event(&delivered(&first_ref, "5", "2001", "+15550003333", None));
    sim.event(&established(&first_ref, "5", "2001", "+15550003333"));
    wait_presence(&app, "alice", "busy").await;

    sim.send(ToClient::Close);
    // Nobody reports alice's phone while the link is down: her busy call is forgotten.
    wait_presence(&app, "alice", "available").await;
    let second_ref = sim.monitored("2001", 2).await;
    assert_ne!(first_ref, second_ref);
    let received = sim.received();
    let second: Vec<&str> = received
        .iter()
        .filter(|r| r.connection == 2)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        second,
        ["StartApplicationSession", "MonitorStart"],
        "{received:?}"
    );

    // Events on the new monitor count again.
    sim.event(&established(&second_ref, "6", "2001", "+15550004444"));
    wait_presence(&app, "alice", "busy").await;
    app.stop().await;
}

#[tokio::test]
async fn an_agent_whose_address_changes_is_monitored_at_the_new_device_only() {
    let sim = PbxSimulator::start(180).await;
    let app = spawn_app_with(settings(&sim, "handoff", None)).await;
    let _alice = agent_at(&app, "alice", "tel:2001").await;
    let old_ref = sim.monitored("2001", 1).await;
    let (status, body) = app
        .put(
            "/v1/agents/alice",
            &app.admin,
            json!({"name": "Agent alice", "address": "tel:2005"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sim.monitored("2005", 1).await;
    wait_until("the old monitor is stopped", PATIENCE, || async {
        !sim.lock().monitors.contains_key("2001")
    })
    .await;
    let received = sim.received();
    let stops = of_connection(&received, 1, "MonitorStop");
    assert_eq!(stops.len(), 1, "{received:?}");
    assert_eq!(
        text_of(&stops[0].xml, "monitorCrossRefID").as_deref(),
        Some(old_ref.as_str())
    );
    app.stop().await;
}

#[tokio::test]
async fn malformed_frames_unknown_events_and_a_refused_monitor_do_not_stop_it() {
    let sim = PbxSimulator::start(180).await;
    sim.lock().refuse_monitors = 1;
    let app = spawn_app_with(settings(&sim, "handoff", None)).await;
    let _alice = agent_at(&app, "alice", "tel:2001").await;

    // The first MonitorStart is refused with a CSTAErrorCode; handoff asks again.
    let cross_ref = sim.monitored("2001", 1).await;
    let monitors = of_connection(&sim.received(), 1, "MonitorStart").len();
    assert_eq!(monitors, 2);

    // Garbage that is still framed: each spoils only itself.
    sim.send(ToClient::Frame(frame("9999", "<<<this is not XML")));
    sim.send(ToClient::Frame(frame("9999", "")));
    let mut not_utf8 = frame("9999", "<a>xx</a>");
    let last = not_utf8.len() - 6;
    not_utf8[last] = 0xff;
    sim.send(ToClient::Frame(not_utf8));
    sim.event(&format!(
        r#"<HookswitchEvent xmlns="{CSTA}"><monitorCrossRefID>{cross_ref}</monitorCrossRefID><device><deviceIdentifier>2001</deviceIdentifier></device><hookswitchOnHook>false</hookswitchOnHook></HookswitchEvent>"#
    ));
    sim.event(&established("999999", "8", "2001", "+15550005555"));
    sim.event(&format!(
        r#"<EstablishedEvent xmlns="{CSTA}"><monitorCrossRefID>{cross_ref}</monitorCrossRefID></EstablishedEvent>"#
    ));
    sim.send(ToClient::Frame(frame(
        "0777",
        &format!(r#"<MonitorStartResponse xmlns="{CSTA}"><monitorCrossRefID>1</monitorCrossRefID></MonitorStartResponse>"#),
    )));
    // A request from the server is still answered, under its invoke id.
    sim.barrier("0555").await;

    // Still the same link, and events still count.
    sim.event(&established(&cross_ref, "9", "2001", "+15550006666"));
    wait_presence(&app, "alice", "busy").await;
    assert_eq!(sim.connections(), 1);

    // A header out of step cannot be resynchronised: handoff drops the link and comes back.
    sim.send(ToClient::Frame(vec![
        0x12, 0x34, 0, 9, b'0', b'0', b'0', b'1', b'x',
    ]));
    wait_presence(&app, "alice", "available").await;
    sim.monitored("2001", 2).await;
    app.stop().await;
}

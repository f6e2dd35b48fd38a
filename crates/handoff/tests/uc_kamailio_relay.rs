//! The Kamailio recipe end to end: `examples/kamailio/kamailio.cfg` (the real file) in front
//! of the real `handoff serve`, a sipp caller and a sipp agent phone.
//!
//! A caller dials `support` at Kamailio with what the IVR collected in `X-IVR-*` headers;
//! Kamailio posts the hand-off to handoff, relays the INVITE to the SIP address of the agent
//! handoff picked, with `X-Handoff-Interaction`; the agent's phone (sipp, which refuses an
//! INVITE without that header) answers; the caller hangs up. The agent's WebSocket stream must
//! have popped that very interaction, with the IVR's data and the SIP Call-ID. Then, with no
//! agent available, the next caller must be held with "182 Queued" and refused with 480 and a
//! `Retry-After`, and its interaction must end `abandoned`; a caller who sends CANCEL while
//! held must get 487, and its interaction must end `abandoned` too.
//!
//! Kamailio and sipp come from Debian's packages (`kamailio`, `kamailio-json-modules`,
//! `kamailio-utils-modules`, `sip-tester`); `.ci/run` installs them and sets
//! `HANDOFF_TEST_KAMAILIO` and `HANDOFF_TEST_SIPP`. Without them the test says it is skipped.

mod serve_process;
mod uc_common;

use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use uc_common::{passed_within, repo_root, HandoffServer, PATIENCE};

const ADMIN: &str = "hk_uc_kamailio_relay_admin_0123456789abcdef";

/// Child processes (Kamailio, sipp), each the leader of its own process group: Kamailio forks
/// workers, so a drop terminates the whole group, then kills what is left of it.
struct Children {
    /// Name, child, and whether it has been reaped (its pid may then belong to anyone).
    children: Vec<(&'static str, Child, bool)>,
}

/// Whether `pid` (our child) has exited, without reaping it: while it is a zombie its pid,
/// and so its process group's id, cannot be reused.
fn exited(pid: u32) -> bool {
    // SAFETY: waitid(2) with WNOWAIT on our own child only reads its state.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let waited = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        waited == 0 && info.si_pid() != 0
    }
}

impl Children {
    fn spawn(&mut self, name: &'static str, command: &mut Command) {
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{name} starts: {error}"));
        self.children.push((name, child, false));
    }

    /// The exit status of child `name`, waiting at most `patience` (then panicking).
    fn wait(
        &mut self,
        name: &str,
        patience: Duration,
        diagnostics: &dyn Fn() -> String,
    ) -> ExitStatus {
        let deadline = Instant::now() + patience;
        let index = self
            .children
            .iter()
            .position(|(n, _, _)| *n == name)
            .expect("a child of that name");
        loop {
            let (_, child, reaped) = &mut self.children[index];
            if exited(child.id()) {
                // sipp forks nothing: reaping the leader leaves no group behind.
                *reaped = true;
                return child.wait().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not finish within {patience:?}\n{}",
                diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for child `name` as [`Children::wait`] does and panics with `failure`, its exit
    /// status and `diagnostics()` unless it succeeded: a sipp scenario exits 0 only if every
    /// message it expected came.
    fn wait_success(&mut self, name: &str, failure: &str, diagnostics: &dyn Fn() -> String) {
        let status = self.wait(name, PATIENCE, diagnostics);
        assert!(status.success(), "{failure}: {status}\n{}", diagnostics());
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        let live = |reaped: &bool| !*reaped;
        for (_, child, reaped) in &self.children {
            if live(reaped) {
                // SAFETY: kill(2) on the process group our unreaped child leads.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGTERM) };
            }
        }
        // Kamailio's main process stops its workers on SIGTERM; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, child, reaped) in &self.children {
            while live(reaped) && !exited(child.id()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (_, child, reaped) in &mut self.children {
            if live(reaped) {
                // SAFETY: as above; the leader is not reaped yet, so the group id is still
                // ours. Whatever is left of the group goes.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                *reaped = true;
            }
        }
    }
}

fn tool(variable: &str, test: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            println!("skipped {test}: {variable} is not set (.ci/run sets it)");
            None
        }
    }
}

/// A UDP port on loopback that nobody holds now (sipp and Kamailio bind it next).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An even UDP port with the next three free too: sipp binds its media sockets there
/// (audio RTP/RTCP and video) as well as -mp itself.
fn free_media_port() -> u16 {
    loop {
        let port = free_udp_port() & !1;
        if !(1024..=65530).contains(&port) {
            continue;
        }
        if (port..port + 4).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return port;
        }
    }
}

/// Waits until a process holds UDP `port` on loopback (our own bind then fails).
fn wait_until_bound(port: u16, what: &str, diagnostics: &dyn Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{what} never bound 127.0.0.1:{port}\n{}",
            diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until Kamailio answers a SIP OPTIONS on `port` with 200 (its workers are routing).
fn wait_for_kamailio(port: u16, diagnostics: &dyn Fn() -> String) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let local = socket.local_addr().unwrap().port();
    let deadline = Instant::now() + PATIENCE;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let options = format!(
            "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-ready-{attempt}\r\n\
             From: <sip:probe@127.0.0.1:{local}>;tag=ready{attempt}\r\n\
             To: <sip:127.0.0.1:{port}>\r\n\
             Call-ID: ready-{attempt}@127.0.0.1\r\n\
             CSeq: {attempt} OPTIONS\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let _ = socket.send_to(options.as_bytes(), ("127.0.0.1", port));
        let mut buffer = [0u8; 4096];
        if let Ok((n, _)) = socket.recv_from(&mut buffer) {
            if buffer[..n].starts_with(b"SIP/2.0 200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Kamailio never answered OPTIONS on {port}\n{}",
            diagnostics()
        );
    }
}

/// A sipp caller running the scenario `fixtures/<scenario>` once against Kamailio on
/// `kamailio_port`, dialling `support` from free ports, with Call-IDs `handoff-<call_ids>-…` so
/// that its interactions can be told apart; the caller adds where its output goes.
fn sipp_caller(
    sipp: &Path,
    fixtures: &Path,
    scenario: &str,
    kamailio_port: u16,
    call_ids: &str,
) -> Command {
    let mut command = Command::new(sipp);
    command
        .arg("-sf")
        .arg(fixtures.join(scenario))
        .arg(format!("127.0.0.1:{kamailio_port}"))
        .args(["-s", "support", "-i", "127.0.0.1"])
        .args(["-p", &free_udp_port().to_string()])
        .args(["-mp", &free_media_port().to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "20", "-timeout_error"])
        .args(["-cid_str", &format!("handoff-{call_ids}-%u-%p@%s")])
        .stderr(Stdio::inherit());
    command
}

/// The latest interactions of queue `support` (the whole listing, for failure messages) and
/// those of them whose IVR collected `account`: each scenario keys a different account.
async fn support_interactions_with_account(
    server: &HandoffServer,
    account: &str,
) -> (Value, Vec<Value>) {
    let listed = server
        .admin(
            reqwest::Method::GET,
            "/v1/interactions?queue=support&limit=10",
            None,
        )
        .await;
    let matching = listed["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["context"]["account"] == account)
        .cloned()
        .collect();
    (listed, matching)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of a `name=value` line written by a sipp `<log>` action (`name=[$variable]` in
/// the scenario: sipp replaces the bracketed keyword by its value).
fn logged(log: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    log.lines().find_map(|line| {
        let value = line.trim().strip_prefix(&prefix)?;
        (!value.is_empty()).then(|| value.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_asks_handoff_and_relays_the_call_to_the_agent_with_the_interaction_id() {
    let test = "uc_kamailio_relay";
    let Some(kamailio) = tool("HANDOFF_TEST_KAMAILIO", test) else {
        return;
    };
    let Some(sipp) = tool("HANDOFF_TEST_SIPP", test) else {
        return;
    };
    let started = Instant::now();
    let root = repo_root();
    let config = root.join("examples/kamailio/kamailio.cfg");
    let fixtures = root.join("crates/handoff/tests/uc_fixtures");
    let temporary = tempfile::tempdir().unwrap();
    let dir = temporary.path().to_path_buf();

    // handoff, with an agent a1 whose phone is the sipp agent below, in queue `support`.
    let server = HandoffServer::start(&dir.join("data"), ADMIN, Duration::from_secs(10)).await;
    let base = server.base.clone();
    let agent_port = free_udp_port();
    let agent_address = format!("sip:a1@127.0.0.1:{agent_port}");
    let ivr_token = server
        .support_queue_with_agent_a1(
            json!({"name": "Agent One", "address": agent_address}),
            "kamailio",
        )
        .await;
    let agent_token = server.a1_token().await;

    // a1's desktop: every event of its stream, as it arrives.
    let mut request = format!("{}/v1/agents/a1/stream", base.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {agent_token}").parse().unwrap(),
    );
    let (mut socket, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
        .await
        .expect("the stream opens in time")
        .expect("the agent's stream opens");
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                if let Ok(event) = serde_json::from_str::<Value>(text.as_str()) {
                    let _ = events_tx.send(event);
                }
            }
        }
    });

    let kamailio_port = free_udp_port();
    let kamailio_log = dir.join("kamailio.log");
    let agent_log = dir.join("agent-actions.log");
    let agent_out = dir.join("agent.out");
    let caller_out = dir.join("caller.out");
    let no_agent_log = dir.join("no-agent-actions.log");
    let no_agent_out = dir.join("no-agent.out");
    let diagnostics = {
        let files = [
            kamailio_log.clone(),
            agent_log.clone(),
            agent_out.clone(),
            caller_out.clone(),
            no_agent_out.clone(),
        ];
        move || {
            files
                .iter()
                .map(|file| {
                    let text = read(file);
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!("--- {}:\n{}", file.display(), tail.join("\n"))
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let mut children = Children {
        children: Vec::new(),
    };

    // Kamailio with the example's configuration, listening on a free loopback port.
    let runtime = dir.join("kamailio-run");
    std::fs::create_dir_all(&runtime).unwrap();
    children.spawn(
        "kamailio",
        Command::new(&kamailio)
            .arg("-f")
            .arg(&config)
            .args(["-DD", "-E", "-l", &format!("udp:127.0.0.1:{kamailio_port}")])
            .arg("-w")
            .arg(&dir)
            .arg("-Y")
            .arg(&runtime)
            .env("HANDOFF_URL", &base)
            .env("HANDOFF_TOKEN", &ivr_token)
            .env("HANDOFF_QUEUE_WAIT_S", "2")
            .stdout(std::fs::File::create(dir.join("kamailio.out")).unwrap())
            .stderr(std::fs::File::create(&kamailio_log).unwrap()),
    );
    wait_for_kamailio(kamailio_port, &diagnostics);

    // The agent's phone: answers one call, which must carry X-Handoff-Interaction.
    children.spawn(
        "agent",
        Command::new(&sipp)
            .arg("-sf")
            .arg(fixtures.join("kamailio_agent_uas.xml"))
            .args(["-i", "127.0.0.1", "-p", &agent_port.to_string()])
            .args(["-mp", &free_media_port().to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30", "-timeout_error"])
            .args(["-trace_logs", "-log_file"])
            .arg(&agent_log)
            .stdout(std::fs::File::create(&agent_out).unwrap())
            .stderr(Stdio::inherit()),
    );
    wait_until_bound(agent_port, "the sipp agent", &diagnostics);

    // The caller: dials the contact centre with what the IVR collected.
    let mut caller = sipp_caller(
        &sipp,
        &fixtures,
        "kamailio_caller_uac.xml",
        kamailio_port,
        "relay",
    );
    children.spawn(
        "caller",
        caller.stdout(std::fs::File::create(&caller_out).unwrap()),
    );
    children.wait_success("caller", "the caller's call failed", &diagnostics);
    children.wait_success("agent", "the agent's call failed", &diagnostics);

    // What the agent's phone saw on the INVITE.
    let actions = read(&agent_log);
    let interaction_id = logged(&actions, "interaction")
        .unwrap_or_else(|| panic!("the agent logged no interaction id\n{}", diagnostics()));
    let call_id = logged(&actions, "call_id").expect("the agent logged the Call-ID");
    assert!(call_id.starts_with("handoff-relay-"), "{call_id}");
    assert_eq!(logged(&actions, "account").as_deref(), Some("12345"));

    // The pop on the agent's desktop: that interaction, with the IVR's data.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let offered = loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no interaction.offered on a1's stream\n{}", diagnostics()))
            .expect("the stream stays open");
        if event["type"] == "interaction.offered" {
            break event;
        }
    };
    let popped = &offered["data"]["interaction"];
    assert_eq!(offered["data"]["agent"], "a1", "{offered:#}");
    assert_eq!(popped["id"], interaction_id.as_str(), "{offered:#}");
    assert_eq!(popped["context"]["account"], "12345", "{offered:#}");
    assert_eq!(popped["context"]["intent"], "billing", "{offered:#}");
    assert_eq!(popped["call_id"], call_id.as_str(), "{offered:#}");
    assert_eq!(popped["caller"], "15551234567", "{offered:#}");
    assert_eq!(popped["target"], json!({"queue": "support"}), "{offered:#}");

    // handoff's own record: the SIP Call-ID, and the caller's BYE reported as a hangup.
    let interaction = server.interaction(&interaction_id).await;
    assert_eq!(interaction["call_id"], call_id.as_str(), "{interaction:#}");
    assert_eq!(
        interaction["context"]["account"], "12345",
        "{interaction:#}"
    );
    assert_eq!(
        interaction["state"], "abandoned",
        "hung up before any accept: {interaction:#}"
    );

    // No agent available: held with 182, refused with 480 and Retry-After, abandoned.
    server.set_a1_presence("away").await;
    let mut no_agent = sipp_caller(
        &sipp,
        &fixtures,
        "kamailio_caller_no_agent.xml",
        kamailio_port,
        "noagent",
    );
    children.spawn(
        "no-agent caller",
        no_agent
            .args(["-trace_logs", "-log_file"])
            .arg(&no_agent_log)
            .stdout(std::fs::File::create(&no_agent_out).unwrap()),
    );
    children.wait_success(
        "no-agent caller",
        "the caller was not refused with 480",
        &diagnostics,
    );
    assert!(logged(&read(&no_agent_log), "retry_after").is_some());
    let (listed, queued) = support_interactions_with_account(&server, "67890").await;
    assert_eq!(queued.len(), 1, "{listed:#}");
    assert_eq!(queued[0]["state"], "abandoned", "{listed:#}");
    assert!(
        queued[0]["call_id"]
            .as_str()
            .unwrap_or("")
            .starts_with("handoff-noagent-"),
        "{listed:#}"
    );

    // A caller who gives up while queued: 487, and handoff told at once (abandoned), the
    // wait cut short by that very change.
    let cancel_out = dir.join("cancel.out");
    let mut cancelling = sipp_caller(
        &sipp,
        &fixtures,
        "kamailio_caller_cancel.xml",
        kamailio_port,
        "cancel",
    );
    children.spawn(
        "cancelling caller",
        cancelling.stdout(std::fs::File::create(&cancel_out).unwrap()),
    );
    children.wait_success(
        "cancelling caller",
        "the CANCEL was not answered with 487",
        &|| format!("{}\n{}", read(&cancel_out), diagnostics()),
    );
    let (listed, gave_up) = support_interactions_with_account(&server, "24680").await;
    assert_eq!(gave_up.len(), 1, "{listed:#}");
    assert_eq!(gave_up[0]["state"], "abandoned", "{listed:#}");

    reader.abort();
    drop(children);
    server.kill();
    passed_within(test, started, Duration::from_secs(60));
}

//! The SIP monitor against a real proxy: Kamailio as registrar, presence server and dialog
//! state publisher (`uc_fixtures/sip/kamailio.cfg`), and sipp as the agent's phone and the
//! caller. handoff subscribes to the agents' `dialog` and `presence` packages at Kamailio; the
//! phone's answer accepts the handed-off call, another call makes the agent busy.
//! Skipped unless HANDOFF_TEST_KAMAILIO and HANDOFF_TEST_SIPP name the binaries.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use handoff_api::uc::sip::SipSettings;
use handoff_api::uc::UcSettings;
use handoff_api::ApiSettings;
use serde_json::{json, Value};

use crate::support::{spawn_app_with, TestApp};
use crate::uc_support::{free_udp_port, server_binary, wait_until, ChildGuard};

/// The proxy's domain: agents' addresses are `sip:{id}@pbx.test`.
const DOMAIN: &str = "pbx.test";
const PATIENCE: Duration = Duration::from_secs(10);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/uc_fixtures/sip")
}

/// A Kamailio on a loopback port of its own, with its configuration and state in a temporary
/// directory; killed when dropped.
struct Pbx {
    port: u16,
    dir: tempfile::TempDir,
    sipp: String,
    kamailio: ChildGuard,
}

impl Drop for Pbx {
    fn drop(&mut self) {
        // Kamailio's worker processes outlive a SIGKILL of the main one (ChildGuard's): end
        // its whole process group first.
        let group = format!("-{}", self.kamailio.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    }
}

/// The binaries, or None when the test is skipped.
fn binaries(test: &str) -> Option<(String, String)> {
    let kamailio = server_binary("HANDOFF_TEST_KAMAILIO", test)?;
    let sipp = server_binary("HANDOFF_TEST_SIPP", test)?;
    Some((kamailio, sipp))
}

/// `defines` are the configuration's `-A` switches (`WITH_AUTH`).
async fn start_pbx(kamailio: &str, sipp: &str, defines: &[&str]) -> Pbx {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    for table in std::fs::read_dir(fixtures().join("db")).unwrap() {
        let table = table.unwrap();
        std::fs::copy(table.path(), db.join(table.file_name())).unwrap();
    }
    let port = free_udp_port();
    let config = std::fs::read_to_string(fixtures().join("kamailio.cfg"))
        .unwrap()
        .replace("@PORT@", &port.to_string())
        .replace("@DB@", db.to_str().unwrap());
    let config_path = dir.path().join("kamailio.cfg");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
    let kamailio = ChildGuard::spawn(
        "kamailio",
        Command::new(kamailio)
            .arg("-DD")
            .arg("-E")
            .arg("-f")
            .arg(&config_path)
            .arg("-Y")
            .arg(dir.path().join("run"))
            .arg("-w")
            .arg(dir.path())
            .args(["-m", "32", "-M", "8"])
            .args(defines.iter().flat_map(|define| ["-A", define]))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    // Ready once it answers: an OPTIONS gets a 405 from this configuration.
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = probe.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe\r\n\
         From: <sip:probe@{DOMAIN}>;tag=p\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: probe@test\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let probe = &probe;
    let options = &options;
    wait_until("kamailio answers", PATIENCE, || async move {
        let _ = probe.send_to(options.as_bytes(), ("127.0.0.1", port)).await;
        let mut buffer = [0u8; 2048];
        matches!(
            tokio::time::timeout(Duration::from_millis(200), probe.recv_from(&mut buffer)).await,
            Ok(Ok(_))
        )
    })
    .await;
    Pbx {
        port,
        dir,
        sipp: sipp.to_owned(),
        kamailio,
    }
}

impl Pbx {
    /// A sipp running `scenario` for `service` from 127.0.0.1:`local_port`, once.
    fn sipp(
        &self,
        name: &str,
        scenario: &str,
        service: &str,
        local_port: u16,
        extra: &[&str],
    ) -> ChildGuard {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        ChildGuard::spawn(
            name,
            Command::new(&self.sipp)
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("-sf")
                .arg(fixtures().join(scenario))
                .args(["-s", service, "-i", "127.0.0.1", "-p"])
                .arg(local_port.to_string())
                .args(["-m", "1", "-timeout", "25s", "-nostdin", "-trace_err"])
                .args(extra)
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
    }

    /// Registers the agent's phone at 127.0.0.1:`phone_port`.
    async fn register(&self, agent: &str, phone_port: u16) {
        let mut register = self.sipp(
            &format!("register-{agent}"),
            "register.xml",
            agent,
            phone_port,
            &[],
        );
        let status = register.wait_exit(PATIENCE).await;
        assert!(status.success(), "{agent}'s phone registers: {status}");
    }

    /// What Kamailio and the phones logged, for a failed assertion's message.
    fn logs(&self) -> String {
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                logs.push_str(&format!("\n--- {}\n", path.display()));
                for line in tail.into_iter().rev() {
                    logs.push_str(line);
                    logs.push('\n');
                }
            }
        }
        logs
    }
}

async fn app_for(pbx: &Pbx) -> TestApp {
    app_with(pbx, None, Duration::from_secs(120)).await
}

/// handoff with its SIP monitor pointed at `pbx`, with these credentials and expiry.
async fn app_with(pbx: &Pbx, credentials: Option<(&str, &str)>, expires: Duration) -> TestApp {
    spawn_app_with(ApiSettings {
        uc: UcSettings {
            sip: Some(SipSettings {
                proxy: format!("127.0.0.1:{}", pbx.port),
                bind: "127.0.0.1:0".parse().unwrap(),
                contact_host: None,
                from: format!("sip:handoff@{DOMAIN}"),
                username: credentials.map(|(username, _)| username.to_owned()),
                password: credentials.map(|(_, password)| password.to_owned()),
                expires,
                presence: true,
            }),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
}

/// An agent with its address at the test proxy (and the `sales` skill); its token.
async fn sip_agent(app: &TestApp, id: &str, available: bool) -> String {
    let token = app.agent(id, available).await;
    let (status, body) = app
        .put(
            &format!("/v1/agents/{id}"),
            &app.admin,
            json!({"name": format!("Agent {id}"), "address": format!("sip:{id}@{DOMAIN}"),
                   "skills": {"sales": 5}}),
        )
        .await;
    assert_eq!(status, 200, "agent {id} gets its SIP address: {body}");
    token
}

async fn agent(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/agents/{id}"), &app.admin).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn interaction(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/interactions/{id}"), &app.admin).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the agent's presence is `status` from the UC adapter.
async fn wait_presence(app: &TestApp, pbx: &Pbx, id: &str, status: &str, patience: Duration) {
    let what = format!("{id} is {status} (source uc)");
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let body = agent(app, id).await;
        if body["presence"]["status"] == status && body["presence"]["source"] == "uc" {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {patience:?}; last {body}{}", pbx.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_state(app: &TestApp, pbx: &Pbx, id: &str, state: &str, patience: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let body = interaction(app, id).await;
        if body["state"] == state {
            return body;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "interaction {id} is {state}: not within {patience:?}; last {body}{}",
                pbx.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_phone_answering_the_handed_off_call_accepts_it_and_its_end_starts_wrap_up() {
    let Some((kamailio, sipp)) = binaries("uc_sip::the_phone_answering_the_handed_off_call") else {
        return;
    };
    let pbx = start_pbx(&kamailio, &sipp, &[]).await;
    let app = app_for(&pbx).await;
    let ivr = app.key("ivr").await;
    // Offline on the desktop: only the phone's registration (PIDF open) makes a1 available.
    sip_agent(&app, "a1", false).await;
    let phone = free_udp_port();
    pbx.register("a1", phone).await;
    wait_presence(&app, &pbx, "a1", "available", PATIENCE).await;

    let _answering = pbx.sipp("agent-a1", "agent_uas.xml", "a1", phone, &[]);
    let call_id = format!("handoff-test-{}", free_udp_port());
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551230001", "call_id": call_id, "target": {"agent": "a1"}}),
        )
        .await;
    assert_eq!(created["state"], "offered", "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    // The IVR transfers the call: the caller stays on the line 5 s, then hangs up.
    let mut caller = pbx.sipp(
        "caller",
        "caller_uac.xml",
        "a1",
        free_udp_port(),
        &["-cid_str", &call_id, "-d", "5000"],
    );
    let accepted = wait_state(&app, &pbx, &id, "accepted", Duration::from_secs(4)).await;
    assert_eq!(accepted["agent"]["id"], "a1", "{accepted}");
    assert_eq!(agent(&app, "a1").await["activity"], "engaged");

    let ended = wait_state(&app, &pbx, &id, "wrap_up", Duration::from_secs(15)).await;
    assert_eq!(ended["agent"]["id"], "a1", "{ended}");
    let a1 = agent(&app, "a1").await;
    assert_eq!(a1["activity"], "wrap_up", "{a1}");
    assert_eq!(a1["presence"]["status"], "available", "{a1}");
    let status = caller.wait_exit(PATIENCE).await;
    assert!(
        status.success(),
        "the caller's call went as scripted: {status}{}",
        pbx.logs()
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agent_on_another_call_is_busy_and_not_routed_to() {
    let Some((kamailio, sipp)) = binaries("uc_sip::an_agent_on_another_call_is_busy") else {
        return;
    };
    let pbx = start_pbx(&kamailio, &sipp, &[]).await;
    let app = app_for(&pbx).await;
    let ivr = app.key("ivr").await;
    let (status, body) = app
        .put(
            "/v1/queues/sales",
            &app.admin,
            json!({"skills": {"sales": 1}}),
        )
        .await;
    assert!(status == 200 || status == 201, "queue: {body}");
    // a1 is made available by its phone's registration (PIDF open), which also tells that
    // handoff's subscriptions for it are in place.
    sip_agent(&app, "a1", false).await;
    sip_agent(&app, "a2", true).await;
    let phone = free_udp_port();
    pbx.register("a1", phone).await;
    wait_presence(&app, &pbx, "a1", "available", PATIENCE).await;

    // A personal call: its Call-ID is no interaction's.
    let _answering = pbx.sipp("agent-a1", "agent_uas.xml", "a1", phone, &[]);
    let mut caller = pbx.sipp(
        "caller",
        "caller_uac.xml",
        "a1",
        free_udp_port(),
        &["-cid_str", "personal-call", "-d", "8000"],
    );
    wait_presence(&app, &pbx, "a1", "busy", Duration::from_secs(5)).await;
    assert_eq!(
        agent(&app, "a1").await["presence"]["reason"],
        "on_another_call"
    );

    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551230002", "target": {"queue": "sales"}}),
        )
        .await;
    assert_eq!(created["state"], "offered", "{created}");
    assert_eq!(
        created["agent"]["id"], "a2",
        "routed past the busy agent: {created}"
    );

    wait_presence(&app, &pbx, "a1", "available", Duration::from_secs(15)).await;
    assert_eq!(agent(&app, "a1").await["presence"]["reason"], Value::Null);
    let status = caller.wait_exit(PATIENCE).await;
    assert!(
        status.success(),
        "the personal call went as scripted: {status}{}",
        pbx.logs()
    );
    app.stop().await;
}

#[tokio::test]
async fn subscriptions_answer_the_proxys_digest_challenge_and_are_refreshed() {
    let Some((kamailio, sipp)) =
        binaries("uc_sip::subscriptions_answer_the_proxys_digest_challenge")
    else {
        return;
    };
    let pbx = start_pbx(&kamailio, &sipp, &["WITH_AUTH"]).await;
    // Subscriptions of 2 s: the call below outlasts several, so its end is only seen if the
    // refreshes (challenged too) go through.
    let app = app_with(&pbx, Some(("handoff", "secret")), Duration::from_secs(2)).await;
    sip_agent(&app, "a1", false).await;
    let phone = free_udp_port();
    pbx.register("a1", phone).await;
    wait_presence(&app, &pbx, "a1", "available", PATIENCE).await;

    let _answering = pbx.sipp("agent-a1", "agent_uas.xml", "a1", phone, &[]);
    let mut caller = pbx.sipp(
        "caller",
        "caller_uac.xml",
        "a1",
        free_udp_port(),
        &["-cid_str", "personal-call-auth", "-d", "5000"],
    );
    wait_presence(&app, &pbx, "a1", "busy", Duration::from_secs(4)).await;
    wait_presence(&app, &pbx, "a1", "available", Duration::from_secs(15)).await;
    let status = caller.wait_exit(PATIENCE).await;
    assert!(
        status.success(),
        "the call went as scripted: {status}{}",
        pbx.logs()
    );
    let log = std::fs::read_to_string(pbx.dir.path().join("kamailio.log")).unwrap_or_default();
    assert!(
        !log.contains("auth_check(): invalid"),
        "kamailio refused handoff's credentials{}",
        pbx.logs()
    );
    app.stop().await;
}

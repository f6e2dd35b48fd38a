//! The XMPP presence adapter against a real Prosody (Debian's `prosody`, found through
//! HANDOFF_TEST_PROSODY) that each test starts on a free loopback port with its own
//! configuration and accounts in a temporary directory. The agents' chat clients are XMPP
//! connections of their own to the same server.

use std::process::{Command, Stdio};
use std::time::Duration;

use handoff_api::uc::xmpp::client::{SignIn, XmppClient};
use handoff_api::uc::xmpp::{ShowMap, XmppSettings, XmppTls};
use handoff_api::uc::UcSettings;
use handoff_api::ApiSettings;
use serde_json::{json, Value};

use crate::support::{spawn_app_with, TestApp, PATIENCE};
use crate::uc_support::{free_tcp_port, server_binary, wait_for_tcp, wait_until, ChildGuard};

const DOMAIN: &str = "cc.test";
const PASSWORD: &str = "secret-pw";
/// The acceptance bound: an agent's chat presence decides routing within this.
const WITHIN: Duration = Duration::from_secs(1);

struct Prosody {
    port: u16,
    /// The certificate clients are to trust, when started with TLS.
    certificate: Option<std::path::PathBuf>,
    _server: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Prosody {
    /// Prosody on a free port, with accounts `handoff` and `users`, all in one shared roster
    /// group so that handoff sees the agents' presence without asking.
    async fn start(binary: &str, users: &[&str], tls: bool) -> Prosody {
        Prosody::start_on(binary, users, tls, free_tcp_port()).await
    }

    async fn start_on(binary: &str, users: &[&str], tls: bool, port: u16) -> Prosody {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let accounts = root.join("data").join("cc%2etest").join("accounts");
        std::fs::create_dir_all(&accounts).unwrap();
        std::fs::create_dir_all(root.join("certs")).unwrap();
        let mut group = String::from("[Agents]\n");
        for user in users.iter().chain(&["handoff"]) {
            // mod_auth_internal_plain's account file.
            std::fs::write(
                accounts.join(format!("{user}.dat")),
                format!("return {{ [\"password\"] = \"{PASSWORD}\"; }};\n"),
            )
            .unwrap();
            group.push_str(&format!("{user}@{DOMAIN}\n"));
        }
        std::fs::write(root.join("groups.txt"), group).unwrap();
        let certificate = tls.then(|| make_certificate(root));
        let ssl = match &certificate {
            Some(certificate) => format!(
                "ssl = {{ key = \"{}\"; certificate = \"{}\"; }}\nc2s_require_encryption = true\n",
                root.join("key.pem").display(),
                certificate.display()
            ),
            None => {
                "c2s_require_encryption = false\nallow_unencrypted_plain_auth = true\n".to_owned()
            }
        };
        let modules = if tls {
            "\"roster\"; \"saslauth\"; \"tls\"; \"disco\"; \"ping\"; \"groups\""
        } else {
            "\"roster\"; \"saslauth\"; \"disco\"; \"ping\"; \"groups\""
        };
        let config = format!(
            r#"pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
certificates = "{root}/certs"
run_as_root = true
modules_enabled = {{ {modules} }}
modules_disabled = {{ "s2s"; "posix" }}
c2s_ports = {{ {port} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
authentication = "internal_plain"
storage = "internal"
groups_file = "{root}/groups.txt"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{root}/prosody.log" }} }}
{ssl}
VirtualHost "{DOMAIN}"
"#,
            root = root.display(),
        );
        let config_path = root.join("prosody.cfg.lua");
        std::fs::write(&config_path, config).unwrap();
        let server = ChildGuard::spawn(
            "prosody",
            Command::new(binary)
                .arg("--config")
                .arg(&config_path)
                .arg("-F")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_tcp("prosody", port, PATIENCE).await;
        Prosody {
            port,
            certificate,
            _server: server,
            _dir: dir,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn adapter_settings(&self) -> XmppSettings {
        XmppSettings {
            server: self.address(),
            jid: format!("handoff@{DOMAIN}"),
            password: PASSWORD.to_owned(),
            agent_domain: DOMAIN.to_owned(),
            tls: if self.certificate.is_some() {
                XmppTls::Required
            } else {
                XmppTls::Off
            },
            tls_ca: self.certificate.clone(),
            show_map: ShowMap::default(),
            reconnect: Duration::from_millis(100),
        }
    }

    /// An agent's chat client, signed in.
    async fn client(&self, user: &str) -> XmppClient {
        let jid = format!("{user}@{DOMAIN}");
        let sign_in = SignIn {
            server: &self.address(),
            jid: &jid,
            password: PASSWORD,
            tls: if self.certificate.is_some() {
                XmppTls::Required
            } else {
                XmppTls::Off
            },
            tls_ca: self.certificate.as_deref(),
            resource: "desk",
        };
        XmppClient::sign_in(&sign_in)
            .await
            .unwrap_or_else(|error| panic!("{jid} signs in: {error}"))
    }
}

/// A self-signed certificate for the domain, made with the openssl command.
fn make_certificate(root: &std::path::Path) -> std::path::PathBuf {
    let certificate = root.join("cert.pem");
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(root.join("key.pem"))
        .arg("-out")
        .arg(&certificate)
        .args(["-subj", &format!("/CN={DOMAIN}")])
        .args(["-addext", &format!("subjectAltName=DNS:{DOMAIN}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl makes a certificate");
    certificate
}

async fn show(client: &mut XmppClient, show: Option<&str>) {
    let stanza = match show {
        Some(show) => format!("<presence><show>{show}</show></presence>"),
        None => "<presence/>".to_owned(),
    };
    client.send(&stanza).await.expect("presence sent");
}

async fn presence_of(app: &TestApp, agent: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/agents/{agent}"), &app.admin).await;
    assert_eq!(status, 200, "{body}");
    body["presence"].clone()
}

/// Waits at most `patience` for the agent's presence to be `status` with source `uc`.
async fn wait_for_uc_presence(app: &TestApp, agent: &str, status: &str, patience: Duration) {
    wait_until(
        &format!("{agent} is {status} (source uc)"),
        patience,
        || async move {
            let presence = presence_of(app, agent).await;
            presence["status"] == status && presence["source"] == "uc"
        },
    )
    .await;
}

async fn app_following(prosody: &Prosody) -> TestApp {
    spawn_app_with(ApiSettings {
        uc: UcSettings {
            xmpp: Some(prosody.adapter_settings()),
            ..UcSettings::default()
        },
        ..ApiSettings::default()
    })
    .await
}

#[tokio::test]
async fn uc_xmpp_chat_presence_in_prosody_decides_who_is_offered_calls() {
    let Some(binary) = server_binary(
        "HANDOFF_TEST_PROSODY",
        "uc_xmpp_chat_presence_in_prosody_decides_who_is_offered_calls",
    ) else {
        return;
    };
    let prosody = Prosody::start(&binary, &["alice", "bob"], false).await;
    let app = app_following(&prosody).await;
    app.agent("alice", false).await;
    app.agent("bob", false).await;
    let (status, body) = app.put("/v1/queues/support", &app.admin, json!({})).await;
    assert_eq!(status, 201, "{body}");
    let ivr = app.key("ivr").await;

    // Neither has signed in to chat yet: unavailable there, offline here.
    wait_for_uc_presence(&app, "alice", "offline", PATIENCE).await;
    wait_for_uc_presence(&app, "bob", "offline", PATIENCE).await;

    let mut alice = prosody.client("alice").await;
    let mut bob = prosody.client("bob").await;
    show(&mut alice, None).await;
    show(&mut bob, Some("chat")).await;
    wait_for_uc_presence(&app, "alice", "available", PATIENCE).await;
    wait_for_uc_presence(&app, "bob", "available", PATIENCE).await;

    // Do not disturb: within a second alice is busy, and the next caller goes to bob.
    show(&mut alice, Some("dnd")).await;
    wait_for_uc_presence(&app, "alice", "busy", WITHIN).await;
    assert_eq!(presence_of(&app, "alice").await["reason"], "dnd");
    let first = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15550001", "target": {"queue": "support"}}),
        )
        .await;
    assert_eq!(first["agent"]["id"], "bob", "{first}");

    // Away, extended away and signed out each keep alice from being offered calls.
    for stanza_show in ["away", "xa"] {
        show(&mut alice, Some(stanza_show)).await;
        // Both are away; the show, as the reason, tells them apart.
        wait_until(
            &format!("alice is away ({stanza_show})"),
            WITHIN,
            || async {
                let presence = presence_of(&app, "alice").await;
                presence["status"] == "away"
                    && presence["source"] == "uc"
                    && presence["reason"] == stanza_show
            },
        )
        .await;
    }
    alice
        .send("<presence type='unavailable'/>")
        .await
        .expect("unavailable sent");
    wait_for_uc_presence(&app, "alice", "offline", WITHIN).await;
    let queued = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15550002", "target": {"queue": "support"}}),
        )
        .await;
    assert_eq!(
        queued["state"], "queued",
        "bob is on a call, alice unavailable: {queued}"
    );

    // Back to chat: alice is available within a second and takes the waiting caller.
    show(&mut alice, Some("chat")).await;
    wait_for_uc_presence(&app, "alice", "available", WITHIN).await;
    let id = queued["id"].as_str().unwrap().to_owned();
    wait_until("the waiting caller is offered to alice", PATIENCE, || {
        let app = &app;
        let id = id.clone();
        async move {
            let (_, interaction) = app.get(&format!("/v1/interactions/{id}"), &app.admin).await;
            interaction["agent"]["id"] == "alice" && interaction["state"] == "offered"
        }
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn uc_xmpp_signs_in_over_starttls_and_follows_presence() {
    let Some(binary) = server_binary(
        "HANDOFF_TEST_PROSODY",
        "uc_xmpp_signs_in_over_starttls_and_follows_presence",
    ) else {
        return;
    };
    let prosody = Prosody::start(&binary, &["carol"], true).await;
    let app = app_following(&prosody).await;
    app.agent("carol", false).await;
    let mut carol = prosody.client("carol").await;
    show(&mut carol, Some("dnd")).await;
    wait_for_uc_presence(&app, "carol", "busy", PATIENCE).await;
    show(&mut carol, None).await;
    wait_for_uc_presence(&app, "carol", "available", WITHIN).await;
    app.stop().await;
}

#[tokio::test]
async fn uc_xmpp_refuses_a_plain_sign_in_where_tls_is_required() {
    let Some(binary) = server_binary(
        "HANDOFF_TEST_PROSODY",
        "uc_xmpp_refuses_a_plain_sign_in_where_tls_is_required",
    ) else {
        return;
    };
    let prosody = Prosody::start(&binary, &["dave"], false).await;
    let sign_in = SignIn {
        server: &prosody.address(),
        jid: "handoff@cc.test",
        password: PASSWORD,
        tls: XmppTls::Required,
        tls_ca: None,
        resource: "handoff",
    };
    let error = match XmppClient::sign_in(&sign_in).await {
        Ok(_) => panic!("signed in without TLS where TLS is required"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("STARTTLS"), "{error}");
    let wrong = SignIn {
        password: "wrong",
        tls: XmppTls::Off,
        ..sign_in
    };
    let error = match XmppClient::sign_in(&wrong).await {
        Ok(_) => panic!("signed in with a wrong password"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("not-authorized"), "{error}");
}

#[tokio::test]
async fn uc_xmpp_signs_in_again_after_the_server_restarts() {
    let Some(binary) = server_binary(
        "HANDOFF_TEST_PROSODY",
        "uc_xmpp_signs_in_again_after_the_server_restarts",
    ) else {
        return;
    };
    let prosody = Prosody::start(&binary, &["erin"], false).await;
    let settings = prosody.adapter_settings();
    let app = app_following(&prosody).await;
    app.agent("erin", false).await;
    let mut erin = prosody.client("erin").await;
    show(&mut erin, Some("away")).await;
    wait_for_uc_presence(&app, "erin", "away", PATIENCE).await;

    // A new server on the same port: handoff signs in again by itself.
    let port = prosody.port;
    drop(erin);
    drop(prosody);
    let restarted = Prosody::start_on(&binary, &["erin"], false, port).await;
    assert_eq!(restarted.adapter_settings().server, settings.server);
    let mut erin = restarted.client("erin").await;
    show(&mut erin, Some("dnd")).await;
    wait_for_uc_presence(&app, "erin", "busy", PATIENCE).await;
    app.stop().await;
}

//! The agent desktop, sign-in page and supervisor view in headless Chromium, against the real
//! binary. This test starts `handoff serve`, sets it up over HTTP (agents alice and bob with tokens,
//! an IVR key, a supervisor sign-in link) and runs the node tests in `e2e/desktop.spec.mjs`
//! (playwright-core driving `/usr/bin/chromium`). It needs node, `npm ci --prefix e2e` and
//! Chromium, so it runs only when `HANDOFF_TEST_BROWSER` is set (`.ci/run` sets it once both are
//! installed). Screenshots land in `<CARGO_TARGET_TMPDIR>/e2e/artifacts`.

mod node_runner;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use node_runner::{browser_tests_enabled, run_node_spec, Killed};

const ADMIN: &str = "hk_browser_e2e_admin_0123456789abcdef";

async fn call(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let mut request = http
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(ADMIN);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {path}: {status} {body}");
    body
}

struct Setup {
    alice_token: String,
    ivr_token: String,
    supervisor_link: String,
}

async fn set_up(base: &str) -> Setup {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let health = http.get(format!("{base}/healthz")).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use reqwest::Method;
    call(
        &http,
        base,
        Method::PUT,
        "/v1/agents/alice",
        json!({"name": "Alice Smith"}),
    )
    .await;
    call(
        &http,
        base,
        Method::PUT,
        "/v1/agents/bob",
        json!({"name": "Bob Jones"}),
    )
    .await;
    let alice = call(
        &http,
        base,
        Method::POST,
        "/v1/agents/alice/tokens",
        Value::Null,
    )
    .await;
    // A queue, so that the supervisor view has a queue row to show.
    call(&http, base, Method::PUT, "/v1/queues/billing", json!({})).await;
    // Bob's token exists so that his stream is a real one that alice's page must not reach.
    call(
        &http,
        base,
        Method::POST,
        "/v1/agents/bob/tokens",
        Value::Null,
    )
    .await;
    let ivr = call(
        &http,
        base,
        Method::POST,
        "/v1/keys",
        json!({"role": "ivr", "name": "ivr"}),
    )
    .await;
    let link = call(
        &http,
        base,
        Method::POST,
        "/v1/signin-links",
        json!({"role": "supervisor"}),
    )
    .await;
    let text = |value: &Value, key: &str| {
        value[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {value}"))
            .to_owned()
    };
    Setup {
        alice_token: text(&alice, "token"),
        ivr_token: text(&ivr, "token"),
        supervisor_link: text(&link, "url"),
    }
}

#[test]
fn the_desktop_and_supervisor_view_work_in_a_real_browser() {
    if !browser_tests_enabled() {
        println!("browser tests skipped: HANDOFF_TEST_BROWSER is not set");
        return;
    }
    let temporary = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_handoff"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(temporary.path().join("data"))
            .env_remove("HANDOFF_TOKEN")
            .env_remove("HANDOFF_URL")
            .env("HANDOFF_ADMIN_TOKEN", ADMIN)
            .env("HANDOFF_LOG", "warn")
            // Offers must stay open however slow the machine: a timed-out offer is no pop.
            .env("HANDOFF_OFFER_TIMEOUT_S", "600")
            // The e2e file's CRM stand-in listens on loopback.
            .env("HANDOFF_EGRESS_ALLOW", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the handoff binary starts"),
    );
    let setup = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(set_up(&base));

    run_node_spec(
        "e2e/desktop.spec.mjs",
        &[
            ("HANDOFF_URL", &base),
            ("HANDOFF_ADMIN_TOKEN", ADMIN),
            ("HANDOFF_ALICE_TOKEN", &setup.alice_token),
            ("HANDOFF_IVR_TOKEN", &setup.ivr_token),
            ("HANDOFF_SUPERVISOR_LINK", &setup.supervisor_link),
        ],
    );
}

//! The agent desktop, sign-in page and supervisor view in headless Chromium, against the real
//! binary. This test starts `handoff serve`, sets it up over HTTP (agents alice and bob with tokens,
//! an IVR key, a supervisor sign-in link) and runs the node tests in `e2e/desktop.spec.mjs`
//! (playwright-core driving `/usr/bin/chromium`). It needs node, `npm ci --prefix e2e` and
//! Chromium, so it runs only when `HANDOFF_TEST_BROWSER` is set (`.ci/run` sets it once both are
//! installed). Screenshots land in `<CARGO_TARGET_TMPDIR>/e2e/artifacts`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ADMIN: &str = "hk_browser_e2e_admin_0123456789abcdef";
/// The whole node run, browser start included, must end within this.
const NODE_LIMIT: Duration = Duration::from_secs(180);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

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

fn drain(stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut stream = stream;
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[test]
fn the_desktop_and_supervisor_view_work_in_a_real_browser() {
    if std::env::var_os("HANDOFF_TEST_BROWSER").is_none() {
        println!("browser tests skipped: HANDOFF_TEST_BROWSER is not set");
        return;
    }
    let root = repository_root();
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
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the handoff binary starts"),
    );
    let setup = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(set_up(&base));

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let started = Instant::now();
    let mut node = Killed(
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "e2e/desktop.spec.mjs"])
            .current_dir(&root)
            .env("HANDOFF_URL", &base)
            .env("HANDOFF_ADMIN_TOKEN", ADMIN)
            .env("HANDOFF_ALICE_TOKEN", &setup.alice_token)
            .env("HANDOFF_IVR_TOKEN", &setup.ivr_token)
            .env("HANDOFF_SUPERVISOR_LINK", &setup.supervisor_link)
            .env("CHROMIUM", chromium)
            .env("ARTIFACTS", &artifacts)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node runs (install node, and `npm ci --prefix e2e`)"),
    );
    let stdout = drain(node.0.stdout.take().unwrap());
    let stderr = drain(node.0.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > NODE_LIMIT {
            let _ = node.0.kill();
            let _ = node.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A killed node may leave Chromium holding the pipes: don't wait on them forever.
    let output = |handle: std::thread::JoinHandle<String>| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if handle.is_finished() {
            handle.join().unwrap_or_default()
        } else {
            "(output not closed)".to_owned()
        }
    };
    let (stdout, stderr) = (output(stdout), output(stderr));
    println!("{stdout}");
    eprintln!("{stderr}");
    println!(
        "node finished in {:.1} s; artifacts in {}",
        started.elapsed().as_secs_f64(),
        artifacts.display()
    );
    let status = status
        .unwrap_or_else(|| panic!("the browser tests ran past {NODE_LIMIT:?} and were killed"));
    assert!(status.success(), "the browser tests failed: {status}");
}

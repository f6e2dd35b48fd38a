//! `handoff agent --exec` against the real binary: the command runs once per pop with the pop's
//! JSON on its standard input, also when the server is killed and restarted under the agent and
//! the stream resumes; its `HANDOFF_*` variables carry the pop's fields and its `pop_url`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);
const ADMIN: &str = "hk_agent_exec_admin_token_0123456789abcdef";

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    process: Killed,
    base: String,
}

impl Server {
    async fn start(
        data_dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        http: &reqwest::Client,
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_handoff"));
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env_remove("HANDOFF_TOKEN")
            .env_remove("HANDOFF_URL")
            .env("HANDOFF_ADMIN_TOKEN", ADMIN)
            .env("HANDOFF_LOG", "warn")
            // Offers must stay open however slow the machine: a timed-out one is no pop.
            .env("HANDOFF_OFFER_TIMEOUT_S", "600")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let server = Server {
            process: Killed(command.spawn().expect("the handoff binary starts")),
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_for("the server to be healthy", || async {
            let health = http.get(format!("{}/healthz", server.base)).send().await;
            health.is_ok_and(|r| r.status().is_success())
        })
        .await;
        server
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates `alice` (room for several offers at once) and returns her token.
    async fn alice(&self, http: &reqwest::Client) -> String {
        let (status, body) = self
            .call(
                http,
                reqwest::Method::PUT,
                "/v1/agents/alice",
                Some(json!({"name": "Alice", "capacity": 5})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .call(http, reqwest::Method::POST, "/v1/agents/alice/tokens", None)
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn agent(&self, http: &reqwest::Client) -> Value {
        self.call(http, reqwest::Method::GET, "/v1/agents/alice", None)
            .await
            .1
    }

    /// Hands a call to alice and returns the interaction's id.
    async fn hand_off(&self, http: &reqwest::Client, caller: &str) -> String {
        let (status, body) = self
            .call(
                http,
                reqwest::Method::POST,
                "/v1/interactions",
                Some(json!({"caller": caller, "context": {"n": caller}, "target": {"agent": "alice"}})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["state"], "offered", "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    fn kill(self) {
        drop(self.process);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it holds, failing the test after `PATIENCE`.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn start_agent(server: &Server, token: &str, exec: &str, out_file: &Path) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["agent", "--agent", "alice", "--exec", exec])
        .env("HANDOFF_URL", &server.base)
        .env("HANDOFF_TOKEN", token)
        .env("OUT_FILE", out_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("handoff agent starts");
    Killed(child)
}

/// The complete lines of `path` (none while it does not exist).
fn lines(path: &PathBuf) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.rsplit_once('\n') {
        Some((complete, _)) => complete.lines().map(str::to_owned).collect(),
        None => Vec::new(),
    }
}

async fn wait_for_lines(path: &PathBuf, count: usize) -> Vec<String> {
    wait_for(&format!("{count} lines in {}", path.display()), || async {
        lines(path).len() >= count
    })
    .await;
    lines(path)
}

/// Waits until alice's desktop is connected and available, so that offers reach her.
async fn wait_until_ready(server: &Server, http: &reqwest::Client) {
    wait_for("alice's desktop to connect", || async {
        let agent = server.agent(http).await;
        agent["connected"] == true && agent["presence"]["status"] == "available"
    })
    .await;
}

#[tokio::test]
async fn exec_runs_once_per_pop_with_its_json_also_across_a_server_restart() {
    let temporary = tempfile::tempdir().unwrap();
    let data_dir = temporary.path().join("data");
    let out_file = temporary.path().join("pops.jsonl");
    let http = reqwest::Client::new();
    let port = free_port();
    let server = Server::start(&data_dir, port, &[], &http).await;
    let token = server.alice(&http).await;
    let _agent = start_agent(
        &server,
        &token,
        "cat >> $OUT_FILE; echo >> $OUT_FILE",
        &out_file,
    );
    wait_until_ready(&server, &http).await;

    let mut ids = vec![
        server.hand_off(&http, "+15550001").await,
        server.hand_off(&http, "+15550002").await,
    ];
    wait_for_lines(&out_file, 2).await;

    // Killed under the agent: it reconnects to the new server, which resumes its stream.
    server.kill();
    let server = Server::start(&data_dir, port, &[], &http).await;
    ids.push(server.hand_off(&http, "+15550003").await);
    let seen = wait_for_lines(&out_file, 3).await;
    let third_seq = serde_json::from_str::<Value>(&seen[2]).unwrap()["seq"]
        .as_u64()
        .unwrap();
    // The desktop acks a pop after starting its command, and commands run in the order of the
    // pops: once the third pop is acked, a replayed first or second would already be written.
    wait_for("the third pop to be acknowledged", || async {
        server.agent(&http).await["acked_seq"]
            .as_u64()
            .is_some_and(|acked| acked >= third_seq)
    })
    .await;

    let written = lines(&out_file);
    assert_eq!(written.len(), 3, "one line per pop: {written:#?}");
    let mut popped = Vec::new();
    for line in &written {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(event["specversion"], "1.0", "{line}");
        assert_eq!(event["type"], "interaction.offered", "{line}");
        assert_eq!(event["data"]["agent"], "alice", "{line}");
        assert!(event["seq"].is_u64(), "{line}");
        popped.push(
            event["data"]["interaction"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    popped.sort();
    ids.sort();
    assert_eq!(popped, ids, "each interaction exactly once");
}

#[tokio::test]
async fn exec_sees_the_pops_fields_and_pop_url_in_its_environment() {
    let temporary = tempfile::tempdir().unwrap();
    let data_dir = temporary.path().join("data");
    let out_file = temporary.path().join("env.txt");
    let http = reqwest::Client::new();
    let server = Server::start(
        &data_dir,
        free_port(),
        &[("HANDOFF_POP_URL", "https://crm.example.com/?p={{ caller }}")],
        &http,
    )
    .await;
    let token = server.alice(&http).await;
    let _agent = start_agent(
        &server,
        &token,
        "printf '%s|%s|%s|%s|%s|%s\\n' \"$HANDOFF_INTERACTION_ID\" \"$HANDOFF_CALLER\" \
         \"$HANDOFF_QUEUE\" \"$HANDOFF_POP_URL\" \"$HANDOFF_AGENT\" \"${HANDOFF_TOKEN:-none}\" >> \"$OUT_FILE\"",
        &out_file,
    );
    wait_until_ready(&server, &http).await;
    let id = server.hand_off(&http, "+1 555&x").await;
    let written = wait_for_lines(&out_file, 1).await;
    assert_eq!(
        written[0],
        format!("{id}|+1 555&x||https://crm.example.com/?p=%2B1%20555%26x|alice|none")
    );
}

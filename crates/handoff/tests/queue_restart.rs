//! Queued callers survive a SIGKILL of the real binary: same order, same waiting time, and the
//! first one in line is the first one offered once an agent is free.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(20);
const ADMIN: &str = "hk_queue_restart_admin_token_0123456789";

struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(data_dir: &std::path::Path, http: &reqwest::Client) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_handoff"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env("HANDOFF_ADMIN_TOKEN", ADMIN)
            .env("HANDOFF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the handoff binary starts");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let health = http.get(format!("{}/healthz", server.base)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            assert!(tokio::time::Instant::now() < deadline, "never healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
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
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn callers_queued_before_a_sigkill_keep_their_order_and_waiting_time_after_it() {
    let temporary = tempfile::tempdir().unwrap();
    let data_dir = temporary.path().join("data");
    let http = reqwest::Client::new();
    let server = Server::start(&data_dir, &http).await;
    let (status, body) = server
        .call(
            &http,
            reqwest::Method::PUT,
            "/v1/queues/support",
            Some(json!({"skills": {"support": 1}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .call(
            &http,
            reqwest::Method::PUT,
            "/v1/agents/alice",
            Some(json!({"name": "Alice", "skills": {"support": 5}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Alice is offline: every caller waits. Priorities mix the order of arrival.
    let mut callers = Vec::new();
    for (n, priority) in [0, 5, 0, 5, 1].into_iter().enumerate() {
        let (status, created) = server
            .call(
                &http,
                reqwest::Method::POST,
                "/v1/interactions",
                Some(json!({"caller": format!("+1555000{n}"), "priority": priority, "target": {"queue": "support"}})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["state"], "queued");
        callers.push(created);
    }
    let positions_before: Vec<(String, Value, Value)> = positions(&server, &http, &callers).await;
    let expected_order = ["1", "3", "4", "0", "2"]; // priority 5 by arrival, then 1, then 0
    let ordered: Vec<String> = order_by_position(&positions_before);
    assert_eq!(ordered, expected_order.map(|n| format!("+1555000{n}")));
    server.kill();

    let server = Server::start(&data_dir, &http).await;
    let positions_after = positions(&server, &http, &callers).await;
    assert_eq!(
        positions_after, positions_before,
        "same positions and waiting times after SIGKILL"
    );

    // The first in line is the first offered once alice is available.
    let (status, _) = server
        .call(
            &http,
            reqwest::Method::PUT,
            "/v1/agents/alice/presence",
            Some(json!({"status": "available"})),
        )
        .await;
    assert_eq!(status, 200);
    let first = callers.iter().find(|c| c["caller"] == "+15550001").unwrap();
    let (_, read) = server
        .call(
            &http,
            reqwest::Method::GET,
            &format!(
                "/v1/interactions/{}?state=queued&wait_s=10",
                first["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(read["state"], "offered", "{read}");
    assert_eq!(read["agent"]["id"], "alice");
    server.kill();
}

async fn positions(
    server: &Server,
    http: &reqwest::Client,
    callers: &[Value],
) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    for caller in callers {
        let id = caller["id"].as_str().unwrap();
        let (status, read) = server
            .call(
                http,
                reqwest::Method::GET,
                &format!("/v1/interactions/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["state"], "queued");
        out.push((
            read["caller"].as_str().unwrap().to_owned(),
            read["position"].clone(),
            read["created_at"].clone(),
        ));
    }
    out
}

fn order_by_position(positions: &[(String, Value, Value)]) -> Vec<String> {
    let mut sorted = positions.to_vec();
    sorted.sort_by_key(|(_, position, _)| position.as_u64().unwrap());
    sorted.into_iter().map(|(caller, _, _)| caller).collect()
}

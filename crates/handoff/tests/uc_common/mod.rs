//! What the recipe tests against a real `handoff serve` share (`uc_recipes.rs`,
//! `uc_kamailio_relay.rs`): the repository root, the server with its admin API, and the
//! queue `support` with agent `a1` and an IVR key that every recipe hands calls off into.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::serve_process::ServeProcess;

/// Every wait of these tests is bounded by this; each test takes a few seconds.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The checkout, where the recipes' `examples/` and the tests' `uc_fixtures/` live.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `handoff serve` (killed when dropped, see [`ServeProcess`]) and an HTTP client for its admin
/// API, so that each test speaks to it in one line per request.
pub struct HandoffServer {
    server: ServeProcess,
    pub http: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    admin_token: &'static str,
}

impl HandoffServer {
    /// `handoff serve` on `data_dir` with the admin token `admin_token`, once it is healthy;
    /// every request of `http` is bounded by `request_timeout`.
    pub async fn start(
        data_dir: &Path,
        admin_token: &'static str,
        request_timeout: Duration,
    ) -> HandoffServer {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .build()
            .unwrap();
        let server = ServeProcess::start(data_dir, admin_token, &[]);
        server.wait_healthy(&http, PATIENCE).await;
        let base = server.base.clone();
        HandoffServer {
            server,
            http,
            base,
            admin_token,
        }
    }

    /// An admin API request; panics unless it succeeds, and returns the JSON body (null if none).
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("handoff answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {body}");
        body
    }

    /// Creates agent `a1` from `agent` (its `PUT /v1/agents/a1` body), available, and the
    /// queue `support`; returns the token of a new IVR key named `ivr_name`, which is what a
    /// recipe is configured with.
    pub async fn support_queue_with_agent_a1(&self, agent: Value, ivr_name: &str) -> String {
        self.admin(Method::PUT, "/v1/agents/a1", Some(agent)).await;
        self.set_a1_presence("available").await;
        self.admin(Method::PUT, "/v1/queues/support", Some(json!({})))
            .await;
        let key = json!({"role": "ivr", "name": ivr_name});
        token(self.admin(Method::POST, "/v1/keys", Some(key)).await)
    }

    /// A token for agent `a1`'s own API (its desktop).
    pub async fn a1_token(&self) -> String {
        token(self.admin(Method::POST, "/v1/agents/a1/tokens", None).await)
    }

    /// Sets agent `a1`'s presence (`available`, `away`).
    pub async fn set_a1_presence(&self, status: &str) {
        let presence = json!({"status": status});
        self.admin(Method::PUT, "/v1/agents/a1/presence", Some(presence))
            .await;
    }

    /// `GET /v1/interactions/{id}`.
    pub async fn interaction(&self, id: &str) -> Value {
        self.admin(Method::GET, &format!("/v1/interactions/{id}"), None)
            .await
    }

    /// SIGKILL, as the tests always stopped the server.
    pub fn kill(self) {
        self.server.kill();
    }
}

/// The `token` of a created key or agent token.
fn token(created: Value) -> String {
    created["token"].as_str().unwrap().to_string()
}

/// Panics if the test took `limit` or longer since `started`, else says it passed and when.
pub fn passed_within(test: &str, started: std::time::Instant, limit: Duration) {
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
    println!("{test}: passed in {:?}", started.elapsed());
}

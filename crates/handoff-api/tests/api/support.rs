//! `spawn_app()` and helpers: a server on 127.0.0.1:0, an admin token, agents, streams.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handoff_api::{ApiSettings, Running};
use handoff_store::{Durability, KeyRecord, Store, StoreEngine};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    running: Option<Running>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(ApiSettings::default()).await
}

pub async fn spawn_app_with(settings: ApiSettings) -> TestApp {
    spawn_app_on_store(settings, |store| store).await
}

/// As [`spawn_app_with`], on the store `wrap` makes of the real one (to hold or fail commits).
pub async fn spawn_app_on_store(
    settings: ApiSettings,
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let admin = handoff_api::auth::generate_token();
    let app = start_on(dir, admin.clone(), settings, wrap)
        .await
        .expect("start");
    app.running
        .as_ref()
        .unwrap()
        .state
        .engine
        .add_key(KeyRecord {
            id: "key_admin".to_owned(),
            role: "admin".to_owned(),
            name: "test admin".to_owned(),
            agent_id: None,
            token_sha256: handoff_api::auth::hash_token(&admin),
            created_ms: 0,
        })
        .await
        .expect("admin key");
    app
}

/// Opens the store in `dir`, recovers, and serves on 127.0.0.1:0; recovery's error as text.
async fn start_on(
    dir: tempfile::TempDir,
    admin: String,
    settings: ApiSettings,
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> Result<TestApp, String> {
    let store = handoff_store::open(StoreEngine::Sqlite {
        data_dir: dir.path().to_path_buf(),
        durability: Durability::Fsync,
    })
    .await
    .map_err(|error| format!("store opens: {error:#}"))?;
    let store = wrap(store);
    let running = Running::start(store.clone(), settings)
        .await
        .map_err(|error| format!("recovery: {error:#}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = running.router();
    let mut shutdown = running.shutdown_signal();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.fired().await })
            .await
            .unwrap();
    });
    Ok(TestApp {
        base,
        admin,
        http: reqwest::Client::new(),
        store,
        running: Some(running),
        server: Some(server),
        _dir: dir,
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn post(&self, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(token), body)
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }

    /// Creates an agent and returns its token.
    pub async fn agent(&self, id: &str, available: bool) -> String {
        let (status, body) = self
            .put(
                &format!("/v1/agents/{id}"),
                &self.admin,
                json!({"name": format!("Agent {id}"), "address": format!("sip:{id}@pbx.example.com")}),
            )
            .await;
        assert!(
            status == 201 || status == 200,
            "create agent {id}: {status} {body}"
        );
        let (status, body) = self
            .post(&format!("/v1/agents/{id}/tokens"), &self.admin, None)
            .await;
        assert_eq!(status, 201, "agent token: {body}");
        let token = body["token"].as_str().unwrap().to_owned();
        if available {
            self.presence(id, &token, "available").await;
        }
        token
    }

    pub async fn presence(&self, id: &str, token: &str, status: &str) {
        let (code, body) = self
            .put(
                &format!("/v1/agents/{id}/presence"),
                token,
                json!({"status": status}),
            )
            .await;
        assert_eq!(code, 200, "presence: {body}");
    }

    /// A key of `role` (ivr, supervisor, presence, admin); returns its token.
    pub async fn key(&self, role: &str) -> String {
        let (status, body) = self
            .post(
                "/v1/keys",
                &self.admin,
                Some(json!({"role": role, "name": format!("test {role}")})),
            )
            .await;
        assert_eq!(status, 201, "key: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// `POST /v1/interactions` with `Idempotency-Key: key` as `token`: the status and body.
    pub async fn create_with_key(&self, token: &str, key: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/v1/interactions"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn create_interaction(&self, token: &str, body: Value) -> Value {
        let (status, value) = self.post("/v1/interactions", token, Some(body)).await;
        assert_eq!(status, 201, "create interaction: {value}");
        value
    }

    /// Opens an agent's stream; `after` as the query parameter.
    pub async fn stream(&self, agent: &str, token: &str, after: Option<u64>) -> Ws {
        let query = after.map(|a| format!("?after={a}")).unwrap_or_default();
        let url = format!(
            "{}/v1/agents/{agent}/stream{query}",
            self.base.replacen("http://", "ws://", 1)
        );
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
            .await
            .expect("stream connects in time")
            .expect("stream connects");
        ws
    }

    /// The log's head as the server reports it.
    pub async fn head(&self) -> u64 {
        let (_, body) = self
            .send(reqwest::Method::GET, "/healthz", None, None)
            .await;
        body["head_seq"].as_u64().unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(PATIENCE, server).await;
        }
    }
}

/// The next event on a stream, or a panic after `PATIENCE`.
pub async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an event arrives in time")
            .expect("the stream is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("event JSON");
        }
    }
}

/// The next event of `event_type`, skipping others.
pub async fn next_of_type(ws: &mut Ws, event_type: &str) -> Value {
    loop {
        let event = next_event(ws).await;
        if event["type"] == event_type {
            return event;
        }
    }
}

pub async fn ack(ws: &mut Ws, seq: u64) {
    ws.send(Message::Text(json!({"ack": seq}).to_string().into()))
        .await
        .unwrap();
}

impl TestApp {
    /// Sends `body` as raw bytes with the given Content-Type (none when `None`), for bodies that
    /// `send` cannot express: invalid JSON, invalid UTF-8, other media types.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        let response = request.body(body).send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }
}

/// What is wrong with `body` as the contract's error shape
/// `{"error": {"code": "snake_case", "message": "...", "field": "path" | null}}`, if anything.
pub fn error_shape_problem(body: &Value) -> Option<String> {
    let Some(error) = body.get("error").and_then(Value::as_object) else {
        return Some(format!("no \"error\" object in {body}"));
    };
    let code = error.get("code").and_then(Value::as_str).unwrap_or("");
    let snake = !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !snake {
        return Some(format!("error.code is not a snake_case string in {body}"));
    }
    if error
        .get("message")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Some(format!("error.message is not a non-empty string in {body}"));
    }
    match error.get("field") {
        Some(Value::Null) | Some(Value::String(_)) => None,
        _ => Some(format!(
            "error.field is neither a string nor null in {body}"
        )),
    }
}

impl TestApp {
    /// Stops this server and starts a new one on the same data directory (on a new port), as an
    /// operator's restart would. The admin token stays valid; recovery's error comes back as text.
    pub async fn restarted(mut self, settings: ApiSettings) -> Result<TestApp, String> {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(PATIENCE, server).await;
        }
        let TestApp {
            admin, store, _dir, ..
        } = self;
        drop(store);
        start_on(_dir, admin, settings, |store| store).await
    }
}

/// Settings for tests against local receivers: loopback allowed by the egress rules, and
/// retries 50 ms apart.
pub fn integration_settings() -> ApiSettings {
    ApiSettings {
        egress_allow: vec!["127.0.0.1".to_owned()],
        outbox: handoff_api::integrations::outbox::OutboxSettings {
            retry_schedule: vec![Duration::from_millis(50); 6],
            ..Default::default()
        },
        ..ApiSettings::default()
    }
}

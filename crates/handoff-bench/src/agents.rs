//! The simulated agents and the server-side set-up they need.
//!
//! `set_up` creates, over the admin API, an IVR key, `Q` queues (queue `i` requires the skill
//! `q<i>`, offers stay open 600 s, no wrap-up) and the agents, each with a desktop token and the
//! skill of one queue, round-robin. `connect` opens each agent's WebSocket stream and sets it
//! `available` with its own token, as a desktop would. On each `interaction.offered` an agent
//! notes the receipt time (before parsing), accepts, waits the handling time and completes.
//! With `--acks` it also acknowledges every event it receives, as a desktop built on
//! `handoff-client` does, and `confirm_acks` checks afterwards that the server kept them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::open_loop::{seq_of, Tracker};
use super::progress::Bar;

/// Set-up requests and stream connections in flight at once.
const SETUP_CONCURRENCY: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server gets to make the last acks durable: they are not waited for.
const ACKS_WAIT: Duration = Duration::from_secs(5);
/// How long an offer from a bench queue stays open: longer than the wait for the last pops,
/// so a lost pop is never masked by the offer timing out and going to another agent.
pub const QUEUE_OFFER_TIMEOUT_S: u64 = 600;

/// A JSON-over-HTTP helper for set-up and clean-up, where any non-2xx is fatal.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}: no response"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path}: {status}: {}", truncate(&text, 300));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// An error and its sources, e.g. "error sending request: connection refused".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn string_field(value: &Value, field: &str, what: &str) -> anyhow::Result<String> {
    value[field].as_str().map(str::to_owned).with_context(|| {
        format!(
            "{what}: no \"{field}\" in {}",
            truncate(&value.to_string(), 300)
        )
    })
}

/// What the run created on the server.
pub struct Fixture {
    pub run_id: String,
    pub queues: Vec<String>,
    pub agents: Vec<String>,
    /// One desktop token per agent, in the order of `agents`.
    pub agent_tokens: Vec<String>,
    pub ivr_token: String,
    pub ivr_key_id: String,
}

/// The IVR key and the queues: what exists before any agent, for the memory baseline.
pub async fn set_up_queues(api: &Api, admin: &str, queues: usize) -> anyhow::Result<Fixture> {
    // Unique per run, so runs against one long-lived server never collide.
    let run_id = handoff_api::auth::generate_id("")[..8].to_owned();
    let key = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            admin,
            Some(json!({"role": "ivr", "name": format!("handoff bench {run_id}")})),
        )
        .await
        .context("cannot create the IVR key (is the token an admin token?)")?;
    let mut fixture = Fixture {
        ivr_token: string_field(&key, "token", "IVR key")?,
        ivr_key_id: string_field(&key, "id", "IVR key")?,
        queues: Vec::new(),
        agents: Vec::new(),
        agent_tokens: Vec::new(),
        run_id,
    };
    for i in 0..queues {
        let name = format!("bench-{}-q{i}", fixture.run_id);
        api.call(
            reqwest::Method::PUT,
            &format!("/v1/queues/{name}"),
            admin,
            Some(json!({
                "skills": {format!("q{i}"): 1},
                "strategy": "longest_idle",
                "offer_timeout_s": QUEUE_OFFER_TIMEOUT_S,
                "wrap_up_s": 0,
            })),
        )
        .await
        .with_context(|| format!("cannot create the queue {name}"))?;
        fixture.queues.push(name);
    }
    Ok(fixture)
}

/// Creates the agents, each with a desktop token and the skill of queue `i % queues`.
pub async fn set_up_agents(
    api: &Api,
    admin: &str,
    fixture: &mut Fixture,
    agents: usize,
    bar: &Bar,
) -> anyhow::Result<()> {
    let queues = fixture.queues.len().max(1);
    let ids: Vec<String> = (0..agents)
        .map(|i| format!("bench-{}-a{i}", fixture.run_id))
        .collect();
    fixture.agents = ids.clone();
    bar.start("creating agents", agents as u64);
    let results: Vec<anyhow::Result<String>> =
        futures_util::stream::iter(ids.into_iter().enumerate())
            .map(|(i, id)| async move {
                let body = json!({
                    "name": format!("Bench agent {i}"),
                    "address": format!("sip:{id}@bench.invalid"),
                    "skills": {format!("q{}", i % queues): 1},
                });
                api.call(
                    reqwest::Method::PUT,
                    &format!("/v1/agents/{id}"),
                    admin,
                    Some(body),
                )
                .await?;
                let created = api
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1/agents/{id}/tokens"),
                        admin,
                        None,
                    )
                    .await?;
                let token = string_field(&created, "token", "agent token")?;
                bar.inc(1);
                Ok(token)
            })
            // In order, so each token lines up with its agent.
            .buffered(SETUP_CONCURRENCY)
            .collect()
            .await;
    bar.finish();
    for result in results {
        fixture
            .agent_tokens
            .push(result.context("cannot set up the agents")?);
    }
    Ok(())
}

/// Removes what the run created (agents, with their tokens and offers; queues; the IVR key)
/// from a server that is not the bench's own.
pub async fn clean_up(api: &Api, admin: &str, fixture: &Fixture) {
    let failed: usize = futures_util::stream::iter(fixture.agents.iter())
        .map(|id| async move {
            let path = format!("/v1/agents/{id}");
            usize::from(
                api.call(reqwest::Method::DELETE, &path, admin, None)
                    .await
                    .is_err(),
            )
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .fold(0, |sum, failed| async move { sum + failed })
        .await;
    let mut left = Vec::new();
    for queue in &fixture.queues {
        let path = format!("/v1/queues/{queue}");
        if api
            .call(reqwest::Method::DELETE, &path, admin, None)
            .await
            .is_err()
        {
            left.push(queue.clone());
        }
    }
    let path = format!("/v1/keys/{}", fixture.ivr_key_id);
    let key = api.call(reqwest::Method::DELETE, &path, admin, None).await;
    if failed > 0 || !left.is_empty() || key.is_err() {
        eprintln!(
            "[bench] warning: clean-up incomplete: {failed} agents bench-{}-*, queues {left:?} \
             and IVR key {} may be left on the server",
            fixture.run_id, fixture.ivr_key_id
        );
    }
}

/// What every simulated agent shares.
pub struct Desk {
    pub http: reqwest::Client,
    pub base: String,
    pub handle: Duration,
    /// Set when the load starts; an offer before that is an error.
    pub tracker: OnceLock<Arc<Tracker>>,
    /// The test-only switch: the first offer that finds it set is dropped, as if lost.
    pub drop_next_pop: AtomicBool,
    /// Streams that ended before the bench closed them.
    pub closed_early: AtomicUsize,
    /// Whether agents acknowledge every event they receive (`--acks`).
    pub acks: bool,
    /// Test only: agents note acks as sent but do not send them, which `confirm_acks` must
    /// then find.
    pub withhold_acks_for_test: bool,
    /// Per agent, the highest `seq` it acknowledged.
    pub acked: std::sync::Mutex<HashMap<String, u64>>,
    /// Acks the agents sent (with the test switch: noted and withheld).
    pub acks_sent: AtomicUsize,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Opens every agent's stream and sets it available. The returned tasks run the agents until
/// `desk.stop` turns true.
pub async fn connect(
    desk: &Arc<Desk>,
    fixture: &Fixture,
    bar: &Bar,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let ws_base = if let Some(rest) = desk.base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        desk.base.replacen("http://", "ws://", 1)
    };
    bar.start("connecting agents", fixture.agents.len() as u64);
    let opened: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> =
        futures_util::stream::iter(fixture.agents.iter().zip(&fixture.agent_tokens))
            .map(|(agent, token)| {
                let url = format!("{ws_base}/v1/agents/{agent}/stream");
                let desk = desk.clone();
                async move {
                    let mut request = url
                        .as_str()
                        .into_client_request()
                        .with_context(|| format!("bad stream URL {url}"))?;
                    request.headers_mut().insert(
                        "authorization",
                        format!("Bearer {token}")
                            .parse()
                            .context("bad token for a header")?,
                    );
                    let (ws, _) = tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio_tungstenite::connect_async(request),
                    )
                    .await
                    .with_context(|| format!("stream of {agent}: no connection in time"))?
                    .with_context(|| format!("stream of {agent}"))?;
                    // As its desktop would: the agent's own token sets it available.
                    let api = Api {
                        http: desk.http.clone(),
                        base: desk.base.clone(),
                    };
                    api.call(
                        reqwest::Method::PUT,
                        &format!("/v1/agents/{agent}/presence"),
                        token,
                        Some(json!({"status": "available"})),
                    )
                    .await?;
                    bar.inc(1);
                    Ok(tokio::spawn(run_agent(
                        ws,
                        agent.clone(),
                        token.clone(),
                        desk,
                    )))
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
    bar.finish();
    let mut tasks = Vec::with_capacity(opened.len());
    let mut first_error = None;
    for result in opened {
        match result {
            Ok(task) => tasks.push(task),
            Err(error) => first_error = first_error.or(Some(error)),
        }
    }
    if let Some(error) = first_error {
        for task in &tasks {
            task.abort();
        }
        return Err(error.context("cannot connect the agents"));
    }
    Ok(tasks)
}

async fn run_agent<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    agent: String,
    token: String,
    desk: Arc<Desk>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let token = Arc::new(token);
    let mut stop = desk.stop.clone();
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        // Taken before parsing, so the JSON work is not counted as delivery time.
        let at = Instant::now();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                if !*desk.stop.borrow() {
                    desk.closed_early.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Some(Ok(_)) => continue,
        };
        let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if desk.acks {
            if let Some(seq) = event.get("seq").and_then(Value::as_u64) {
                if !desk.withhold_acks_for_test {
                    // A failed send means a broken stream, which the next read reports.
                    let _ = ws.send(Message::text(format!("{{\"ack\":{seq}}}"))).await;
                }
                desk.acks_sent.fetch_add(1, Ordering::Relaxed);
                let mut acked = desk.acked.lock().unwrap_or_else(|e| e.into_inner());
                let highest = acked.entry(agent.clone()).or_default();
                *highest = (*highest).max(seq);
            }
        }
        if event["type"] != "interaction.offered" {
            continue;
        }
        if desk.drop_next_pop.swap(false, Ordering::Relaxed) {
            // The test-only switch: as if the network lost this frame. No accept either.
            continue;
        }
        let Some(tracker) = desk.tracker.get().cloned() else {
            continue;
        };
        if event.pointer("/data/agent").and_then(Value::as_str) != Some(agent.as_str()) {
            // An offer on this agent's stream must be to this agent.
            tracker.error(
                "pop_for_another_agent".to_owned(),
                format!("{agent} got {}", truncate(text.as_str(), 200)),
            );
            continue;
        }
        tracker.pop(seq_of(&event), at);
        let Some(id) = event
            .pointer("/data/interaction/id")
            .and_then(Value::as_str)
        else {
            tracker.error("pop_without_id".to_owned(), truncate(text.as_str(), 200));
            continue;
        };
        tokio::spawn(handle(id.to_owned(), token.clone(), desk.clone(), tracker));
    }
    let _ = ws.close(None).await;
}

/// Accepts, works on the call for the handling time, completes.
async fn handle(id: String, token: Arc<String>, desk: Arc<Desk>, tracker: Arc<Tracker>) {
    let accept = format!("{}/v1/interactions/{id}/accept", desk.base);
    if let Err(error) = post(&desk.http, &accept, &token, None).await {
        tracker.error("accept".to_owned(), error);
        return;
    }
    tokio::time::sleep(desk.handle).await;
    let complete = format!("{}/v1/interactions/{id}/complete", desk.base);
    let body = json!({"disposition": "resolved"});
    match post(&desk.http, &complete, &token, Some(body)).await {
        Ok(()) => tracker.complete(Instant::now()),
        Err(error) => tracker.error("complete".to_owned(), error),
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(), String> {
    let mut request = http.post(url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(format!("{url}: {status}: {}", truncate(&text, 200)))
}

/// With `--acks`: waits until the server's `acked_seq` of every agent has reached the highest
/// `seq` it acknowledged, and returns the agents still behind after `ACKS_WAIT` (acks are
/// durable with the engine's next commit, not answered, so they get a moment).
pub async fn confirm_acks(api: &Api, admin: &str, desk: &Desk) -> anyhow::Result<Vec<String>> {
    let expected: HashMap<String, u64> =
        desk.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let deadline = Instant::now() + ACKS_WAIT;
    loop {
        let listing = api
            .call(reqwest::Method::GET, "/v1/agents", admin, None)
            .await
            .context("listing the agents to check their acks")?;
        let on_server: HashMap<&str, u64> = listing["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|agent| Some((agent["id"].as_str()?, agent["acked_seq"].as_u64()?)))
            .collect();
        let mut behind: Vec<String> = expected
            .iter()
            .filter(|(agent, seq)| on_server.get(agent.as_str()).is_none_or(|kept| kept < seq))
            .map(|(agent, _)| agent.clone())
            .collect();
        if behind.is_empty() || Instant::now() >= deadline {
            behind.sort();
            return Ok(behind);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

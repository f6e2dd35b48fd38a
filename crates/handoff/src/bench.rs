//! `handoff bench`: a load test over loopback. Concurrent IVR workers create interactions for
//! agents whose WebSocket streams time each screen pop; the report gives throughput, POST
//! latency, create-to-pop latency and how the server grouped its commits.
//!
//! Without `--url` the server runs in this process on `127.0.0.1:0` with a temporary data
//! directory, exactly as the API tests start it, so nothing but loopback is ever reached.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use handoff_api::ApiSettings;
use handoff_store::Durability;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::local_server::{LocalOptions, LocalServer};

const MAX_REQUESTS: usize = 1_000_000;
const MAX_CONCURRENCY: usize = 4096;
/// One stream per agent: beyond this the bench measures file descriptors, not handoff.
const MAX_AGENTS: usize = 5000;
/// The contract's largest capacity; an agent must be able to hold every offer it gets, or the
/// rest would queue and never pop.
const AGENT_CAPACITY: usize = 1000;
/// How long to wait for the last screen pops after the last POST answered.
const POP_WAIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Set-up and clean-up requests in flight at once.
const SETUP_CONCURRENCY: usize = 16;

/// Load-test a server over loopback: create interactions and time their screen pops.
#[derive(Args)]
pub struct BenchArgs {
    /// Interactions to create in total (at most 1,000,000).
    #[arg(long, default_value_t = 5000)]
    pub requests: usize,
    /// Workers posting at once (at most 4096).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Agents the interactions go to, round-robin, one stream each. More are added when one
    /// agent would get more than its capacity (1000).
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Durability of the in-process server's store (with --url the server's own setting holds).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
    /// Bench an already running server at this base URL instead of an in-process one.
    #[arg(long)]
    pub url: Option<String>,
    /// Admin token of the --url server (default: HANDOFF_TOKEN, else <data dir>/admin.token).
    #[arg(long, env = "HANDOFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print only the one-line JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    Fsync,
    Os,
}

impl DurabilityArg {
    fn name(self) -> &'static str {
        match self {
            DurabilityArg::Fsync => "fsync",
            DurabilityArg::Os => "os",
        }
    }
}

/// The run's shape once the arguments are checked.
struct Plan {
    requests: usize,
    concurrency: usize,
    agents: usize,
}

fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    if args.requests == 0 || args.requests > MAX_REQUESTS {
        bail!(
            "--requests must be from 1 to {MAX_REQUESTS}, not {}",
            args.requests
        );
    }
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        bail!(
            "--concurrency must be from 1 to {MAX_CONCURRENCY}, not {}",
            args.concurrency
        );
    }
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let agents = args.agents.max(args.requests.div_ceil(AGENT_CAPACITY));
    if agents > MAX_AGENTS {
        bail!("--agents must be at most {MAX_AGENTS}, not {agents}");
    }
    Ok(Plan {
        requests: args.requests,
        // More workers than requests would only idle.
        concurrency: args.concurrency.min(args.requests),
        agents,
    })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    if plan.agents > args.agents {
        eprintln!(
            "[bench] {} agents instead of {}: one agent holds at most {AGENT_CAPACITY} offers",
            plan.agents, args.agents
        );
    }
    let mut server = match &args.url {
        Some(url) => {
            let base = url.trim_end_matches('/').to_owned();
            match is_loopback_url(&base) {
                Some(true) => {}
                Some(false) => eprintln!(
                    "[bench] warning: {base} is not a loopback address; benching it anyway, \
                     as it was named with --url"
                ),
                None => bail!("--url {url} is not an http(s) URL"),
            }
            if args.durability != DurabilityArg::Fsync {
                eprintln!("[bench] --durability is ignored with --url: the server's own holds");
            }
            let admin = crate::cli_admin::resolve_token(args.token.clone())?;
            Server::Remote { base, admin }
        }
        None => start_in_process(args.durability).await?,
    };
    let outcome = bench(&server, &plan).await;
    server.stop().await;
    let report = outcome?;
    if !args.json {
        print!("{}", report.table());
    }
    println!("{}", report.json());
    Ok(())
}

/// The server under test.
enum Server {
    InProcess {
        local: LocalServer,
        durability: DurabilityArg,
    },
    Remote {
        base: String,
        admin: String,
    },
}

impl Server {
    fn base(&self) -> &str {
        match self {
            Server::InProcess { local, .. } => local.base(),
            Server::Remote { base, .. } => base,
        }
    }

    fn admin(&self) -> &str {
        match self {
            Server::InProcess { local, .. } => local.admin_token(),
            Server::Remote { admin, .. } => admin,
        }
    }

    fn describe(&self) -> String {
        match self {
            Server::InProcess { local, durability } => format!(
                "in-process at {}, durability {}",
                local.base(),
                durability.name()
            ),
            Server::Remote { base, .. } => format!("{base}, durability as configured there"),
        }
    }

    async fn stop(&mut self) {
        if let Server::InProcess { local, .. } = self {
            local.stop().await;
            if let Err(error) = local.remove_data() {
                eprintln!("[bench] warning: the temporary data directory was not removed: {error}");
            }
        }
    }
}

/// Starts the API as `handoff-api`'s tests do: a temporary data directory, the real SQLite
/// store, an admin key added through the engine, and axum on 127.0.0.1:0.
async fn start_in_process(durability: DurabilityArg) -> anyhow::Result<Server> {
    let settings = ApiSettings {
        core: handoff_core::Settings {
            // Offers expiring mid-run would add work and events that are not part of the
            // hand-off being measured.
            offer_timeout_s: 3600,
            ..handoff_core::Settings::default()
        },
        ..ApiSettings::default()
    };
    let local = LocalServer::start(LocalOptions {
        listen: "127.0.0.1:0".to_owned(),
        durability: match durability {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Os => Durability::Os,
        },
        settings,
        admin_name: "handoff bench".to_owned(),
        label: "[bench]",
    })
    .await?;
    Ok(Server::InProcess { local, durability })
}

/// `Some(true)` for http(s) URLs on localhost or a loopback address; `None` if not http(s).
fn is_loopback_url(url: &str) -> Option<bool> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    let host = parsed.host_str()?;
    if host.eq_ignore_ascii_case("localhost") {
        return Some(true);
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Some(bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// What the run created on the server, to remove from a server that is not ours.
struct Fixture {
    run_id: String,
    agents: Vec<String>,
    /// One desktop token per agent, in the order of `agents`.
    agent_tokens: Vec<String>,
    ivr_token: String,
    ivr_key_id: String,
}

async fn bench(server: &Server, plan: &Plan) -> anyhow::Result<Report> {
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(plan.concurrency + SETUP_CONCURRENCY);
    if matches!(server, Server::InProcess { .. }) {
        // A proxy from the environment must not carry loopback traffic anywhere else.
        builder = builder.no_proxy();
    }
    let http = builder.build().context("cannot build the HTTP client")?;
    let api = Api {
        http: http.clone(),
        base: server.base().to_owned(),
    };
    let remote = matches!(server, Server::Remote { .. });
    let fixture = set_up(&api, server.admin(), plan, remote).await?;
    let result = measure(&api, server, plan, &fixture).await;
    if remote {
        clean_up(&api, server.admin(), &fixture).await;
    }
    result
}

/// A minimal JSON-over-HTTP helper for set-up and clean-up, where any non-2xx is fatal.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
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

fn string_field(value: &Value, field: &str, what: &str) -> anyhow::Result<String> {
    value[field].as_str().map(str::to_owned).with_context(|| {
        format!(
            "{what}: no \"{field}\" in {}",
            truncate(&value.to_string(), 300)
        )
    })
}

/// Creates the run's IVR key and its agents, each available with a desktop token. On a
/// `remote` server a failed set-up removes what it created.
async fn set_up(api: &Api, admin: &str, plan: &Plan, remote: bool) -> anyhow::Result<Fixture> {
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
    let ivr_token = string_field(&key, "token", "IVR key")?;
    let ivr_key_id = string_field(&key, "id", "IVR key")?;
    let agents: Vec<String> = (0..plan.agents)
        .map(|i| format!("bench-{run_id}-{i}"))
        .collect();

    let done = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start(
        "agents set up",
        plan.agents,
        ProgressCounter::Plain(done.clone()),
    );
    let results: Vec<anyhow::Result<String>> = futures_util::stream::iter(agents.iter().cloned())
        .map(|id| {
            let done = done.clone();
            async move {
                let body = json!({
                    "name": format!("Bench agent {id}"),
                    "address": format!("sip:{id}@bench.invalid"),
                    "capacity": AGENT_CAPACITY,
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
                // As its desktop would: the agent's own token sets it available.
                api.call(
                    reqwest::Method::PUT,
                    &format!("/v1/agents/{id}/presence"),
                    &token,
                    Some(json!({"status": "available"})),
                )
                .await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok(token)
            }
        })
        // In order, so each token lines up with its agent.
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await;
    progress.stop();
    let mut agent_tokens = Vec::with_capacity(results.len());
    let mut failure = None;
    for result in results {
        match result {
            Ok(token) => agent_tokens.push(token),
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    let fixture = Fixture {
        run_id,
        agents,
        agent_tokens,
        ivr_token,
        ivr_key_id,
    };
    if let Some(error) = failure {
        if remote {
            clean_up(api, admin, &fixture).await;
        }
        return Err(error.context("cannot set up the agents"));
    }
    Ok(fixture)
}

/// Removes the run's agents (their tokens and open offers go with them) and its IVR key.
async fn clean_up(api: &Api, admin: &str, fixture: &Fixture) {
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start(
        "agents removed",
        fixture.agents.len(),
        ProgressCounter::Plain(done.clone()),
    );
    let failed: usize = futures_util::stream::iter(fixture.agents.iter())
        .map(|id| {
            let done = done.clone();
            async move {
                let result = api
                    .call(
                        reqwest::Method::DELETE,
                        &format!("/v1/agents/{id}"),
                        admin,
                        None,
                    )
                    .await;
                done.fetch_add(1, Ordering::Relaxed);
                usize::from(result.is_err())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .fold(0, |sum, failed| async move { sum + failed })
        .await;
    progress.stop();
    let key = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{}", fixture.ivr_key_id),
            admin,
            None,
        )
        .await;
    if failed > 0 || key.is_err() {
        eprintln!(
            "[bench] warning: clean-up incomplete: {failed} agents bench-{}-* and IVR key {} \
             may be left on the server",
            fixture.run_id, fixture.ivr_key_id
        );
    }
}

/// Screen pops seen on the agents' streams: receive instant by interaction id.
#[derive(Default)]
struct Pops {
    at: Mutex<HashMap<String, Instant>>,
    count: AtomicUsize,
    /// Streams that ended before the bench closed them.
    closed_early: AtomicUsize,
}

/// Just the fields of an event the bench needs; serde skips the rest, pop payload included.
#[derive(Deserialize)]
struct EventHead {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    subject: Option<String>,
}

async fn open_streams(
    base: &str,
    fixture: &Fixture,
    pops: &Arc<Pops>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.replacen("http://", "ws://", 1)
    };
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start(
        "streams open",
        fixture.agents.len(),
        ProgressCounter::Plain(done.clone()),
    );
    let opened: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> =
        futures_util::stream::iter(fixture.agents.iter().zip(&fixture.agent_tokens))
            .map(|(agent, token)| {
                let url = format!("{ws_base}/v1/agents/{agent}/stream");
                let pops = pops.clone();
                let done = done.clone();
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
                    done.fetch_add(1, Ordering::Relaxed);
                    Ok(tokio::spawn(read_pops(ws, pops)))
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
    progress.stop();
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
        return Err(error.context("cannot open the agent streams"));
    }
    Ok(tasks)
}

async fn read_pops<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, pops: Arc<Pops>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(frame) = ws.next().await {
        // Taken before parsing, so the JSON work is not counted as delivery time.
        let at = Instant::now();
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Ok(event) = serde_json::from_str::<EventHead>(text.as_str()) else {
            continue;
        };
        if event.kind != "interaction.offered" {
            continue;
        }
        if let Some(subject) = event.subject {
            let mut map = pops.at.lock().unwrap_or_else(|p| p.into_inner());
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(subject) {
                slot.insert(at);
                pops.count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    pops.closed_early.fetch_add(1, Ordering::Relaxed);
    let _ = ws.close(None).await;
}

/// One POST /v1/interactions as the worker saw it.
struct Sample {
    sent: Instant,
    latency: Duration,
    /// The HTTP status, 0 when no response came.
    status: u16,
    id: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

struct Load {
    http: reqwest::Client,
    url: String,
    ivr_token: String,
    run_id: String,
    agents: Vec<String>,
    requests: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// First failure seen per kind ("503", "transport"), to show why.
    failures: Mutex<BTreeMap<String, String>>,
}

async fn worker(load: Arc<Load>) -> Vec<Sample> {
    let mut samples = Vec::new();
    loop {
        let i = load.next.fetch_add(1, Ordering::Relaxed);
        if i >= load.requests {
            return samples;
        }
        let agent = &load.agents[i % load.agents.len()];
        let body = json!({
            "caller": format!("+1555{:07}", i % 10_000_000),
            "channel": "voice",
            "context": {"intent": "billing", "account": format!("A-{i}"), "verified": true},
            "target": {"agent": agent},
        });
        let sent = Instant::now();
        let response = load
            .http
            .post(&load.url)
            .bearer_auth(&load.ivr_token)
            .header("idempotency-key", format!("bench-{}-{i}", load.run_id))
            .json(&body)
            .send()
            .await;
        let (status, id, failure) = match response {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(bytes) if status.is_success() => {
                        match serde_json::from_slice::<Created>(&bytes) {
                            Ok(created) => (status.as_u16(), Some(created.id), None),
                            Err(_) => (
                                status.as_u16(),
                                None,
                                Some(format!("{status} without an id")),
                            ),
                        }
                    }
                    Ok(bytes) => (
                        status.as_u16(),
                        None,
                        Some(truncate(&String::from_utf8_lossy(&bytes), 200)),
                    ),
                    Err(error) => (0, None, Some(format!("reading the body: {error}"))),
                }
            }
            Err(error) => (0, None, Some(error.to_string())),
        };
        let latency = sent.elapsed();
        if let Some(failure) = failure {
            let kind = failure_kind(status);
            let mut failures = load.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.entry(kind).or_insert(failure);
        }
        load.done.fetch_add(1, Ordering::Relaxed);
        samples.push(Sample {
            sent,
            latency,
            status,
            id,
        });
    }
}

fn failure_kind(status: u16) -> String {
    if status == 0 {
        "transport".to_owned()
    } else {
        status.to_string()
    }
}

async fn measure(
    api: &Api,
    server: &Server,
    plan: &Plan,
    fixture: &Fixture,
) -> anyhow::Result<Report> {
    let pops = Arc::new(Pops::default());
    let streams = open_streams(&api.base, fixture, &pops).await?;
    let before = scrape(api).await;

    let load = Arc::new(Load {
        http: api.http.clone(),
        url: format!("{}/v1/interactions", api.base),
        ivr_token: fixture.ivr_token.clone(),
        run_id: fixture.run_id.clone(),
        agents: fixture.agents.clone(),
        requests: plan.requests,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        failures: Mutex::new(BTreeMap::new()),
    });
    let progress = Progress::start(
        "requests",
        plan.requests,
        ProgressCounter::Load(load.clone()),
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..plan.concurrency)
        .map(|_| tokio::spawn(worker(load.clone())))
        .collect();
    let mut samples = Vec::with_capacity(plan.requests);
    for worker in workers {
        samples.extend(worker.await.context("a bench worker panicked")?);
    }
    let elapsed = started.elapsed();
    progress.stop();

    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|s| (200..300).contains(&s.status) && s.id.is_some())
        .collect();
    // Every pop belongs to this run (its agents are new), so the count says when all are in.
    let waiting = Progress::start("screen pops", ok.len(), ProgressCounter::Pops(pops.clone()));
    let deadline = Instant::now() + POP_WAIT;
    while pops.count.load(Ordering::Relaxed) < ok.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waiting.stop();
    let after = scrape(api).await;
    for stream in &streams {
        stream.abort();
    }
    let closed_early = pops.closed_early.load(Ordering::Relaxed);

    let pop_at = pops.at.lock().unwrap_or_else(|p| p.into_inner());
    let mut post_ms: Vec<f64> = ok.iter().map(|s| millis(s.latency)).collect();
    let mut pop_ms: Vec<f64> = ok
        .iter()
        .filter_map(|s| {
            let at = pop_at.get(s.id.as_deref()?)?;
            Some(millis(at.saturating_duration_since(s.sent)))
        })
        .collect();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for sample in &samples {
        if !(200..300).contains(&sample.status) || sample.id.is_none() {
            *errors.entry(failure_kind(sample.status)).or_default() += 1;
        }
    }
    let failures = std::mem::take(&mut *load.failures.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Report {
        target: server.describe(),
        durability: match server {
            Server::InProcess { durability, .. } => Some(durability.name()),
            Server::Remote { .. } => None,
        },
        requests: samples.len(),
        concurrency: plan.concurrency,
        agents: plan.agents,
        ok: ok.len(),
        errors,
        failures,
        elapsed,
        post: Summary::of(&mut post_ms),
        pop: Summary::of(&mut pop_ms),
        pops: pop_ms.len(),
        streams_closed_early: closed_early,
        metrics: after.delta(&before),
    })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// What progress counts.
enum ProgressCounter {
    Plain(Arc<AtomicUsize>),
    Load(Arc<Load>),
    Pops(Arc<Pops>),
}

impl ProgressCounter {
    fn get(&self) -> usize {
        match self {
            ProgressCounter::Plain(n) => n.load(Ordering::Relaxed),
            ProgressCounter::Load(load) => load.done.load(Ordering::Relaxed),
            ProgressCounter::Pops(pops) => pops.count.load(Ordering::Relaxed),
        }
    }
}

/// A line on stderr every second while something long runs: done, total and the last
/// second's rate.
struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(what: &'static str, total: usize, counter: ProgressCounter) -> Self {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = counter.get();
            loop {
                tick.tick().await;
                let now = counter.get();
                eprintln!(
                    "[bench] {what}: {now}/{total} ({}/s)",
                    now.saturating_sub(last)
                );
                last = now;
            }
        });
        Progress { task }
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Percentile `p` (0..=100) of `sorted` by the nearest-rank method: the smallest value with
/// at least `p`% of the values at or below it. `None` when there are no values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[derive(Clone, Copy, Default)]
struct Summary {
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl Summary {
    fn of(values: &mut [f64]) -> Summary {
        values.sort_by(f64::total_cmp);
        Summary {
            p50: percentile(values, 50.0),
            p90: percentile(values, 90.0),
            p99: percentile(values, 99.0),
            max: values.last().copied(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "max": round3(self.max),
        })
    }
}

fn round3(value: Option<f64>) -> Option<f64> {
    value.map(|v| (v * 1000.0).round() / 1000.0)
}

/// Sum and count of the two histograms the report reads from `/metrics`.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Metrics {
    group_sum: Option<f64>,
    group_count: Option<f64>,
    commit_sum: Option<f64>,
    commit_count: Option<f64>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        Metrics {
            group_sum: metric_value(text, "handoff_store_group_size_sum"),
            group_count: metric_value(text, "handoff_store_group_size_count"),
            commit_sum: metric_value(text, "handoff_commit_seconds_sum"),
            commit_count: metric_value(text, "handoff_commit_seconds_count"),
        }
    }

    /// What happened between two scrapes: the server may have run long before this bench.
    fn delta(&self, before: &Metrics) -> Metrics {
        // A histogram seen only after the load started had nothing before it.
        let minus = |a: Option<f64>, b: Option<f64>| a.map(|a| a - b.unwrap_or(0.0));
        Metrics {
            group_sum: minus(self.group_sum, before.group_sum),
            group_count: minus(self.group_count, before.group_count),
            commit_sum: minus(self.commit_sum, before.commit_sum),
            commit_count: minus(self.commit_count, before.commit_count),
        }
    }
}

/// Without `/metrics` the report says `n/a` rather than failing the run.
async fn scrape(api: &Api) -> Metrics {
    let response = api.http.get(format!("{}/metrics", api.base)).send().await;
    match response {
        Ok(response) if response.status().is_success() => {
            Metrics::parse(&response.text().await.unwrap_or_default())
        }
        _ => Metrics::default(),
    }
}

/// The value of the series `name` in Prometheus text exposition, summed over its label sets;
/// `None` when no sample has that exact name.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            match end_of_labels(labels) {
                Some(end) => &labels[end + 1..],
                None => continue,
            }
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            // Another series whose name starts with this one, e.g. `_sum` after the base name.
            continue;
        };
        let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) else {
            continue;
        };
        total = Some(total.unwrap_or(0.0) + value);
    }
    total
}

/// Index of the `}` closing a label set, skipping quoted label values (which may hold `}`).
fn end_of_labels(labels: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

struct Report {
    target: String,
    durability: Option<&'static str>,
    requests: usize,
    concurrency: usize,
    agents: usize,
    ok: usize,
    /// Failed requests by kind: status code or "transport".
    errors: BTreeMap<String, usize>,
    /// The first failure of each kind.
    failures: BTreeMap<String, String>,
    elapsed: Duration,
    post: Summary,
    pop: Summary,
    pops: usize,
    streams_closed_early: usize,
    metrics: Metrics,
}

impl Report {
    fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn group_mean(&self) -> Option<f64> {
        ratio(self.metrics.group_sum, self.metrics.group_count)
    }

    fn commit_mean_ms(&self) -> Option<f64> {
        ratio(self.metrics.commit_sum, self.metrics.commit_count).map(|s| s * 1000.0)
    }

    /// Commands the engine put into one store batch: what its group commit buys.
    fn interactions_per_commit(&self) -> Option<f64> {
        ratio(Some(self.ok as f64), self.metrics.commit_count)
    }

    fn json(&self) -> String {
        json!({
            "target": self.target,
            "durability": self.durability,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "agents": self.agents,
            "ok": self.ok,
            "errors": self.error_count(),
            "errors_by_kind": self.errors,
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "throughput_rps": (self.throughput() * 10.0).round() / 10.0,
            "post_latency_ms": self.post.json(),
            "create_to_pop_ms": self.pop.json(),
            "pops_received": self.pops,
            "pops_missing": self.ok - self.pops,
            "streams_closed_early": self.streams_closed_early,
            "engine_commits": self.metrics.commit_count.map(|n| n as u64),
            "commit_mean_ms": round3(self.commit_mean_ms()),
            "interactions_per_commit": round3(self.interactions_per_commit()),
            "store_transactions": self.metrics.group_count.map(|n| n as u64),
            "store_group_size_mean": round3(self.group_mean()),
        })
        .to_string()
    }

    fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
        let num = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
        };
        let _ = writeln!(out, "handoff bench: {}", self.target);
        let _ = writeln!(
            out,
            "  {:<22}{} ({} concurrent, {} agents)",
            "requests", self.requests, self.concurrency, self.agents
        );
        let errors = if self.errors.is_empty() {
            "0".to_owned()
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(kind, n)| format!("{kind} x{n}"))
                .collect();
            format!("{} ({})", self.error_count(), kinds.join(", "))
        };
        let _ = writeln!(out, "  {:<22}{errors}", "errors");
        for (kind, first) in &self.failures {
            let _ = writeln!(out, "  {:<22}first {kind}: {first}", "");
        }
        let _ = writeln!(
            out,
            "  {:<22}{:.3} s",
            "elapsed",
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "  {:<22}{:.1} req/s", "throughput", self.throughput());
        let _ = writeln!(
            out,
            "  {:<22}{:>9}{:>9}{:>9}{:>9}",
            "latency (ms)", "p50", "p90", "p99", "max"
        );
        for (name, s) in [("POST", &self.post), ("create -> pop", &self.pop)] {
            let _ = writeln!(
                out,
                "  {:<22}{:>9}{:>9}{:>9}{:>9}",
                name,
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max)
            );
        }
        let _ = writeln!(
            out,
            "  {:<22}{} of {} 2xx ({} missing after {} s)",
            "screen pops",
            self.pops,
            self.ok,
            self.ok - self.pops,
            POP_WAIT.as_secs()
        );
        if self.streams_closed_early > 0 {
            let _ = writeln!(
                out,
                "  {:<22}{} closed by the server before the end",
                "streams", self.streams_closed_early
            );
        }
        let _ = writeln!(
            out,
            "  {:<22}{}, mean {} ms, {} interactions per commit",
            "engine commits",
            num(self.metrics.commit_count, 0),
            num(self.commit_mean_ms(), 3),
            num(self.interactions_per_commit(), 2),
        );
        let _ = writeln!(
            out,
            "  {:<22}{}, mean group size {} batches per transaction",
            "store transactions",
            num(self.metrics.group_count, 0),
            num(self.group_mean(), 2),
        );
        out
    }
}

fn ratio(sum: Option<f64>, count: Option<f64>) -> Option<f64> {
    match (sum, count) {
        (Some(sum), Some(count)) if count > 0.0 => Some(sum / count),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_of_nothing_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn percentile_uses_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 90.0), Some(90.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        // Between ranks the next one up is taken, never an interpolation.
        let four = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(percentile(&four, 50.0), Some(20.0));
        assert_eq!(percentile(&four, 51.0), Some(30.0));
        assert_eq!(percentile(&four, 99.0), Some(40.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn summary_sorts_before_taking_percentiles() {
        let mut values = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        let s = Summary::of(&mut values);
        assert_eq!(s.p50, Some(3.0));
        assert_eq!(s.max, Some(5.0));
    }

    const EXPOSITION: &str = "\
# TYPE handoff_commit_seconds histogram
handoff_commit_seconds_bucket{le=\"0.001\"} 3
handoff_commit_seconds_bucket{le=\"+Inf\"} 10
handoff_commit_seconds_sum 0.025
handoff_commit_seconds_count 10
# TYPE handoff_store_group_size histogram
handoff_store_group_size_bucket{le=\"1\"} 4
handoff_store_group_size_sum 12
handoff_store_group_size_count 8
handoff_interactions_created_total{kind=\"a } b\",x=\"q\\\"}\"} 2 1700000000000
handoff_interactions_created_total{kind=\"c\"} 3
";

    #[test]
    fn metric_value_reads_exact_series_names() {
        assert_eq!(
            metric_value(EXPOSITION, "handoff_commit_seconds_sum"),
            Some(0.025)
        );
        assert_eq!(
            metric_value(EXPOSITION, "handoff_commit_seconds_count"),
            Some(10.0)
        );
        // A prefix of other series' names is not itself a series here.
        assert_eq!(metric_value(EXPOSITION, "handoff_commit_seconds"), None);
        assert_eq!(metric_value(EXPOSITION, "handoff_missing"), None);
    }

    #[test]
    fn metric_value_sums_label_sets_and_skips_quoted_braces_and_timestamps() {
        assert_eq!(
            metric_value(EXPOSITION, "handoff_interactions_created_total"),
            Some(5.0)
        );
        assert_eq!(
            metric_value(EXPOSITION, "handoff_commit_seconds_bucket"),
            Some(13.0)
        );
    }

    #[test]
    fn metrics_parse_and_delta() {
        let before = Metrics::parse(EXPOSITION);
        assert_eq!(
            before,
            Metrics {
                group_sum: Some(12.0),
                group_count: Some(8.0),
                commit_sum: Some(0.025),
                commit_count: Some(10.0),
            }
        );
        let after = Metrics::parse(
            "handoff_store_group_size_sum 20\nhandoff_store_group_size_count 12\n\
             handoff_commit_seconds_sum 0.125\nhandoff_commit_seconds_count 30\n",
        );
        let delta = after.delta(&before);
        assert_eq!(delta.group_sum, Some(8.0));
        assert_eq!(delta.group_count, Some(4.0));
        assert_eq!(delta.commit_count, Some(20.0));
        assert!((delta.commit_sum.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(Metrics::parse("").delta(&before), Metrics::default());
    }

    #[test]
    fn loopback_urls() {
        assert_eq!(is_loopback_url("http://127.0.0.1:8080"), Some(true));
        assert_eq!(is_loopback_url("http://127.9.9.9"), Some(true));
        assert_eq!(is_loopback_url("http://localhost:8080/"), Some(true));
        assert_eq!(is_loopback_url("http://[::1]:8080"), Some(true));
        assert_eq!(is_loopback_url("https://example.com"), Some(false));
        assert_eq!(is_loopback_url("http://10.0.0.1"), Some(false));
        assert_eq!(is_loopback_url("ftp://127.0.0.1"), None);
        assert_eq!(is_loopback_url("not a url"), None);
    }

    fn args(requests: usize, concurrency: usize, agents: usize) -> BenchArgs {
        BenchArgs {
            requests,
            concurrency,
            agents,
            durability: DurabilityArg::Fsync,
            url: None,
            token: None,
            json: false,
        }
    }

    #[test]
    fn plan_refuses_unbounded_runs_and_adds_agents_for_capacity() {
        assert!(plan(&args(1_000_001, 64, 50)).is_err());
        assert!(plan(&args(0, 64, 50)).is_err());
        assert!(plan(&args(100, 4097, 50)).is_err());
        assert!(plan(&args(100, 0, 50)).is_err());
        assert!(plan(&args(100, 64, 0)).is_err());
        let p = plan(&args(1_000_000, 4096, 50)).unwrap();
        assert_eq!(p.agents, 1000);
        let p = plan(&args(10, 64, 50)).unwrap();
        assert_eq!((p.agents, p.concurrency), (50, 10));
    }
}

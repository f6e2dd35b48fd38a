//! `handoff demo`: a throwaway server with queues, simulated agents and simulated IVR calls,
//! plus two agents and a supervisor left for a person to play in the browser.
//!
//! Everything goes over the public API, as a real deployment would: the simulated desktops use
//! the client library's `ResilientAgentStream` with their own agent tokens, the simulated IVR
//! posts interactions with an `ivr` key, and the terminal narration is read from `/v1/events`,
//! so what it prints is what the durable log holds, the person's own actions included.
//! Randomness is bounded and seeded (`--seed`), one stream per simulated actor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use handoff_api::{ApiSettings, Shutdown};
use handoff_client::protocol::{
    CloudEvent, CompleteRequest, CreateInteractionRequest, CreateKeyRequest, EscalationStep,
    PresenceStatus, PutAgentRequest, PutPresenceRequest, PutQueueRequest, QueueRef, Strategy,
    Target,
};
use handoff_client::{Client, ClientError, ResilientAgentStream, StreamItem};
use handoff_store::Durability;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::local_server::{LocalOptions, LocalServer};
use handoff_client::local::StopSignal;

const MIN_AGENTS: usize = 3;
const MAX_AGENTS: usize = 100;
const MIN_CALL_EVERY_MS: u64 = 50;
const MAX_CALL_EVERY_MS: u64 = 3_600_000;
/// The first agents of the roster are the ones left for a person to play.
const HUMANS: usize = 2;
/// Calls in progress at once; beyond it arrivals are skipped, so a fast `--call-every-ms`
/// with agents that cannot keep up does not grow without bound.
const MAX_LIVE_CALLS: usize = 200;

/// A simulated agent looks at a pop for this long before answering it.
const THINK: (Duration, Duration) = (Duration::from_millis(600), Duration::from_millis(3000));
const REJECT_PERCENT: u64 = 6;
/// How long a caller talks once answered, before the IVR hangs up.
const TALK: (Duration, Duration) = (Duration::from_secs(4), Duration::from_secs(15));
/// From the hang-up to the agent's `complete`.
const WRAP_UP: (Duration, Duration) = (Duration::from_millis(800), Duration::from_millis(3000));
const BREAK_PERCENT: u64 = 8;
const BREAK: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(30));
/// After the server sets a simulated agent away for missed offers, it comes back after this.
const BACK_AFTER_MISSES: Duration = Duration::from_secs(5);
/// Some callers give up quickly, often before anyone answers.
const IMPATIENT_PERCENT: u64 = 12;
const IMPATIENT: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(15));
/// The others wait long enough to see a queue overflow (`max_wait_s` 120).
const PATIENT: (Duration, Duration) = (Duration::from_secs(45), Duration::from_secs(200));
/// The longest long poll the IVR makes while a caller waits.
const LONG_POLL_S: u64 = 20;

/// Narration: lines a second, and the burst allowed before that rate applies.
const LINES_PER_SECOND: f64 = 4.0;
const LINE_BURST: f64 = 6.0;
const STATUS_EVERY: Duration = Duration::from_secs(20);
const EVENT_TYPES: &str = "interaction.*,agent.presence_changed";

/// How long the simulators get to stop before they are cut off.
const STOP_PATIENCE: Duration = Duration::from_secs(5);
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Run a throwaway server with simulated agents and calls, and two agents for you to play.
#[derive(Args)]
pub struct DemoArgs {
    /// Address to serve on (loopback by default; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Agents in all, from 3 to 100: two for you to play, the others simulated.
    #[arg(long, default_value_t = 6)]
    pub agents: usize,
    /// Mean time between simulated IVR calls, in milliseconds (each gap varies by ±50%).
    #[arg(long, default_value_t = 3000)]
    pub call_every_ms: u64,
    /// Seed of the simulation (default: from the clock; printed, to replay a run's choices).
    #[arg(long)]
    pub seed: Option<u64>,
}

struct Plan {
    listen: String,
    agents: usize,
    call_every: Duration,
    seed: u64,
}

fn plan(args: &DemoArgs) -> anyhow::Result<Plan> {
    if !(MIN_AGENTS..=MAX_AGENTS).contains(&args.agents) {
        bail!(
            "--agents must be from {MIN_AGENTS} to {MAX_AGENTS} ({HUMANS} of them are yours), not {}",
            args.agents
        );
    }
    if !(MIN_CALL_EVERY_MS..=MAX_CALL_EVERY_MS).contains(&args.call_every_ms) {
        bail!(
            "--call-every-ms must be from {MIN_CALL_EVERY_MS} to {MAX_CALL_EVERY_MS}, not {}",
            args.call_every_ms
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Small, so it is easy to type back in with --seed.
        nanos % 100_000
    });
    Ok(Plan {
        listen: args.listen.clone(),
        agents: args.agents,
        call_every: Duration::from_millis(args.call_every_ms),
        seed,
    })
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    // Before anything exists on disk: a Ctrl-C from here on is ours to handle, so the data
    // directory is always removed.
    let mut stop = StopSignal::install()?;
    if let Ok(address) = plan.listen.parse::<SocketAddr>() {
        if !address.ip().is_loopback() {
            eprintln!(
                "[demo] note: listening on {address}, not loopback: anyone who can reach it \
                 sees the demo (every API call still needs a token)"
            );
        }
    }
    let mut server = tokio::select! {
        started = LocalServer::start(LocalOptions {
            listen: plan.listen.clone(),
            // Nothing here outlives the process: flushing is left to the OS.
            durability: Durability::Os,
            settings: ApiSettings::default(),
            admin_name: "handoff demo".to_owned(),
            label: "[demo]",
        }) => started?,
        signal = stop.recv() => {
            eprintln!("[demo] {signal} before the server started: nothing to stop");
            return Ok(());
        }
    };

    let (trigger, shutdown) = handoff_api::shutdown_channel();
    let mut tasks = JoinSet::new();
    let outcome = tokio::select! {
        result = start_simulation(&server, &plan, shutdown, &mut tasks) => result.map(|()| None),
        signal = stop.recv() => Ok(Some(signal)),
    };
    let outcome = match outcome {
        Ok(None) => Ok(stop.recv().await),
        Ok(Some(signal)) => Ok(signal),
        Err(error) => Err(error),
    };
    match &outcome {
        Ok(signal) => println!("{signal}: stopping the simulators and the server…"),
        Err(_) => println!("the demo could not start; stopping…"),
    }

    trigger.fire();
    let drained = tokio::time::timeout(STOP_PATIENCE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.shutdown().await;
    }
    server.stop().await;
    let data_dir = server.data_dir().map(|dir| dir.display().to_string());
    server
        .remove_data()
        .context("cannot remove the demo's data directory")?;
    if let Some(dir) = data_dir {
        println!("stopped; {dir} is removed");
    }
    outcome.map(drop)
}

// ----- set-up -------------------------------------------------------------------------------

/// One agent of the demo.
#[derive(Clone)]
struct AgentSpec {
    id: String,
    name: String,
    billing: i64,
    tech: i64,
}

/// id, name, billing level, tech level. The first `HUMANS` are played by a person, so they
/// can take calls from every queue.
const ROSTER: &[(&str, &str, i64, i64)] = &[
    ("alice", "Alice Martin", 6, 5),
    ("bob", "Bob Okafor", 5, 6),
    ("chloe", "Chloé Lefèvre", 8, 2),
    ("dmitri", "Dmitri Volkov", 1, 9),
    ("emeka", "Emeka Nwosu", 4, 5),
    ("fatima", "Fátima Gonçalves", 7, 3),
    ("goran", "Goran Ilić", 2, 2),
    ("hana", "Hana Satō", 5, 7),
    ("ines", "Inês Carvalho", 3, 1),
    ("jonas", "Jonas Åberg", 2, 6),
];

fn roster(count: usize, rng: &mut Rng) -> Vec<AgentSpec> {
    (0..count)
        .map(|i| match ROSTER.get(i) {
            Some((id, name, billing, tech)) => AgentSpec {
                id: (*id).to_owned(),
                name: (*name).to_owned(),
                billing: *billing,
                tech: *tech,
            },
            None => AgentSpec {
                id: format!("agent-{:02}", i + 1),
                name: format!("Agent {}", i + 1),
                billing: 1 + rng.below(9) as i64,
                tech: 1 + rng.below(9) as i64,
            },
        })
        .collect()
}

impl AgentSpec {
    fn skills(&self) -> BTreeMap<String, i64> {
        BTreeMap::from([
            ("billing".to_owned(), self.billing),
            ("tech".to_owned(), self.tech),
        ])
    }
}

/// The demo's queues, overflow targets first so they exist when named.
fn queues() -> Vec<(&'static str, PutQueueRequest)> {
    // Long enough for a person to type notes after the caller hangs up.
    let wrap_up_s = Some(30);
    vec![
        (
            "general",
            PutQueueRequest {
                strategy: Some(Strategy::LongestIdle),
                wrap_up_s,
                ..PutQueueRequest::default()
            },
        ),
        (
            "billing",
            PutQueueRequest {
                skills: BTreeMap::from([("billing".to_owned(), 3)]),
                strategy: Some(Strategy::LongestIdle),
                wrap_up_s,
                max_wait_s: Some(120),
                overflow: Some(QueueRef {
                    queue: "general".to_owned(),
                }),
                ..PutQueueRequest::default()
            },
        ),
        (
            "tech",
            PutQueueRequest {
                skills: BTreeMap::from([("tech".to_owned(), 3)]),
                strategy: Some(Strategy::MostSkilled),
                wrap_up_s,
                max_wait_s: Some(120),
                overflow: Some(QueueRef {
                    queue: "general".to_owned(),
                }),
                steps: vec![EscalationStep {
                    after_s: 30,
                    skills: BTreeMap::from([("tech".to_owned(), 1)]),
                }],
                ..PutQueueRequest::default()
            },
        ),
    ]
}

/// Raw JSON calls for what the client library has no method for (queues, sign-in links, the
/// event feed, the web UI probe).
struct Raw {
    http: reqwest::Client,
    base: String,
    admin: String,
}

impl Raw {
    fn new(base: &str, admin: &str) -> anyhow::Result<Raw> {
        let http = reqwest::Client::builder()
            // Loopback traffic must not go through a proxy named in the environment.
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Raw {
            http,
            base: base.to_owned(),
            admin: admin.to_owned(),
        })
    }

    /// The status and the JSON body (`Null` when there is none), whatever the status.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .timeout(SETUP_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}: no answer"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: HTTP {status}: {value}");
        }
        Ok(value)
    }

    /// Whether the server serves a page at `/` (the web UI is built in).
    async fn has_web_ui(&self) -> bool {
        let response = self
            .http
            .get(format!("{}/", self.base))
            .timeout(SETUP_TIMEOUT)
            .send()
            .await;
        response.is_ok_and(|r| {
            r.status().is_success()
                && r.headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/html"))
        })
    }
}

/// How a person signs in as one principal.
enum SignIn {
    /// A one-time link from `POST /v1/signin-links`.
    Link { url: String, expires_at: String },
    /// This server has no sign-in links: the sign-in page and a token to paste into it.
    Token { page: String, token: String },
}

/// `POST /v1/signin-links` for `body`; `None` when this server does not have the route.
async fn signin_link(raw: &Raw, body: Value) -> anyhow::Result<Option<SignIn>> {
    let (status, value) = raw
        .call(reqwest::Method::POST, "/v1/signin-links", Some(&body))
        .await?;
    match status {
        201 | 200 => {
            let url = value["url"]
                .as_str()
                .with_context(|| format!("a sign-in link without a url: {value}"))?;
            let url = if url.starts_with("http://") || url.starts_with("https://") {
                url.to_owned()
            } else {
                format!("{}{url}", raw.base)
            };
            Ok(Some(SignIn::Link {
                url,
                expires_at: value["expires_at"].as_str().unwrap_or("").to_owned(),
            }))
        }
        404 | 405 => Ok(None),
        _ => bail!("POST /v1/signin-links {body}: HTTP {status}: {value}"),
    }
}

/// The two agents left for a person, with their tokens and ways in.
struct Human {
    agent: AgentSpec,
    token: String,
    signin: SignIn,
}

struct Fixture {
    humans: Vec<Human>,
    simulated: Vec<(AgentSpec, String)>,
    ivr_token: String,
    supervisor: SignIn,
    web_ui: bool,
    /// The log's head once everything is in place: the narration starts after it.
    head_seq: u64,
}

async fn set_up(server: &LocalServer, plan: &Plan, rng: &mut Rng) -> anyhow::Result<Fixture> {
    let base = server.base();
    let raw = Raw::new(base, server.admin_token())?;
    let admin = Client::new(base, server.admin_token())?;
    for (name, queue) in queues() {
        let body = serde_json::to_value(&queue)?;
        raw.expect(
            reqwest::Method::PUT,
            &format!("/v1/queues/{name}"),
            Some(&body),
        )
        .await
        .with_context(|| format!("cannot create the queue {name}"))?;
    }
    let mut humans = Vec::new();
    let mut simulated = Vec::new();
    for (i, agent) in roster(plan.agents, rng).into_iter().enumerate() {
        admin
            .put_agent(
                &agent.id,
                &PutAgentRequest {
                    name: agent.name.clone(),
                    address: Some(format!("sip:{}@demo.invalid", agent.id)),
                    skills: agent.skills(),
                    capacity: None,
                },
            )
            .await
            .with_context(|| format!("cannot create the agent {}", agent.id))?;
        let token = admin
            .create_agent_token(&agent.id)
            .await
            .with_context(|| format!("cannot create a token for {}", agent.id))?
            .token;
        if i < HUMANS {
            let signin = match signin_link(&raw, json!({"agent": agent.id})).await? {
                Some(link) => link,
                None => SignIn::Token {
                    page: format!("{base}/signin"),
                    token: token.clone(),
                },
            };
            humans.push(Human {
                agent,
                token,
                signin,
            });
        } else {
            simulated.push((agent, token));
        }
    }
    let ivr_token = admin
        .create_key(&CreateKeyRequest {
            role: "ivr".to_owned(),
            name: "demo IVR".to_owned(),
        })
        .await
        .context("cannot create the IVR key")?
        .token;
    let supervisor = match signin_link(&raw, json!({"role": "supervisor"})).await? {
        Some(link) => link,
        None => SignIn::Token {
            page: format!("{base}/signin"),
            token: admin
                .create_key(&CreateKeyRequest {
                    role: "supervisor".to_owned(),
                    name: "demo supervisor".to_owned(),
                })
                .await
                .context("cannot create the supervisor key")?
                .token,
        },
    };
    let web_ui = raw.has_web_ui().await;
    let head_seq = admin
        .health()
        .await
        .context("the server is not healthy")?
        .head_seq;
    Ok(Fixture {
        humans,
        simulated,
        ivr_token,
        supervisor,
        web_ui,
        head_seq,
    })
}

fn banner(server: &LocalServer, plan: &Plan, fixture: &Fixture) -> String {
    let mut out = String::new();
    let base = server.base();
    let _ = writeln!(
        out,
        "handoff demo: simulated agents and IVR calls on a throwaway server (seed {})",
        plan.seed
    );
    let _ = writeln!(out);
    let listening = server.address();
    if base.ends_with(&listening.to_string()) {
        let _ = writeln!(out, "  server       {base}");
    } else {
        let _ = writeln!(out, "  server       {base}   (listening on {listening})");
    }
    if let Some(dir) = server.data_dir() {
        let _ = writeln!(out, "  data         {} (removed on exit)", dir.display());
    }
    let _ = writeln!(out, "  admin token  {}", server.admin_token());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  Agents for you to play (the other {} are simulated):",
        fixture.simulated.len()
    );
    let mut fell_back = false;
    for human in &fixture.humans {
        let agent = &human.agent;
        let _ = writeln!(
            out,
            "    {} ({}), billing {}, tech {}",
            agent.id, agent.name, agent.billing, agent.tech
        );
        fell_back |= write_signin(&mut out, &human.signin, Some(&agent.id));
        let _ = writeln!(
            out,
            "      terminal  HANDOFF_URL={base} HANDOFF_TOKEN={} handoff agent --agent {}",
            human.token, agent.id
        );
    }
    let _ = writeln!(out, "  Supervisor:");
    fell_back |= write_signin(&mut out, &fixture.supervisor, None);
    if fell_back {
        let _ = writeln!(
            out,
            "  (this server has no one-time sign-in links: sign in with the id and token shown)"
        );
    }
    if !fixture.web_ui {
        let _ = writeln!(
            out,
            "  (this build serves no web UI at {base}/: use the terminal agent instead)"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  Queues: billing (billing >= 3, longest idle), tech (tech >= 3, most skilled, \
         tech >= 1 after 30 s), general (anyone); billing and tech overflow to general after 120 s."
    );
    let _ = writeln!(
        out,
        "  A call about every {:.1} s. Ctrl-C stops the demo and removes its data.",
        plan.call_every.as_secs_f64()
    );
    out
}

/// Writes the browser line of a sign-in; `true` when it had to fall back to a token.
fn write_signin(out: &mut String, signin: &SignIn, agent: Option<&str>) -> bool {
    match signin {
        SignIn::Link { url, expires_at } => {
            let _ = writeln!(
                out,
                "      browser   {url}   (one-time link, until {expires_at})"
            );
            false
        }
        SignIn::Token { page, token } => {
            let who = agent.map_or_else(String::new, |id| format!("agent id {id}, "));
            let _ = writeln!(out, "      browser   {page}   ({who}token {token})");
            true
        }
    }
}

/// Sets up the server, prints how to use it and starts every simulator on `tasks`.
async fn start_simulation(
    server: &LocalServer,
    plan: &Plan,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(plan.seed);
    let fixture = set_up(server, plan, &mut rng).await?;
    print!("{}", banner(server, plan, &fixture));
    println!();

    let raw = Raw::new(server.base(), server.admin_token())?;
    let humans = fixture.humans.iter().map(|h| h.agent.id.clone()).collect();
    tasks.spawn(narrate(raw, fixture.head_seq, humans, shutdown.clone()));
    for (i, (agent, token)) in fixture.simulated.into_iter().enumerate() {
        let client = Client::new(server.base(), &token)?;
        let simulated = SimulatedAgent {
            client,
            id: agent.id,
            rng: Rng::new(plan.seed).fork(100 + i as u64),
            steps: Vec::new(),
        };
        tasks.spawn(simulated.run(shutdown.clone()));
    }
    let ivr = Client::new(server.base(), &fixture.ivr_token)?;
    tasks.spawn(run_ivr(
        ivr,
        plan.call_every,
        Rng::new(plan.seed).fork(1),
        shutdown,
    ));
    Ok(())
}

// ----- simulated agents ---------------------------------------------------------------------

/// What a simulated agent will do, and when.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Accept(String),
    Reject(String),
    Complete(String),
    Available,
}

struct SimulatedAgent {
    client: Client,
    id: String,
    rng: Rng,
    steps: Vec<(Instant, Step)>,
}

impl SimulatedAgent {
    async fn run(mut self, mut shutdown: Shutdown) {
        let mut stream = ResilientAgentStream::new(self.client.clone(), self.id.clone(), None);
        let mut signed_in = false;
        loop {
            let next = self.steps.iter().map(|(at, _)| *at).min();
            tokio::select! {
                _ = shutdown.fired() => break,
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) =
                        self.steps.drain(..).partition(|(at, _)| *at <= now);
                    self.steps = later;
                    for (_, step) in due {
                        self.act(step).await;
                    }
                }
                item = stream.next() => match item {
                    Ok(StreamItem::Connected { .. }) if !signed_in => {
                        // As a desktop does once its stream is up: no pop can be missed.
                        signed_in = true;
                        self.set_presence(PresenceStatus::Available, None).await;
                    }
                    Ok(StreamItem::Connected { .. }) => {}
                    Ok(StreamItem::Disconnected { error, .. }) => {
                        tracing::debug!(agent = %self.id, %error, "simulated desktop reconnecting");
                    }
                    Ok(StreamItem::Event(event)) => {
                        self.react(&event, Instant::now());
                        let _ = stream.ack(event.seq).await;
                    }
                    Err(error) => {
                        tracing::warn!(agent = %self.id, %error, "simulated desktop stopped");
                        break;
                    }
                },
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
    }

    /// Plans what to do about one event of this agent's stream.
    fn react(&mut self, event: &CloudEvent, now: Instant) {
        let data = &event.data;
        let for_me = data["agent"].as_str() == Some(self.id.as_str());
        let interaction = data["interaction_id"].as_str().unwrap_or(&event.subject);
        match event.event_type.as_str() {
            "interaction.offered" if for_me => {
                let id = data["interaction"]["id"]
                    .as_str()
                    .unwrap_or(&event.subject)
                    .to_owned();
                let step = if self.rng.chance(REJECT_PERCENT) {
                    Step::Reject(id)
                } else {
                    Step::Accept(id)
                };
                self.steps.push((now + self.rng.between(THINK), step));
            }
            "interaction.offer_revoked" | "interaction.abandoned" => {
                self.forget(interaction);
            }
            "interaction.ended" if for_me => {
                let id = interaction.to_owned();
                self.steps
                    .push((now + self.rng.between(WRAP_UP), Step::Complete(id)));
            }
            "interaction.completed" => self.forget(interaction),
            "agent.presence_changed" if for_me => {
                let presence = &data["presence"];
                if presence["status"] == "away" && presence["reason"] == "missed_offers" {
                    self.steps.push((now + BACK_AFTER_MISSES, Step::Available));
                }
            }
            _ => {}
        }
    }

    /// Drops the steps planned for an interaction that is no longer this agent's to act on.
    fn forget(&mut self, interaction: &str) {
        self.steps.retain(|(_, step)| match step {
            Step::Accept(id) | Step::Reject(id) | Step::Complete(id) => id != interaction,
            Step::Available => true,
        });
    }

    async fn act(&mut self, step: Step) {
        match step {
            Step::Accept(id) => {
                let result = self.client.accept(&id).await;
                self.check("accept", result.map(drop));
            }
            Step::Reject(id) => {
                let result = self.client.reject(&id).await;
                self.check("reject", result.map(drop));
            }
            Step::Complete(id) => {
                let request = CompleteRequest {
                    disposition: Some((*self.rng.pick(DISPOSITIONS)).to_owned()),
                    notes: Some((*self.rng.pick(NOTES)).to_owned()),
                };
                let result = self.client.complete(&id, &request).await;
                self.check("complete", result.map(drop));
                if self.rng.chance(BREAK_PERCENT) {
                    let reason = *self.rng.pick(BREAK_REASONS);
                    self.set_presence(PresenceStatus::Away, Some(reason)).await;
                    let back = Instant::now() + self.rng.between(BREAK);
                    self.steps.push((back, Step::Available));
                }
            }
            Step::Available => self.set_presence(PresenceStatus::Available, None).await,
        }
    }

    async fn set_presence(&self, status: PresenceStatus, reason: Option<&str>) {
        let request = PutPresenceRequest {
            status,
            reason: reason.map(str::to_owned),
        };
        let result = self.client.set_presence(&self.id, &request).await;
        self.check("presence", result.map(drop));
    }

    fn check(&self, what: &str, result: Result<(), ClientError>) {
        match result {
            Ok(()) => {}
            // The caller hung up or the offer expired between the pop and the click: what a
            // real desktop sees too, and nothing to report.
            Err(error) if error.status() == Some(409) => {
                tracing::debug!(agent = %self.id, %error, "{what} came too late");
            }
            Err(error) => tracing::warn!(agent = %self.id, %error, "simulated {what} failed"),
        }
    }
}

const DISPOSITIONS: &[&str] = &[
    "resolved",
    "resolved",
    "resolved",
    "follow_up",
    "escalated",
    "callback_scheduled",
];
const NOTES: &[&str] = &[
    "Customer happy with the answer.",
    "Walked through the invoice line by line.",
    "Sent the steps by e-mail; customer will try tonight.",
    "Reset the line remotely; working again.",
    "Customer will call back after checking with the bank.",
    "Opened a ticket for the field team (ETA 48 h).",
];
const BREAK_REASONS: &[&str] = &["break", "coaching", "after_call_work", "lunch"];

// ----- simulated IVR ------------------------------------------------------------------------

const CUSTOMERS: &[&str] = &[
    "Zoë Ångström",
    "José Álvarez",
    "Øyvind Næss",
    "Małgorzata Wójcik",
    "Nguyễn Thị Hà",
    "François Dubois",
    "Ayşe Yılmaz",
    "Björk Guðmundsdóttir",
    "Siobhán Ó Súilleabháin",
    "Kateřina Dvořáková",
    "Jürgen Müller",
    "Renée O'Connor",
    "山田 太郎",
    "Αλέξανδρος Παπαδόπουλος",
    "Дарья Смирнова",
    "Ana Conceição",
];

/// queue, intent, what the caller told the IVR.
const INTENTS: &[(&str, &str, &str)] = &[
    (
        "billing",
        "dispute_charge",
        "Disputes a charge of €49.90 on the last invoice",
    ),
    (
        "billing",
        "payment_method",
        "Wants to change the card on file",
    ),
    ("billing", "refund_status", "Asks where the €120 refund is"),
    (
        "tech",
        "router_offline",
        "Router offline since this morning, light blinking red",
    ),
    (
        "tech",
        "login_failed",
        "Cannot sign in to the app: “password incorrect”",
    ),
    (
        "tech",
        "slow_connection",
        "Connection slow every evening after 20:00",
    ),
    (
        "general",
        "change_address",
        "Moving house, wants to change the address",
    ),
    (
        "general",
        "opening_hours",
        "Asks about the shops' opening hours",
    ),
    (
        "general",
        "agent_request",
        "Pressed 0: wants to speak to someone",
    ),
];
const LANGUAGES: &[&str] = &["en", "fr", "de", "es", "sv", "pt"];
const CALLER_PREFIXES: &[&str] = &["+1415555", "+4420794", "+3361234", "+4915112", "+4670123"];

/// One simulated call: what the IVR posts, and how the caller behaves.
struct CallPlan {
    request: CreateInteractionRequest,
    key: String,
    /// How long the caller waits for an answer before hanging up.
    patience: Duration,
    /// How long the caller talks once answered.
    talk: Duration,
}

impl CallPlan {
    fn random(rng: &mut Rng, run: u64, number: u64) -> CallPlan {
        // Two in five calls for billing, two for tech, one for general.
        let queue = match rng.below(5) {
            0 | 1 => "billing",
            2 | 3 => "tech",
            _ => "general",
        };
        let intents: Vec<_> = INTENTS.iter().filter(|(q, _, _)| *q == queue).collect();
        let (_, intent, summary) = **rng.pick(&intents);
        let vip = rng.chance(5);
        let mut context = json!({
            "customer": rng.pick(CUSTOMERS),
            "account": format!("ACC-{:06}", rng.below(1_000_000)),
            "intent": intent,
            "summary": summary,
            "verified": rng.chance(75),
            "language": rng.pick(LANGUAGES),
            "ivr_path": ["main", queue, intent],
        });
        if vip {
            context["tier"] = json!("gold");
        }
        let call_id = format!("demo-{run:05}-{number:06}");
        let request = CreateInteractionRequest {
            caller: Some(format!(
                "{}{:04}",
                rng.pick(CALLER_PREFIXES),
                rng.below(10_000)
            )),
            dialed: Some("+18005550100".to_owned()),
            channel: Some("voice".to_owned()),
            call_id: Some(call_id.clone()),
            context: context.as_object().cloned(),
            target: Target::Queue(queue.to_owned()),
            fallback: None,
            priority: vip.then_some(5),
            max_wait_s: None,
        };
        let patience = if rng.chance(IMPATIENT_PERCENT) {
            rng.between(IMPATIENT)
        } else {
            rng.between(PATIENT)
        };
        CallPlan {
            request,
            key: call_id,
            patience,
            talk: rng.between(TALK),
        }
    }
}

/// Posts a call every `every` (±50%) until shutdown; each call then lives on its own task.
async fn run_ivr(client: Client, every: Duration, mut rng: Rng, mut shutdown: Shutdown) {
    let run = rng.below(100_000);
    let mut calls = JoinSet::new();
    let mut number = 0;
    loop {
        let pause = every.mul_f64(0.5 + rng.unit());
        tokio::select! {
            _ = shutdown.fired() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        while calls.try_join_next().is_some() {}
        if calls.len() >= MAX_LIVE_CALLS {
            continue;
        }
        number += 1;
        let call = CallPlan::random(&mut rng, run, number);
        calls.spawn(place_call(client.clone(), call));
    }
    // The callers vanish with the demo: nothing to hang up on a server about to stop.
    calls.shutdown().await;
}

/// One caller: waits (long-polling the interaction) until answered or out of patience, talks,
/// hangs up.
async fn place_call(client: Client, call: CallPlan) {
    let created = match client
        .create_interaction(&call.request, Some(&call.key))
        .await
    {
        Ok(created) => created.interaction,
        Err(error) => {
            tracing::warn!(%error, "the simulated IVR could not post a call");
            return;
        }
    };
    let id = created.id;
    let mut state = created.state;
    let give_up_at = Instant::now() + call.patience;
    loop {
        match state.as_str() {
            "queued" | "offered" => {
                let left = give_up_at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    hang_up(&client, &id).await;
                    return;
                }
                let wait_s = left.as_secs().clamp(1, LONG_POLL_S);
                match client.get_interaction_wait(&id, &state, wait_s).await {
                    Ok(view) => state = view.state,
                    Err(error) => {
                        tracing::warn!(%error, "the simulated IVR lost track of a call");
                        return;
                    }
                }
            }
            "accepted" => {
                tokio::time::sleep(call.talk).await;
                hang_up(&client, &id).await;
                return;
            }
            // wrap_up or an end: nothing left for the caller to do.
            _ => return,
        }
    }
}

async fn hang_up(client: &Client, id: &str) {
    match client.hangup(id).await {
        Ok(_) => {}
        // Ended meanwhile (overflowed to its end, say): the hang-up has nothing to end.
        Err(error) if error.status() == Some(409) => {}
        Err(error) => tracing::warn!(%error, "the simulated IVR could not hang up"),
    }
}

// ----- narration ----------------------------------------------------------------------------

/// Follows `/v1/events` and prints what happens, a few lines a second at most.
async fn narrate(raw: Raw, after: u64, humans: HashSet<String>, mut shutdown: Shutdown) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(1024);
    let reader = tokio::spawn(read_events(raw, after, sender));
    let started = Instant::now();
    let mut narrator = Narrator::new(humans);
    let mut limiter = Limiter::new(Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_status = Instant::now();
    let mut status_shown = narrator.status();
    loop {
        tokio::select! {
            _ = shutdown.fired() => break,
            event = receiver.recv() => {
                let Some(event) = event else { break };
                let now = Instant::now();
                let lines = narrator.on_event(&event, now);
                say(&mut limiter, lines, now, started);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                say(&mut limiter, narrator.flush(), now, started);
                if let Some(skipped) = limiter.take_skipped() {
                    println!("{}  … not shown, to keep up: {skipped}", stamp(now - started));
                }
                if now - last_status >= STATUS_EVERY {
                    last_status = now;
                    let status = narrator.status();
                    if status != status_shown {
                        println!("{}  · {status}", stamp(now - started));
                        status_shown = status;
                    }
                }
            }
        }
    }
    reader.abort();
    let now = Instant::now();
    say(&mut limiter, narrator.flush(), now, started);
    if let Some(skipped) = limiter.take_skipped() {
        println!("{}  … not shown: {skipped}", stamp(now - started));
    }
    println!("{}  · in all: {}", stamp(now - started), narrator.status());
}

/// Prints what the limiter allows now and counts the rest.
fn say(limiter: &mut Limiter, lines: Vec<(Kind, String)>, now: Instant, started: Instant) {
    for (kind, line) in lines {
        if limiter.allow(now) {
            println!("{}  {line}", stamp(now - started));
        } else {
            limiter.skip(kind);
        }
    }
}

/// Feeds the events after `after` into `sender`, reconnecting from the last one seen.
async fn read_events(raw: Raw, mut after: u64, sender: tokio::sync::mpsc::Sender<CloudEvent>) {
    loop {
        let url = format!("{}/v1/events?after={after}&types={EVENT_TYPES}", raw.base);
        match raw.http.get(url).bearer_auth(&raw.admin).send().await {
            Ok(mut response) if response.status().is_success() => {
                let mut buffer = SseBuffer::default();
                while let Ok(Some(chunk)) = response.chunk().await {
                    for event in buffer.push(&chunk) {
                        after = after.max(event.seq);
                        if sender.send(event).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "the event feed refused the narrator");
            }
            Err(error) => tracing::debug!(%error, "the event feed is not reachable"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Splits a Server-Sent Events byte stream into events; bytes, so a character cut between
/// two chunks is whole again before decoding.
#[derive(Default)]
struct SseBuffer {
    pending: Vec<u8>,
}

impl SseBuffer {
    fn push(&mut self, bytes: &[u8]) -> Vec<CloudEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|data| data.strip_prefix(' ').unwrap_or(data))
                .collect();
            if data.is_empty() {
                continue;
            }
            match serde_json::from_str::<CloudEvent>(&data.join("\n")) {
                Ok(event) => events.push(event),
                Err(error) => tracing::debug!(%error, "skipping an event the narrator cannot read"),
            }
        }
        events
    }
}

/// What a line is about, for the summary of lines not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Arrived,
    Offered,
    Answered,
    Rejected,
    Completed,
    Abandoned,
    Presence,
    Other,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Arrived => "arrived",
            Kind::Offered => "offered",
            Kind::Answered => "answered",
            Kind::Rejected => "rejected",
            Kind::Completed => "completed",
            Kind::Abandoned => "abandoned",
            Kind::Presence => "presence",
            Kind::Other => "other",
        }
    }
}

/// A token bucket for lines, counting by kind what it held back.
struct Limiter {
    tokens: f64,
    last: Instant,
    skipped: BTreeMap<Kind, u64>,
}

impl Limiter {
    fn new(now: Instant) -> Limiter {
        Limiter {
            tokens: LINE_BURST,
            last: now,
            skipped: BTreeMap::new(),
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * LINES_PER_SECOND;
        self.tokens = (self.tokens + refill).min(LINE_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn skip(&mut self, kind: Kind) {
        *self.skipped.entry(kind).or_default() += 1;
    }

    /// "3 arrived, 1 completed", or `None` when nothing was held back; starts counting anew.
    fn take_skipped(&mut self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let parts: Vec<String> = std::mem::take(&mut self.skipped)
            .into_iter()
            .map(|(kind, n)| format!("{n} {}", kind.label()))
            .collect();
        Some(parts.join(", "))
    }
}

fn stamp(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// A call as the narration knows it.
struct CallSeen {
    number: u64,
    customer: String,
    queue: String,
    summary: String,
    arrived: Instant,
    announced: bool,
    ringing: Option<String>,
    answered: Option<Instant>,
    ended: Option<Instant>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    arrived: u64,
    answered: u64,
    completed: u64,
    abandoned: u64,
    overflowed: u64,
    unserved: u64,
}

/// Turns events into lines. Pure bookkeeping: printing and pacing are the caller's.
struct Narrator {
    humans: HashSet<String>,
    calls: HashMap<String, CallSeen>,
    totals: Totals,
    /// A first `queued` (interaction id, event time) whose line waits to see whether an
    /// offer in the same commit follows.
    pending: Option<(String, String)>,
}

impl Narrator {
    fn new(humans: HashSet<String>) -> Narrator {
        Narrator {
            humans,
            calls: HashMap::new(),
            totals: Totals::default(),
            pending: None,
        }
    }

    fn on_event(&mut self, event: &CloudEvent, now: Instant) -> Vec<(Kind, String)> {
        let data = &event.data;
        let id = data["interaction_id"]
            .as_str()
            .or_else(|| data["interaction"]["id"].as_str())
            .unwrap_or(&event.subject)
            .to_owned();
        let agent = data["agent"].as_str().unwrap_or("?").to_owned();
        let named = who(&self.humans, &agent);
        let mut lines = Vec::new();
        if let Some((pending, time)) = self.pending.take() {
            // A queue that finds an agent at once logs `queued` then `offered` in one commit,
            // with one time: that is one arrival line, not two.
            let same_commit =
                event.event_type == "interaction.offered" && pending == id && time == event.time;
            if !same_commit {
                lines.extend(self.announce_waiting(&pending));
            }
        }
        match event.event_type.as_str() {
            "interaction.created" => {
                let interaction = &data["interaction"];
                let context = &interaction["context"];
                self.totals.arrived += 1;
                self.calls.insert(
                    id,
                    CallSeen {
                        number: self.totals.arrived,
                        customer: context["customer"]
                            .as_str()
                            .or_else(|| interaction["caller"].as_str())
                            .unwrap_or("a caller")
                            .to_owned(),
                        queue: target_name(&interaction["target"]),
                        summary: context["summary"].as_str().unwrap_or("").to_owned(),
                        arrived: now,
                        announced: false,
                        ringing: None,
                        answered: None,
                        ended: None,
                    },
                );
            }
            "agent.presence_changed" => {
                let presence = &data["presence"];
                let status = presence["status"].as_str().unwrap_or("?");
                let line = match presence["reason"].as_str() {
                    Some(reason) => format!("{named} is {status} ({reason})"),
                    None => format!("{named} is {status}"),
                };
                lines.push((Kind::Presence, line));
            }
            kind => {
                let Some(call) = self.calls.get_mut(&id) else {
                    return lines;
                };
                let label = format!("call {:<4}", call.number);
                let waited = |at: Instant| (at - call.arrived).as_secs_f64();
                match kind {
                    "interaction.queued" => {
                        let queue = target_name(&data["target"]);
                        call.ringing = None;
                        if !call.announced {
                            self.pending = Some((id, event.time.clone()));
                        } else if data["requeued"] != true && queue != call.queue {
                            self.totals.overflowed += 1;
                            lines.push((
                                Kind::Other,
                                format!(
                                    "{label} moved from {} to {queue} after {:.0} s",
                                    call.queue,
                                    waited(now)
                                ),
                            ));
                            call.queue = queue;
                        }
                    }
                    "interaction.offered" => {
                        call.ringing = Some(agent);
                        if !call.announced {
                            call.announced = true;
                            lines.push((
                                Kind::Arrived,
                                format!("{label} {} → offered to {named}", arrival(call)),
                            ));
                        } else {
                            lines.push((Kind::Offered, format!("{label} offered to {named}")));
                        }
                    }
                    "interaction.accepted" => {
                        call.ringing = None;
                        call.answered = Some(now);
                        self.totals.answered += 1;
                        lines.push((
                            Kind::Answered,
                            format!("{label} answered by {named} after {:.1} s", waited(now)),
                        ));
                    }
                    "interaction.rejected" => {
                        call.ringing = None;
                        lines.push((Kind::Rejected, format!("{label} rejected by {named}")));
                    }
                    "interaction.offer_revoked" => {
                        call.ringing = None;
                        if data["reason"] == "timed_out" {
                            lines.push((
                                Kind::Other,
                                format!("{label} not picked up by {named} in time"),
                            ));
                        }
                    }
                    "interaction.ended" => call.ended = Some(now),
                    "interaction.completed" => {
                        self.totals.completed += 1;
                        let disposition = data["disposition"].as_str().unwrap_or("no disposition");
                        let talked = match (call.answered, call.ended) {
                            (Some(from), Some(to)) => {
                                format!(", talked {:.0} s", (to - from).as_secs_f64())
                            }
                            _ => String::new(),
                        };
                        let expired = if data["wrap_up_expired"] == true {
                            " (wrap-up time ran out)"
                        } else {
                            ""
                        };
                        lines.push((
                            Kind::Completed,
                            format!("{label} completed by {named}: {disposition}{expired}{talked}"),
                        ));
                        self.calls.remove(&id);
                    }
                    "interaction.abandoned" => {
                        self.totals.abandoned += 1;
                        let place = match &call.ringing {
                            Some(agent) => format!("while ringing {}", who(&self.humans, agent)),
                            None => format!("waiting in {}", call.queue),
                        };
                        lines.push((
                            Kind::Abandoned,
                            format!(
                                "{label} abandoned: the caller hung up after {:.0} s {place}",
                                waited(now)
                            ),
                        ));
                        self.calls.remove(&id);
                    }
                    "interaction.timed_out" | "interaction.unanswered" => {
                        self.totals.unserved += 1;
                        lines.push((
                            Kind::Other,
                            format!("{label} gave up: nobody in {} could take it", call.queue),
                        ));
                        self.calls.remove(&id);
                    }
                    _ => {}
                }
            }
        }
        lines
    }

    /// The arrival line of a call that is waiting, unless an offer already announced it.
    fn announce_waiting(&mut self, id: &str) -> Option<(Kind, String)> {
        let call = self.calls.get_mut(id)?;
        if call.announced {
            return None;
        }
        call.announced = true;
        Some((
            Kind::Arrived,
            format!(
                "call {:<4} {} → waiting in {}",
                call.number,
                arrival(call),
                call.queue
            ),
        ))
    }

    /// What is held back waiting for the next event; for when none came for a while.
    fn flush(&mut self) -> Vec<(Kind, String)> {
        match self.pending.take() {
            Some((id, _)) => self.announce_waiting(&id).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Totals so far and what is going on now; counts of zero are left out.
    fn status(&self) -> String {
        let t = self.totals;
        let mut parts = vec![format!(
            "{} call{}",
            t.arrived,
            if t.arrived == 1 { "" } else { "s" }
        )];
        for (n, what) in [
            (t.answered, "answered"),
            (t.completed, "completed"),
            (t.abandoned, "abandoned"),
            (t.overflowed, "overflowed"),
            (t.unserved, "unserved"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        let waiting = self.calls.values().filter(|c| c.answered.is_none()).count();
        let talking = self
            .calls
            .values()
            .filter(|c| c.answered.is_some() && c.ended.is_none())
            .count();
        format!(
            "{}; now {waiting} waiting, {talking} talking",
            parts.join(", ")
        )
    }
}

/// An agent's name in the narration; the person's own agents are marked.
fn who(humans: &HashSet<String>, agent: &str) -> String {
    if humans.contains(agent) {
        format!("{agent} (you)")
    } else {
        agent.to_owned()
    }
}

fn arrival(call: &CallSeen) -> String {
    if call.summary.is_empty() {
        format!("{} ({})", call.customer, call.queue)
    } else {
        format!("{} ({}: {})", call.customer, call.queue, call.summary)
    }
}

fn target_name(target: &Value) -> String {
    target["queue"]
        .as_str()
        .or_else(|| target["agent"].as_str())
        .unwrap_or("?")
        .to_owned()
}

// ----- randomness ---------------------------------------------------------------------------

/// SplitMix64: small, seedable and good enough to vary a demo; no dependency for it.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent stream for actor `tag`, so one actor's draws do not shift another's.
    fn fork(&self, tag: u64) -> Rng {
        Rng(mix(self.0 ^ mix(tag.wrapping_add(1))))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n` > 0); the modulo bias is far below what a demo could show.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn between(&mut self, (low, high): (Duration, Duration)) -> Duration {
        low + (high.saturating_sub(low)).mul_f64(self.unit())
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(agents: usize, call_every_ms: u64) -> DemoArgs {
        DemoArgs {
            listen: "127.0.0.1:0".to_owned(),
            agents,
            call_every_ms,
            seed: Some(7),
        }
    }

    #[test]
    fn plan_keeps_runs_bounded() {
        assert!(plan(&args(2, 3000)).is_err(), "no agent left to simulate");
        assert!(plan(&args(101, 3000)).is_err());
        assert!(plan(&args(6, 10)).is_err());
        assert!(plan(&args(6, 3_600_001)).is_err());
        let p = plan(&args(6, 200)).unwrap();
        assert_eq!(
            (p.agents, p.call_every, p.seed),
            (6, Duration::from_millis(200), 7)
        );
    }

    #[test]
    fn randomness_is_seeded_and_bounded() {
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..50).map(|_| rng.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let d = rng.between(THINK);
            assert!(d >= THINK.0 && d < THINK.1, "{d:?}");
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
        let (a, b) = (Rng::new(5).fork(1), Rng::new(5).fork(2));
        assert_ne!(a.clone().next_u64(), b.clone().next_u64());
    }

    #[test]
    fn calls_carry_a_realistic_context() {
        let mut rng = Rng::new(3);
        let mut queues = HashSet::new();
        for n in 1..=200 {
            let call = CallPlan::random(&mut rng, 1, n);
            let context = call.request.context.as_ref().unwrap();
            assert!(context["customer"].as_str().is_some());
            assert!(context["account"].as_str().unwrap().starts_with("ACC-"));
            assert!(context["verified"].is_boolean());
            assert!(context["intent"].as_str().is_some());
            let Target::Queue(queue) = &call.request.target else {
                panic!("calls go to queues")
            };
            queues.insert(queue.clone());
            assert!(call.patience >= IMPATIENT.0 && call.patience <= PATIENT.1);
            assert_eq!(call.request.call_id.as_deref(), Some(call.key.as_str()));
        }
        assert_eq!(queues.len(), 3, "{queues:?}");
        assert!(CUSTOMERS.iter().any(|c| !c.is_ascii()));
    }

    #[test]
    fn the_roster_leaves_two_agents_who_can_take_every_queue() {
        let agents = roster(12, &mut Rng::new(1));
        assert_eq!(agents.len(), 12);
        for human in &agents[..HUMANS] {
            assert!(human.billing >= 3 && human.tech >= 3, "{}", human.id);
        }
        assert_eq!(agents[11].id, "agent-12");
        let ids: HashSet<_> = agents.iter().map(|a| a.id.clone()).collect();
        assert_eq!(ids.len(), 12);
    }

    #[test]
    fn the_limiter_holds_lines_back_and_counts_them() {
        let start = Instant::now();
        let mut limiter = Limiter::new(start);
        let shown = (0..20).filter(|_| limiter.allow(start)).count();
        assert_eq!(shown, LINE_BURST as usize);
        limiter.skip(Kind::Arrived);
        limiter.skip(Kind::Arrived);
        limiter.skip(Kind::Completed);
        assert_eq!(
            limiter.take_skipped().as_deref(),
            Some("2 arrived, 1 completed")
        );
        assert_eq!(limiter.take_skipped(), None);
        // A second later the rate allows a few more.
        let later = start + Duration::from_secs(1);
        let shown = (0..20).filter(|_| limiter.allow(later)).count();
        assert_eq!(shown, LINES_PER_SECOND as usize);
    }

    #[test]
    fn server_sent_events_are_split_even_mid_character() {
        let event = json!({
            "specversion": "1.0", "id": "e1", "source": "handoff", "type": "interaction.created",
            "time": "2024-05-01T12:00:00.000Z", "subject": "i1", "seq": 3,
            "data": {"interaction": {"context": {"customer": "Zoë"}}}
        });
        let text = format!(": keep-alive\n\nid: 3\ndata: {event}\n\n");
        let bytes = text.as_bytes();
        let cut = text.find('ë').unwrap() + 1;
        let mut buffer = SseBuffer::default();
        assert!(buffer.push(&bytes[..cut]).is_empty());
        let events = buffer.push(&bytes[cut..]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].seq, 3);
        assert_eq!(events[0].data["interaction"]["context"]["customer"], "Zoë");
    }

    fn event(kind: &str, subject: &str, data: Value) -> CloudEvent {
        event_at(kind, subject, data, 0)
    }

    /// An event committed `second` seconds into the test.
    fn event_at(kind: &str, subject: &str, data: Value, second: u64) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: "e".to_owned(),
            source: "handoff".to_owned(),
            event_type: kind.to_owned(),
            time: format!("2024-05-01T12:00:{second:02}.000Z"),
            subject: subject.to_owned(),
            seq: 1,
            data,
        }
    }

    #[test]
    fn the_narration_follows_a_call() {
        let mut narrator = Narrator::new(HashSet::from(["alice".to_owned()]));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut say = |kind: &str, data: Value, s: u64| {
            narrator
                .on_event(&event_at(kind, "i1", data, s), at(s))
                .into_iter()
                .map(|(_, line)| line)
                .collect::<Vec<_>>()
        };
        let created = json!({"interaction": {"id": "i1", "target": {"queue": "billing"},
            "context": {"customer": "Zoë Ångström", "summary": "Disputes a charge"}}});
        assert!(say("interaction.created", created, 0).is_empty());
        // Held back: an offer in the same commit would make it one line.
        assert!(say(
            "interaction.queued",
            json!({"interaction_id": "i1", "target": {"queue": "billing"}, "requeued": false}),
            0
        )
        .is_empty());
        assert_eq!(
            say(
                "interaction.offered",
                json!({"interaction": {"id": "i1"}, "agent": "alice"}),
                2
            ),
            [
                "call 1    Zoë Ångström (billing: Disputes a charge) → waiting in billing",
                "call 1    offered to alice (you)"
            ]
        );
        assert_eq!(
            say(
                "interaction.accepted",
                json!({"interaction_id": "i1", "agent": "alice"}),
                3
            ),
            ["call 1    answered by alice (you) after 3.0 s"]
        );
        assert!(say(
            "interaction.ended",
            json!({"interaction_id": "i1", "agent": "alice"}),
            10
        )
        .is_empty());
        assert_eq!(
            say(
                "interaction.completed",
                json!({"interaction_id": "i1", "agent": "alice", "disposition": "resolved"}),
                12
            ),
            ["call 1    completed by alice (you): resolved, talked 7 s"]
        );
        assert_eq!(
            narrator.status(),
            "1 call, 1 answered, 1 completed; now 0 waiting, 0 talking"
        );
    }

    #[test]
    fn a_call_queued_and_offered_in_one_commit_is_one_line() {
        let mut narrator = Narrator::new(HashSet::new());
        let now = Instant::now();
        let created = json!({"interaction": {"id": "i3", "target": {"queue": "general"},
            "context": {"customer": "Jürgen Müller"}}});
        narrator.on_event(&event_at("interaction.created", "i3", created, 5), now);
        let queued =
            json!({"interaction_id": "i3", "target": {"queue": "general"}, "requeued": false});
        assert!(narrator
            .on_event(&event_at("interaction.queued", "i3", queued, 5), now)
            .is_empty());
        let offered = json!({"interaction": {"id": "i3"}, "agent": "goran"});
        let lines = narrator.on_event(&event_at("interaction.offered", "i3", offered, 5), now);
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].1,
            "call 1    Jürgen Müller (general) → offered to goran"
        );
        assert!(narrator.flush().is_empty());

        // Queued with nobody free: the line comes with the next tick.
        let created =
            json!({"interaction": {"id": "i4", "target": {"queue": "general"}, "context": {}}});
        narrator.on_event(&event_at("interaction.created", "i4", created, 6), now);
        let queued =
            json!({"interaction_id": "i4", "target": {"queue": "general"}, "requeued": false});
        assert!(narrator
            .on_event(&event_at("interaction.queued", "i4", queued, 6), now)
            .is_empty());
        assert_eq!(
            narrator.flush()[0].1,
            "call 2    a caller (general) → waiting in general"
        );
    }

    #[test]
    fn the_narration_tells_abandoned_calls_and_overflows() {
        let mut narrator = Narrator::new(HashSet::new());
        let t0 = Instant::now();
        let created = json!({"interaction": {"id": "i2", "target": {"queue": "tech"},
            "caller": "+4420794000", "context": {}}});
        narrator.on_event(&event("interaction.created", "i2", created), t0);
        let lines = narrator.on_event(
            &event(
                "interaction.offered",
                "i2",
                json!({"interaction": {"id": "i2"}, "agent": "dmitri"}),
            ),
            t0,
        );
        assert_eq!(
            lines[0].1,
            "call 1    +4420794000 (tech) → offered to dmitri"
        );
        narrator.on_event(
            &event(
                "interaction.offer_revoked",
                "i2",
                json!({"interaction_id": "i2", "agent": "dmitri", "reason": "timed_out"}),
            ),
            t0,
        );
        let lines = narrator.on_event(
            &event(
                "interaction.queued",
                "i2",
                json!({"interaction_id": "i2", "target": {"queue": "general"}, "requeued": false}),
            ),
            t0 + Duration::from_secs(120),
        );
        assert_eq!(
            lines[0].1,
            "call 1    moved from tech to general after 120 s"
        );
        let lines = narrator.on_event(
            &event(
                "interaction.abandoned",
                "i2",
                json!({"interaction_id": "i2"}),
            ),
            t0 + Duration::from_secs(130),
        );
        assert_eq!(
            lines[0],
            (
                Kind::Abandoned,
                "call 1    abandoned: the caller hung up after 130 s waiting in general".to_owned()
            )
        );
        assert!(!narrator.status().contains("completed"));
    }

    #[test]
    fn simulated_agents_plan_and_forget() {
        let mut agent = SimulatedAgent {
            client: Client::new("http://127.0.0.1:9", "t").unwrap(),
            id: "chloe".to_owned(),
            rng: Rng::new(9),
            steps: Vec::new(),
        };
        let now = Instant::now();
        agent.react(
            &event(
                "interaction.offered",
                "i1",
                json!({"interaction": {"id": "i1"}, "agent": "chloe"}),
            ),
            now,
        );
        agent.react(
            &event(
                "interaction.offered",
                "i9",
                json!({"interaction": {"id": "i9"}, "agent": "bob"}),
            ),
            now,
        );
        assert_eq!(agent.steps.len(), 1, "only its own pops");
        let (at, step) = &agent.steps[0];
        assert!(*at >= now + THINK.0 && *at <= now + THINK.1);
        assert!(matches!(step, Step::Accept(id) | Step::Reject(id) if id == "i1"));
        agent.react(
            &event(
                "interaction.abandoned",
                "i1",
                json!({"interaction_id": "i1"}),
            ),
            now,
        );
        assert!(
            agent.steps.is_empty(),
            "the caller hung up before the click"
        );
        agent.react(
            &event(
                "interaction.ended",
                "i1",
                json!({"interaction_id": "i1", "agent": "chloe"}),
            ),
            now,
        );
        assert_eq!(agent.steps[0].1, Step::Complete("i1".to_owned()));
        agent.react(
            &event(
                "agent.presence_changed",
                "chloe",
                json!({"agent": "chloe",
                "presence": {"status": "away", "reason": "missed_offers"}}),
            ),
            now,
        );
        assert_eq!(agent.steps[1], (now + BACK_AFTER_MISSES, Step::Available));
    }
}

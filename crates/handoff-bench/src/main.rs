//! `handoff-bench`, run as `handoff bench`: an open-loop load generator with simulated agents,
//! and baselines.
//!
//! It starts `handoff serve` as a separate process on a throwaway data directory (or targets
//! `--url`), connects `--agents` agents over WebSocket, all available, spread over `--queues`
//! queues, and posts interactions at `--rate` per second for `--duration` seconds on a fixed
//! schedule that a slow server cannot slow down. It times each screen pop from its request's
//! due time to the agent's receipt, counts errors, lost and duplicate pops (any of them makes
//! the bench exit non-zero), and reads the server's memory per idle agent and CPU per
//! interaction from `/proc`. With `--baselines` the same pops at the same rate go through
//! NATS, NATS JetStream and Redis, and the table shows handoff's p99 over each one's.
//!
//! An executable of its own, so that the server links none of what only the bench needs;
//! `handoff bench` runs it (crates/handoff/src/bench.rs), and it runs the `handoff` binary it is
//! given or finds for the server (`server::binary`).
//!
//! - `open_loop.rs`: the scheduler, the HDR histograms and the pop book-keeping, shared by all.
//! - `server.rs`: the server process and `/proc` readings.
//! - `agents.rs`: set-up over the admin API and the simulated agents.
//! - `baselines.rs`: NATS core, JetStream and Redis pub/sub through the same scheduler.
//! - `report.rs`: the table and the JSON object. `progress.rs`: the progress bar.
//! - Ctrl-C and SIGTERM, and the admin token rule, come from `handoff_client::local`, as the CLI has them.

mod agents;
mod baselines;
mod open_loop;
mod progress;
mod report;
mod server;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, ValueEnum};
use serde_json::json;
use tokio::time::Instant;

use agents::{Api, Desk};
use open_loop::{Outcome, Tracker};
use progress::Bar;
use report::{Report, Run, ServerCost, SystemResult};
use server::{ServerOptions, ServerProcess};

/// One process holds about 20,000 sockets here: the agents' streams and the IVR's connections
/// share that with the baselines' subscribers.
const MAX_AGENTS: usize = 10_000;
const MAX_RATE: f64 = 100_000.0;
const MAX_DURATION_S: u64 = 3600;
const MAX_HANDLE_MS: u64 = 600_000;
const MAX_RUNS: usize = 20;
/// After the last request, how long the pops still missing may take before they count as lost.
pub const POP_WAIT: Duration = Duration::from_secs(10);
/// How long the requests still in flight after the last one was due may take.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agents get to close their streams at the end.
const STREAMS_CLOSE: Duration = Duration::from_secs(5);
/// The first request is due this long after the load phase starts, to let the clock settle.
const LEAD_IN: Duration = Duration::from_millis(200);

/// mimalloc, as in the `handoff` binary, whose process the bench ran in before it had a crate of
/// its own: the load generator's own allocation pauses, which show in the latencies it records,
/// stay as they were, so its figures compare with the earlier ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Open-loop benchmark: agents over WebSocket, IVR posts at a fixed rate, pop latency,
/// memory and CPU, and optional NATS, JetStream and Redis baselines.
// The same text as `handoff --help` gives `bench`, so `handoff bench --help` reads as it did.
#[derive(Parser)]
#[command(name = "handoff-bench")]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn main() -> std::process::ExitCode {
    turn_off_transparent_huge_pages();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Takes this process out of transparent huge pages, as `handoff` does for itself
/// (docs/benchmarks.md): the kernel zeroing a 2 MiB page inside an allocation stalls the thread,
/// and a stall of the load generator is recorded as latency. The bench ran so inside `handoff`
/// before it had a crate of its own. A refusal (an old kernel) is not an error.
fn turn_off_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integers only and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The bench's flags, the same as when it was a subcommand of `handoff`.
#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Simulated agents, each with its own WebSocket stream (at most 10,000).
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Queues the agents are spread over, round-robin; each IVR post targets one, in turn.
    #[arg(long, default_value_t = 4)]
    pub queues: usize,
    /// IVR posts per second, on a fixed schedule (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// How long a simulated agent works on an accepted call before completing it, in ms.
    #[arg(long, default_value_t = 200)]
    pub handle_ms: u64,
    /// The bench server's store: `fsync` (a 2xx means on disk) or `os`.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
    /// Bench an already running server at this base URL instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// Admin token of the --url server (default: HANDOFF_TOKEN, else <data dir>/admin.token).
    #[arg(long, env = "HANDOFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --url: the server's process id, to read its memory and CPU from /proc.
    #[arg(long, requires = "url")]
    pub server_pid: Option<u32>,
    /// The `handoff` binary whose `serve` the bench starts, without --url (default:
    /// HANDOFF_SERVER_BIN, which `handoff bench` sets to itself, else `handoff` next to this
    /// executable).
    #[arg(long, env = "HANDOFF_SERVER_BIN", value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Also measure every baseline (NATS core, JetStream, Redis) in the same run.
    #[arg(long)]
    pub baselines: bool,
    /// Measure these baselines only, e.g. `nats,redis`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub baseline: Vec<baselines::Kind>,
    /// The nats-server binary for the NATS baselines (default: HANDOFF_BENCH_NATS_SERVER, else
    /// `nats-server` on the PATH). JetStream with fsync on every message needs 2.10 or later.
    #[arg(long, env = "HANDOFF_BENCH_NATS_SERVER")]
    pub nats_server: Option<std::path::PathBuf>,
    /// Redis for the Redis baseline (default: REDIS_URL; without it that baseline is skipped).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Repeat the whole measurement (a fresh server each time, then the baselines) this many
    /// times; the table gives the median and spread of each p99 ratio.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Print one JSON object on standard output, and no progress bar.
    #[arg(long)]
    pub json: bool,
    /// Test only: one simulated agent silently drops the first pop it receives, which the
    /// bench must then report as lost, and fail.
    #[arg(long, hide = true)]
    pub drop_pop_for_test: bool,
    /// Each simulated agent acknowledges every event it receives (`{"ack": seq}`), as a
    /// desktop built on handoff-client does, and the bench checks afterwards that every
    /// agent's `acked_seq` on the server caught up. Off by default, so that figures compare
    /// with runs made before it existed.
    #[arg(long)]
    pub acks: bool,
    /// Test only: with --acks, agents do not send the acks they note, which the bench must
    /// then report, and fail.
    #[arg(long, hide = true, requires = "acks")]
    pub withhold_acks_for_test: bool,
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
#[derive(Clone, Debug)]
pub struct Plan {
    pub agents: usize,
    pub queues: usize,
    pub rate: f64,
    pub duration_s: u64,
    pub requests: u64,
    pub handle: Duration,
    /// Requests in flight at once before a due one counts as `overload`.
    pub max_in_flight: usize,
}

fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    if args.agents == 0 || args.agents > MAX_AGENTS {
        bail!(
            "--agents must be from 1 to {MAX_AGENTS}, not {}",
            args.agents
        );
    }
    if args.queues == 0 || args.queues > args.agents {
        bail!(
            "--queues must be from 1 to --agents ({}), not {}",
            args.agents,
            args.queues
        );
    }
    if !args.rate.is_finite() || args.rate <= 0.0 || args.rate > MAX_RATE {
        bail!(
            "--rate must be above 0 and at most {MAX_RATE}, not {}",
            args.rate
        );
    }
    if args.duration == 0 || args.duration > MAX_DURATION_S {
        bail!(
            "--duration must be from 1 to {MAX_DURATION_S} seconds, not {}",
            args.duration
        );
    }
    if args.handle_ms > MAX_HANDLE_MS {
        bail!(
            "--handle-ms must be at most {MAX_HANDLE_MS}, not {}",
            args.handle_ms
        );
    }
    if args.runs == 0 || args.runs > MAX_RUNS {
        bail!("--runs must be from 1 to {MAX_RUNS}, not {}", args.runs);
    }
    let requests = (args.rate * args.duration as f64).round() as u64;
    if requests == 0 || requests > open_loop::MAX_REQUESTS {
        bail!(
            "--rate × --duration must make from 1 to {} requests, not {requests}",
            open_loop::MAX_REQUESTS
        );
    }
    Ok(Plan {
        agents: args.agents,
        queues: args.queues,
        rate: args.rate,
        duration_s: args.duration,
        requests,
        handle: Duration::from_millis(args.handle_ms),
        max_in_flight: open_loop::MAX_IN_FLIGHT,
    })
}

/// Where the server under test comes from.
enum Source {
    /// `--url`: a server already running.
    Url(String),
    /// A `handoff` binary to run `serve` from, once per run.
    Binary(PathBuf),
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut plan = plan(&args)?;
    // Looked for before anything starts, so that a missing binary is all the bench says.
    let source = match &args.url {
        Some(url) => Source::Url(url.clone()),
        None => Source::Binary(server::binary(args.server_bin.as_deref())?),
    };
    let kinds = baselines::selected(args.baselines, &args.baseline);
    let bar = Bar::new(args.json);
    let limit = server::raise_open_files_limit();
    plan.max_in_flight = open_loop::in_flight_bound(limit, plan.agents);
    if plan.max_in_flight < open_loop::MAX_IN_FLIGHT {
        bar.note(&format!(
            "open files limited to {}: at most {} requests in flight",
            limit.unwrap_or_default(),
            plan.max_in_flight
        ));
    }
    let capacity = plan.agents as f64 / plan.handle.as_secs_f64().max(0.001);
    if capacity < plan.rate * 1.2 {
        bar.note(&format!(
            "warning: {} agents handling {} ms each complete at most {capacity:.0} calls/s, \
             below --rate {} with a margin: calls will wait in the queues",
            plan.agents,
            plan.handle.as_millis(),
            plan.rate
        ));
    }
    let mut stop =
        handoff_client::local::StopSignal::install().context("cannot handle SIGINT and SIGTERM")?;
    let work = measure(&args, &source, &plan, &kinds, &bar);
    // On Ctrl-C the measurement is dropped: the server process is killed with it
    // (`kill_on_drop`) and its temporary directory removed.
    let report = tokio::select! {
        report = work => report?,
        signal = stop.recv() => bail!("{signal}: the bench stopped before its end"),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    let problems = report.problems();
    if !problems.is_empty() {
        bail!("the bench found problems:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

async fn measure(
    args: &BenchArgs,
    source: &Source,
    plan: &Plan,
    kinds: &[baselines::Kind],
    bar: &Bar,
) -> anyhow::Result<Report> {
    let mut runs = Vec::new();
    for run in 0..args.runs {
        if args.runs > 1 {
            bar.note(&format!("run {} of {}", run + 1, args.runs));
        }
        let (handoff, cost, queues) = measure_handoff(args, source, plan, bar).await?;
        let mut results = Vec::new();
        for kind in kinds {
            let options = baselines::Options {
                nats_server: args.nats_server.clone(),
                redis_url: args.redis_url.clone(),
            };
            results.push(baselines::run(*kind, plan, &queues, &options, bar).await);
        }
        runs.push(Run {
            handoff,
            cost,
            baselines: results,
        });
    }
    let config = json!({
        "agents": plan.agents,
        "queues": plan.queues,
        "rate": plan.rate,
        "duration_s": plan.duration_s,
        "requests": plan.requests,
        "handle_ms": plan.handle.as_millis() as u64,
        "durability": if args.url.is_some() { None } else { Some(args.durability.name()) },
        "target": args.url.as_deref().unwrap_or("a handoff serve process started by the bench"),
        "pop_wait_s": POP_WAIT.as_secs(),
        "max_in_flight": plan.max_in_flight,
        "runs": args.runs,
        "acks": args.acks,
        "baseline_subscriber_connections": plan.agents.min(baselines::SUBSCRIBER_CONNECTIONS),
    });
    Ok(Report { config, runs })
}

/// The server under test: our own process, or one named by `--url`.
enum Target {
    Own(Box<ServerProcess>),
    Remote {
        base: String,
        admin: String,
        pid: Option<u32>,
    },
}

async fn measure_handoff(
    args: &BenchArgs,
    source: &Source,
    plan: &Plan,
    bar: &Bar,
) -> anyhow::Result<(SystemResult, ServerCost, Vec<String>)> {
    let target = match source {
        Source::Url(url) => {
            let base = url.trim_end_matches('/').to_owned();
            match is_loopback_url(&base) {
                Some(true) => {}
                Some(false) => bar.note(&format!(
                    "warning: {base} is not a loopback address; benching it anyway, as it was \
                     named with --url"
                )),
                None => bail!("--url {url} is not an http(s) URL"),
            }
            let admin = handoff_client::local::resolve_admin_token(args.token.clone())?;
            Target::Remote {
                base,
                admin,
                pid: args.server_pid,
            }
        }
        Source::Binary(bin) => {
            bar.note(&format!(
                "starting handoff serve (durability {})",
                args.durability.name()
            ));
            Target::Own(Box::new(
                ServerProcess::start(&ServerOptions {
                    bin,
                    durability: args.durability.name(),
                    offer_timeout_s: agents::QUEUE_OFFER_TIMEOUT_S,
                })
                .await?,
            ))
        }
    };
    let (base, admin, pid) = match &target {
        Target::Own(server) => (
            server.base().to_owned(),
            server.admin_token().to_owned(),
            Some(server.pid()),
        ),
        Target::Remote { base, admin, pid } => (base.clone(), admin.clone(), *pid),
    };
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(4096);
    if matches!(target, Target::Own(_)) {
        // A proxy from the environment must not carry loopback traffic anywhere else.
        builder = builder.no_proxy();
    }
    let http = builder.build().context("cannot build the HTTP client")?;
    let api = Api {
        http: http.clone(),
        base: base.clone(),
    };
    let result = run_handoff(&api, &admin, pid, plan, args, bar).await;
    match target {
        Target::Own(server) => {
            match &result {
                // On standard error even with --json: it explains the failure.
                Err(error) => eprintln!(
                    "[bench] {error:#}; the server's log ends:\n{}",
                    server.log_tail()
                ),
                Ok((handoff, _, _)) if !handoff.problems().is_empty() => {
                    eprintln!("[bench] the server's log ends:\n{}", server.log_tail());
                }
                Ok(_) => {}
            }
            server.stop().await;
        }
        Target::Remote { .. } => {
            if let Ok((_, _, fixture)) = &result {
                agents::clean_up(&api, &admin, fixture).await;
            }
        }
    }
    let (result, cost, fixture) = result?;
    Ok((result, cost, fixture.queues))
}

async fn run_handoff(
    api: &Api,
    admin: &str,
    pid: Option<u32>,
    plan: &Plan,
    args: &BenchArgs,
    bar: &Bar,
) -> anyhow::Result<(SystemResult, ServerCost, agents::Fixture)> {
    let mut fixture = agents::set_up_queues(api, admin, plan.queues).await?;
    let mut cost = ServerCost {
        pid,
        agents: plan.agents,
        ..ServerCost::default()
    };
    if let Some(pid) = pid {
        cost.rss_without_agents_kib = server::steady_rss_kib(pid).await;
    }
    agents::set_up_agents(api, admin, &mut fixture, plan.agents, bar).await?;
    let (stop_agents, stop) = tokio::sync::watch::channel(false);
    let desk = Arc::new(Desk {
        http: api.http.clone(),
        base: api.base.clone(),
        handle: plan.handle,
        tracker: OnceLock::new(),
        drop_next_pop: AtomicBool::new(args.drop_pop_for_test),
        closed_early: AtomicUsize::new(0),
        acks: args.acks,
        withhold_acks_for_test: args.withhold_acks_for_test,
        acked: std::sync::Mutex::new(std::collections::HashMap::new()),
        acks_sent: AtomicUsize::new(0),
        stop,
    });
    let mut streams = agents::connect(&desk, &fixture, bar).await?;
    if let Some(pid) = pid {
        bar.note("agents connected and idle; reading the server's memory");
        let (cpu_before, before) = (server::cpu_seconds(pid), std::time::Instant::now());
        cost.rss_with_agents_kib = server::steady_rss_kib(pid).await;
        let elapsed = before.elapsed().as_secs_f64();
        cost.idle_cpu_s_per_s = cpu_before
            .zip(server::cpu_seconds(pid))
            .map(|(a, b)| (b - a) / elapsed.max(1e-3));
    }

    let tracker = Arc::new(Tracker::new(
        plan.requests,
        plan.rate,
        Instant::now() + LEAD_IN,
        plan.max_in_flight,
    ));
    let _ = desk.tracker.set(tracker.clone());
    let cpu_before = pid.and_then(server::cpu_seconds);
    let send = ivr_sender(api, &fixture);
    let ticker = progress_ticker(tracker.clone(), bar, "handoff");
    let queues = fixture.queues.clone();
    open_loop::drive(
        tracker.clone(),
        move |seq| open_loop::pop_body(seq, &queues[seq as usize % queues.len()]),
        send,
    )
    .await;
    open_loop::wait_in_flight(&tracker, IN_FLIGHT_WAIT).await;
    // The last pops, then the last completions (each a handling time after its pop).
    let deadline = Instant::now() + POP_WAIT + plan.handle;
    while Instant::now() < deadline {
        let popped = tracker.popped.load(Ordering::Relaxed);
        let settled =
            tracker.completed.load(Ordering::Relaxed) + tracker.failed.load(Ordering::Relaxed);
        if tracker.all_popped() && settled >= popped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = pid.and_then(server::cpu_seconds);
    ticker.abort();
    bar.finish();
    if desk.acks {
        let sent = desk.acks_sent.load(Ordering::Relaxed);
        let behind = agents::confirm_acks(api, admin, &desk).await?;
        if behind.is_empty() {
            bar.note(&format!(
                "acks: {sent} sent; every agent's acked_seq on the server caught up"
            ));
        } else {
            tracker.error(
                "ack_not_durable".to_owned(),
                format!(
                    "{} agents' acked_seq on the server stayed behind what they acknowledged, e.g. {}",
                    behind.len(),
                    behind[0]
                ),
            );
        }
    }
    let _ = stop_agents.send(true);
    // Each agent closes its stream; those not done by then are cut off.
    let closing = futures_util::future::join_all(streams.iter_mut());
    if tokio::time::timeout(STREAMS_CLOSE, closing).await.is_err() {
        for stream in &streams {
            stream.abort();
        }
    }
    let closed_early = desk.closed_early.load(Ordering::Relaxed);
    if closed_early > 0 {
        tracker.error(
            "stream_closed".to_owned(),
            format!("{closed_early} agent streams closed by the server during the run"),
        );
    }
    cost.cpu_s = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    cost.interactions = tracker.created.load(Ordering::Relaxed);
    let setup = format!(
        "{} agents over WebSocket, {} queues, durability {}",
        plan.agents,
        plan.queues,
        if args.url.is_some() {
            "as configured"
        } else {
            args.durability.name()
        }
    );
    Ok((
        SystemResult::from_tracker("handoff", setup, &tracker),
        cost,
        fixture,
    ))
}

/// `POST /v1/interactions` with the IVR key and an idempotency key per request.
fn ivr_sender(api: &Api, fixture: &agents::Fixture) -> open_loop::Send {
    let http = api.http.clone();
    let url = format!("{}/v1/interactions", api.base);
    let token = fixture.ivr_token.clone();
    let run_id = fixture.run_id.clone();
    Arc::new(move |seq, body| {
        let request = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("bench-{run_id}-{seq}"))
            .body(body.as_ref().clone());
        Box::pin(async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    // Read to the end, so the connection goes back to the pool.
                    let _ = response.bytes().await;
                    Outcome::Created
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    Outcome::Failed {
                        kind: status.as_u16().to_string(),
                        detail: agents::truncate(&text, 200),
                    }
                }
                Err(error) => Outcome::Failed {
                    kind: "transport".to_owned(),
                    detail: agents::error_chain(&error),
                },
            }
        })
    })
}

/// Keeps the progress bar's position (requests sent) and counters current during a load.
pub fn progress_ticker(
    tracker: Arc<Tracker>,
    bar: &Bar,
    what: &str,
) -> tokio::task::JoinHandle<()> {
    bar.start(what, tracker.requests() as u64);
    let bar = bar.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            bar.set(
                tracker.sent.load(Ordering::Relaxed) as u64,
                format!(
                    "popped {} completed {} errors {}",
                    tracker.popped.load(Ordering::Relaxed),
                    tracker.completed.load(Ordering::Relaxed),
                    tracker.failed.load(Ordering::Relaxed)
                ),
            );
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(line);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn plan_refuses_unbounded_or_empty_runs() {
        assert!(plan(&parse(&["--agents", "0"])).is_err());
        assert!(plan(&parse(&["--agents", "10001"])).is_err());
        assert!(plan(&parse(&["--agents", "5", "--queues", "6"])).is_err());
        assert!(plan(&parse(&["--rate", "0"])).is_err());
        assert!(plan(&parse(&["--rate", "NaN"])).is_err());
        assert!(plan(&parse(&["--duration", "0"])).is_err());
        assert!(plan(&parse(&["--runs", "0"])).is_err());
        assert!(plan(&parse(&["--rate", "100000", "--duration", "3600"])).is_err());
        let p = plan(&parse(&[
            "--agents",
            "20",
            "--queues",
            "2",
            "--rate",
            "50",
            "--duration",
            "2",
        ]))
        .unwrap();
        assert_eq!((p.agents, p.queues, p.requests), (20, 2, 100));
    }

    #[test]
    fn loopback_urls() {
        assert_eq!(is_loopback_url("http://127.0.0.1:8080"), Some(true));
        assert_eq!(is_loopback_url("http://localhost:8080/"), Some(true));
        assert_eq!(is_loopback_url("http://[::1]:8080"), Some(true));
        assert_eq!(is_loopback_url("https://example.com"), Some(false));
        assert_eq!(is_loopback_url("ftp://127.0.0.1"), None);
        assert_eq!(is_loopback_url("not a url"), None);
    }
}

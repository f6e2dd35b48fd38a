//! Baselines: the same pops, at the same rate, through the same open-loop scheduler and the
//! same HDR recording, carried by NATS core, NATS JetStream and Redis pub/sub.
//!
//! Each message is the very request body handoff gets (`open_loop::pop_body`), and the
//! subscriber parses it as JSON to find `bench_seq`, as an agent parses its pop. Message `i`
//! goes to agent `i % N` (round-robin), on the subject or channel `pop.c<k>.a<agent>`, where
//! `k = agent % K` names one of `K = min(N, SUBSCRIBER_CONNECTIONS)` subscriber connections.
//!
//! - `nats`: one publisher connection; every agent subscribes to its own subject. The request
//!   latency is `publish` returning (the message handed to the client, no server answer: core
//!   NATS has none).
//! - `jetstream`: a stream on `pop.>` with file storage on a server whose configuration says
//!   `sync_interval: always` (fsync on every message, nats-server 2.10 or later); the request
//!   latency is the publish's `PubAck`. Each subscriber connection has one push consumer
//!   (acks none, new messages only) filtered on its `pop.c<k>.>`.
//! - `redis`: `PUBLISH` on one multiplexed connection (the request latency is its reply), and
//!   `SUBSCRIBE` per agent channel, at `REDIS_URL`.
//!
//! The bench starts its own `nats-server` on a free loopback port with a configuration of its
//! own in a temporary directory, one for each NATS baseline, and stops it after.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::ValueEnum;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::open_loop::{self, Outcome, Tracker};
use super::progress::Bar;
use super::report::SystemResult;
use super::Plan;

/// The most subscriber connections a baseline opens; agents share them beyond that.
pub const SUBSCRIBER_CONNECTIONS: usize = 100;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A publish that has no answer by then counts as an error.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// The JetStream stream's name.
const STREAM: &str = "HANDOFF_BENCH";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Kind {
    Nats,
    Jetstream,
    Redis,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nats => "nats",
            Kind::Jetstream => "jetstream",
            Kind::Redis => "redis",
        }
    }
}

/// `--baselines` is all of them; `--baseline a,b` names some, each once, in table order.
pub fn selected(all: bool, named: &[Kind]) -> Vec<Kind> {
    if all {
        return vec![Kind::Nats, Kind::Jetstream, Kind::Redis];
    }
    let mut kinds = named.to_vec();
    kinds.sort();
    kinds.dedup();
    kinds
}

pub struct Options {
    pub nats_server: Option<PathBuf>,
    pub redis_url: Option<String>,
}

/// Measures one baseline; a baseline that cannot run is reported skipped, with the reason.
pub async fn run(
    kind: Kind,
    plan: &Plan,
    queues: &[String],
    options: &Options,
    bar: &Bar,
) -> SystemResult {
    bar.note(&format!("baseline {}", kind.name()));
    let measured = match kind {
        Kind::Nats | Kind::Jetstream => run_nats(kind, plan, queues, options, bar).await,
        Kind::Redis => match &options.redis_url {
            Some(url) => run_redis(url, plan, queues, bar).await,
            None => Err(Skip("REDIS_URL is not set".to_owned()).into()),
        },
    };
    match measured {
        Ok(result) => {
            for problem in result.problems() {
                bar.note(&format!("note: {problem}"));
            }
            result
        }
        Err(error) => {
            let reason = match error.downcast_ref::<Skip>() {
                Some(Skip(reason)) => reason.clone(),
                None => format!("failed: {error:#}"),
            };
            bar.note(&format!("baseline {} skipped: {reason}", kind.name()));
            SystemResult::skipped(kind.name(), reason)
        }
    }
}

/// A reason not to run a baseline that is not a failure of it.
#[derive(Debug)]
struct Skip(String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// Agent `agent`'s subject or channel.
fn subject(prefix: &str, agent: usize, connections: usize) -> String {
    format!("{prefix}.c{}.a{agent}", agent % connections)
}

fn connections(plan: &Plan) -> usize {
    plan.agents.min(SUBSCRIBER_CONNECTIONS)
}

/// The run's tracker, its load starting 200 ms from now, and one reader per subscriber stream
/// counting the pops it receives against it.
fn start_tracking(
    plan: &Plan,
    streams: Vec<futures_util::stream::BoxStream<'static, Bytes>>,
) -> (Arc<Tracker>, Vec<tokio::task::JoinHandle<()>>) {
    let tracker = Arc::new(Tracker::new(
        plan.requests,
        plan.rate,
        Instant::now() + Duration::from_millis(200),
        plan.max_in_flight,
    ));
    let readers = streams
        .into_iter()
        .map(|s| read_pops(s, tracker.clone()))
        .collect();
    (tracker, readers)
}

/// Reads messages until the task is aborted: each one timed and counted as a pop.
fn read_pops<S>(messages: S, tracker: Arc<Tracker>) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Stream<Item = Bytes> + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let mut messages = messages;
        while let Some(payload) = messages.next().await {
            let at = Instant::now();
            let seq = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|value| open_loop::seq_of(&value));
            tracker.pop(seq, at);
            tracker.complete(at);
        }
    })
}

/// The open loop over `send`, then the wait for the last pops.
async fn drive_and_wait(
    plan: &Plan,
    queues: &[String],
    tracker: &Arc<Tracker>,
    send: open_loop::Send,
    bar: &Bar,
    name: &str,
) {
    let ticker = super::progress_ticker(tracker.clone(), bar, name);
    let queues = queues.to_vec();
    open_loop::drive(
        tracker.clone(),
        move |seq| open_loop::pop_body(seq, &queues[seq as usize % queues.len().max(1)]),
        send,
    )
    .await;
    open_loop::wait_in_flight(tracker, PUBLISH_TIMEOUT).await;
    let deadline = Instant::now() + super::POP_WAIT;
    while !tracker.all_popped() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ticker.abort();
    bar.finish();
    let _ = plan;
}

async fn run_nats(
    kind: Kind,
    plan: &Plan,
    queues: &[String],
    options: &Options,
    bar: &Bar,
) -> anyhow::Result<SystemResult> {
    let binary = options
        .nats_server
        .clone()
        .unwrap_or_else(|| PathBuf::from("nats-server"));
    let version = nats_server_version(&binary).await?;
    let fsync = version >= (2, 10);
    if kind == Kind::Jetstream && !fsync {
        return Err(Skip(format!(
            "{} is nats-server {}.{}; fsync on every message (sync_interval: always) needs \
             2.10 or later (tools/install-nats-server)",
            binary.display(),
            version.0,
            version.1
        ))
        .into());
    }
    let server = NatsServer::start(&binary, fsync).await?;
    let result = measure_nats(kind, plan, queues, &server.url, bar).await;
    server.stop().await;
    let mut result = result?;
    result.setup = match kind {
        Kind::Jetstream => format!(
            "nats-server {}.{}, file storage, sync_interval always, {} subscriber connections",
            version.0,
            version.1,
            connections(plan)
        ),
        _ => format!(
            "nats-server {}.{}, core publish/subscribe, {} subscriber connections",
            version.0,
            version.1,
            connections(plan)
        ),
    };
    Ok(result)
}

async fn measure_nats(
    kind: Kind,
    plan: &Plan,
    queues: &[String],
    url: &str,
    bar: &Bar,
) -> anyhow::Result<SystemResult> {
    let k = connections(plan);
    let connect = |name: String| async move {
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            // The baseline runs open loop too: the client must buffer, not refuse.
            .subscription_capacity(1 << 20)
            .client_capacity(1 << 16);
        tokio::time::timeout(CONNECT_TIMEOUT, options.connect(url))
            .await
            .context("no NATS connection in time")?
            .context("cannot connect to NATS")
    };
    let publisher = connect("bench-publisher".to_owned()).await?;
    if kind == Kind::Jetstream {
        let js = async_nats::jetstream::new(publisher.clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["pop.>".to_owned()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the JetStream stream: {e}"))?;
    }
    bar.start("subscribing", plan.agents as u64);
    let mut streams: Vec<futures_util::stream::BoxStream<'static, Bytes>> = Vec::new();
    let mut clients = Vec::new();
    for c in 0..k {
        let client = connect(format!("bench-subscriber-{c}")).await?;
        match kind {
            Kind::Jetstream => {
                let js = async_nats::jetstream::new(client.clone());
                let stream = js
                    .get_stream(STREAM)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot find the JetStream stream: {e}"))?;
                let consumer = stream
                    .create_consumer(async_nats::jetstream::consumer::push::Config {
                        deliver_subject: client.new_inbox(),
                        filter_subject: format!("pop.c{c}.>"),
                        ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                        deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot create a push consumer: {e}"))?;
                let messages = consumer
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot read the push consumer: {e}"))?;
                streams.push(
                    messages
                        .filter_map(|m| async move { m.ok().map(|m| m.message.payload.clone()) })
                        .boxed(),
                );
                bar.inc(plan.agents.div_ceil(k) as u64);
            }
            _ => {
                for agent in (c..plan.agents).step_by(k) {
                    let subscriber = client
                        .subscribe(subject("pop", agent, k))
                        .await
                        .context("cannot subscribe")?;
                    streams.push(subscriber.map(|m| m.payload).boxed());
                    bar.inc(1);
                }
            }
        }
        client.flush().await.context("cannot flush a subscriber")?;
        clients.push(client);
    }
    bar.finish();

    let (tracker, readers) = start_tracking(plan, streams);
    let agents = plan.agents;
    let send: open_loop::Send = match kind {
        Kind::Jetstream => {
            let js = async_nats::jetstream::new(publisher.clone());
            Arc::new(move |seq, body| {
                let js = js.clone();
                let subject = subject("pop", seq as usize % agents, k);
                Box::pin(async move {
                    let acked = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                        js.publish(subject, Bytes::copy_from_slice(&body))
                            .await
                            .map_err(|e| e.to_string())?
                            .await
                            .map_err(|e| e.to_string())
                    })
                    .await;
                    match acked {
                        Ok(Ok(_)) => Outcome::Created,
                        Ok(Err(detail)) => Outcome::Failed {
                            kind: "publish".to_owned(),
                            detail,
                        },
                        Err(_) => Outcome::Failed {
                            kind: "timeout".to_owned(),
                            detail: "no PubAck in time".to_owned(),
                        },
                    }
                })
            })
        }
        _ => {
            let client = publisher.clone();
            Arc::new(move |seq, body| {
                let client = client.clone();
                let subject = subject("pop", seq as usize % agents, k);
                Box::pin(async move {
                    match client.publish(subject, Bytes::copy_from_slice(&body)).await {
                        Ok(()) => Outcome::Created,
                        Err(error) => Outcome::Failed {
                            kind: "publish".to_owned(),
                            detail: error.to_string(),
                        },
                    }
                })
            })
        }
    };
    drive_and_wait(plan, queues, &tracker, send, bar, kind.name()).await;
    for reader in readers {
        reader.abort();
    }
    drop(clients);
    Ok(SystemResult::from_tracker(
        kind.name(),
        String::new(),
        &tracker,
    ))
}

async fn run_redis(
    url: &str,
    plan: &Plan,
    queues: &[String],
    bar: &Bar,
) -> anyhow::Result<SystemResult> {
    let client = redis::Client::open(url).with_context(|| format!("bad REDIS_URL {url}"))?;
    let mut publisher =
        tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| Skip(format!("no Redis connection to {url} in time")))?
            .map_err(|e| Skip(format!("cannot connect to Redis at {url}: {e}")))?;
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(&mut publisher)
        .await
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    // Unique per run, so runs sharing one Redis never hear each other.
    let prefix = format!(
        "handoff-bench-{}-{}",
        std::process::id(),
        handoff_api::auth::generate_id("").get(..8).unwrap_or("0")
    );
    let k = connections(plan);
    bar.start("subscribing", plan.agents as u64);
    let mut streams = Vec::new();
    for c in 0..k {
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .context("no Redis connection in time")?
            .context("cannot open a Redis subscriber connection")?;
        for agent in (c..plan.agents).step_by(k) {
            pubsub
                .subscribe(subject(&prefix, agent, k))
                .await
                .context("cannot SUBSCRIBE")?;
            bar.inc(1);
        }
        streams.push(
            pubsub
                .into_on_message()
                .map(|m| Bytes::copy_from_slice(m.get_payload_bytes()))
                .boxed(),
        );
    }
    bar.finish();
    let (tracker, readers) = start_tracking(plan, streams);
    let agents = plan.agents;
    let send: open_loop::Send = Arc::new(move |seq, body| {
        let mut connection = publisher.clone();
        let channel = subject(&prefix, seq as usize % agents, k);
        Box::pin(async move {
            let published = tokio::time::timeout(
                PUBLISH_TIMEOUT,
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(body.as_slice())
                    .query_async::<i64>(&mut connection),
            )
            .await;
            match published {
                Ok(Ok(_)) => Outcome::Created,
                Ok(Err(error)) => Outcome::Failed {
                    kind: "publish".to_owned(),
                    detail: error.to_string(),
                },
                Err(_) => Outcome::Failed {
                    kind: "timeout".to_owned(),
                    detail: "no PUBLISH reply in time".to_owned(),
                },
            }
        })
    });
    drive_and_wait(plan, queues, &tracker, send, bar, "redis").await;
    for reader in readers {
        reader.abort();
    }
    let setup = format!("Redis {version} PUBLISH/SUBSCRIBE, {k} subscriber connections");
    Ok(SystemResult::from_tracker("redis", setup, &tracker))
}

/// `nats-server --version` as (major, minor).
async fn nats_server_version(binary: &Path) -> anyhow::Result<(u32, u32)> {
    let output = tokio::time::timeout(
        START_TIMEOUT,
        tokio::process::Command::new(binary)
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| Skip(format!("{} --version did not answer", binary.display())))?
    .map_err(|e| {
        Skip(format!(
            "cannot run {} ({e}); set HANDOFF_BENCH_NATS_SERVER or run tools/install-nats-server",
            binary.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).with_context(|| format!("cannot read the version in {text:?}"))
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    // The `v` right before a digit: "nats-server" has one of its own.
    let start = text
        .char_indices()
        .zip(text.chars().skip(1))
        .find(|((_, c), next)| *c == 'v' && next.is_ascii_digit())
        .map(|((i, _), _)| i + 1)?;
    let mut parts = text[start..].split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A nats-server of the bench's own, on a free loopback port, in a temporary directory.
struct NatsServer {
    child: tokio::process::Child,
    url: String,
    dir: tempfile::TempDir,
}

impl NatsServer {
    async fn start(binary: &Path, fsync: bool) -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new()
            .prefix("handoff-bench-nats-")
            .tempdir()
            .context("cannot create a temporary directory for nats-server")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("no free loopback port for nats-server")?
            .port();
        let store = dir.path().join("jetstream");
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\n\
             max_payload: 1048576\n\
             jetstream {{\n  store_dir: {store:?}\n{}}}\n",
            if fsync {
                "  sync_interval: always\n"
            } else {
                ""
            }
        );
        let config_path = dir.path().join("nats-server.conf");
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log = std::fs::File::create(dir.path().join("nats-server.log"))
            .context("cannot create the nats-server log")?;
        let child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let server = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(server.dir.path().join("nats-server.log"))
                    .unwrap_or_default();
                bail!("nats-server did not listen on {port}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        if let Err(error) = self.dir.close() {
            eprintln!("[bench] warning: nats-server's directory was not removed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_nats_server() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11)));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version("nats-server: v"), None);
        assert!((2, 9) < (2, 10));
    }

    #[test]
    fn selection_is_ordered_and_unique() {
        assert_eq!(selected(true, &[]).len(), 3);
        assert_eq!(
            selected(false, &[Kind::Redis, Kind::Nats, Kind::Redis]),
            vec![Kind::Nats, Kind::Redis]
        );
        assert!(selected(false, &[]).is_empty());
    }

    #[test]
    fn subjects_spread_agents_over_connections() {
        assert_eq!(subject("pop", 7, 5), "pop.c2.a7");
        assert_eq!(subject("pop", 3, 100), "pop.c3.a3");
    }
}

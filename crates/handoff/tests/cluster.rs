//! Several `handoff serve` nodes, the real binary, on one PostgreSQL and one NATS JetStream:
//! an agent's socket on any node, writes on any node, the writer killed or every node
//! restarted under load. Each test has a cluster of its own (its own PostgreSQL schema, its
//! own JetStream stream) and removes both at the end.
//!
//! Skipped, and saying so, unless HANDOFF_TEST_POSTGRES_URL and HANDOFF_TEST_NATS_URL are set
//! (`.ci/run` sets them when the services are up).

mod serve_process;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use serve_process::ServeProcess;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(30);
/// Short, so that a takeover is quick; renewed every third of it.
const LEASE_TTL: Duration = Duration::from_millis(1500);
const ADMIN: &str = "hk_cluster_test_admin_token_0123456789abcdef";
const AGENTS: [&str; 3] = ["alice", "bob", "carol"];

fn services(test: &str) -> Option<(String, String)> {
    match (
        std::env::var("HANDOFF_TEST_POSTGRES_URL"),
        std::env::var("HANDOFF_TEST_NATS_URL"),
    ) {
        (Ok(pg), Ok(nats)) if !pg.is_empty() && !nats.is_empty() => Some((pg, nats)),
        _ => {
            eprintln!(
                "skipped {test}: HANDOFF_TEST_POSTGRES_URL and HANDOFF_TEST_NATS_URL must both be set"
            );
            None
        }
    }
}

/// A cluster of nodes, each a `handoff serve` process, numbered from 0.
struct Cluster {
    name: String,
    schema: String,
    postgres: String,
    nats: String,
    root: tempfile::TempDir,
    nodes: Vec<Option<ServeProcess>>,
    http: reqwest::Client,
}

impl Cluster {
    fn new(postgres: String, nats: String, size: usize) -> Cluster {
        // The tests of this binary start their clusters at the same moment: the clock alone
        // gave two of them one schema, and the first to finish dropped it under the other.
        static NEXT_CLUSTER: std::sync::atomic::AtomicUsize =
            std::sync::atomic::AtomicUsize::new(0);
        let unique = format!(
            "{}_{}_{}",
            std::process::id(),
            NEXT_CLUSTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
                % 1_000_000_000
        );
        let mut cluster = Cluster {
            name: format!("test-{unique}"),
            schema: format!("handoff_cluster_{unique}"),
            postgres,
            nats,
            root: tempfile::tempdir().unwrap(),
            nodes: (0..size).map(|_| None).collect(),
            http: reqwest::Client::new(),
        };
        for node in 0..size {
            cluster.start(node);
        }
        cluster
    }

    fn start(&mut self, node: usize) {
        let ttl = LEASE_TTL.as_millis().to_string();
        let node_id = format!("node{node}");
        let process = ServeProcess::start(
            &self.root.path().join(&node_id),
            ADMIN,
            &[
                ("HANDOFF_STORE", self.postgres.as_str()),
                ("HANDOFF_STORE_SCHEMA", self.schema.as_str()),
                ("HANDOFF_BUS", self.nats.as_str()),
                ("HANDOFF_CLUSTER", self.name.as_str()),
                ("HANDOFF_NODE_ID", node_id.as_str()),
                ("HANDOFF_LEASE_TTL_MS", ttl.as_str()),
                // Nothing may expire on its own while a test runs: what it checks is delivery.
                ("HANDOFF_OFFER_TIMEOUT_S", "3600"),
                ("HANDOFF_PRESENCE_GRACE_S", "3600"),
            ],
        );
        self.nodes[node] = Some(process);
    }

    fn base(&self, node: usize) -> String {
        self.nodes[node]
            .as_ref()
            .expect("the node runs")
            .base
            .clone()
    }

    /// The role a node gives in `/healthz`, None while it does not answer 200.
    async fn role(&self, node: usize) -> Option<String> {
        let process = self.nodes[node].as_ref()?;
        let response = self
            .http
            .get(format!("{}/healthz", process.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let health: Value = response.json().await.ok()?;
        health["role"].as_str().map(str::to_owned)
    }

    /// Waits until every running node answers and exactly one is the writer; returns it.
    async fn settled_writer(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut writers = Vec::new();
            let mut answering = 0;
            for node in 0..self.nodes.len() {
                if self.nodes[node].is_none() {
                    continue;
                }
                match self.role(node).await.as_deref() {
                    Some("writer") => {
                        answering += 1;
                        writers.push(node);
                    }
                    Some(_) => answering += 1,
                    None => {}
                }
            }
            let running = self.nodes.iter().filter(|n| n.is_some()).count();
            if answering == running && writers.len() == 1 {
                return writers[0];
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never settled on one writer: writers {writers:?}, {answering} of {running} answering"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Agents with room for every call, available, each with a token; and an IVR key. Made
    /// through `node`, whichever role it has.
    async fn set_up(&self, node: usize) -> (HashMap<&'static str, String>, String) {
        let base = self.base(node);
        let mut tokens = HashMap::new();
        for agent in AGENTS {
            let put = self
                .http
                .put(format!("{base}/v1/agents/{agent}"))
                .bearer_auth(ADMIN)
                .json(&json!({"name": agent, "capacity": 1000}))
                .send()
                .await
                .unwrap();
            assert!(put.status().is_success(), "put agent: {}", put.status());
            let token: Value = self
                .http
                .post(format!("{base}/v1/agents/{agent}/tokens"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let token = token["token"].as_str().expect("a token").to_owned();
            let presence = self
                .http
                .put(format!("{base}/v1/agents/{agent}/presence"))
                .bearer_auth(&token)
                .json(&json!({"status": "available"}))
                .send()
                .await
                .unwrap();
            assert_eq!(presence.status().as_u16(), 200, "presence of {agent}");
            tokens.insert(agent, token);
        }
        let ivr: Value = self
            .http
            .post(format!("{base}/v1/keys"))
            .bearer_auth(ADMIN)
            .json(&json!({"role": "ivr", "name": "cluster test ivr"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            tokens,
            ivr["token"].as_str().expect("an ivr token").to_owned(),
        )
    }

    /// Removes the cluster's schema and stream.
    async fn remove(mut self) {
        for node in self.nodes.iter_mut() {
            node.take();
        }
        if let Ok((client, connection)) =
            tokio_postgres::connect(&self.postgres, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                .await;
        }
        if let Ok(client) = async_nats::connect(&self.nats).await {
            let stream = format!("HANDOFF_{}", self.name.replace('-', "_").to_uppercase());
            let _ = async_nats::jetstream::new(client)
                .delete_stream(&stream)
                .await;
        }
    }
}

/// Creates an interaction for `agent` through `base`; its id when acknowledged (2xx).
async fn create(
    http: &reqwest::Client,
    base: &str,
    ivr: &str,
    key: &str,
    agent: &str,
) -> Option<String> {
    let response = http
        .post(format!("{base}/v1/interactions"))
        .bearer_auth(ivr)
        .header("Idempotency-Key", key)
        .timeout(Duration::from_secs(10))
        .json(&json!({
            "caller": "+15550100",
            "call_id": key,
            "context": {"key": key, "name": "Zoë"},
            "target": {"agent": agent},
        }))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let view: Value = response.json().await.ok()?;
    view["id"].as_str().map(str::to_owned)
}

/// What one agent's desktop saw, in the order it saw it, across its reconnections.
#[derive(Default)]
struct Desktop {
    events: Vec<Value>,
    connections: usize,
}

type Desktops = Arc<Mutex<HashMap<&'static str, Desktop>>>;

/// An agent's desktop: connects to the nodes in `order` (the first that answers), resumes
/// after the last `seq` it saw, acks each event, and on a lost connection moves on to the next
/// node, until `stop`.
fn desktop(
    agent: &'static str,
    token: String,
    bases: Arc<Mutex<Vec<Option<String>>>>,
    order: Vec<usize>,
    desktops: Desktops,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut turn = 0;
        let mut last_seq = 0u64;
        loop {
            if *stop.borrow() {
                return;
            }
            let node = order[turn % order.len()];
            turn += 1;
            let base = bases.lock().unwrap()[node].clone();
            let Some(base) = base else { continue };
            let url = format!(
                "{}/v1/agents/{agent}/stream?after={last_seq}",
                base.replacen("http", "ws", 1)
            );
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let connected = tokio::select! {
                connected = tokio_tungstenite::connect_async(request) => connected,
                _ = stop.changed() => return,
            };
            let Ok((mut socket, _)) = connected else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            desktops
                .lock()
                .unwrap()
                .entry(agent)
                .or_default()
                .connections += 1;
            loop {
                let message = tokio::select! {
                    message = socket.next() => message,
                    _ = stop.changed() => return,
                };
                let Some(Ok(message)) = message else { break };
                if let Message::Text(text) = message {
                    let event: Value = serde_json::from_str(text.as_str()).unwrap();
                    let Some(seq) = event["seq"].as_u64() else {
                        continue;
                    };
                    last_seq = seq;
                    desktops
                        .lock()
                        .unwrap()
                        .entry(agent)
                        .or_default()
                        .events
                        .push(event);
                    let _ = socket
                        .send(Message::Text(json!({ "ack": seq }).to_string().into()))
                        .await;
                }
            }
        }
    })
}

/// Waits until every acknowledged interaction was popped on its agent's desktop; then checks
/// that no desktop saw an event twice and no interaction was offered twice.
async fn assert_every_pop_once(desktops: &Desktops, acknowledged: &[(String, &'static str)]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let missing: Vec<&(String, &str)> = {
            let desktops = desktops.lock().unwrap();
            acknowledged
                .iter()
                .filter(|(id, agent)| {
                    !desktops.get(agent).is_some_and(|desktop| {
                        desktop.events.iter().any(|event| {
                            event["type"] == "interaction.offered" && event["subject"] == **id
                        })
                    })
                })
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged interactions never popped, e.g. {:?}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let desktops = desktops.lock().unwrap();
    let mut offered: HashMap<String, Vec<&str>> = HashMap::new();
    for (agent, desktop) in desktops.iter() {
        let mut seqs = HashSet::new();
        let mut previous = 0;
        for event in &desktop.events {
            let seq = event["seq"].as_u64().unwrap();
            assert!(seqs.insert(seq), "{agent} saw seq {seq} twice");
            assert!(seq > previous, "{agent} saw seq {seq} after {previous}");
            previous = seq;
            if event["type"] == "interaction.offered" {
                offered
                    .entry(event["subject"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(agent);
            }
        }
    }
    for (id, agents) in &offered {
        assert_eq!(
            agents.len(),
            1,
            "{id} was offered {} times: {agents:?}",
            agents.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_on_node_c_is_popped_by_an_interaction_created_on_node_a() {
    let Some((postgres, nats)) =
        services("an_agent_on_node_c_is_popped_by_an_interaction_created_on_node_a")
    else {
        return;
    };
    let cluster = Cluster::new(postgres, nats, 3);
    let writer = cluster.settled_writer().await;
    // A is a follower, so that the create is forwarded; C is the other follower.
    let followers: Vec<usize> = (0..3).filter(|n| *n != writer).collect();
    let (a, c) = (followers[0], followers[1]);
    let (tokens, ivr) = cluster.set_up(a).await;

    let desktops: Desktops = Arc::default();
    let bases = Arc::new(Mutex::new((0..3).map(|n| Some(cluster.base(n))).collect()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let alice = desktop(
        "alice",
        tokens["alice"].clone(),
        bases,
        vec![c],
        desktops.clone(),
        stopped,
    );
    // The desktop is connected once it saw its first event (its presence).
    wait_for_first_event(&desktops, &["alice"]).await;
    let id = create(&cluster.http, &cluster.base(a), &ivr, "c-from-a", "alice")
        .await
        .expect("node A acknowledges the create");
    assert_every_pop_once(&desktops, &[(id.clone(), "alice")]).await;
    let pop = desktops.lock().unwrap()["alice"]
        .events
        .iter()
        .find(|event| event["type"] == "interaction.offered")
        .cloned()
        .unwrap();
    assert_eq!(
        pop["data"]["interaction"]["context"]["name"], "Zoë",
        "the pop carries the IVR's data: {pop}"
    );

    // Read through the third node, the writer, too: one state.
    assert_all_offered(&cluster, writer, &[(id.clone(), "alice")]).await;
    let _ = stop.send(true);
    let _ = alice.await;
    cluster.remove().await;
}

/// IVRs posting without pause through every running node in turn, four at a time, until
/// `stop`; what was acknowledged lands in `acknowledged`.
fn load(
    http: reqwest::Client,
    bases: Arc<Mutex<Vec<Option<String>>>>,
    ivr: String,
    acknowledged: Arc<Mutex<Vec<(String, &'static str)>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|worker| {
            let (http, bases, ivr, acknowledged, stop) = (
                http.clone(),
                bases.clone(),
                ivr.clone(),
                acknowledged.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0usize;
                while !*stop.borrow() {
                    n += 1;
                    let (node, base) = {
                        let bases = bases.lock().unwrap();
                        let node = (n + worker) % bases.len();
                        (node, bases[node].clone())
                    };
                    let Some(base) = base else { continue };
                    let agent = AGENTS[n % AGENTS.len()];
                    let key = format!("w{worker}-n{n}-via{node}");
                    match create(&http, &base, &ivr, &key, agent).await {
                        Some(id) => acknowledged.lock().unwrap().push((id, agent)),
                        // Refused while the writer moves: the IVR would retry; not acknowledged.
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect()
}

async fn wait_for_count(acknowledged: &Arc<Mutex<Vec<(String, &'static str)>>>, at_least: usize) {
    let deadline = Instant::now() + PATIENCE;
    while acknowledged.lock().unwrap().len() < at_least {
        assert!(
            Instant::now() < deadline,
            "the load made only {} acknowledged creates, {at_least} expected",
            acknowledged.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_first_event(desktops: &Desktops, agents: &[&'static str]) {
    let deadline = Instant::now() + PATIENCE;
    for agent in agents {
        while desktops
            .lock()
            .unwrap()
            .get(agent)
            .is_none_or(|desktop| desktop.events.is_empty())
        {
            assert!(Instant::now() < deadline, "{agent}'s desktop saw nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every acknowledged interaction, read through `node`, is offered: none lost, none stuck.
async fn assert_all_offered(
    cluster: &Cluster,
    node: usize,
    acknowledged: &[(String, &'static str)],
) {
    for (id, agent) in acknowledged {
        let view: Value = cluster
            .http
            .get(format!("{}/v1/interactions/{id}", cluster.base(node)))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(view["state"], "offered", "{id}: {view}");
        assert_eq!(view["target"]["agent"], *agent, "{id}: {view}");
    }
}

/// Desktops for every agent, each trying the nodes in its own order, and IVRs posting through
/// every running node; `bases` says which nodes run, and where.
struct Workload {
    bases: Arc<Mutex<Vec<Option<String>>>>,
    desktops: Desktops,
    acknowledged: Arc<Mutex<Vec<(String, &'static str)>>>,
    stop_desktops: tokio::sync::watch::Sender<bool>,
    desktop_tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_load: tokio::sync::watch::Sender<bool>,
    loaders: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Starts the desktops (`orders[i]` for `AGENTS[i]`), waits until each is connected, then
    /// starts the load and waits for its first 30 acknowledged creates.
    async fn start(
        cluster: &Cluster,
        tokens: &HashMap<&'static str, String>,
        ivr: String,
        orders: [Vec<usize>; 3],
    ) -> Workload {
        let bases = Arc::new(Mutex::new(
            (0..cluster.nodes.len())
                .map(|n| Some(cluster.base(n)))
                .collect::<Vec<_>>(),
        ));
        let desktops: Desktops = Arc::default();
        let (stop_desktops, desktops_stopped) = tokio::sync::watch::channel(false);
        let desktop_tasks = AGENTS
            .iter()
            .zip(orders)
            .map(|(agent, order)| {
                desktop(
                    agent,
                    tokens[agent].clone(),
                    bases.clone(),
                    order,
                    desktops.clone(),
                    desktops_stopped.clone(),
                )
            })
            .collect();
        wait_for_first_event(&desktops, &AGENTS).await;
        let acknowledged: Arc<Mutex<Vec<(String, &'static str)>>> = Arc::default();
        let (stop_load, load_stopped) = tokio::sync::watch::channel(false);
        let loaders = load(
            cluster.http.clone(),
            bases.clone(),
            ivr,
            acknowledged.clone(),
            load_stopped,
        );
        let workload = Workload {
            bases,
            desktops,
            acknowledged,
            stop_desktops,
            desktop_tasks,
            stop_load,
            loaders,
        };
        workload.more_acknowledged(30).await;
        workload
    }

    /// Waits until `more` creates beyond those so far were acknowledged.
    async fn more_acknowledged(&self, more: usize) {
        let before = self.acknowledged.lock().unwrap().len();
        wait_for_count(&self.acknowledged, before + more).await;
    }

    fn node_down(&self, node: usize) {
        self.bases.lock().unwrap()[node] = None;
    }

    fn node_up(&self, node: usize, base: String) {
        self.bases.lock().unwrap()[node] = Some(base);
    }

    /// Stops the load, lets its last creates finish, and checks, through `node`, that every
    /// acknowledged interaction popped once on its agent's desktop and is offered; returns the
    /// desktops' record.
    async fn finish(self, cluster: &Cluster, node: usize) -> Desktops {
        let _ = self.stop_load.send(true);
        for loader in self.loaders {
            loader.await.unwrap();
        }
        let acknowledged = std::mem::take(&mut *self.acknowledged.lock().unwrap());
        assert_every_pop_once(&self.desktops, &acknowledged).await;
        assert_all_offered(cluster, node, &acknowledged).await;
        let _ = self.stop_desktops.send(true);
        for task in self.desktop_tasks {
            let _ = task.await;
        }
        self.desktops
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_writer_under_load_moves_the_lease_and_loses_no_acknowledged_pop() {
    let Some((postgres, nats)) =
        services("sigkill_of_the_writer_under_load_moves_the_lease_and_loses_no_acknowledged_pop")
    else {
        return;
    };
    let mut cluster = Cluster::new(postgres, nats, 3);
    let writer = cluster.settled_writer().await;
    let followers: Vec<usize> = (0..3).filter(|n| *n != writer).collect();
    let (tokens, ivr) = cluster.set_up(followers[0]).await;
    // Two desktops on followers, one on the writer that is about to die (it must come back
    // through another node and resume).
    let workload = Workload::start(
        &cluster,
        &tokens,
        ivr,
        [
            vec![followers[0], followers[1]],
            vec![followers[1], followers[0]],
            vec![writer, followers[0], followers[1]],
        ],
    )
    .await;

    workload.node_down(writer);
    cluster.nodes[writer]
        .take()
        .expect("the writer runs")
        .kill();
    let killed = Instant::now();
    let new_writer = 'found: loop {
        for node in &followers {
            if cluster.role(*node).await.as_deref() == Some("writer") {
                break 'found *node;
            }
        }
        assert!(
            killed.elapsed() < PATIENCE,
            "no node took the writer lease over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let takeover = killed.elapsed();
    eprintln!("takeover {takeover:?} after SIGKILL (lease {LEASE_TTL:?})");
    // The lease outlives its writer by at most its time to live; the followers look every
    // quarter of it; then the new writer recovers from the log.
    assert!(
        takeover < LEASE_TTL + LEASE_TTL / 4 + Duration::from_secs(3),
        "the takeover took {takeover:?}"
    );
    workload.more_acknowledged(30).await;
    workload.finish(&cluster, new_writer).await;
    cluster.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_node_under_load_loses_and_repeats_no_pop() {
    let Some((postgres, nats)) =
        services("a_rolling_restart_of_every_node_under_load_loses_and_repeats_no_pop")
    else {
        return;
    };
    let mut cluster = Cluster::new(postgres, nats, 3);
    let writer = cluster.settled_writer().await;
    let (tokens, ivr) = cluster.set_up(writer).await;
    // Each desktop starts on its own node and moves to the next when that one goes.
    let workload = Workload::start(
        &cluster,
        &tokens,
        ivr,
        [vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1]],
    )
    .await;
    for node in 0..3 {
        workload.node_down(node);
        let process = cluster.nodes[node].take().expect("the node runs");
        let status = tokio::task::block_in_place(|| process.terminate(PATIENCE));
        assert!(status.success(), "node{node} stopped with {status}");
        cluster.start(node);
        let deadline = Instant::now() + PATIENCE;
        while cluster.role(node).await.is_none() {
            assert!(Instant::now() < deadline, "node{node} did not come back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        workload.node_up(node, cluster.base(node));
        workload.more_acknowledged(20).await;
    }
    let writer = cluster.settled_writer().await;
    let desktops = workload.finish(&cluster, writer).await;
    {
        let desktops = desktops.lock().unwrap();
        for agent in AGENTS {
            assert!(
                desktops[agent].connections >= 2,
                "{agent}'s desktop never had to move: the test did not restart its node"
            );
        }
    }
    cluster.remove().await;
}

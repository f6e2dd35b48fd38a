//! The engine: the one task that changes the state. It takes commands from a bounded channel,
//! runs as many as are waiting against its working copy of the state, hands their events and
//! side rows to the store as one batch, and only once that batch is durable applies it to the
//! committed state that readers see, answers the callers and publishes the events live.
//!
//! Commits are pipelined: while batch N is being made durable, the engine keeps running the
//! next commands against its working state and hands batch N+1 to the store (at most
//! `MAX_IN_FLIGHT` batches at once). Results are taken strictly in the order the batches were
//! handed over, so callers are answered, the committed state moves and events are published in
//! `seq` order, each only once its batch is durable. A failed batch fails its callers; every
//! batch after it that was computed on top of its events fails too (the store refuses them, as
//! they no longer continue the log), and once nothing is in flight the working state is rebuilt
//! from the committed one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use handoff_core::{
    AgentId, Command, CommandError, Event, FastMap, InteractionId, Seq, State, Timestamp,
};
use handoff_store::{Batch, IdempotencyRecord, KeyRecord, Store, StoreError, StoredEvent};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::shutdown::Shutdown;
use crate::wire;

/// How long an idempotency record answers retries unless configured (`idempotency_window_s`).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// Room in an agent's live feed: events for one agent beyond this, not yet taken by its
/// slowest stream, make that stream catch up from the log instead. An agent gets few events
/// (its pops and its presence), and each open agent pays for this room.
const AGENT_FEED_CAPACITY: usize = 32;
/// How often the engine forgets the interactions that ended longer ago than it keeps them.
const FORGET_ENDED_EVERY: Duration = Duration::from_secs(60);
/// Most commands folded into one batch.
const MAX_GROUP: usize = 512;
/// Most batches handed to the store and not yet known durable. One is being written while the
/// next ones queue behind it (and are written together by the store's group commit); more
/// would only let the working state run further ahead of what is durable.
const MAX_IN_FLIGHT: usize = 4;

/// A committed event as live subscribers receive it.
#[derive(Debug)]
pub struct LiveEvent {
    pub seq: u64,
    pub event_type: String,
    pub subject: String,
    pub agents: Vec<String>,
    /// The CloudEvent JSON, exactly as stored.
    pub payload: String,
    /// For an `interaction.offered`: when the interaction was created (create-to-pop latency).
    pub created_at: Option<Timestamp>,
}

/// Why a follower could not apply what it read.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("event {got} does not continue the head {head}: the events between are missing")]
    Gap { head: u64, got: u64 },
    #[error("event {0} cannot be decoded: {1}")]
    Undecodable(u64, String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Refused(#[from] CommandError),
    #[error("the same Idempotency-Key was used with a different body")]
    IdempotencyMismatch,
    #[error("the store could not commit: {0}")]
    Store(String),
    #[error("the engine has stopped")]
    Stopped,
    /// A prepared command's own check failed (`Engine::execute_prepared`).
    #[error("{}", .0.message)]
    Rejected(crate::error::ApiError),
}

/// Makes a command from the engine's working state, in the engine, so that what it reads is
/// exactly what the command runs against (an update merged onto the latest context).
pub type Prepare = Box<dyn FnOnce(&State) -> Result<Command, EngineError> + Send>;

/// What a committed command produced.
#[derive(Debug, Default)]
pub struct Committed {
    pub events: Vec<(Seq, Event)>,
    /// For an idempotent create answered from an earlier request: the interaction it created.
    pub replayed: Option<InteractionId>,
}

/// An idempotency check to run with a create.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key_id: String,
    pub key: String,
    pub body_sha256: [u8; 32],
}

enum Request {
    Execute {
        /// Boxed: a create's command is most of a request, and the inbox holds thousands.
        command: Box<Command>,
        idempotency: Option<Idempotency>,
        reply: oneshot::Sender<Result<Committed, EngineError>>,
    },
    Prepared {
        prepare: Prepare,
        reply: oneshot::Sender<Result<Committed, EngineError>>,
    },
    AddKey {
        record: KeyRecord,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    RevokeKeys {
        ids: Vec<String>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

/// What readers share with the engine: the committed state and the live feeds.
pub struct Shared {
    committed: RwLock<State>,
    head: AtomicU64,
    /// Every committed event: the Server-Sent Events and the interaction long polls.
    live: broadcast::Sender<Arc<LiveEvent>>,
    /// Per agent with an open stream, the committed events for that agent only: a stream
    /// never wakes for another agent's events.
    agent_feeds: Mutex<FastMap<String, broadcast::Sender<Arc<LiveEvent>>>>,
    /// Key ids revoked; open streams of those keys close.
    revoked: broadcast::Sender<Arc<Vec<String>>>,
    /// `queue.stats` events: not in the log, no `seq`, never replayed.
    stats: broadcast::Sender<Arc<StatsEvent>>,
    /// Acks received and not yet staged, per agent the highest: a desktop acks every event,
    /// so between two groups one agent's acks become one row, and none of them takes a place
    /// in the engine's inbox. The engine takes them all into each group it builds.
    pending_acks: Mutex<PendingAcks>,
    /// Wakes the engine when `pending_acks` stops being empty.
    acks_waiting: tokio::sync::Notify,
    pub keys: crate::auth::KeyRing,
    /// Set once when the engine stopped because the log is no longer what it thinks (another
    /// writer appended, or its lease was taken over): the reason. Its node must stop.
    writer_lost: tokio::sync::watch::Sender<Option<String>>,
}

/// One stream's subscription to an agent's live feed; the feed goes when its last one does.
pub struct AgentFeed {
    receiver: Option<broadcast::Receiver<Arc<LiveEvent>>>,
    agent: String,
    shared: Arc<Shared>,
}

impl AgentFeed {
    pub async fn recv(&mut self) -> Result<Arc<LiveEvent>, broadcast::error::RecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for AgentFeed {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut feeds = self.shared.agent_feeds();
        if feeds
            .get(&self.agent)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            feeds.remove(&self.agent);
        }
    }
}

/// A `queue.stats` event as live subscribers receive it.
#[derive(Debug)]
pub struct StatsEvent {
    pub queue: String,
    /// The event JSON (a CloudEvent without `seq`).
    pub payload: String,
}

impl Shared {
    /// The committed state. Never hold the guard across an `.await`.
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.committed
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last committed `seq`.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Every committed event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.live.subscribe()
    }

    /// The committed events for `agent` from now on. A receiver that falls more than
    /// `AGENT_FEED_CAPACITY` events behind gets `Lagged`, as with `subscribe`.
    pub fn subscribe_agent(self: &Arc<Self>, agent: &AgentId) -> AgentFeed {
        let mut feeds = self.agent_feeds();
        let receiver = match feeds.get(agent.as_str()) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(AGENT_FEED_CAPACITY);
                feeds.insert(agent.to_string(), sender);
                receiver
            }
        };
        AgentFeed {
            receiver: Some(receiver),
            agent: agent.to_string(),
            shared: self.clone(),
        }
    }

    fn agent_feeds(
        &self,
    ) -> std::sync::MutexGuard<'_, FastMap<String, broadcast::Sender<Arc<LiveEvent>>>> {
        self.agent_feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands committed events to the live feeds: all of them to `live`, each to the feed of
    /// every agent it is for.
    fn publish_live(&self, events: Vec<Arc<LiveEvent>>) {
        if events.is_empty() {
            return;
        }
        {
            let feeds = self.agent_feeds();
            if !feeds.is_empty() {
                for event in &events {
                    for agent in &event.agents {
                        if let Some(feed) = feeds.get(agent) {
                            // Nobody listening (a feed closing) is fine.
                            let _ = feed.send(event.clone());
                        }
                    }
                }
            }
        }
        for event in events {
            let _ = self.live.send(event);
        }
    }

    /// Readers' side alone, with no engine and no store: for the instruction-count benchmarks
    /// (`crates/handoff/benches/pop_path.rs`), which fan events out through `publish_live`.
    #[cfg(feature = "bench-internals")]
    pub fn detached(state: State, head: u64) -> Arc<Shared> {
        new_shared(state, head, crate::auth::KeyRing::default())
    }

    /// `publish_live`, for the instruction-count benchmarks: committed events to the live feeds.
    #[cfg(feature = "bench-internals")]
    pub fn publish_committed(&self, events: Vec<Arc<LiveEvent>>) {
        self.publish_live(events);
    }

    /// A follower's step: applies events the writer committed (read from the bus or the
    /// log) to the committed state and hands them to the live feeds, as the engine does with
    /// its own. Events at or below the head are skipped (a replay); one that does not continue
    /// the head is refused, so the caller fills the gap from the log first.
    pub fn apply_followed(&self, events: &[StoredEvent]) -> Result<(), FollowError> {
        let mut live = Vec::with_capacity(events.len());
        {
            let mut committed = self
                .committed
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut head = self.head();
            for stored in events {
                if stored.seq <= head {
                    continue;
                }
                if stored.seq != head + 1 {
                    self.head.store(head, Ordering::Release);
                    drop(committed);
                    self.publish_live(live);
                    return Err(FollowError::Gap {
                        head,
                        got: stored.seq,
                    });
                }
                let event = wire::decode_event(stored.seq, &stored.payload)
                    .map_err(|error| FollowError::Undecodable(stored.seq, error.to_string()))?;
                committed.apply(&event);
                if let Event::AgentCreated { profile, .. } = &event {
                    committed.set_acked(&profile.id, Seq::new(stored.seq));
                }
                let created_at = match &event {
                    Event::InteractionOffered { id, .. } => {
                        committed.interaction(id).map(|i| i.spec.created_at)
                    }
                    _ => None,
                };
                head = stored.seq;
                live.push(Arc::new(LiveEvent {
                    seq: stored.seq,
                    event_type: stored.event_type.clone(),
                    subject: stored.subject.clone(),
                    agents: stored.agents.clone(),
                    payload: stored.payload.clone(),
                    created_at,
                }));
            }
            self.head.store(head, Ordering::Release);
        }
        self.publish_live(live);
        Ok(())
    }

    /// Returns, with the reason, once the engine stopped because it no longer owns the log
    /// (`StoreError::Fenced`, or a batch refused as not continuing a log that only it should
    /// append to). Pending forever while it runs.
    pub async fn writer_lost(&self) -> String {
        let mut lost = self.writer_lost.subscribe();
        loop {
            if let Some(reason) = lost.borrow_and_update().clone() {
                return reason;
            }
            if lost.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The acks received on this node since the last call, per agent the highest (a
    /// follower sends them on to the writer).
    pub fn take_pending_acks(&self) -> HashMap<AgentId, Seq> {
        self.pending_acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Returns once an ack is pending (or at once when one already is).
    pub async fn acks_pending(&self) {
        loop {
            let notified = self.acks_waiting.notified();
            if !self
                .pending_acks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .highest
                .is_empty()
            {
                return;
            }
            notified.await;
        }
    }

    /// A follower's keys, read again from the store: keys added since appear, and open
    /// streams of keys that are gone close as on a revocation.
    pub fn replace_keys(&self, records: Vec<KeyRecord>) {
        let revoked = self.keys.replace_all(records);
        if !revoked.is_empty() {
            let _ = self.revoked.send(Arc::new(revoked));
        }
    }

    pub fn subscribe_stats(&self) -> broadcast::Receiver<Arc<StatsEvent>> {
        self.stats.subscribe()
    }

    pub fn publish_stats(&self, event: StatsEvent) {
        // Nobody listening is fine: statistics are not kept.
        let _ = self.stats.send(Arc::new(event));
    }

    pub fn subscribe_revocations(&self) -> broadcast::Receiver<Arc<Vec<String>>> {
        self.revoked.subscribe()
    }
}

/// A handle to send commands to the engine.
#[derive(Clone)]
pub struct Engine {
    requests: mpsc::Sender<Request>,
    pub shared: Arc<Shared>,
}

impl Engine {
    pub async fn execute(&self, command: Command) -> Result<Committed, EngineError> {
        self.execute_with(command, None).await
    }

    pub async fn execute_with(
        &self,
        command: Command,
        idempotency: Option<Idempotency>,
    ) -> Result<Committed, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Execute {
                command: Box::new(command),
                idempotency,
                reply,
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Runs the command `prepare` makes from the working state, as `execute` runs one.
    /// `prepare` runs on the engine's task: it must be quick and must not block.
    pub async fn execute_prepared(&self, prepare: Prepare) -> Result<Committed, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Prepared { prepare, reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Records an ack; durable with the next commit, never waited for.
    pub fn ack(&self, agent: AgentId, seq: Seq) {
        let first = self
            .shared
            .pending_acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .add(agent, seq);
        // Later acks find the engine already told: it takes every pending ack at once.
        if first {
            self.shared.acks_waiting.notify_one();
        }
    }

    pub async fn add_key(&self, record: KeyRecord) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::AddKey { record, reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    pub async fn revoke_keys(&self, ids: Vec<String>) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::RevokeKeys { ids, reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }
}

/// Acks not yet staged: per agent, the highest `seq` acknowledged (acks are cumulative).
#[derive(Default)]
struct PendingAcks {
    highest: HashMap<AgentId, Seq>,
}

impl PendingAcks {
    /// Notes an ack; true when it is the first since the last `take`, so the engine needs
    /// waking.
    fn add(&mut self, agent: AgentId, seq: Seq) -> bool {
        let first = self.highest.is_empty();
        let highest = self.highest.entry(agent).or_insert(seq);
        *highest = (*highest).max(seq);
        first
    }

    fn take(&mut self) -> HashMap<AgentId, Seq> {
        std::mem::take(&mut self.highest)
    }
}

struct IdempotencyEntry {
    body_sha256: [u8; 32],
    interaction_id: InteractionId,
    created_ms: i64,
}

/// The idempotency records retries are answered from, by (key id, idempotency key). Every
/// create adds one, kept a day, so the table keeps growing; its entries are boxed and its hash
/// is foldhash so that each doubling moves 56-byte slots and rehashes quickly: at 104 bytes a
/// slot and SipHash, the doubling at 7,168 creates showed as a stall of the engine in the
/// benchmark.
type IdempotencyTable = handoff_core::FastMap<(String, String), Box<IdempotencyEntry>>;

/// Rebuilds the committed state by replaying the log: every event, then the ack cursors.
async fn replay_log(
    store: &Arc<dyn Store>,
    settings: handoff_core::Settings,
    keep_ended: Duration,
) -> Result<(State, u64), anyhow::Error> {
    let mut state = State::new(settings);
    let mut after = 0u64;
    loop {
        let page = store.events_after(after, 2048).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for stored in &page {
            let event = wire::decode_event(stored.seq, &stored.payload)?;
            state.apply(&event);
        }
    }
    // Recovery replays every interaction ever made; most ended long ago.
    state.forget_ended_before(ended_cutoff(wire::now(), keep_ended));
    for (agent, seq) in store.acks().await? {
        if let Ok(agent) = AgentId::parse(&agent) {
            state.set_acked(&agent, Seq::new(seq));
        }
    }
    Ok((state, after))
}

fn new_shared(state: State, head: u64, keys: crate::auth::KeyRing) -> Arc<Shared> {
    let (live, _) = broadcast::channel(8192);
    let (revoked, _) = broadcast::channel(64);
    let (stats, _) = broadcast::channel(1024);
    Arc::new(Shared {
        committed: RwLock::new(state),
        head: AtomicU64::new(head),
        live,
        agent_feeds: Mutex::new(FastMap::default()),
        revoked,
        stats,
        pending_acks: Mutex::new(PendingAcks::default()),
        acks_waiting: tokio::sync::Notify::new(),
        keys,
        writer_lost: tokio::sync::watch::Sender::new(None),
    })
}

/// A follower's recovery (a node of a cluster that does not hold the writer lease): the
/// committed state from the log, without an engine. `Shared::apply_followed` then moves it on
/// with the events the writer commits, and the returned `Engine` has no task behind it: every
/// command sent to it fails with `EngineError::Stopped` (a follower forwards its writes).
pub async fn recover_follower(
    store: Arc<dyn Store>,
    settings: handoff_core::Settings,
    keep_ended: Duration,
) -> Result<Engine, anyhow::Error> {
    let (state, head) = replay_log(&store, settings, keep_ended).await?;
    let keys = crate::auth::KeyRing::load(store.keys().await?);
    let shared = new_shared(state, head, keys);
    let (requests, _) = mpsc::channel(1);
    tracing::info!(
        head_seq = head,
        "follower: recovered the state from the log"
    );
    Ok(Engine { requests, shared })
}

/// Recovery: rebuilds the state by replaying the log, then starts the engine task.
pub async fn start(
    store: Arc<dyn Store>,
    settings: handoff_core::Settings,
    pop_url_default: Option<String>,
    keep_ended: Duration,
    idempotency_window: Duration,
    shutdown: Shutdown,
) -> Result<(Engine, tokio::task::JoinHandle<()>), anyhow::Error> {
    let (state, after) = replay_log(&store, settings, keep_ended).await?;
    let idempotency_window_ms = i64::try_from(idempotency_window.as_millis()).unwrap_or(i64::MAX);
    let now_ms = wire::now().millis();
    let mut idempotency = IdempotencyTable::default();
    for record in store
        .idempotency_since(now_ms.saturating_sub(idempotency_window_ms))
        .await?
    {
        if let Ok(interaction_id) = InteractionId::parse(&record.interaction_id) {
            idempotency.insert(
                (record.key_id, record.idempotency_key),
                Box::new(IdempotencyEntry {
                    body_sha256: record.body_sha256,
                    interaction_id,
                    created_ms: record.created_ms,
                }),
            );
        }
    }
    let keys = crate::auth::KeyRing::load(store.keys().await?);
    let shared = new_shared(state.clone(), after, keys);
    let (requests, inbox) = mpsc::channel(4096);
    let task = EngineTask {
        store,
        working: state,
        shared: shared.clone(),
        inbox,
        head: after,
        idempotency,
        shutdown,
        pop_url_default,
        keep_ended,
        idempotency_window_ms,
        in_flight: VecDeque::new(),
        failure: None,
    };
    let handle = tokio::spawn(task.run());
    tracing::info!(head_seq = after, "recovered the state from the log");
    Ok((Engine { requests, shared }, handle))
}

struct EngineTask {
    keep_ended: Duration,
    /// How long an idempotency record answers retries, in milliseconds.
    idempotency_window_ms: i64,
    store: Arc<dyn Store>,
    working: State,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Request>,
    head: u64,
    idempotency: IdempotencyTable,
    shutdown: Shutdown,
    /// The server's `pop_url` template, for offers whose queue has none.
    pop_url_default: Option<String>,
    /// Batches handed to the store, oldest first; their results are taken in this order.
    in_flight: VecDeque<InFlight>,
    /// Set when a batch failed: no new batch is staged until every batch in flight is
    /// resolved, then the working state is rebuilt from the committed one.
    failure: Option<Failure>,
}

/// What a failed commit leaves for the batches still in flight behind it.
struct Failure {
    /// A failed batch carried events: every later batch in flight was computed on top of
    /// them, so its answers (refusals, idempotent replays) cannot be trusted and its callers
    /// fail too, even if the store wrote its side rows.
    events_lost: bool,
}

type CommitFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// A batch handed to the store, with what to do once it is durable.
struct InFlight {
    commit: Option<CommitFuture>,
    group: Group,
    started: Instant,
}

/// A reply held back until the batch it belongs to is committed.
enum PendingReply {
    Execute(
        oneshot::Sender<Result<Committed, EngineError>>,
        Result<Committed, EngineError>,
    ),
    Unit(oneshot::Sender<Result<(), EngineError>>),
}

struct Staged {
    seq: Seq,
    event: Event,
    agents: Vec<String>,
    created_at: Option<Timestamp>,
    payload: String,
}

#[derive(Default)]
struct Group {
    batch: Batch,
    replies: Vec<PendingReply>,
    /// Events in seq order with the agents they are for, to apply and publish after commit.
    events: Vec<Staged>,
    acks: Vec<(AgentId, Seq)>,
    idempotency_added: Vec<(String, String)>,
    keys_added: Vec<KeyRecord>,
    keys_revoked: Vec<String>,
}

impl EngineTask {
    async fn run(mut self) {
        let mut purge_at = Instant::now();
        let mut forgot_at = Instant::now();
        loop {
            // Deadlines and also escalation steps: a caller whose requirement relaxes needs a
            // dispatch at that moment, though no deadline falls due.
            let wake_at = self.working.next_wakeup(wire::now());
            let sleep_for = wake_at
                .map(|at| Duration::from_millis((at.millis() - wire::now().millis()).max(0) as u64))
                .unwrap_or(Duration::from_secs(3600));
            // A new batch only with room in the pipeline, and never on top of a failed one.
            let may_stage = self.in_flight.len() < MAX_IN_FLIGHT && self.failure.is_none();
            let mut first = None;
            tokio::select! {
                biased;
                result = next_result(&mut self.in_flight), if !self.in_flight.is_empty() => {
                    self.resolve(result);
                    if self.shared.writer_lost.borrow().is_some() {
                        tracing::error!("the log is no longer this engine's to append to; it stops");
                        break;
                    }
                    self.forget_ended_when_due(&mut forgot_at);
                    continue;
                }
                _ = self.shutdown.fired() => break,
                request = self.inbox.recv(), if may_stage => match request {
                    Some(request) => first = Some(request),
                    None => break,
                },
                _ = tokio::time::sleep(sleep_for), if may_stage => {}
                _ = self.shared.acks_waiting.notified(), if may_stage => {}
            }
            let mut group = Group::default();
            let now = wire::now();
            if let Some(request) = first {
                self.handle(request, now, &mut group);
            }
            while group.replies.len() + group.acks.len() < MAX_GROUP {
                match self.inbox.try_recv() {
                    Ok(request) => self.handle(request, now, &mut group),
                    Err(_) => break,
                }
            }
            let pending_acks = self
                .shared
                .pending_acks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            for (agent, seq) in pending_acks {
                self.stage_ack(agent, seq, &mut group);
            }
            let due = wake_at.is_some_and(|at| at <= now)
                || self.working.next_deadline().is_some_and(|at| at <= now);
            if due {
                // A refused tick changes nothing; there is nobody to tell.
                let _ = self.run_command(Command::Tick, None, now, &mut group);
            }
            self.submit(group);
            self.forget_ended_when_due(&mut forgot_at);
            if purge_at.elapsed() > Duration::from_secs(600) {
                purge_at = Instant::now();
                self.purge_idempotency().await;
            }
        }
        // Whatever was handed to the store is answered before the engine stops.
        while !self.in_flight.is_empty() {
            let result = next_result(&mut self.in_flight).await;
            self.resolve(result);
        }
        tracing::info!("engine stopped");
    }

    fn handle(&mut self, request: Request, now: Timestamp, group: &mut Group) {
        match request {
            Request::Execute {
                command,
                idempotency,
                reply,
            } => {
                let result = self.run_command(*command, idempotency, now, group);
                group.replies.push(PendingReply::Execute(reply, result));
            }
            Request::Prepared { prepare, reply } => {
                let result = prepare(&self.working)
                    .and_then(|command| self.run_command(command, None, now, group));
                group.replies.push(PendingReply::Execute(reply, result));
            }
            Request::AddKey { record, reply } => {
                group.batch.keys_added.push(record.clone());
                group.keys_added.push(record);
                group.replies.push(PendingReply::Unit(reply));
            }
            Request::RevokeKeys { ids, reply } => {
                group.batch.keys_revoked.extend(ids.iter().cloned());
                group.keys_revoked.extend(ids);
                group.replies.push(PendingReply::Unit(reply));
            }
        }
    }

    /// Stages an agent's ack when it moves the agent's cursor forward.
    fn stage_ack(&mut self, agent: AgentId, seq: Seq, group: &mut Group) {
        let known = self.working.agent(&agent).map(|a| a.acked_seq);
        // Only a committed seq: one in flight may yet fail and be reused.
        if known.is_some_and(|acked| seq > acked) && seq.get() <= self.shared.head() {
            self.working.set_acked(&agent, seq);
            group.batch.acks.push((agent.to_string(), seq.get()));
            group.acks.push((agent, seq));
        }
    }

    /// Runs one command against the working state and stages what it writes.
    fn run_command(
        &mut self,
        command: Command,
        idempotency: Option<Idempotency>,
        now: Timestamp,
        group: &mut Group,
    ) -> Result<Committed, EngineError> {
        if let Some(check) = &idempotency {
            let slot = (check.key_id.clone(), check.key.clone());
            if let Some(entry) = self.idempotency.get(&slot) {
                if entry.created_ms >= now.millis().saturating_sub(self.idempotency_window_ms) {
                    if entry.body_sha256 != check.body_sha256 {
                        return Err(EngineError::IdempotencyMismatch);
                    }
                    return Ok(Committed {
                        events: Vec::new(),
                        replayed: Some(entry.interaction_id.clone()),
                    });
                }
            }
        }
        let created = match &command {
            Command::CreateInteraction { spec } => Some(spec.id.clone()),
            _ => None,
        };
        let deleted_agent = match &command {
            Command::DeleteAgent { agent } => Some(agent.clone()),
            _ => None,
        };
        let events = self.working.execute_with_recipients(command, now)?;
        let mut committed = Committed::default();
        for (event, agents) in events {
            self.head += 1;
            let seq = Seq::new(self.head);
            let interaction = event
                .interaction_id()
                .and_then(|id| self.working.interaction(id));
            let created_at = match &event {
                Event::InteractionOffered { .. } => interaction.map(|i| i.spec.created_at),
                _ => None,
            };
            let pop_template = match &event {
                Event::InteractionOffered { target, .. } => crate::pop_url::template_for(
                    &self.working,
                    target,
                    self.pop_url_default.as_deref(),
                ),
                _ => None,
            };
            let payload = wire::cloud_event_payload(seq.get(), &event, interaction, pop_template);
            if let Event::AgentCreated { profile, .. } = &event {
                // A new agent's stream starts after the log's head at its creation.
                self.working.set_acked(&profile.id, seq);
                group.batch.acks.push((profile.id.to_string(), seq.get()));
                group.acks.push((profile.id.clone(), seq));
            }
            group.batch.events.push(StoredEvent {
                seq: seq.get(),
                event_type: event.type_name().to_owned(),
                subject: event.subject().to_owned(),
                time_ms: event.time().millis(),
                agents: agents.iter().map(|a| a.to_string()).collect(),
                payload: payload.clone(),
            });
            group.events.push(Staged {
                seq,
                event: event.clone(),
                agents: agents.iter().map(|a| a.to_string()).collect(),
                created_at,
                payload,
            });
            committed.events.push((seq, event));
        }
        if let Some(agent) = deleted_agent {
            group.batch.acks_deleted.push(agent.to_string());
            let mut tokens = self.shared.keys.for_agent(&agent);
            // Tokens added but not yet committed are not in the key ring yet.
            let pending = self
                .in_flight
                .iter()
                .map(|flight| &flight.group.keys_added)
                .chain([&group.keys_added])
                .flatten()
                .filter(|record| record.agent_id.as_deref() == Some(agent.as_str()))
                .map(|record| record.id.clone());
            tokens.extend(pending);
            group.batch.keys_revoked.extend(tokens.iter().cloned());
            group.keys_revoked.extend(tokens);
        }
        if let (Some(check), Some(interaction_id)) = (idempotency, created) {
            group.batch.idempotency.push(IdempotencyRecord {
                key_id: check.key_id.clone(),
                idempotency_key: check.key.clone(),
                body_sha256: check.body_sha256,
                interaction_id: interaction_id.to_string(),
                created_ms: now.millis(),
            });
            let slot = (check.key_id, check.key);
            self.idempotency.insert(
                slot.clone(),
                Box::new(IdempotencyEntry {
                    body_sha256: check.body_sha256,
                    interaction_id,
                    created_ms: now.millis(),
                }),
            );
            group.idempotency_added.push(slot);
        }
        Ok(committed)
    }

    /// Hands the group's batch to the store; its result is taken by `resolve`, in order.
    fn submit(&mut self, mut group: Group) {
        if group.replies.is_empty() && group.events.is_empty() && group.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut group.batch);
        let mut commit = None;
        if !batch.is_empty() {
            let store = self.store.clone();
            let mut future: CommitFuture = Box::pin(async move { store.commit(batch).await });
            // Poll once now: the store queues a batch when its commit is first polled, and
            // batches must reach it in the order they continue the log.
            let waker = futures_util::task::noop_waker_ref();
            match future.as_mut().poll(&mut Context::from_waker(waker)) {
                Poll::Pending => commit = Some(future),
                Poll::Ready(result) => {
                    commit = Some(Box::pin(std::future::ready(result)) as CommitFuture)
                }
            }
        }
        self.in_flight.push_back(InFlight {
            commit,
            group,
            started: Instant::now(),
        });
    }

    /// Takes the result of the oldest batch in flight.
    fn resolve(&mut self, result: Result<(), StoreError>) {
        let Some(flight) = self.in_flight.pop_front() else {
            return;
        };
        let had_batch = flight.commit.is_some();
        if had_batch {
            metrics::histogram!("handoff_commit_seconds")
                .record(flight.started.elapsed().as_secs_f64());
        }
        let group = flight.group;
        match result {
            Err(error) => {
                // A refusal that no earlier failure explains means that the log moved under
                // this engine (a commit whose outcome the store could not tell, another
                // writer): its state can no longer be trusted, and it stops.
                let log_moved = match &error {
                    StoreError::Fenced { .. } => true,
                    StoreError::SeqOutOfOrder { .. } => self.failure.is_none(),
                    _ => false,
                };
                if log_moved {
                    self.shared
                        .writer_lost
                        .send_replace(Some(format!("the engine stopped: {error}")));
                }
                tracing::error!(%error, "commit failed; the batch is dropped and the state rolled back");
                let events_lost = !group.events.is_empty();
                let failure = self.failure.get_or_insert(Failure { events_lost });
                failure.events_lost |= events_lost;
                for slot in &group.idempotency_added {
                    self.idempotency.remove(slot);
                }
                fail_replies(group.replies, &error.to_string());
            }
            Ok(()) => {
                let trusted = !self.failure.as_ref().is_some_and(|f| f.events_lost);
                if !trusted && !group.events.is_empty() {
                    // The store refuses a batch that does not continue the log, so this
                    // cannot happen; if it did, the log is the truth and recovery would
                    // replay these events, so they are published like any other.
                    tracing::error!("a batch committed after a failed batch it was built on");
                }
                self.publish(group, trusted);
            }
        }
        if self.in_flight.is_empty() && self.failure.take().is_some() {
            // Nothing in flight: go back to what is committed.
            self.working = self.shared.state().clone();
            self.head = self.shared.head();
        }
    }

    /// Applies a durable group to the committed state, publishes its events and answers its
    /// callers (with a store error unless `trusted`).
    fn publish(&mut self, group: Group, trusted: bool) {
        let Group {
            batch: _,
            replies,
            events,
            acks,
            idempotency_added: _,
            keys_added,
            keys_revoked,
        } = group;
        {
            let mut committed = self
                .shared
                .committed
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for staged in &events {
                committed.apply(&staged.event);
            }
            for (agent, seq) in &acks {
                committed.set_acked(agent, *seq);
            }
        }
        for record in keys_added {
            self.shared.keys.insert(record);
        }
        if !keys_revoked.is_empty() {
            for id in &keys_revoked {
                self.shared.keys.remove(id);
            }
            let _ = self.shared.revoked.send(Arc::new(keys_revoked));
        }
        if let Some(last) = events.last() {
            self.shared.head.store(last.seq.get(), Ordering::Release);
        }
        let mut live = Vec::with_capacity(events.len());
        for staged in events {
            if matches!(staged.event, Event::InteractionCreated { .. }) {
                metrics::counter!("handoff_interactions_created_total").increment(1);
            }
            live.push(Arc::new(LiveEvent {
                seq: staged.seq.get(),
                event_type: staged.event.type_name().to_owned(),
                subject: staged.event.subject().to_owned(),
                agents: staged.agents,
                payload: staged.payload,
                created_at: staged.created_at,
            }));
        }
        self.shared.publish_live(live);
        if !trusted {
            fail_replies(
                replies,
                "an earlier batch this one was built on failed to commit",
            );
            return;
        }
        for reply in replies {
            match reply {
                PendingReply::Execute(reply, result) => {
                    let _ = reply.send(result);
                }
                PendingReply::Unit(reply) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// Once a minute (or as often as ended interactions are kept, when that is shorter, at most
    /// ten times a second), and only with nothing in flight, drops the interactions that ended
    /// longer ago than they are kept from the working state and the committed one (readers
    /// then find them in the log). With nothing in flight the two hold the same interactions,
    /// so they forget the same ones; otherwise an interaction whose last event is still being
    /// written could be forgotten by the one and kept by the other.
    fn forget_ended_when_due(&mut self, forgot_at: &mut Instant) {
        let every = FORGET_ENDED_EVERY.min(self.keep_ended.max(Duration::from_millis(100)));
        if !self.in_flight.is_empty() || forgot_at.elapsed() < every {
            return;
        }
        *forgot_at = Instant::now();
        let cutoff = ended_cutoff(wire::now(), self.keep_ended);
        if self.working.forget_ended_before(cutoff) == 0 {
            return;
        }
        let forgotten = self
            .shared
            .committed
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .forget_ended_before(cutoff);
        metrics::counter!("handoff_interactions_forgotten_total").increment(forgotten as u64);
    }

    async fn purge_idempotency(&mut self) {
        let cutoff = wire::now()
            .millis()
            .saturating_sub(self.idempotency_window_ms);
        self.idempotency
            .retain(|_, entry| entry.created_ms >= cutoff);
        if let Err(error) = self.store.purge_idempotency(cutoff).await {
            tracing::warn!(%error, "could not purge old idempotency records");
        }
    }
}

/// Interactions that ended before this moment are no longer kept in memory.
fn ended_cutoff(now: Timestamp, keep_ended: Duration) -> Timestamp {
    now.plus_millis(-(keep_ended.as_millis().min(i64::MAX as u128) as i64))
}

/// The result of the oldest batch in flight; a batch with nothing to write is durable at once.
async fn next_result(in_flight: &mut VecDeque<InFlight>) -> Result<(), StoreError> {
    match in_flight
        .front_mut()
        .and_then(|flight| flight.commit.as_mut())
    {
        Some(commit) => commit.await,
        None => Ok(()),
    }
}

fn fail_replies(replies: Vec<PendingReply>, reason: &str) {
    for reply in replies {
        match reply {
            PendingReply::Execute(reply, _) => {
                let _ = reply.send(Err(EngineError::Store(reason.to_owned())));
            }
            PendingReply::Unit(reply) => {
                let _ = reply.send(Err(EngineError::Store(reason.to_owned())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_acks_keep_each_agents_highest_and_ask_for_one_wake_up() {
        let alice = AgentId::parse("alice").unwrap();
        let bob = AgentId::parse("bob").unwrap();
        let mut pending = PendingAcks::default();
        assert!(pending.add(alice.clone(), Seq::new(7)));
        assert!(!pending.add(alice.clone(), Seq::new(3)));
        assert!(!pending.add(bob.clone(), Seq::new(2)));
        assert!(!pending.add(alice.clone(), Seq::new(9)));
        let taken = pending.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[&alice], Seq::new(9));
        assert_eq!(taken[&bob], Seq::new(2));
        assert!(pending.add(bob, Seq::new(4)), "empty again after take");
    }
}

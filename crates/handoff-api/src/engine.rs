//! The engine: the one task that changes the state. It takes commands from a bounded channel,
//! runs as many as are waiting against its working copy of the state, commits their events and
//! side rows in one store transaction (group commit), and only then applies them to the
//! committed state that readers see, answers the callers and publishes the events live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use handoff_core::{AgentId, Command, CommandError, Event, InteractionId, Seq, State, Timestamp};
use handoff_store::{Batch, IdempotencyRecord, KeyRecord, OfferDeadline, Store, StoredEvent};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::shutdown::Shutdown;
use crate::wire;

/// How long an idempotency record answers retries.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Most commands folded into one transaction.
const MAX_GROUP: usize = 512;

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
}

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
        command: Command,
        idempotency: Option<Idempotency>,
        reply: oneshot::Sender<Result<Committed, EngineError>>,
    },
    Ack {
        agent: AgentId,
        seq: Seq,
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

/// What readers share with the engine: the committed state and the live feed.
pub struct Shared {
    committed: RwLock<State>,
    head: AtomicU64,
    live: broadcast::Sender<Arc<LiveEvent>>,
    /// Key ids revoked; open streams of those keys close.
    revoked: broadcast::Sender<Arc<Vec<String>>>,
    /// `queue.stats` events: not in the log, no `seq`, never replayed.
    stats: broadcast::Sender<Arc<StatsEvent>>,
    pub keys: crate::auth::KeyRing,
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

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.live.subscribe()
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
                command,
                idempotency,
                reply,
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Records an ack; durable with the next commit, never waited for.
    pub fn ack(&self, agent: AgentId, seq: Seq) {
        // A full channel drops this ack; acks are cumulative, the next one covers it.
        let _ = self.requests.try_send(Request::Ack { agent, seq });
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

struct IdempotencyEntry {
    body_sha256: [u8; 32],
    interaction_id: InteractionId,
    created_ms: i64,
}

/// Recovery: rebuilds the state by replaying the log, then starts the engine task.
pub async fn start(
    store: Arc<dyn Store>,
    settings: handoff_core::Settings,
    pop_url_default: Option<String>,
    shutdown: Shutdown,
) -> Result<(Engine, tokio::task::JoinHandle<()>), anyhow::Error> {
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
    for (agent, seq) in store.acks().await? {
        if let Ok(agent) = AgentId::parse(&agent) {
            state.set_acked(&agent, Seq::new(seq));
        }
    }
    let now_ms = wire::now().millis();
    let mut idempotency = HashMap::new();
    for record in store
        .idempotency_since(now_ms - IDEMPOTENCY_WINDOW_MS)
        .await?
    {
        if let Ok(interaction_id) = InteractionId::parse(&record.interaction_id) {
            idempotency.insert(
                (record.key_id, record.idempotency_key),
                IdempotencyEntry {
                    body_sha256: record.body_sha256,
                    interaction_id,
                    created_ms: record.created_ms,
                },
            );
        }
    }
    let keys = crate::auth::KeyRing::load(store.keys().await?);
    let (live, _) = broadcast::channel(8192);
    let (revoked, _) = broadcast::channel(64);
    let (stats, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        committed: RwLock::new(state.clone()),
        head: AtomicU64::new(after),
        live,
        revoked,
        stats,
        keys,
    });
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
    };
    let handle = tokio::spawn(task.run());
    tracing::info!(head_seq = after, "recovered the state from the log");
    Ok((Engine { requests, shared }, handle))
}

struct EngineTask {
    store: Arc<dyn Store>,
    working: State,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Request>,
    head: u64,
    idempotency: HashMap<(String, String), IdempotencyEntry>,
    shutdown: Shutdown,
    /// The server's `pop_url` template, for offers whose queue has none.
    pop_url_default: Option<String>,
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
        loop {
            // Deadlines and also escalation steps: a caller whose requirement relaxes needs a
            // dispatch at that moment, though no deadline falls due.
            let wake_at = self.working.next_wakeup(wire::now());
            let sleep_for = wake_at
                .map(|at| Duration::from_millis((at.millis() - wire::now().millis()).max(0) as u64))
                .unwrap_or(Duration::from_secs(3600));
            let mut first = None;
            tokio::select! {
                request = self.inbox.recv() => match request {
                    Some(request) => first = Some(request),
                    None => break,
                },
                _ = tokio::time::sleep(sleep_for) => {}
                _ = self.shutdown.fired() => break,
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
            let due = wake_at.is_some_and(|at| at <= now)
                || self.working.next_deadline().is_some_and(|at| at <= now);
            if due {
                // A refused tick changes nothing; there is nobody to tell.
                let _ = self.run_command(Command::Tick, None, now, &mut group);
            }
            self.commit(group).await;
            if purge_at.elapsed() > Duration::from_secs(600) {
                purge_at = Instant::now();
                self.purge_idempotency().await;
            }
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
                let result = self.run_command(command, idempotency, now, group);
                group.replies.push(PendingReply::Execute(reply, result));
            }
            Request::Ack { agent, seq } => {
                let known = self.working.agent(&agent).map(|a| a.acked_seq);
                if known.is_some_and(|acked| seq > acked) && seq.get() <= self.head {
                    self.working.set_acked(&agent, seq);
                    group.batch.acks.push((agent.to_string(), seq.get()));
                    group.acks.push((agent, seq));
                }
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
                if entry.created_ms >= now.millis() - IDEMPOTENCY_WINDOW_MS {
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
        let mut offers_touched: Vec<InteractionId> = Vec::new();
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
            let cloud = wire::cloud_event(seq.get(), &event, interaction, pop_template);
            let payload = serde_json::to_string(&cloud).unwrap_or_default();
            if let Some(id) = event.interaction_id() {
                if matches!(
                    event,
                    Event::InteractionOffered { .. }
                        | Event::OfferRevoked { .. }
                        | Event::InteractionAccepted { .. }
                        | Event::InteractionRejected { .. }
                        | Event::InteractionAbandoned { .. }
                ) && !offers_touched.contains(id)
                {
                    offers_touched.push(id.clone());
                }
            }
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
                payload: payload.clone(),
            });
            committed.events.push((seq, event));
        }
        self.stage_deadlines(offers_touched, group);
        if let Some(agent) = deleted_agent {
            group.batch.acks_deleted.push(agent.to_string());
            let tokens = self.shared.keys.for_agent(&agent);
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
                IdempotencyEntry {
                    body_sha256: check.body_sha256,
                    interaction_id,
                    created_ms: now.millis(),
                },
            );
            group.idempotency_added.push(slot);
        }
        Ok(committed)
    }

    /// Brings the offer-deadline rows of the interactions a command touched in step with the
    /// working state once the whole command ran: a `ring_all` offer stays open while others of
    /// the same interaction are rejected or revoked, so no single event can decide the row.
    /// One row per interaction; the last command of the group wins.
    fn stage_deadlines(&self, touched: Vec<InteractionId>, group: &mut Group) {
        for id in touched {
            let open = self.working.interaction(&id).and_then(|interaction| {
                let agent = interaction.offered_to.first()?;
                let expires_at = interaction.offer_expires_at?;
                Some(OfferDeadline {
                    interaction_id: id.to_string(),
                    agent_id: agent.to_string(),
                    expires_ms: expires_at.millis(),
                })
            });
            let id = id.to_string();
            group
                .batch
                .deadlines_set
                .retain(|set| set.interaction_id != id);
            group
                .batch
                .deadlines_cleared
                .retain(|cleared| cleared != &id);
            match open {
                Some(deadline) => group.batch.deadlines_set.push(deadline),
                None => group.batch.deadlines_cleared.push(id),
            }
        }
    }

    async fn commit(&mut self, group: Group) {
        let Group {
            batch,
            replies,
            events,
            acks,
            idempotency_added,
            keys_added,
            keys_revoked,
        } = group;
        if !batch.is_empty() {
            let started = Instant::now();
            let result = self.store.commit(batch).await;
            metrics::histogram!("handoff_commit_seconds").record(started.elapsed().as_secs_f64());
            if let Err(error) = result {
                tracing::error!(%error, "commit failed; the batch is dropped and the state rolled back");
                // Nothing of the batch was written: go back to what is committed.
                self.working = self.shared.state().clone();
                self.head = self.shared.head();
                for slot in idempotency_added {
                    self.idempotency.remove(&slot);
                }
                for reply in replies {
                    match reply {
                        PendingReply::Execute(reply, _) => {
                            let _ = reply.send(Err(EngineError::Store(error.to_string())));
                        }
                        PendingReply::Unit(reply) => {
                            let _ = reply.send(Err(EngineError::Store(error.to_string())));
                        }
                    }
                }
                return;
            }
        }
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
        self.shared.head.store(self.head, Ordering::Release);
        for staged in events {
            if matches!(staged.event, Event::InteractionCreated { .. }) {
                metrics::counter!("handoff_interactions_created_total").increment(1);
            }
            let _ = self.shared.live.send(Arc::new(LiveEvent {
                seq: staged.seq.get(),
                event_type: staged.event.type_name().to_owned(),
                subject: staged.event.subject().to_owned(),
                agents: staged.agents,
                payload: staged.payload,
                created_at: staged.created_at,
            }));
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

    async fn purge_idempotency(&mut self) {
        let cutoff = wire::now().millis() - IDEMPOTENCY_WINDOW_MS;
        self.idempotency
            .retain(|_, entry| entry.created_ms >= cutoff);
        if let Err(error) = self.store.purge_idempotency(cutoff).await {
            tracing::warn!(%error, "could not purge old idempotency records");
        }
    }
}

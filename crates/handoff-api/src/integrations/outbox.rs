//! The durable outbox: one worker per destination (a webhook, a connector's call log) that
//! follows the committed log from its cursor and delivers each event it wants, at least once.
//!
//! Nothing is written per event when it is appended: the log itself is the outbox. Each
//! destination keeps a cursor in the store, and the promise is that every event up to the
//! cursor was delivered, given up on, or waits in the destination's retries. The cursor moves
//! in the same transaction as the retries of the events it passes, so a crash at any moment
//! loses nothing: after a restart the worker starts from the cursor again (an event delivered
//! just before the crash is delivered once more, with the same id) and takes up its retries.
//!
//! New events are delivered in `seq` order, several at once (`max_in_flight`); an event that
//! fails leaves the line for the retries, so one bad event never holds up the others.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_store::{Batch, DeliveryAttempt, OutboxRetry, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::engine::{LiveEvent, Shared};
use crate::shutdown::Shutdown;
use crate::wire;

/// Events read from the log at once when catching up.
const READ_PAGE: usize = 256;
/// How often a worker writes its progress (cursor, retries, attempts) while it has some.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Attempts recorded before a flush is written at once, whatever the time.
const FLUSH_AT_ATTEMPTS: usize = 512;
/// How often a destination's recorded attempts are trimmed to the newest `attempts_kept`.
const TRIM_EVERY: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured: a receiver cannot park a delivery for longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// The HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// Why it failed, when it did (a status that is not 2xx, a timeout, a refused connection,
    /// a request that could not be made).
    pub error: Option<String>,
    /// The destination's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// The destination asked never to be sent anything again (a webhook's 410 Gone).
    pub gone: bool,
    /// Nothing was sent: the destination's condition says this event needs no request.
    pub skipped: bool,
}

impl AttemptResult {
    pub fn delivered(&self) -> bool {
        self.error.is_none() && !self.gone
    }
}

pub type AttemptFuture = Pin<Box<dyn Future<Output = AttemptResult> + Send>>;

/// A destination: which events it takes and how one is delivered.
pub trait Deliver: Send + Sync + 'static {
    /// Whether this destination takes events of `event_type`.
    fn wants(&self, event_type: &str) -> bool;
    /// One attempt to deliver `event`; `attempt` counts from 1.
    fn attempt(&self, event: Arc<LiveEvent>, attempt: u32) -> AttemptFuture;
}

/// When failed deliveries are tried again, and how many attempts are kept on record.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// The wait before each retry: the first retry after `retry_schedule[0]`, and so on; after
    /// the last one fails the event is given up on. Standard Webhooks' schedule by default.
    pub retry_schedule: Vec<Duration>,
    /// Recorded attempts kept per destination, newest first.
    pub attempts_kept: u64,
    /// Deliveries in flight at once per destination.
    pub max_in_flight: usize,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let hours = |h: u64| minutes(h * 60);
        OutboxSettings {
            retry_schedule: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                hours(2),
                hours(5),
                hours(10),
                hours(14),
                hours(20),
                hours(24),
            ],
            attempts_kept: 1000,
            max_in_flight: 8,
        }
    }
}

/// Tells a running worker what to do.
pub enum Control {
    /// Send every wanted event after `after` again; answered once the cursor is moved back.
    Replay {
        after: u64,
        reply: oneshot::Sender<()>,
    },
    /// Write what is done and stop; answered when stopped.
    Stop { reply: oneshot::Sender<()> },
}

/// What a worker reports about its destination.
pub trait OutboxObserver: Send + Sync + 'static {
    /// The destination answered 410 Gone: it is disabled from now on. `record` is the change
    /// of its configuration to write with the worker's last flush, if any.
    fn gone(&self, reason: &str) -> Option<handoff_store::IntegrationRecord>;
}

/// A running worker.
pub struct WorkerHandle {
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// Asks the worker to resend every wanted event after `after`; returns once the cursor
    /// was moved back durably (or the worker is gone).
    pub async fn replay(&self, after: u64) {
        let (reply, done) = oneshot::channel();
        if self
            .control
            .send(Control::Replay { after, reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// Stops the worker once it wrote what it did; waits for it.
    pub async fn stop(self) {
        let (reply, done) = oneshot::channel();
        if self.control.send(Control::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
        let _ = self.task.await;
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Everything a worker needs.
pub struct WorkerSpec {
    pub destination: String,
    pub deliver: Arc<dyn Deliver>,
    pub observer: Arc<dyn OutboxObserver>,
    pub store: Arc<dyn Store>,
    pub shared: Arc<Shared>,
    pub settings: Arc<OutboxSettings>,
    pub shutdown: Shutdown,
    /// Deliveries at once; the destination's own setting or the server's.
    pub max_in_flight: usize,
}

/// Starts the worker of one destination: it reads its cursor and retries from the store and
/// goes on from there.
pub fn start(spec: WorkerSpec) -> WorkerHandle {
    let (control, inbox) = mpsc::channel(8);
    let task = tokio::spawn(async move {
        let destination = spec.destination.clone();
        match Worker::load(spec).await {
            Ok(worker) => worker.run(inbox).await,
            Err(error) => {
                tracing::error!(%destination, %error, "outbox: cannot read the destination's state; not delivering")
            }
        }
    });
    WorkerHandle { control, task }
}

/// A retry waiting for its time, or in flight.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    attempts: u32,
    next_ms: i64,
}

/// What came back from an attempt.
struct Outcome {
    seq: u64,
    attempt: u32,
    /// A retry, not a new event.
    retry: bool,
    at_ms: i64,
    took: Duration,
    result: AttemptResult,
}

struct Worker {
    spec: WorkerSpec,
    /// The cursor as last written.
    cursor: u64,
    /// The last event read from the log: handed to a delivery, or not wanted.
    read_upto: u64,
    /// Events read and not yet handed out, in order.
    buffer: VecDeque<Arc<LiveEvent>>,
    /// New events being delivered.
    in_flight: BTreeSet<u64>,
    /// Retries by seq, the durable rows' mirror; those in flight too.
    retries: BTreeMap<u64, Waiting>,
    retries_in_flight: BTreeSet<u64>,
    attempts: JoinSet<Outcome>,
    /// What the next flush writes.
    pending: Batch,
    pending_since: Option<Instant>,
    trimmed_at: Instant,
    /// Gone (410): no new attempts; the worker stops once the ones in flight are back.
    disabled: bool,
    /// After a failed read of the log: when to read it again.
    read_again_at: Option<Instant>,
}

impl Worker {
    async fn load(spec: WorkerSpec) -> Result<Worker, handoff_store::StoreError> {
        let cursor = spec
            .store
            .outbox_cursors()
            .await?
            .into_iter()
            .find(|(destination, _)| *destination == spec.destination)
            .map(|(_, seq)| seq)
            // No cursor: a destination made before its cursor existed starts at the head.
            .unwrap_or_else(|| spec.shared.head());
        let retries = spec
            .store
            .outbox_retries(&spec.destination)
            .await?
            .into_iter()
            .map(|retry| {
                (
                    retry.seq,
                    Waiting {
                        attempts: retry.attempts,
                        next_ms: retry.next_ms,
                    },
                )
            })
            .collect();
        Ok(Worker {
            spec,
            cursor,
            read_upto: cursor,
            buffer: VecDeque::new(),
            in_flight: BTreeSet::new(),
            retries,
            retries_in_flight: BTreeSet::new(),
            attempts: JoinSet::new(),
            pending: Batch::default(),
            pending_since: None,
            trimmed_at: Instant::now(),
            disabled: false,
            read_again_at: None,
        })
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Control>) {
        let mut live = self.spec.shared.subscribe();
        let mut shutdown = self.spec.shutdown.clone();
        let mut stop_reply = None;
        loop {
            if !self.disabled && stop_reply.is_none() {
                self.start_attempts().await;
            }
            if (self.disabled || stop_reply.is_some()) && self.attempts.is_empty() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = shutdown.fired() => break,
                control = inbox.recv() => match control {
                    Some(Control::Replay { after, reply }) => {
                        self.replay(after).await;
                        let _ = reply.send(());
                    }
                    Some(Control::Stop { reply }) => stop_reply = Some(reply),
                    None => break,
                },
                Some(joined) = self.attempts.join_next(), if !self.attempts.is_empty() => {
                    match joined {
                        Ok(outcome) => self.record(outcome),
                        Err(error) => tracing::error!(destination = %self.spec.destination, %error, "outbox: an attempt panicked"),
                    }
                }
                received = live.recv() => {
                    if let Ok(event) = received {
                        // The next event in line comes from the feed, sparing a read; a worker
                        // behind (a slow destination) reads the log instead, so the buffer
                        // stays small.
                        let next = self.buffer.back().map_or(self.read_upto, |e| e.seq) + 1;
                        if next == event.seq && self.buffer.len() < READ_PAGE {
                            self.buffer.push_back(event);
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            if self.flush_due() {
                self.flush().await;
            }
        }
        self.flush().await;
        if let Some(reply) = stop_reply {
            let _ = reply.send(());
        }
    }

    /// When the worker has something to do without being woken: a retry falls due, or the
    /// progress is to be written.
    fn next_wake(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if let Some(since) = self.pending_since {
            wake = wake.min(tokio::time::Instant::from_std(since + FLUSH_EVERY));
        }
        if let Some(at) = self.read_again_at {
            wake = wake.min(tokio::time::Instant::from_std(at));
        }
        // A retry that falls due with no room waits for an attempt to come back instead.
        let now_ms = wire::now().millis();
        let due_ms = self
            .retries
            .iter()
            .filter(|(seq, _)| !self.retries_in_flight.contains(seq))
            .map(|(_, waiting)| waiting.next_ms)
            .min();
        if let Some(due_ms) =
            due_ms.filter(|_| self.room() && !self.disabled && !self.reads_paused())
        {
            wake = wake.min(now + Duration::from_millis((due_ms - now_ms).max(0) as u64));
        }
        wake
    }

    /// Hands out attempts while there is room: due retries first, then new events in order.
    async fn start_attempts(&mut self) {
        let now_ms = wire::now().millis();
        while self.room() && !self.reads_paused() {
            let due = self
                .retries
                .iter()
                .find(|(seq, waiting)| {
                    waiting.next_ms <= now_ms && !self.retries_in_flight.contains(seq)
                })
                .map(|(seq, waiting)| (*seq, *waiting));
            let Some((seq, waiting)) = due else { break };
            match self.read_event(seq).await {
                Err(()) => break,
                Ok(Some(event)) => {
                    self.retries_in_flight.insert(seq);
                    self.launch(event, waiting.attempts + 1, true);
                }
                Ok(None) => {
                    // Not in the log any more (it never is removed; a defect if seen).
                    tracing::error!(destination = %self.spec.destination, seq, "outbox: a retry's event is not in the log; dropped");
                    self.retries.remove(&seq);
                    self.pending
                        .outbox_retries_cleared
                        .push((self.spec.destination.clone(), seq));
                    self.pending_since.get_or_insert_with(Instant::now);
                }
            }
        }
        while self.room() {
            let Some(event) = self.next_new_event().await else {
                break;
            };
            self.read_upto = event.seq;
            if !self.spec.deliver.wants(&event.event_type) || self.retries.contains_key(&event.seq)
            {
                continue;
            }
            self.in_flight.insert(event.seq);
            self.launch(event, 1, false);
        }
        if self.cursor_now() != self.cursor && self.pending_since.is_none() {
            // Only unwanted events were passed: the cursor moves with the next flush.
            self.pending_since = Some(Instant::now());
        }
    }

    /// Whether reads of the log wait after a failure.
    fn reads_paused(&self) -> bool {
        self.read_again_at.is_some_and(|at| Instant::now() < at)
    }

    fn room(&self) -> bool {
        self.attempts.len() < self.spec.max_in_flight.max(1)
    }

    /// The next committed event after `read_upto`, from the buffer or the log.
    async fn next_new_event(&mut self) -> Option<Arc<LiveEvent>> {
        while let Some(front) = self.buffer.front() {
            if front.seq <= self.read_upto {
                self.buffer.pop_front();
            } else {
                break;
            }
        }
        if let Some(front) = self.buffer.front() {
            if front.seq == self.read_upto + 1 {
                return self.buffer.pop_front();
            }
            self.buffer.clear();
        }
        let head = self.spec.shared.head();
        if self.read_upto >= head {
            return None;
        }
        if self.reads_paused() {
            return None;
        }
        self.read_again_at = None;
        match self
            .spec
            .store
            .events_after(self.read_upto, READ_PAGE)
            .await
        {
            Ok(page) => {
                for stored in page.into_iter().take_while(|e| e.seq <= head) {
                    self.buffer.push_back(Arc::new(live_event(stored)));
                }
                self.buffer.pop_front()
            }
            Err(error) => {
                tracing::warn!(destination = %self.spec.destination, %error, "outbox: reading the log failed; trying again shortly");
                self.read_again_at = Some(Instant::now() + Duration::from_secs(1));
                None
            }
        }
    }

    /// The event at `seq`; `Err` when the log could not be read (tried again shortly).
    async fn read_event(&mut self, seq: u64) -> Result<Option<Arc<LiveEvent>>, ()> {
        match self.spec.store.events_after(seq - 1, 1).await {
            Ok(page) => Ok(page
                .into_iter()
                .next()
                .filter(|e| e.seq == seq)
                .map(|e| Arc::new(live_event(e)))),
            Err(error) => {
                tracing::warn!(destination = %self.spec.destination, %error, "outbox: reading a retry's event failed");
                self.read_again_at = Some(Instant::now() + Duration::from_secs(1));
                Err(())
            }
        }
    }

    fn launch(&mut self, event: Arc<LiveEvent>, attempt: u32, retry: bool) {
        let future = self.spec.deliver.attempt(event.clone(), attempt);
        let seq = event.seq;
        self.attempts.spawn(async move {
            let at_ms = wire::now().millis();
            let started = Instant::now();
            let result = future.await;
            Outcome {
                seq,
                attempt,
                retry,
                at_ms,
                took: started.elapsed(),
                result,
            }
        });
    }

    /// The cursor the worker could write now: just below the oldest new event in flight.
    fn cursor_now(&self) -> u64 {
        match self.in_flight.first() {
            Some(oldest) => self.read_upto.min(oldest - 1),
            None => self.read_upto,
        }
    }

    fn record(&mut self, outcome: Outcome) {
        let Outcome {
            seq,
            attempt,
            retry,
            at_ms,
            took,
            result,
        } = outcome;
        if retry {
            self.retries_in_flight.remove(&seq);
        } else {
            self.in_flight.remove(&seq);
        }
        let destination = self.spec.destination.clone();
        let (outcome_name, next_ms) = if result.delivered() {
            if retry {
                self.retries.remove(&seq);
                self.pending
                    .outbox_retries_cleared
                    .push((destination.clone(), seq));
            }
            (
                if result.skipped {
                    "skipped"
                } else {
                    "delivered"
                },
                None,
            )
        } else if result.gone {
            // Kept as a retry, due at once: re-enabling the destination takes it up first.
            self.disabled = true;
            self.keep_for_retry(seq, attempt, at_ms);
            if let Some(record) = self.spec.observer.gone(
                result
                    .error
                    .as_deref()
                    .unwrap_or("the destination answered 410 Gone"),
            ) {
                self.pending.integrations_put.push(record);
            }
            ("disabled", None)
        } else {
            match self.retry_delay(attempt, result.retry_after) {
                Some(delay) => {
                    let next_ms = at_ms + took.as_millis() as i64 + delay.as_millis() as i64;
                    self.keep_for_retry(seq, attempt, next_ms);
                    ("failed", Some(next_ms))
                }
                None => {
                    self.retries.remove(&seq);
                    if retry {
                        self.pending
                            .outbox_retries_cleared
                            .push((destination.clone(), seq));
                    }
                    tracing::warn!(%destination, seq, attempts = attempt, "outbox: gave up on an event");
                    ("gave_up", None)
                }
            }
        };
        metrics::counter!("handoff_outbox_attempts_total", "destination" => destination.clone(), "outcome" => outcome_name).increment(1);
        self.pending.delivery_attempts.push(DeliveryAttempt {
            id: 0,
            destination,
            seq,
            attempt,
            at_ms,
            duration_ms: took.as_millis() as i64,
            status: result.status,
            outcome: outcome_name.to_owned(),
            detail: result.error,
            next_ms,
        });
        self.pending_since.get_or_insert_with(Instant::now);
    }

    fn keep_for_retry(&mut self, seq: u64, attempts: u32, next_ms: i64) {
        self.retries.insert(seq, Waiting { attempts, next_ms });
        self.pending.outbox_retries_set.push(OutboxRetry {
            destination: self.spec.destination.clone(),
            seq,
            attempts,
            next_ms,
        });
    }

    /// The wait before the attempt after `attempt`, or `None` when the schedule is used up.
    /// A `Retry-After` from the destination wins, up to a day; the schedule's waits get ±20 %
    /// of jitter, so that retries of many events do not all arrive at once.
    fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = *self
            .spec
            .settings
            .retry_schedule
            .get(attempt.saturating_sub(1) as usize)?;
        if let Some(asked) = retry_after {
            return Some(asked.min(MAX_RETRY_AFTER));
        }
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        Some(scheduled.mul_f64(jitter))
    }

    async fn replay(&mut self, after: u64) {
        self.read_upto = after.min(self.spec.shared.head());
        self.buffer.clear();
        self.pending_since.get_or_insert_with(Instant::now);
        self.flush().await;
    }

    fn flush_due(&self) -> bool {
        self.pending_since.is_some_and(|since| {
            since.elapsed() >= FLUSH_EVERY
                || self.pending.delivery_attempts.len() >= FLUSH_AT_ATTEMPTS
        })
    }

    /// Writes the cursor, retries and attempts gathered since the last flush, in one commit.
    async fn flush(&mut self) {
        let cursor = self.cursor_now();
        if cursor != self.cursor {
            self.pending
                .outbox_cursors
                .push((self.spec.destination.clone(), cursor));
        }
        if self.trimmed_at.elapsed() >= TRIM_EVERY && !self.pending.delivery_attempts.is_empty() {
            self.trimmed_at = Instant::now();
            self.pending.delivery_attempts_trimmed.push((
                self.spec.destination.clone(),
                self.spec.settings.attempts_kept,
            ));
        }
        if self.pending.is_empty() {
            self.pending_since = None;
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        match self.spec.store.commit(batch.clone()).await {
            Ok(()) => {
                self.cursor = cursor;
                self.pending_since = None;
                metrics::gauge!("handoff_outbox_lag_events", "destination" => self.spec.destination.clone())
                    .set(self.spec.shared.head().saturating_sub(cursor) as f64);
            }
            Err(error) => {
                tracing::warn!(destination = %self.spec.destination, %error, "outbox: writing progress failed; trying again");
                // Kept for the next flush; the cursor is recomputed then.
                let mut kept = batch;
                kept.outbox_cursors.clear();
                self.pending = kept;
            }
        }
    }
}

fn live_event(stored: handoff_store::StoredEvent) -> LiveEvent {
    LiveEvent {
        seq: stored.seq,
        event_type: stored.event_type,
        subject: stored.subject,
        agents: stored.agents,
        payload: stored.payload,
        created_at: None,
    }
}

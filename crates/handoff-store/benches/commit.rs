//! Commit throughput of `SqliteStore`: single-event batches from 1, 8 and 64 concurrent tasks,
//! counted in events per second, with `Durability::Fsync` and `Durability::Os`.
//!
//! Two ways of allocating seqs are measured, because they answer different questions:
//! - `locked`: the next seq is taken under a shared tokio `Mutex` held across the whole commit,
//!   as the conformance suite's concurrent test does. At most one batch is ever in flight, so
//!   this is the cost of one transaction, whatever the number of tasks.
//! - `pipelined`: the lock is held only until the batch is queued, and released before waiting
//!   for durability. Batches still reach the writer in seq order, but several can wait in its
//!   queue at once and share one transaction: this is what group commit buys.
//!
//! Run with `cargo bench -p handoff-store`; each benchmark is short (10 samples, 3 s).

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use handoff_store::{Batch, Durability, SeqNumber, SqliteStore, Store, StoredEvent};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;

/// Tasks committing at once. Pipelined runs keep at most this many batches queued, far below
/// the writer's queue capacity (1024), so queueing never has to wait for room and the first poll
/// of `commit` always queues the batch.
const TASK_COUNTS: [usize; 3] = [1, 8, 64];

#[derive(Clone, Copy)]
enum Seqs {
    Locked,
    Pipelined,
}

impl Seqs {
    fn name(self) -> &'static str {
        match self {
            Seqs::Locked => "locked",
            Seqs::Pipelined => "pipelined",
        }
    }
}

/// A store in its own temporary directory and the last seq handed out, kept across criterion's
/// calls so the log keeps growing as it would in service.
struct Bench {
    store: Arc<SqliteStore>,
    last: Arc<Mutex<SeqNumber>>,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new(durability: Durability) -> Bench {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(dir.path(), durability).expect("store opens");
        Bench {
            store: Arc::new(store),
            last: Arc::new(Mutex::new(0)),
            _dir: dir,
        }
    }

    /// Commits `total` single-event batches from `tasks` tasks; returns the wall time.
    async fn run(&self, tasks: usize, total: u64, seqs: Seqs) -> Duration {
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let share = total / tasks as u64 + u64::from((t as u64) < total % tasks as u64);
                let store = Arc::clone(&self.store);
                let last = Arc::clone(&self.last);
                tokio::spawn(async move {
                    for _ in 0..share {
                        commit_one(&store, &last, t, seqs).await;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("a committing task panicked");
        }
        started.elapsed()
    }
}

async fn commit_one(store: &SqliteStore, last: &Mutex<SeqNumber>, task: usize, seqs: Seqs) {
    let mut guard = last.lock().await;
    let seq = *guard + 1;
    let mut commit = store.commit(batch(seq, task));
    match seqs {
        Seqs::Locked => {
            if let Err(error) = commit.await {
                panic!("commit of seq {seq} failed: {error}");
            }
            *guard = seq;
        }
        Seqs::Pipelined => {
            // Polled once under the lock: that queues the batch, so seqs reach the writer in
            // order. If the commit then fails, later seqs fail too, and the panic says so.
            let first = std::future::poll_fn(|cx| Poll::Ready(commit.as_mut().poll(cx))).await;
            *guard = seq;
            drop(guard);
            let result = match first {
                Poll::Ready(result) => result,
                Poll::Pending => commit.await,
            };
            if let Err(error) = result {
                panic!("commit of seq {seq} failed: {error}");
            }
        }
    }
}

/// One `interaction.offered` with a payload of about the size of a real screen pop.
fn batch(seq: SeqNumber, task: usize) -> Batch {
    let payload = format!(
        r#"{{"specversion":"1.0","id":"ev-{seq}","source":"handoff","type":"interaction.offered","subject":"int-{seq}","seq":{seq},"data":{{"interaction":{{"id":"int-{seq}","caller":"+15551234567","context":{{"intent":"billing","account":"A-1001","verified":true}},"target":{{"agent":"agent-{task}"}},"priority":0}},"agent":"agent-{task}"}}}}"#
    );
    Batch {
        events: vec![StoredEvent {
            seq,
            event_type: "interaction.offered".to_owned(),
            subject: format!("int-{seq}"),
            time_ms: 1_700_000_000_000 + seq as i64,
            agents: vec![format!("agent-{task}")],
            payload,
        }],
        ..Batch::default()
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn commit_group(c: &mut Criterion, durability: Durability, group_name: &str, variants: &[Seqs]) {
    let rt = runtime();
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        // One criterion iteration is one event committed.
        .throughput(Throughput::Elements(1));
    for &seqs in variants {
        for tasks in TASK_COUNTS {
            // Pipelining one task is the locked case again.
            if matches!(seqs, Seqs::Pipelined) && tasks == 1 {
                continue;
            }
            let bench = Bench::new(durability);
            group.bench_with_input(
                BenchmarkId::new(seqs.name(), format!("{tasks}_tasks")),
                &tasks,
                |b, &tasks| b.iter_custom(|iters| rt.block_on(bench.run(tasks, iters, seqs))),
            );
        }
    }
    group.finish();
}

fn commit_fsync(c: &mut Criterion) {
    commit_group(
        c,
        Durability::Fsync,
        "commit_fsync",
        &[Seqs::Locked, Seqs::Pipelined],
    );
}

fn commit_os(c: &mut Criterion) {
    commit_group(
        c,
        Durability::Os,
        "commit_os",
        &[Seqs::Locked, Seqs::Pipelined],
    );
}

criterion_group!(benches, commit_fsync, commit_os);
criterion_main!(benches);

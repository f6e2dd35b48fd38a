//! handoff's API: the one crate that knows HTTP, WebSocket and JSON. It owns the engine (the
//! single writer that turns commands into committed events) and fans committed events out to
//! agent streams and Server-Sent Events.

pub mod auth;
pub mod calendar;
pub mod cluster;
pub mod connections;
pub mod egress;
pub mod engine;
pub mod error;
pub mod integrations;
pub mod json;
pub mod metrics_setup;
pub mod openapi;
pub mod pop_url;
pub mod rate_limit;
pub mod requests;
pub mod routes;
pub mod shutdown;
pub mod stats_feed;
pub mod stats_history;
pub mod uc;
pub mod web;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use handoff_store::Store;

pub use engine::{Engine, Shared};
pub use error::ApiError;
pub use shutdown::{channel as shutdown_channel, Shutdown, ShutdownTrigger};

/// What the API needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub max_context_bytes: usize,
    /// The largest request body: the context limit plus room for the other fields.
    pub max_body_bytes: usize,
    pub presence_grace: Duration,
    pub ping_interval: Duration,
    /// Per agent stream: the most bytes of events queued for a client that takes them too
    /// slowly; past it the stream closes with 4000 (docs/streams.md) and the client resumes
    /// from the log.
    pub stream_max_unsent_bytes: usize,
    /// Origins allowed beside the server's own.
    pub allowed_origins: Vec<String>,
    /// The configured `timezone`: where "today" starts. `Running::start` hands it to the core
    /// as its calendar too, so statistics and `least_occupied` agree on the day.
    pub timezone: calendar::Zone,
    pub core: handoff_core::Settings,
    /// The server-wide `pop_url` template: for offers from a queue without one of its own, and
    /// for offers to an agent named directly. None: such pops carry no `pop_url`.
    pub pop_url: Option<String>,
    /// How long an ended interaction stays in memory; after that it is read from the log, and
    /// lists no longer show it.
    pub ended_interactions_kept: Duration,
    /// How long an `Idempotency-Key` answers retries of its create with the same interaction.
    pub idempotency_window: Duration,
    /// Requests each key or session may make; None: no limit.
    pub rate_limit: Option<rate_limit::RateLimit>,
    /// What connectors and webhooks may reach although loopback or private (`egress_allow`).
    pub egress_allow: Vec<String>,
    /// Retries, attempts kept and deliveries in flight of webhooks and call logs.
    pub outbox: integrations::outbox::OutboxSettings,
    /// How long a create waits for CRM lookups: an answer in time rides in the offer, a later
    /// one follows as `interaction.enriched`.
    pub enrich_wait: Duration,
    /// Presence and call state from the UC and phone systems (XMPP, SIP, CSTA).
    pub uc: uc::UcSettings,
}

impl ApiSettings {
    /// When "today" began, in the configured time zone.
    pub fn day_start(&self, now: handoff_core::Timestamp) -> handoff_core::Timestamp {
        self.timezone.day_start(now)
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_context_bytes: 65536,
            max_body_bytes: 65536 + 65536,
            presence_grace: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            stream_max_unsent_bytes: 1 << 20,
            allowed_origins: Vec::new(),
            timezone: calendar::Zone::utc(),
            core: handoff_core::Settings::default(),
            pop_url: None,
            rate_limit: None,
            ended_interactions_kept: Duration::from_secs(25 * 60 * 60),
            idempotency_window: engine::DEFAULT_IDEMPOTENCY_WINDOW,
            egress_allow: Vec::new(),
            outbox: integrations::outbox::OutboxSettings::default(),
            enrich_wait: Duration::from_millis(150),
            uc: uc::UcSettings::default(),
        }
    }
}

/// Everything a request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub shared: Arc<Shared>,
    pub store: Arc<dyn Store>,
    pub settings: Arc<ApiSettings>,
    pub connections: Arc<connections::Connections>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub shutdown: Shutdown,
    pub stats_history: Arc<stats_history::StatsHistory>,
    pub rate_limiter: Arc<rate_limit::RateLimiter>,
    pub integrations: Arc<integrations::Integrations>,
    /// A follower of a cluster (`Running::start_follower`).
    pub follower: bool,
}

/// A recovered, running API: its router, and how to stop it.
pub struct Running {
    pub state: AppState,
    trigger: ShutdownTrigger,
    engine_task: tokio::task::JoinHandle<()>,
    /// Set on a follower of a cluster: its router forwards what it does not serve.
    forward: Option<cluster::ForwardState>,
}

/// What a follower node of a cluster needs beside the store.
pub struct FollowerLink {
    pub bus: Arc<cluster::Bus>,
    /// This node's name in the cluster.
    pub node: String,
    /// Where the writer is, kept current by whoever reads the lease.
    pub writer: cluster::WriterAddress,
}

/// How often a follower reads the keys again, so that a key revoked through another node
/// closes its streams here too.
const FOLLOWER_KEYS_EVERY: Duration = Duration::from_secs(2);

impl Running {
    /// Recovers the state from `store` and starts the engine and the presence timers.
    pub async fn start(store: Arc<dyn Store>, settings: ApiSettings) -> anyhow::Result<Running> {
        Running::start_as(store, settings, None).await
    }

    /// A follower: recovers the state from `store`, then keeps it in step with what the
    /// writer commits (from the bus, or the log), serves agent streams and Server-Sent Events,
    /// and forwards every other request to the writer. It runs no engine, no timers and no
    /// webhook or connector workers.
    pub async fn start_follower(
        store: Arc<dyn Store>,
        settings: ApiSettings,
        link: FollowerLink,
    ) -> anyhow::Result<Running> {
        Running::start_as(store, settings, Some(link)).await
    }

    async fn start_as(
        store: Arc<dyn Store>,
        mut settings: ApiSettings,
        follower: Option<FollowerLink>,
    ) -> anyhow::Result<Running> {
        settings.core.calendar = Arc::new(settings.timezone.clone());
        if let Some(template) = &settings.pop_url {
            pop_url::check(template).map_err(|reason| anyhow::anyhow!("pop_url: {reason}"))?;
        }
        let metrics = metrics_setup::handle();
        let (trigger, shutdown) = shutdown_channel();
        let (engine, engine_task) = match &follower {
            None => {
                engine::start(
                    store.clone(),
                    settings.core.clone(),
                    settings.pop_url.clone(),
                    settings.ended_interactions_kept,
                    settings.idempotency_window,
                    shutdown.clone(),
                )
                .await?
            }
            Some(_) => {
                let engine = engine::recover_follower(
                    store.clone(),
                    settings.core.clone(),
                    settings.ended_interactions_kept,
                )
                .await?;
                (engine, tokio::spawn(async {}))
            }
        };
        let shared = engine.shared.clone();
        let connections = Arc::new(connections::Connections::new(
            engine.clone(),
            settings.presence_grace,
            shutdown.clone(),
        ));
        if follower.is_none() {
            // After a restart nobody is connected: every agent's grace period starts now.
            let present: Vec<_> = shared
                .state()
                .agents()
                .filter(|a| a.presence.status != handoff_core::PresenceStatus::Offline)
                .map(|a| a.profile.id.clone())
                .collect();
            for agent in present {
                connections.start_grace(agent);
            }
        }
        let rate_limiter = Arc::new(rate_limit::RateLimiter::new(settings.rate_limit));
        let egress = egress::EgressPolicy::parse(&settings.egress_allow)
            .map_err(|reason| anyhow::anyhow!(reason))?;
        let integrations = integrations::Integrations::start(
            store.clone(),
            shared.clone(),
            shutdown.clone(),
            integrations::IntegrationSettings {
                egress,
                outbox: settings.outbox.clone(),
                enrich_wait: settings.enrich_wait,
                core: settings.core.clone(),
                dormant: follower.is_some(),
            },
        )
        .await?;
        let forward = follower.as_ref().map(|link| {
            cluster::ForwardState::new(
                link.node.clone(),
                link.writer.clone(),
                settings.max_body_bytes,
                store.clone(),
                shared.clone(),
            )
        });
        let state = AppState {
            follower: follower.is_some(),
            integrations,
            engine,
            shared,
            store,
            rate_limiter,
            settings: Arc::new(settings),
            connections,
            metrics,
            shutdown,
            stats_history: Arc::default(),
        };
        tokio::spawn(stats_feed::run(state.clone()));
        if follower.is_none() {
            uc::start(&state.engine, &state.settings.uc, &state.shutdown);
        }
        if let Some(link) = follower {
            tokio::spawn(cluster::replica::run(
                link.bus.clone(),
                state.store.clone(),
                state.shared.clone(),
                state.shutdown.clone(),
            ));
            tokio::spawn(cluster::links::run_follower_links(
                link.bus,
                link.node,
                state.shared.clone(),
                state.connections.clone(),
                state.shutdown.clone(),
            ));
            tokio::spawn(refresh_keys(state.clone()));
        }
        Ok(Running {
            state,
            trigger,
            engine_task,
            forward,
        })
    }

    /// The writer of a cluster: publishes what it commits on the bus and takes the
    /// followers' acks and open streams, until shutdown.
    pub fn start_writer_links(&self, bus: Arc<cluster::Bus>) {
        tokio::spawn(cluster::relay::run(
            bus.clone(),
            self.state.store.clone(),
            self.state.shared.clone(),
            self.state.shutdown.clone(),
        ));
        let engine = self.state.engine.clone();
        let connections = self.state.connections.clone();
        let shutdown = self.state.shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) =
                cluster::links::run_writer_links(bus, engine, connections, shutdown).await
            {
                tracing::error!(%error, "the writer cannot hear the followers");
            }
        });
    }

    pub fn router(&self) -> Router {
        let router = routes::router(self.state.clone());
        match &self.forward {
            None => router,
            Some(forward) => router.layer(axum::middleware::from_fn_with_state(
                forward.clone(),
                cluster::forward_writes,
            )),
        }
    }

    /// Stops streams, timers, the engine and the outbox workers; waits for the engine's last
    /// commit and for each worker to write where it stopped.
    pub async fn shutdown(self) {
        self.trigger.fire();
        let _ = self.engine_task.await;
        self.state.integrations.stop().await;
    }

    pub fn shutdown_signal(&self) -> Shutdown {
        self.state.shutdown.clone()
    }

    pub fn fire_shutdown(&self) {
        self.trigger.fire();
    }
}

/// A follower's keys, read again every `FOLLOWER_KEYS_EVERY` until shutdown.
async fn refresh_keys(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOWER_KEYS_EVERY) => {}
            _ = shutdown.fired() => return,
        }
        match state.store.keys().await {
            Ok(keys) => state.shared.replace_keys(keys),
            Err(error) => tracing::warn!(%error, "cannot read the keys again"),
        }
    }
}

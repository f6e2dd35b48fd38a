//! `handoff serve`: opens the store, recovers, makes sure an admin key exists, and serves the
//! API until SIGINT or SIGTERM, then shuts down in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use handoff_api::{ApiSettings, Running};
use handoff_core::{Command, QueueConfig};
use handoff_store::{Durability, StoreEngine};

use crate::config::{Config, StoreKind};
use handoff_client::local::StopSignal;

pub async fn run(config: Config, env: &HashMap<String, String>) -> anyhow::Result<()> {
    // Installed first: a signal during recovery is kept, not lost.
    let stop = StopSignal::install()?;
    match config.store_kind()? {
        StoreKind::Sqlite => run_embedded(config, env, stop).await,
        StoreKind::Postgres { url } => crate::cluster_node::run(config, env, url, stop).await,
    }
}

/// One node on the embedded SQLite store in `data_dir`.
async fn run_embedded(
    config: Config,
    env: &HashMap<String, String>,
    mut stop: StopSignal,
) -> anyhow::Result<()> {
    let store = handoff_store::open(StoreEngine::Sqlite {
        data_dir: config.data_dir.clone(),
        durability: durability(&config),
    })
    .await
    .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let running = Running::start(store, api_settings(&config)?)
        .await
        .context("recovery from the log failed")?;
    prepare_writer(&running, &config, env).await?;

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr().context("no local address")?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), durability = %config.durability, "handoff is serving");
    println!("handoff listening on http://{address}");

    let mut shutdown = running.shutdown_signal();
    let router = running.router();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.fired().await;
    });
    tokio::select! {
        result = server => {
            result.context("the server failed")?;
        }
        signal = stop.recv() => {
            tracing::info!(signal, "stopping");
            running.fire_shutdown();
        }
        reason = running.state.shared.writer_lost() => {
            running.fire_shutdown();
            running.shutdown().await;
            anyhow::bail!("{reason}");
        }
    }
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) fn durability(config: &Config) -> Durability {
    match config.durability.as_str() {
        "os" => Durability::Os,
        _ => Durability::Fsync,
    }
}

/// What the API needs of the configuration.
pub(crate) fn api_settings(config: &Config) -> anyhow::Result<ApiSettings> {
    let zone = config.zone()?;
    Ok(ApiSettings {
        max_context_bytes: config.max_context_bytes,
        max_body_bytes: config.max_context_bytes + 65536,
        presence_grace: Duration::from_secs(config.presence_grace_s),
        ping_interval: Duration::from_secs(config.ping_interval_s),
        allowed_origins: config.allowed_origins.clone(),
        timezone: zone.clone(),
        core: handoff_core::Settings {
            offer_timeout_s: config.offer_timeout_s,
            offline_on_disconnect: config.offline_on_disconnect,
            max_missed_offers: config.max_missed_offers,
            agent_max_wait_s: config.agent_max_wait_s,
            calendar: Arc::new(zone),
        },
        pop_url: config.pop_url.clone(),
        rate_limit: config.rate_limit(),
        egress_allow: config.egress_allow.clone(),
        outbox: config.outbox_settings()?,
        enrich_wait: Duration::from_millis(config.enrich_wait_ms),
        ended_interactions_kept: Duration::from_secs(config.ended_interactions_kept_s),
        idempotency_window: Duration::from_secs(config.idempotency_window_s),
        uc: config.uc_settings()?,
        stream_max_unsent_bytes: config.stream_max_unsent_bytes,
    })
}

/// What the node that writes does once recovered: the configuration file's queues and
/// connectors, and an admin key.
pub(crate) async fn prepare_writer(
    running: &Running,
    config: &Config,
    env: &HashMap<String, String>,
) -> anyhow::Result<()> {
    put_configured_queues(running, config.queue_configs()?).await?;
    put_configured_connectors(running, config.connector_requests()?).await?;
    ensure_admin_key(running, &config.data_dir, env.get("HANDOFF_ADMIN_TOKEN")).await
}

/// Puts the connectors of the configuration file, as the queues: the file wins over an edit
/// through the API; an unchanged one is left as it runs.
async fn put_configured_connectors(
    running: &Running,
    connectors: Vec<(String, handoff_protocol::PutConnectorRequest)>,
) -> anyhow::Result<()> {
    let integrations = &running.state.integrations;
    for (name, request) in connectors {
        if integrations.connector_request(&name).await.as_ref() == Some(&request) {
            continue;
        }
        integrations
            .put_connector(&name, request)
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "connector {name} of the configuration file: {}",
                    error.message
                )
            })?;
        tracing::info!(connector = %name, "connector of the configuration file put");
    }
    Ok(())
}

/// Puts the queues of the configuration file, after recovery and before serving: a queue in
/// the file is put at every start, so the file wins over an edit made through the API since.
/// An unchanged queue writes nothing. `queues` comes ordered so that an overflow queue of the
/// file is put before the queues that overflow to it; in a cycle, a queue whose overflow does
/// not exist yet is created without it first and completed once the others exist.
async fn put_configured_queues(running: &Running, queues: Vec<QueueConfig>) -> anyhow::Result<()> {
    let engine = &running.state.engine;
    let put = |config: QueueConfig| async move {
        let name = config.name.clone();
        engine
            .execute(Command::UpsertQueue { config })
            .await
            .map(|_| ())
            .with_context(|| format!("cannot put the queue {name} of the configuration file"))
    };
    let mut deferred = Vec::new();
    for config in &queues {
        let (exists, overflow_missing) = {
            let state = running.state.shared.state();
            let missing = config
                .overflow
                .as_ref()
                .is_some_and(|overflow| state.queue(overflow).is_none());
            (state.queue(&config.name).is_some(), missing)
        };
        let overflow_in_file = queues
            .iter()
            .any(|other| Some(&other.name) == config.overflow.as_ref());
        if overflow_missing && overflow_in_file {
            if !exists {
                let mut first = config.clone();
                first.overflow = None;
                put(first).await?;
            }
            deferred.push(config.clone());
            continue;
        }
        put(config.clone()).await?;
    }
    for config in deferred {
        put(config).await?;
    }
    if !queues.is_empty() {
        tracing::info!(
            queues = queues.len(),
            "queues of the configuration file are in place"
        );
    }
    Ok(())
}

/// On an empty data directory, creates the admin key and prints its token once; with
/// `HANDOFF_ADMIN_TOKEN`, makes sure that token is an admin key instead.
async fn ensure_admin_key(
    running: &Running,
    data_dir: &Path,
    from_env: Option<&String>,
) -> anyhow::Result<()> {
    let keys = running.state.shared.keys.all();
    if let Some(token) = from_env.filter(|t| !t.is_empty()) {
        let hash = handoff_api::auth::hash_token(token);
        if !keys.iter().any(|k| k.token_sha256 == hash) {
            add_admin_key(running, hash, "admin (HANDOFF_ADMIN_TOKEN)").await?;
            tracing::info!("admin key from HANDOFF_ADMIN_TOKEN registered");
        }
        return Ok(());
    }
    if keys.iter().any(|k| k.role == "admin") {
        return Ok(());
    }
    let token = handoff_api::auth::generate_token();
    let path = admin_token_path(data_dir);
    // The file first: a key whose token was never shown to anyone would lock the admin out.
    write_private(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
    add_admin_key(
        running,
        handoff_api::auth::hash_token(&token),
        "admin (created at first start)",
    )
    .await?;
    println!(
        "admin token (shown once, also in {}): {token}",
        path.display()
    );
    Ok(())
}

async fn add_admin_key(
    running: &Running,
    token_sha256: [u8; 32],
    name: &str,
) -> anyhow::Result<()> {
    let record = handoff_api::auth::new_key(
        "key_",
        handoff_api::auth::Role::Admin,
        name,
        None,
        token_sha256,
    );
    running
        .state
        .engine
        .add_key(record)
        .await
        .context("cannot store the admin key")
}

pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

//! `handoff serve` on PostgreSQL: one node of a cluster. Every node serves agent streams and
//! Server-Sent Events; the one that holds the writer lease in the store also runs the engine
//! (routing, timers, webhooks), and the others forward every other request to it.
//!
//! A node starts as a follower and tries for the lease every quarter of its time to live.
//! When it gets it, it fences the store with the lease's epoch (from then on a commit of a
//! node whose lease was taken over fails), recovers from the log, and swaps its router for the
//! writer's. A writer that cannot renew its lease within its time to live stops with an error:
//! its commits already fail, and a supervisor starts it again as a follower. A writer that is
//! stopped gives the lease up, so another node takes over at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::IntoFuture;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::Request;
use axum::Router;
use handoff_api::cluster::Bus;
use handoff_api::{FollowerLink, Running};
use handoff_store::{PostgresStore, Store};
use tower::ServiceExt;

use crate::config::Config;
use crate::serve::{api_settings, durability, prepare_writer};
use handoff_client::local::StopSignal;

/// The router requests go to now: a follower's, then a writer's.
type CurrentRouter = Arc<RwLock<Router>>;

pub async fn run(
    config: Config,
    env: &HashMap<String, String>,
    url: String,
    mut stop: StopSignal,
) -> anyhow::Result<()> {
    let store: Arc<PostgresStore> =
        handoff_store::open_postgres(&url, &config.store_schema, durability(&config))
            .await
            .with_context(|| {
                format!(
                    "cannot open the PostgreSQL store (schema {})",
                    config.store_schema
                )
            })?;
    let dyn_store: Arc<dyn Store> = store.clone();
    let settings = api_settings(&config)?;
    let node = config.node_id.clone().unwrap_or_else(default_node_id);
    // The lease's holder is this process, not the node's name: a node restarted under the
    // same name before its old lease expired must take it with a new epoch, like any other.
    let holder = format!("{node}#{:08x}", rand::random::<u32>());
    let ttl = Duration::from_millis(config.lease_ttl_ms);
    let bus = match &config.bus {
        Some(url) => Some(Arc::new(
            Bus::connect(url, &config.cluster, config.bus_replicas).await?,
        )),
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr().context("no local address")?;
    let advertise = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    let current: CurrentRouter = Arc::new(RwLock::new(starting_router()));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, switching_router(current.clone()))
            .with_graceful_shutdown(async move {
                let _ = server_stopped.await;
            })
            .into_future(),
    );
    tracing::info!(%address, %node, %advertise, cluster = %config.cluster, "handoff is serving as a node of a cluster");
    println!("handoff listening on http://{address}");

    let (writer_address, writer_rx) = tokio::sync::watch::channel(None::<String>);
    let mut follower: Option<Running> = None;
    let mut told_standby = false;
    let grant = loop {
        match store.try_acquire_lease(&holder, &advertise, ttl).await {
            Ok(Some(grant)) => break grant,
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot try for the writer lease"),
        }
        match store.lease_holder().await {
            Ok(holder) => {
                let address = holder
                    .filter(|lease| lease.expires_in_ms > 0)
                    .map(|lease| lease.address);
                let changed = writer_address.send_if_modified(|current| {
                    let changed = *current != address;
                    *current = address.clone();
                    changed
                });
                if changed {
                    match &address {
                        Some(address) => tracing::info!(writer = %address, "the writer changed"),
                        None => tracing::warn!("no node holds the writer lease; writes are refused with 503 until one does"),
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the writer lease"),
        }
        match (&bus, &follower) {
            (Some(bus), None) => {
                let running = Running::start_follower(
                    dyn_store.clone(),
                    settings.clone(),
                    FollowerLink {
                        bus: bus.clone(),
                        node: node.clone(),
                        writer: writer_rx.clone(),
                    },
                )
                .await
                .context("recovery from the log failed")?;
                set_router(&current, running.router());
                tracing::info!(%node, "following the writer");
                follower = Some(running);
            }
            (None, _) if !told_standby => {
                tracing::info!(%node, "another node holds the writer lease; without a bus this one waits for it and serves nothing until then");
                told_standby = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(ttl / 4) => {}
            signal = stop.recv() => {
                tracing::info!(signal, "stopping");
                if let Some(running) = follower.take() {
                    running.fire_shutdown();
                    running.shutdown().await;
                }
                let _ = stop_server.send(());
                let _ = server.await;
                return Ok(());
            }
        }
    };

    let epoch = grant.epoch;
    let head = store
        .fence(epoch)
        .await
        .context("cannot fence the store with the new lease")?;
    tracing::info!(%node, %holder, epoch, head, "this node holds the writer lease");
    metrics::gauge!("handoff_writer").set(1.0);
    let running = Running::start(dyn_store.clone(), settings.clone())
        .await
        .context("recovery from the log failed")?;
    if env.get("HANDOFF_ADMIN_TOKEN").is_none_or(|t| t.is_empty()) {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    }
    prepare_writer(&running, &config, env).await?;
    if let Some(bus) = &bus {
        running.start_writer_links(bus.clone());
    }
    set_router(&current, running.router());
    writer_address.send_replace(Some(advertise.clone()));
    if let Some(old) = follower.take() {
        // Its streams close; their desktops come back to this node's router and resume.
        old.fire_shutdown();
        old.shutdown().await;
    }

    let mut renewed = Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            signal = stop.recv() => {
                tracing::info!(signal, "stopping");
                break Ok(());
            }
            reason = running.state.shared.writer_lost() => {
                break Err(anyhow::anyhow!(
                    "{reason}; this node stops so that it can start again from the log"
                ));
            }
        }
        match store.renew_lease(&holder, epoch, ttl).await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                break Err(anyhow::anyhow!(
                    "this node lost the writer lease (epoch {epoch}) to another node; it stops \
                     so that it can start again as a follower"
                ))
            }
            Err(error) if renewed.elapsed() < ttl => {
                tracing::warn!(%error, "cannot renew the writer lease; trying again")
            }
            Err(error) => {
                break Err(anyhow::anyhow!(
                    "this node could not renew the writer lease (epoch {epoch}) within its {} ms \
                     ({error}); it stops, as its commits would be refused",
                    ttl.as_millis()
                ))
            }
        }
    };
    metrics::gauge!("handoff_writer").set(0.0);
    running.fire_shutdown();
    running.shutdown().await;
    if outcome.is_ok() {
        if let Err(error) = store.release_lease(&holder, epoch).await {
            tracing::warn!(%error, "cannot give the writer lease up; another node takes over when it expires");
        }
    }
    let _ = stop_server.send(());
    let _ = server.await;
    tracing::info!("stopped");
    outcome
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

fn set_router(current: &CurrentRouter, router: Router) {
    *current
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = router;
}

/// Answers 503 until the node has recovered and knows its role.
fn starting_router() -> Router {
    Router::new().fallback(|| async {
        let mut error = handoff_api::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "this node is still starting",
        );
        error.retry_after_s = Some(1);
        error
    })
}

/// One router in front, handing each request to the current one.
fn switching_router(current: CurrentRouter) -> Router {
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let router = current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        async move {
            Ok::<_, Infallible>(
                router
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {}),
            )
        }
    }))
}

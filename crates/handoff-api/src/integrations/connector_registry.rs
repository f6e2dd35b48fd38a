//! The registry's side of CRM connectors: their configuration, their action workers, and the
//! lookups the create handler starts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_protocol::{ConnectorView, Deliveries, LookupResult, LookupTrial, PutConnectorRequest};
use handoff_store::{Batch, IntegrationRecord};
use tokio::task::JoinHandle;

use super::connectors::{self, ActionDelivery, Connector, LookupOutcome, StoredConnector};
use super::outbox::{self, OutboxObserver, WorkerHandle, WorkerSpec};
use super::Integrations;
use crate::error::ApiError;
use crate::wire::{format_time, now};

pub(super) struct ConnectorEntry {
    stored: StoredConnector,
    connector: Arc<Connector>,
    workers: Vec<WorkerHandle>,
}

/// Connector actions are never disabled by their CRM: a 410 there is about one record.
struct NeverGone;

impl OutboxObserver for NeverGone {
    fn gone(&self, _reason: &str) -> Option<IntegrationRecord> {
        None
    }
}

/// A lookup started for a new interaction: its connector and its answer to come.
pub struct StartedLookup {
    pub connector: String,
    pub answer: JoinHandle<LookupOutcome>,
}

fn unknown_connector(name: &str) -> ApiError {
    ApiError::not_found("unknown_connector", format!("no connector named {name}"))
}

fn invalid(error: connectors::Invalid) -> ApiError {
    ApiError::unprocessable(
        "invalid_field",
        format!("{}: {}", error.field, error.message),
    )
    .with_field(error.field)
}

impl Integrations {
    /// Reads the connectors from the store and starts their workers.
    pub(super) async fn load_connectors(&self) -> anyhow::Result<()> {
        let mut entries = self.connectors.lock().await;
        for record in self.store.integrations().await? {
            if record.kind != connectors::KIND {
                continue;
            }
            let stored: StoredConnector = match serde_json::from_str(&record.config) {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::error!(connector = %record.name, %error, "a stored connector cannot be read; it is not started");
                    continue;
                }
            };
            match connectors::build(&record.name, &stored.request, &self.egress) {
                Ok(connector) => {
                    let mut entry = ConnectorEntry {
                        stored,
                        connector: Arc::new(connector),
                        workers: Vec::new(),
                    };
                    self.start_connector_workers(&mut entry);
                    entries.insert(record.name, entry);
                }
                Err(error) => tracing::error!(
                    connector = %record.name, field = %error.field, message = %error.message,
                    "a stored connector is no longer valid here (egress rules?); it is not started"
                ),
            }
        }
        self.publish_lookups(&entries);
        Ok(())
    }

    fn start_connector_workers(&self, entry: &mut ConnectorEntry) {
        if !entry.connector.enabled {
            return;
        }
        for action in &entry.connector.actions {
            let deliver = ActionDelivery {
                action: action.clone(),
                client: self.client().clone(),
                egress: self.egress.clone(),
                shared: self.shared.clone(),
                store: self.store.clone(),
                core: self.core.clone(),
            };
            entry.workers.push(outbox::start(WorkerSpec {
                destination: connectors::destination(&action.connector, &action.name),
                deliver: Arc::new(deliver),
                observer: Arc::new(NeverGone),
                store: self.store.clone(),
                shared: self.shared.clone(),
                settings: self.outbox.clone(),
                shutdown: self.shutdown.clone(),
                max_in_flight: self.outbox.max_in_flight,
            }));
        }
    }

    async fn stop_workers(entry: &mut ConnectorEntry) {
        for worker in entry.workers.drain(..) {
            worker.stop().await;
        }
    }

    pub(super) async fn stop_connectors(&self) {
        let mut entries = self.connectors.lock().await;
        for entry in entries.values_mut() {
            Self::stop_workers(entry).await;
        }
    }

    fn publish_lookups(&self, entries: &BTreeMap<String, ConnectorEntry>) {
        let lookups: Vec<_> = entries
            .values()
            .filter(|entry| entry.connector.enabled)
            .filter_map(|entry| entry.connector.lookup.clone())
            .collect();
        *self.lookups.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(lookups);
    }

    /// How long a create waits for lookups.
    pub fn enrich_wait(&self) -> Duration {
        self.enrich_wait
    }

    /// Starts every enabled connector's lookup for a new interaction; none when no connector
    /// has one (the usual case costs a lock and a clone of an empty list).
    pub fn start_lookups(
        &self,
        variables: impl FnOnce() -> BTreeMap<&'static str, minijinja::Value>,
    ) -> Vec<StartedLookup> {
        let lookups = self
            .lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if lookups.is_empty() {
            return Vec::new();
        }
        let variables = variables();
        lookups
            .iter()
            .map(|lookup| {
                let (lookup, variables) = (lookup.clone(), variables.clone());
                let (client, egress) = (self.client().clone(), self.egress.clone());
                StartedLookup {
                    connector: lookup.connector.clone(),
                    answer: tokio::spawn(
                        async move { lookup.run(variables, &client, &egress).await },
                    ),
                }
            })
            .collect()
    }

    fn connector_view(&self, name: &str, entry: &ConnectorEntry) -> ConnectorView {
        let connector = &entry.connector;
        let time = |ms: i64| format_time(handoff_core::Timestamp::from_millis(ms));
        let mut missing: Vec<String> = connector
            .templates()
            .into_iter()
            .flat_map(super::templates::missing_secrets)
            .collect();
        missing.sort();
        missing.dedup();
        ConnectorView {
            name: name.to_owned(),
            preset: entry.stored.request.preset.clone(),
            settings: connector.settings.clone(),
            lookup: connector.lookup_view.clone(),
            log: connector.log_view.clone(),
            actions: connector.actions_view.clone(),
            agent_ids: connector.agent_ids.clone(),
            enabled: connector.enabled,
            missing_secrets: missing,
            created_at: time(entry.stored.created_ms),
            updated_at: time(entry.stored.updated_ms),
        }
    }

    pub async fn connectors(&self) -> Vec<ConnectorView> {
        let entries = self.connectors.lock().await;
        entries
            .iter()
            .map(|(name, entry)| self.connector_view(name, entry))
            .collect()
    }

    /// The request a connector was last put with, if it exists.
    pub async fn connector_request(&self, name: &str) -> Option<PutConnectorRequest> {
        let entries = self.connectors.lock().await;
        entries.get(name).map(|entry| entry.stored.request.clone())
    }

    pub async fn connector(&self, name: &str) -> Result<ConnectorView, ApiError> {
        let entries = self.connectors.lock().await;
        let entry = entries.get(name).ok_or_else(|| unknown_connector(name))?;
        Ok(self.connector_view(name, entry))
    }

    /// Creates or replaces a connector; true when created. A new connector's actions start
    /// with the events committed after it; a replaced one's go on from where they were.
    pub async fn put_connector(
        &self,
        name: &str,
        request: PutConnectorRequest,
    ) -> Result<(ConnectorView, bool), ApiError> {
        let connector = connectors::build(name, &request, &self.egress).map_err(invalid)?;
        let mut entries = self.connectors.lock().await;
        let now_ms = now().millis();
        let existing = entries.get_mut(name);
        let created = existing.is_none();
        let created_ms = existing.as_ref().map_or(now_ms, |e| e.stored.created_ms);
        if let Some(entry) = existing {
            Self::stop_workers(entry).await;
        }
        let stored = StoredConnector {
            request,
            created_ms,
            updated_ms: now_ms,
        };
        let mut batch = Batch {
            integrations_put: vec![IntegrationRecord {
                kind: connectors::KIND.to_owned(),
                name: name.to_owned(),
                config: serde_json::to_string(&stored).map_err(ApiError::internal)?,
                updated_ms: now_ms,
            }],
            ..Batch::default()
        };
        // An action new to this connector starts at the head; one it had goes on.
        let known: Vec<String> = entries
            .get(name)
            .map(|e| e.connector.actions.iter().map(|a| a.name.clone()).collect())
            .unwrap_or_default();
        for action in &connector.actions {
            if !known.contains(&action.name) {
                batch.outbox_cursors.push((
                    connectors::destination(name, &action.name),
                    self.shared.head(),
                ));
            }
        }
        for gone in known
            .iter()
            .filter(|k| !connector.actions.iter().any(|a| &a.name == *k))
        {
            batch
                .outbox_deleted
                .push(connectors::destination(name, gone));
        }
        if let Err(error) = self.store.commit(batch).await {
            if let Some(entry) = entries.get_mut(name) {
                self.start_connector_workers(entry);
            }
            return Err(ApiError::unavailable(error));
        }
        let mut entry = ConnectorEntry {
            stored,
            connector: Arc::new(connector),
            workers: Vec::new(),
        };
        self.start_connector_workers(&mut entry);
        let view = self.connector_view(name, &entry);
        entries.insert(name.to_owned(), entry);
        self.publish_lookups(&entries);
        Ok((view, created))
    }

    pub async fn delete_connector(&self, name: &str) -> Result<(), ApiError> {
        let mut entries = self.connectors.lock().await;
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| unknown_connector(name))?;
        Self::stop_workers(entry).await;
        let batch = Batch {
            integrations_deleted: vec![(connectors::KIND.to_owned(), name.to_owned())],
            outbox_deleted: entry
                .connector
                .actions
                .iter()
                .map(|a| connectors::destination(name, &a.name))
                .collect(),
            ..Batch::default()
        };
        if let Err(error) = self.store.commit(batch).await {
            self.start_connector_workers(entry);
            return Err(ApiError::unavailable(error));
        }
        entries.remove(name);
        self.publish_lookups(&entries);
        Ok(())
    }

    pub async fn connector_deliveries(
        &self,
        name: &str,
        action: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Deliveries, ApiError> {
        {
            let entries = self.connectors.lock().await;
            let entry = entries.get(name).ok_or_else(|| unknown_connector(name))?;
            if !entry.connector.actions.iter().any(|a| a.name == action) {
                return Err(ApiError::not_found(
                    "unknown_action",
                    format!("connector {name} has no action named {action}"),
                ));
            }
        }
        self.deliveries_of(connectors::destination(name, action), before, limit)
            .await
    }

    /// Runs a connector's lookup for a caller, as a create would, without a call.
    pub async fn try_lookup(
        &self,
        name: &str,
        trial: LookupTrial,
    ) -> Result<LookupResult, ApiError> {
        let lookup = {
            let entries = self.connectors.lock().await;
            let entry = entries.get(name).ok_or_else(|| unknown_connector(name))?;
            entry.connector.lookup.clone().ok_or_else(|| {
                ApiError::conflict("no_lookup", format!("connector {name} has no lookup"))
            })?
        };
        let context = serde_json::Value::Object(trial.context.unwrap_or_default());
        let id = handoff_core::InteractionId::parse("ix_trial").map_err(ApiError::internal)?;
        let trial_queue = handoff_core::Target::Queue(
            handoff_core::QueueName::parse("trial").map_err(ApiError::internal)?,
        );
        let variables = connectors::lookup_variables(connectors::CallFacts {
            id: &id,
            caller: trial.caller.as_deref(),
            dialed: trial.dialed.as_deref(),
            channel: "voice",
            call_id: None,
            priority: 0,
            context: &context,
            target: &trial_queue,
        });
        let started = Instant::now();
        let outcome = lookup.run(variables, self.client(), &self.egress).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        Ok(match outcome {
            LookupOutcome::Found { fields, cached } => LookupResult {
                outcome: "found".to_owned(),
                fields: serde_json::from_str(&fields).ok(),
                error: None,
                cached,
                duration_ms,
            },
            LookupOutcome::Failed(error) => LookupResult {
                outcome: "failed".to_owned(),
                fields: None,
                error: Some(error),
                cached: false,
                duration_ms,
            },
            LookupOutcome::Skipped => LookupResult {
                outcome: "skipped".to_owned(),
                fields: None,
                error: None,
                cached: false,
                duration_ms,
            },
        })
    }
}

//! Integrations: webhooks (and CRM connectors) as configured, each with its outbox worker.
//!
//! The registry is the one place that changes them: a change stops the destination's worker
//! (which writes what it did), writes the new configuration, and starts a worker on it, so the
//! store, the registry and the running worker always agree.

pub mod connector_registry;
pub mod connectors;
pub mod outbox;
pub mod presets;
pub mod templates;
pub mod webhooks;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use handoff_protocol::{
    Deliveries, DeliveryAttemptView, PendingDeliveryView, PutWebhookRequest, WebhookReplay,
    WebhookView,
};
use handoff_store::{Batch, IntegrationRecord, Store};

use self::outbox::{OutboxSettings, WorkerHandle, WorkerSpec};
use self::webhooks::{
    Disabled, StoredSecret, WebhookConfig, WebhookDelivery, WebhookObserver, WebhookSecret,
};
use crate::egress::EgressPolicy;
use crate::engine::Shared;
use crate::error::ApiError;
use crate::shutdown::Shutdown;
use crate::wire::{format_time, now};

/// Event types by pattern: `interaction.offered` matches itself, `agent.*` every type that
/// starts `agent.`, `*` all; no patterns matches all.
#[derive(Debug, Clone, Default)]
pub struct TypeFilter(pub Vec<String>);

impl TypeFilter {
    pub fn matches(&self, event_type: &str) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => event_type.starts_with(prefix),
                    None => pattern == event_type,
                })
    }

    /// A pattern as configured: `*`, or lower-case words joined by dots, with an optional `.*`
    /// at the end.
    pub fn check(pattern: &str) -> Result<(), String> {
        let body = pattern.strip_suffix(".*").unwrap_or(pattern);
        let words_ok = body.split('.').all(|word| {
            !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
        if pattern == "*" || (words_ok && pattern.len() <= 128) {
            Ok(())
        } else {
            Err(format!(
                "{pattern:?} is not an event type (like interaction.offered), a prefix (like interaction.*) or *"
            ))
        }
    }
}

/// What the registry needs from the server's settings.
#[derive(Debug, Clone, Default)]
pub struct IntegrationSettings {
    pub egress: EgressPolicy,
    pub outbox: OutboxSettings,
    /// How long a create waits for CRM lookups before routing without them.
    pub enrich_wait: std::time::Duration,
    /// The core's settings, to make interactions again from their events.
    pub core: handoff_core::Settings,
    /// A follower of a cluster: nothing is loaded and no worker runs (the writer's node
    /// delivers, and every request about integrations is forwarded to it).
    pub dormant: bool,
}

struct WebhookEntry {
    config: WebhookConfig,
    /// Set by the worker on a 410, before its record is written.
    disabled_by_receiver: Arc<Mutex<Option<Disabled>>>,
    worker: Option<WorkerHandle>,
}

impl WebhookEntry {
    /// The configuration with what the worker found since it was read.
    fn current(&self) -> WebhookConfig {
        let mut config = self.config.clone();
        if let Some(disabled) = self
            .disabled_by_receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            config.disabled = Some(disabled);
        }
        config
    }
}

/// Webhooks and their workers.
pub struct Integrations {
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    egress: Arc<EgressPolicy>,
    outbox: Arc<OutboxSettings>,
    /// Made when the first webhook or connector needs it: a server with none never loads the
    /// TLS roots.
    client: std::sync::OnceLock<reqwest::Client>,
    /// Held across a change (stop, write, start), so changes to integrations run one at a time.
    webhooks: tokio::sync::Mutex<BTreeMap<String, WebhookEntry>>,
    /// Held across a change, as `webhooks`.
    connectors: tokio::sync::Mutex<BTreeMap<String, connector_registry::ConnectorEntry>>,
    /// The lookups of the enabled connectors, for the create handler: read on every create,
    /// replaced on every change.
    lookups: Mutex<Arc<Vec<Arc<connectors::Lookup>>>>,
    enrich_wait: std::time::Duration,
    core: handoff_core::Settings,
}

impl Integrations {
    /// Reads the integrations from the store and starts a worker for each active one.
    pub async fn start(
        store: Arc<dyn Store>,
        shared: Arc<Shared>,
        shutdown: Shutdown,
        settings: IntegrationSettings,
    ) -> anyhow::Result<Arc<Integrations>> {
        let egress = Arc::new(settings.egress);
        let integrations = Arc::new(Integrations {
            client: std::sync::OnceLock::new(),
            egress,
            outbox: Arc::new(settings.outbox),
            store: store.clone(),
            shared,
            shutdown,
            webhooks: tokio::sync::Mutex::new(BTreeMap::new()),
            connectors: tokio::sync::Mutex::new(BTreeMap::new()),
            lookups: Mutex::default(),
            enrich_wait: settings.enrich_wait,
            core: settings.core,
        });
        if settings.dormant {
            return Ok(integrations);
        }
        let mut webhooks = integrations.webhooks.lock().await;
        for record in store.integrations().await? {
            if record.kind != webhooks::KIND {
                continue;
            }
            let config: WebhookConfig = match serde_json::from_str(&record.config) {
                Ok(config) => config,
                Err(error) => {
                    tracing::error!(webhook = %record.name, %error, "a stored webhook cannot be read; it is not started");
                    continue;
                }
            };
            let mut entry = WebhookEntry {
                config,
                disabled_by_receiver: Arc::default(),
                worker: None,
            };
            integrations.start_worker(&record.name, &mut entry);
            webhooks.insert(record.name, entry);
        }
        drop(webhooks);
        integrations.load_connectors().await?;
        Ok(integrations)
    }

    /// The HTTP client of webhooks and connectors.
    fn client(&self) -> &reqwest::Client {
        self.client
            .get_or_init(|| crate::egress::client(self.egress.clone()))
    }

    fn start_worker(&self, name: &str, entry: &mut WebhookEntry) {
        if !entry.config.active() {
            return;
        }
        let deliver = WebhookDelivery {
            types: TypeFilter(entry.config.types.clone()),
            config: entry.config.clone(),
            client: self.client().clone(),
            egress: self.egress.clone(),
        };
        let observer = WebhookObserver {
            name: name.to_owned(),
            config: entry.config.clone(),
            disabled: entry.disabled_by_receiver.clone(),
        };
        entry.worker = Some(outbox::start(WorkerSpec {
            destination: webhooks::destination(name),
            deliver: Arc::new(deliver),
            observer: Arc::new(observer),
            store: self.store.clone(),
            shared: self.shared.clone(),
            settings: self.outbox.clone(),
            shutdown: self.shutdown.clone(),
            max_in_flight: entry.config.max_in_flight,
        }));
    }

    /// Stops every worker, each once it wrote what it did.
    pub async fn stop(&self) {
        let mut webhooks = self.webhooks.lock().await;
        for entry in webhooks.values_mut() {
            if let Some(worker) = entry.worker.take() {
                worker.stop().await;
            }
        }
        drop(webhooks);
        self.stop_connectors().await;
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookView>, ApiError> {
        let webhooks = self.webhooks.lock().await;
        let cursors = self.cursors().await?;
        let mut views = Vec::with_capacity(webhooks.len());
        for (name, entry) in webhooks.iter() {
            views.push(self.view(name, &entry.current(), &cursors, None).await?);
        }
        Ok(views)
    }

    pub async fn webhook(&self, name: &str) -> Result<WebhookView, ApiError> {
        let webhooks = self.webhooks.lock().await;
        let entry = webhooks.get(name).ok_or_else(|| unknown_webhook(name))?;
        let cursors = self.cursors().await?;
        self.view(name, &entry.current(), &cursors, None).await
    }

    async fn cursors(&self) -> Result<BTreeMap<String, u64>, ApiError> {
        Ok(self
            .store
            .outbox_cursors()
            .await
            .map_err(ApiError::internal)?
            .into_iter()
            .collect())
    }

    async fn view(
        &self,
        name: &str,
        config: &WebhookConfig,
        cursors: &BTreeMap<String, u64>,
        new_secret: Option<String>,
    ) -> Result<WebhookView, ApiError> {
        let destination = webhooks::destination(name);
        let pending = self
            .store
            .outbox_retries(&destination)
            .await
            .map_err(ApiError::internal)?
            .len() as u64;
        let now_ms = now().millis();
        let previous_expires = config
            .secrets
            .iter()
            .skip(1)
            .filter_map(|s| s.expires_ms)
            .filter(|expires| *expires > now_ms)
            .max();
        Ok(WebhookView {
            name: name.to_owned(),
            url: config.url.clone(),
            types: config.types.clone(),
            active: config.active(),
            enabled: config.enabled,
            disabled_at: config
                .disabled
                .as_ref()
                .map(|d| format_time(handoff_core::Timestamp::from_millis(d.at_ms))),
            disabled_reason: config.disabled.as_ref().map(|d| d.reason.clone()),
            max_in_flight: config.max_in_flight as i64,
            timeout_ms: config.timeout_ms as i64,
            description: config.description.clone(),
            secret: new_secret,
            previous_secret_expires_at: previous_expires
                .map(|ms| format_time(handoff_core::Timestamp::from_millis(ms))),
            cursor_seq: cursors
                .get(&destination)
                .copied()
                .unwrap_or_else(|| self.shared.head()),
            head_seq: self.shared.head(),
            pending_retries: pending,
            created_at: format_time(handoff_core::Timestamp::from_millis(config.created_ms)),
            updated_at: format_time(handoff_core::Timestamp::from_millis(config.updated_ms)),
        })
    }

    /// Creates or replaces a webhook; true when created. A new webhook gets the events
    /// committed after it; a replaced one goes on from where it was.
    pub async fn put_webhook(
        &self,
        name: &str,
        request: PutWebhookRequest,
    ) -> Result<(WebhookView, bool), ApiError> {
        let checked = check_webhook(&self.egress, &request)?;
        let mut webhooks = self.webhooks.lock().await;
        let now_ms = now().millis();
        let existing = webhooks.get(name).map(WebhookEntry::current);
        let mut new_secret = None;
        let secrets = match (&checked.secret, &existing) {
            (Some(secret), Some(old))
                if old.secrets.first().map(|s| s.secret.as_str()) != Some(secret.as_str()) =>
            {
                // A rotation: the new secret signs first, the old one for a day more.
                let mut secrets = vec![StoredSecret {
                    secret: secret.as_str().to_owned(),
                    expires_ms: None,
                }];
                if let Some(previous) = old.secrets.first() {
                    secrets.push(StoredSecret {
                        secret: previous.secret.clone(),
                        expires_ms: Some(now_ms + webhooks::SECRET_OVERLAP.as_millis() as i64),
                    });
                }
                secrets
            }
            (_, Some(old)) => old
                .secrets
                .iter()
                .filter(|s| s.expires_ms.is_none_or(|expires| expires > now_ms))
                .cloned()
                .collect(),
            (Some(secret), None) => vec![StoredSecret {
                secret: secret.as_str().to_owned(),
                expires_ms: None,
            }],
            (None, None) => {
                let made = WebhookSecret::generate();
                new_secret = Some(made.as_str().to_owned());
                vec![StoredSecret {
                    secret: made.as_str().to_owned(),
                    expires_ms: None,
                }]
            }
        };
        let config = WebhookConfig {
            url: checked.url,
            types: checked.types,
            secrets,
            enabled: checked.enabled,
            // A PUT clears a 410: the operator says the receiver wants events again.
            disabled: None,
            max_in_flight: checked.max_in_flight,
            timeout_ms: checked.timeout_ms,
            description: checked.description,
            created_ms: existing.as_ref().map_or(now_ms, |old| old.created_ms),
            updated_ms: now_ms,
        };
        let created = existing.is_none();
        if let Some(entry) = webhooks.get_mut(name) {
            if let Some(worker) = entry.worker.take() {
                worker.stop().await;
            }
        }
        let mut batch = Batch {
            integrations_put: vec![record(name, &config, now_ms)?],
            ..Batch::default()
        };
        if created {
            // A new webhook starts at the head: it is sent what happens from now on.
            batch
                .outbox_cursors
                .push((webhooks::destination(name), self.shared.head()));
        }
        if let Err(error) = self.store.commit(batch).await {
            // Nothing changed: the old configuration's worker goes on.
            if let Some(entry) = webhooks.get_mut(name) {
                self.start_worker(name, entry);
            }
            return Err(ApiError::unavailable(error));
        }
        let mut entry = WebhookEntry {
            config,
            disabled_by_receiver: Arc::default(),
            worker: None,
        };
        self.start_worker(name, &mut entry);
        let config = entry.current();
        webhooks.insert(name.to_owned(), entry);
        let cursors = self.cursors().await?;
        let view = self.view(name, &config, &cursors, new_secret).await?;
        Ok((view, created))
    }

    pub async fn delete_webhook(&self, name: &str) -> Result<(), ApiError> {
        let mut webhooks = self.webhooks.lock().await;
        let entry = webhooks
            .get_mut(name)
            .ok_or_else(|| unknown_webhook(name))?;
        if let Some(worker) = entry.worker.take() {
            worker.stop().await;
        }
        let batch = Batch {
            integrations_deleted: vec![(webhooks::KIND.to_owned(), name.to_owned())],
            outbox_deleted: vec![webhooks::destination(name)],
            ..Batch::default()
        };
        if let Err(error) = self.store.commit(batch).await {
            let entry = webhooks.get_mut(name).expect("looked up above");
            self.start_worker(name, entry);
            return Err(ApiError::unavailable(error));
        }
        webhooks.remove(name);
        Ok(())
    }

    pub async fn deliveries(
        &self,
        name: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Deliveries, ApiError> {
        {
            let webhooks = self.webhooks.lock().await;
            webhooks.get(name).ok_or_else(|| unknown_webhook(name))?;
        }
        self.deliveries_of(webhooks::destination(name), before, limit)
            .await
    }

    /// A destination's recent attempts, its pending retries and its cursor.
    async fn deliveries_of(
        &self,
        destination: String,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Deliveries, ApiError> {
        let attempts = self
            .store
            .delivery_attempts(&destination, before, limit)
            .await
            .map_err(ApiError::internal)?;
        let pending = self
            .store
            .outbox_retries(&destination)
            .await
            .map_err(ApiError::internal)?;
        let cursors = self.cursors().await?;
        let next_before = (attempts.len() == limit)
            .then(|| attempts.last().map(|a| a.id))
            .flatten();
        let time = |ms: i64| format_time(handoff_core::Timestamp::from_millis(ms));
        Ok(Deliveries {
            attempts: attempts
                .into_iter()
                .map(|a| DeliveryAttemptView {
                    id: a.id,
                    seq: a.seq,
                    webhook_id: crate::wire::event_id(a.seq),
                    attempt: a.attempt,
                    at: time(a.at_ms),
                    duration_ms: a.duration_ms,
                    status: a.status,
                    outcome: a.outcome,
                    error: a.detail,
                    next_attempt_at: a.next_ms.map(time),
                })
                .collect(),
            pending: pending
                .into_iter()
                .map(|r| PendingDeliveryView {
                    seq: r.seq,
                    webhook_id: crate::wire::event_id(r.seq),
                    attempts: r.attempts,
                    next_attempt_at: time(r.next_ms),
                })
                .collect(),
            cursor_seq: cursors
                .get(&destination)
                .copied()
                .unwrap_or_else(|| self.shared.head()),
            head_seq: self.shared.head(),
            next_before,
            destination,
        })
    }

    /// Sends every wanted event after `after` again: the webhook's cursor moves back to it.
    pub async fn replay(&self, name: &str, after: u64) -> Result<WebhookReplay, ApiError> {
        let head = self.shared.head();
        if after > head {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("after: {after} is beyond the log's head ({head})"),
            )
            .with_field("after"));
        }
        let webhooks = self.webhooks.lock().await;
        let entry = webhooks.get(name).ok_or_else(|| unknown_webhook(name))?;
        match &entry.worker {
            Some(worker) if !worker.is_finished() => worker.replay(after).await,
            _ => {
                // Not running (disabled): it starts from there when it runs again.
                let batch = Batch {
                    outbox_cursors: vec![(webhooks::destination(name), after)],
                    ..Batch::default()
                };
                self.store
                    .commit(batch)
                    .await
                    .map_err(ApiError::unavailable)?;
            }
        }
        Ok(WebhookReplay {
            webhook: name.to_owned(),
            after,
            head_seq: head,
        })
    }
}

fn unknown_webhook(name: &str) -> ApiError {
    ApiError::not_found("unknown_webhook", format!("no webhook named {name}"))
}

fn record(name: &str, config: &WebhookConfig, now_ms: i64) -> Result<IntegrationRecord, ApiError> {
    Ok(IntegrationRecord {
        kind: webhooks::KIND.to_owned(),
        name: name.to_owned(),
        config: serde_json::to_string(config).map_err(ApiError::internal)?,
        updated_ms: now_ms,
    })
}

/// A webhook request checked field by field.
struct CheckedWebhook {
    url: String,
    types: Vec<String>,
    secret: Option<WebhookSecret>,
    enabled: bool,
    max_in_flight: usize,
    timeout_ms: u64,
    description: Option<String>,
}

fn check_webhook(
    egress: &EgressPolicy,
    request: &PutWebhookRequest,
) -> Result<CheckedWebhook, ApiError> {
    let invalid = |field: &str, message: String| {
        ApiError::unprocessable("invalid_field", format!("{field}: {message}")).with_field(field)
    };
    if crate::wire::longer_than(&request.url, 2048) {
        return Err(invalid("url", "at most 2048 characters".to_owned()));
    }
    egress
        .check_url(&request.url)
        .map_err(|error| match error {
            crate::egress::EgressError::Forbidden { .. } => {
                ApiError::unprocessable("egress_refused", format!("url: {error}")).with_field("url")
            }
            other => invalid("url", other.to_string()),
        })?;
    let types = request
        .types
        .clone()
        .unwrap_or_else(|| vec!["*".to_owned()]);
    if types.is_empty() || types.len() > 64 {
        return Err(invalid("types", "from 1 to 64 patterns".to_owned()));
    }
    for (index, pattern) in types.iter().enumerate() {
        TypeFilter::check(pattern)
            .map_err(|message| invalid(&format!("types[{index}]"), message))?;
    }
    let secret = request
        .secret
        .as_deref()
        .map(WebhookSecret::parse)
        .transpose()
        .map_err(|message| invalid("secret", message))?;
    let max_in_flight = match request.max_in_flight {
        None => webhooks::DEFAULT_MAX_IN_FLIGHT,
        Some(n) if (1..=64).contains(&n) => n as usize,
        Some(n) => return Err(invalid("max_in_flight", format!("{n} is not from 1 to 64"))),
    };
    let timeout_ms = match request.timeout_ms {
        None => webhooks::DEFAULT_TIMEOUT_MS,
        Some(ms) if (100..=60_000).contains(&ms) => ms as u64,
        Some(ms) => {
            return Err(invalid(
                "timeout_ms",
                format!("{ms} is not from 100 to 60000"),
            ))
        }
    };
    if request
        .description
        .as_ref()
        .is_some_and(|d| crate::wire::longer_than(d, 1024))
    {
        return Err(invalid("description", "at most 1024 characters".to_owned()));
    }
    Ok(CheckedWebhook {
        url: request.url.clone(),
        types,
        secret,
        enabled: request.enabled.unwrap_or(true),
        max_in_flight,
        timeout_ms,
        description: request.description.clone(),
    })
}

//! Configuration: one TOML file with documented defaults, overridden by `HANDOFF_*` environment
//! variables, then by command-line flags.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use handoff_api::calendar::Zone;
use handoff_core::{QueueConfig, QueueName};
use handoff_protocol::PutQueueRequest;
use serde::Deserialize;

/// Every setting, with the contract's defaults. Each is a TOML key and `HANDOFF_<KEY>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the server listens on.
    pub listen: String,
    /// Where the embedded store and the admin token live.
    pub data_dir: PathBuf,
    /// The store: `sqlite` (the default: embedded, in `data_dir`) or a PostgreSQL URL such as
    /// `postgres://handoff@db.example.com/handoff`, which several nodes can share.
    pub store: String,
    /// The PostgreSQL schema handoff's tables live in (created when missing).
    pub store_schema: String,
    /// The bus that carries committed events to the other nodes: a NATS URL with JetStream,
    /// e.g. `nats://nats.example.com:4222`. Only with a PostgreSQL store. Default none.
    pub bus: Option<String>,
    /// The cluster's name: nodes with the same store and bus and this name are one service
    /// (it names the JetStream stream and the NATS subjects).
    pub cluster: String,
    /// This node's name in the cluster; default the host name and the process id.
    pub node_id: Option<String>,
    /// The URL other nodes reach this one at, to forward writes when it holds the writer
    /// lease; default `http://` and `listen`.
    pub advertise_url: Option<String>,
    /// How long the writer lease lasts unless renewed (renewed every third of it): the most a
    /// cluster waits for a new writer after the writer dies.
    pub lease_ttl_ms: u64,
    /// JetStream replicas of the event stream (1, 3 or 5).
    pub bus_replicas: usize,
    /// `fsync` (default: a 2xx means on disk) or `os` (flushing left to the OS).
    pub durability: String,
    /// Largest `context` of an interaction, serialized.
    pub max_context_bytes: usize,
    /// How long an offer to an agent target stays open.
    pub offer_timeout_s: u64,
    /// How long after its last stream closes an agent is set offline.
    pub presence_grace_s: u64,
    /// Whether a lost connection sets the agent offline and revokes its offers.
    pub offline_on_disconnect: bool,
    /// Misses in a row (rejected or timed-out offers) after which an agent is set `away`
    /// with reason `missed_offers`; 0 never does.
    pub max_missed_offers: u32,
    /// How long a caller waits for an agent named as its target who cannot take the call now
    /// (away, offline, on other calls) before the fallback takes it, or it ends `timed_out`;
    /// a request's own `max_wait_s` wins. 0: it goes on at once.
    pub agent_max_wait_s: u64,
    /// The IANA time zone of "today" in statistics and in `least_occupied`, e.g. `Europe/Paris`.
    pub timezone: String,
    /// Browser origins allowed beside the server's own.
    pub allowed_origins: Vec<String>,
    /// Hosts or CIDRs that connectors and webhooks may reach although loopback or private.
    pub egress_allow: Vec<String>,
    /// Seconds before each retry of a failed webhook delivery or call log; after the last, the
    /// event is given up on. Default Standard Webhooks' schedule: 5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h, 14 h, 20 h, 24 h (each with ±20 % jitter; a `Retry-After` wins).
    pub outbox_retry_schedule_s: Vec<f64>,
    /// Delivery attempts kept on record per webhook or connector, newest first.
    pub outbox_attempts_kept: u64,
    /// How long creating an interaction waits for CRM lookups: an answer in time rides in the
    /// offer, a later one follows as `interaction.enriched`. 0: never waits.
    pub enrich_wait_ms: u64,
    /// CRM connectors declared in the file (`[[connectors]]` tables: `name` and the fields of
    /// `PUT /v1/connectors/{name}`), put at every start like `[[queues]]`. File only.
    pub connectors: Vec<toml::Table>,
    /// Seconds between WebSocket pings on agent streams.
    pub ping_interval_s: u64,
    /// The most bytes of events an agent stream queues for a client that reads too slowly;
    /// past it the stream is closed with code 4000 and the client resumes from the log.
    pub stream_max_unsent_bytes: usize,
    /// Log filter, e.g. `info` or `handoff_api=debug,info`.
    pub log: String,
    /// The CRM page a screen pop opens when its queue has no `pop_url` of its own, and for
    /// offers to an agent named directly: a minijinja template such as
    /// `https://crm.example.com/search?phone={{ caller }}`, every value percent-encoded.
    /// Default none; an empty value is none too.
    pub pop_url: Option<String>,
    /// How long an ended interaction stays in memory. After that `GET /v1/interactions/{id}`
    /// reads it from the log and lists no longer show it; memory stays bounded by the calls of
    /// that span.
    pub ended_interactions_kept_s: u64,
    /// How long an `Idempotency-Key` answers a retry of its create with the same interaction
    /// (and refuses one with another body), 1 to 2592000 (30 days). Default 86400 (24 h).
    pub idempotency_window_s: u64,
    /// Requests a second each key or session may make on average; beyond it the server
    /// answers 429 `rate_limited` with `Retry-After`. 0 (the default): no limit.
    pub rate_limit_per_key: u32,
    /// Requests one key may make at once before `rate_limit_per_key` applies; 0 (the default):
    /// twice `rate_limit_per_key`.
    pub rate_limit_burst: u32,
    /// Queues declared in the file (`[[queues]]` tables: `name` and the fields of
    /// `PUT /v1/queues/{name}`). They are put at every start, after recovery, so the file wins
    /// over an edit made through the API. File only: no environment variable.
    pub queues: Vec<PutQueueRequest>,
    /// Take a call the phone system reports connected at an agent, matching no interaction by
    /// call id or interaction id, as the agent's one offered interaction: for platforms whose
    /// leg to the agent has a Call-ID of its own (a B2BUA such as Asterisk). Default false,
    /// since a personal call answered during an offer would then accept it.
    pub uc_match_single_offer: bool,
    /// The XMPP server's client port (`chat.example.com:5222`) to follow the agents' chat
    /// presence on; default none (no XMPP).
    pub xmpp_server: Option<String>,
    /// handoff's account on it, `handoff@chat.example.com`; it must see the agents' presence
    /// (a shared roster group, or subscriptions it asks for at sign-in).
    pub xmpp_jid: String,
    pub xmpp_password: String,
    /// The domain of agents' JIDs: agent `alice` is `alice@<domain>` unless its `address` is
    /// an `xmpp:` URI. Default the domain of `xmpp_jid`.
    pub xmpp_agent_domain: Option<String>,
    /// `required` (STARTTLS, the default) or `off` (plain TCP, for loopback or a trusted
    /// network only).
    pub xmpp_tls: String,
    /// A PEM file of certificates to trust beside the public roots for STARTTLS: a private CA,
    /// or a self-signed server. Default none.
    pub xmpp_tls_ca: Option<PathBuf>,
    /// Overrides of what each `show` means, e.g. `xa=offline, dnd=busy`: keys `available`,
    /// `chat`, `away`, `xa`, `dnd`, `unavailable`; values `available`, `away`, `busy`,
    /// `offline`. Default chat/available → available, away/xa → away, dnd → busy,
    /// unavailable → offline.
    pub xmpp_show_map: String,
    /// How long to wait before signing in again after the connection drops.
    pub xmpp_reconnect_ms: u64,
    /// The SIP proxy or PBX (`pbx.example.com:5060`, UDP) to subscribe to each agent's
    /// `dialog` and `presence` at; default none (no SIP monitoring). Agents with a `sip:`
    /// address are followed.
    pub sip_proxy: Option<String>,
    /// The local UDP address handoff takes NOTIFYs on.
    pub sip_bind: String,
    /// The host handoff names in its Via and Contact when `sip_bind` is a wildcard address.
    pub sip_contact_host: Option<String>,
    /// handoff's own SIP address, the From of its SUBSCRIBEs; default `sip:handoff@` and the
    /// proxy's host.
    pub sip_from: Option<String>,
    /// Digest credentials, when the proxy challenges SUBSCRIBEs.
    pub sip_username: Option<String>,
    pub sip_password: Option<String>,
    /// How long each subscription is asked for; refreshed before it runs out.
    pub sip_expires_s: u64,
    /// Subscribe to `presence` (PIDF) too, not only `dialog`.
    pub sip_presence: bool,
    /// The CSTA Phase III XML server (`pbx.example.com:7001`, TCP) to monitor the agents'
    /// devices on; default none (no CSTA).
    pub csta_server: Option<String>,
    /// The application id of the CSTA session, and its password when the server asks one.
    pub csta_application: String,
    pub csta_password: Option<String>,
    /// How long to wait before connecting again after the CSTA link drops.
    pub csta_reconnect_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("./handoff-data"),
            store: "sqlite".to_owned(),
            store_schema: "handoff".to_owned(),
            bus: None,
            cluster: "handoff".to_owned(),
            node_id: None,
            advertise_url: None,
            lease_ttl_ms: 5000,
            bus_replicas: 1,
            durability: "fsync".to_owned(),
            max_context_bytes: 65536,
            offer_timeout_s: 20,
            presence_grace_s: 30,
            offline_on_disconnect: true,
            max_missed_offers: 2,
            agent_max_wait_s: 60,
            timezone: "UTC".to_owned(),
            allowed_origins: Vec::new(),
            egress_allow: Vec::new(),
            outbox_retry_schedule_s: handoff_api::integrations::outbox::OutboxSettings::default()
                .retry_schedule
                .iter()
                .map(|wait| wait.as_secs_f64())
                .collect(),
            outbox_attempts_kept: 1000,
            enrich_wait_ms: 150,
            connectors: Vec::new(),
            ping_interval_s: 15,
            stream_max_unsent_bytes: 1 << 20,
            log: "info".to_owned(),
            pop_url: None,
            ended_interactions_kept_s: 25 * 60 * 60,
            idempotency_window_s: 24 * 60 * 60,
            rate_limit_per_key: 0,
            rate_limit_burst: 0,
            queues: Vec::new(),
            uc_match_single_offer: false,
            xmpp_server: None,
            xmpp_jid: String::new(),
            xmpp_password: String::new(),
            xmpp_agent_domain: None,
            xmpp_tls: "required".to_owned(),
            xmpp_tls_ca: None,
            xmpp_show_map: String::new(),
            xmpp_reconnect_ms: 2000,
            sip_proxy: None,
            sip_bind: "0.0.0.0:5070".to_owned(),
            sip_contact_host: None,
            sip_from: None,
            sip_username: None,
            sip_password: None,
            sip_expires_s: 600,
            sip_presence: true,
            csta_server: None,
            csta_application: "handoff".to_owned(),
            csta_password: None,
            csta_reconnect_ms: 2000,
        }
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

impl Config {
    /// File (if any), then `env`, then `overrides`; then checks the result.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
        overrides: &Overrides,
    ) -> anyhow::Result<Config> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the configuration file {}", path.display())
                })?;
                toml::from_str::<Config>(&text)
                    .with_context(|| format!("invalid configuration file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        // `HANDOFF_POP_URL=` is the usual way to unset a setting from the environment.
        config.pop_url = config.pop_url.filter(|t| !t.trim().is_empty());
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(listen) = &overrides.listen {
            config.listen = listen.clone();
        }
        config.check()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> anyhow::Result<()> {
        fn get<'a>(env: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
            env.get(&format!("HANDOFF_{}", key.to_ascii_uppercase()))
                .map(String::as_str)
        }
        fn number<T: std::str::FromStr>(key: &str, text: &str) -> anyhow::Result<T> {
            text.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "HANDOFF_{}: {text:?} is not a valid number",
                    key.to_ascii_uppercase()
                )
            })
        }
        fn boolean(key: &str, text: &str) -> anyhow::Result<bool> {
            match text.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => bail!(
                    "HANDOFF_{}: {text:?} is not true or false",
                    key.to_ascii_uppercase()
                ),
            }
        }
        fn list(text: &str) -> Vec<String> {
            // A TOML/JSON-style array or a comma-separated list.
            if let Ok(items) = serde_json::from_str::<Vec<String>>(text) {
                return items;
            }
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        }
        // Each numeric setting, read the same way and named in its own error.
        macro_rules! numbers {
            ($config:ident: $($field:ident),+) => {
                $(if let Some(v) = get(env, stringify!($field)) {
                    $config.$field = number(stringify!($field), v)?;
                })+
            };
        }
        numbers!(self:
            max_context_bytes,
            offer_timeout_s,
            presence_grace_s,
            max_missed_offers,
            agent_max_wait_s,
            ping_interval_s,
            stream_max_unsent_bytes,
            ended_interactions_kept_s,
            idempotency_window_s,
            rate_limit_per_key,
            rate_limit_burst,
            outbox_attempts_kept,
            enrich_wait_ms,
            lease_ttl_ms,
            bus_replicas,
            xmpp_reconnect_ms,
            sip_expires_s,
            csta_reconnect_ms
        );
        // Each text setting; an empty value unsets an optional one.
        macro_rules! texts {
            ($config:ident: $($field:ident),+) => {
                $(if let Some(v) = get(env, stringify!($field)) {
                    $config.$field = v.to_owned();
                })+
            };
        }
        macro_rules! optional_texts {
            ($config:ident: $($field:ident),+) => {
                $(if let Some(v) = get(env, stringify!($field)) {
                    $config.$field = Some(v.to_owned()).filter(|v| !v.is_empty());
                })+
            };
        }
        texts!(self: xmpp_jid, xmpp_password, xmpp_tls, xmpp_show_map, sip_bind, csta_application);
        optional_texts!(self:
            xmpp_server,
            xmpp_agent_domain,
            sip_proxy,
            sip_contact_host,
            sip_from,
            sip_username,
            sip_password,
            csta_server,
            csta_password
        );
        if let Some(v) = get(env, "xmpp_tls_ca") {
            self.xmpp_tls_ca = Some(PathBuf::from(v)).filter(|path| !path.as_os_str().is_empty());
        }
        for (key, field) in [
            ("uc_match_single_offer", &mut self.uc_match_single_offer),
            ("sip_presence", &mut self.sip_presence),
        ] {
            if let Some(v) = get(env, key) {
                *field = boolean(key, v)?;
            }
        }
        if let Some(v) = get(env, "store") {
            self.store = v.to_owned();
        }
        if let Some(v) = get(env, "store_schema") {
            self.store_schema = v.to_owned();
        }
        if let Some(v) = get(env, "bus") {
            self.bus = Some(v.to_owned()).filter(|v| !v.is_empty());
        }
        if let Some(v) = get(env, "cluster") {
            self.cluster = v.to_owned();
        }
        if let Some(v) = get(env, "node_id") {
            self.node_id = Some(v.to_owned()).filter(|v| !v.is_empty());
        }
        if let Some(v) = get(env, "advertise_url") {
            self.advertise_url = Some(v.to_owned()).filter(|v| !v.is_empty());
        }
        if let Some(v) = get(env, "listen") {
            self.listen = v.to_owned();
        }
        if let Some(v) = get(env, "data_dir") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get(env, "durability") {
            self.durability = v.to_owned();
        }
        if let Some(v) = get(env, "offline_on_disconnect") {
            self.offline_on_disconnect = boolean("offline_on_disconnect", v)?;
        }
        if let Some(v) = get(env, "timezone") {
            self.timezone = v.to_owned();
        }
        if let Some(v) = get(env, "allowed_origins") {
            self.allowed_origins = list(v);
        }
        if let Some(v) = get(env, "egress_allow") {
            self.egress_allow = list(v);
        }
        if let Some(v) = get(env, "outbox_retry_schedule_s") {
            self.outbox_retry_schedule_s = list(v)
                .iter()
                .map(|item| number("outbox_retry_schedule_s", item))
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(v) = get(env, "log") {
            self.log = v.to_owned();
        }
        if let Some(v) = get(env, "pop_url") {
            self.pop_url = Some(v.to_owned());
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        self.store_kind()?;
        if self.bus.is_some() && self.store == "sqlite" {
            bail!("bus: several nodes need a shared store; set store to a postgres:// URL");
        }
        if let Some(bus) = &self.bus {
            if !bus.starts_with("nats://") {
                bail!("bus must be a nats:// URL, not {bus:?}");
            }
        }
        let simple_name = |name: &str| {
            !name.is_empty()
                && name.len() <= 48
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !simple_name(&self.cluster) {
            bail!(
                "cluster must be 1 to 48 of A-Z, a-z, 0-9, _ and -, not {:?}",
                self.cluster
            );
        }
        if !simple_name(&self.store_schema) || self.store_schema.contains('-') {
            bail!(
                "store_schema must be 1 to 48 of A-Z, a-z, 0-9 and _, not {:?}",
                self.store_schema
            );
        }
        if !(300..=600_000).contains(&self.lease_ttl_ms) {
            bail!("lease_ttl_ms must be from 300 to 600000");
        }
        if ![1, 3, 5].contains(&self.bus_replicas) {
            bail!("bus_replicas must be 1, 3 or 5");
        }
        if !matches!(self.durability.as_str(), "fsync" | "os") {
            bail!(
                "durability must be \"fsync\" or \"os\", not {:?}",
                self.durability
            );
        }
        if self.max_context_bytes < 2 || self.max_context_bytes > 16 * 1024 * 1024 {
            bail!("max_context_bytes must be from 2 to 16777216");
        }
        if self.offer_timeout_s == 0 {
            bail!("offer_timeout_s must be at least 1");
        }
        if self.ping_interval_s == 0 {
            bail!("ping_interval_s must be at least 1");
        }
        if !(65_536..=1 << 30).contains(&self.stream_max_unsent_bytes) {
            bail!("stream_max_unsent_bytes must be from 65536 to 1073741824");
        }
        if !(1..=2_592_000).contains(&self.idempotency_window_s) {
            bail!("idempotency_window_s must be from 1 to 2592000 (30 days)");
        }
        self.zone()?;
        handoff_api::egress::EgressPolicy::parse(&self.egress_allow)
            .map_err(|reason| anyhow::anyhow!(reason))?;
        self.outbox_settings()?;
        if self.enrich_wait_ms > 30_000 {
            bail!("enrich_wait_ms must be at most 30000");
        }
        self.connector_requests()?;
        if let Some(template) = &self.pop_url {
            handoff_api::pop_url::check(template)
                .map_err(|reason| anyhow::anyhow!("pop_url: {reason}"))?;
        }
        self.queue_configs()?;
        self.uc_settings()?;
        self.listen
            .parse::<std::net::SocketAddr>()
            .with_context(|| {
                format!(
                    "listen: {:?} is not an address like 127.0.0.1:8080",
                    self.listen
                )
            })?;
        Ok(())
    }
}

/// Which store the configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres { url: String },
}

impl Config {
    pub fn store_kind(&self) -> anyhow::Result<StoreKind> {
        if self.store == "sqlite" {
            return Ok(StoreKind::Sqlite);
        }
        if self.store.starts_with("postgres://") || self.store.starts_with("postgresql://") {
            return Ok(StoreKind::Postgres {
                url: self.store.clone(),
            });
        }
        bail!(
            "store must be \"sqlite\" or a postgres:// URL, not {:?}",
            self.store
        )
    }

    /// The configured limit on each key's requests, if any.
    pub fn rate_limit(&self) -> Option<handoff_api::rate_limit::RateLimit> {
        (self.rate_limit_per_key > 0).then(|| handoff_api::rate_limit::RateLimit {
            per_second: self.rate_limit_per_key,
            burst: match self.rate_limit_burst {
                0 => self.rate_limit_per_key.saturating_mul(2),
                burst => burst,
            },
        })
    }

    /// The UC adapters the configuration turns on, checked.
    pub fn uc_settings(&self) -> anyhow::Result<handoff_api::uc::UcSettings> {
        use handoff_api::uc::{csta, sip, xmpp, UcSettings, UcSignalSettings};
        let host_port = |key: &str, value: &str| -> anyhow::Result<()> {
            match value.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
                _ => bail!("{key}: {value:?} is not a host:port such as pbx.example.com:5060"),
            }
        };
        let xmpp = match &self.xmpp_server {
            None => None,
            Some(server) => {
                host_port("xmpp_server", server)?;
                let Some((_, jid_domain)) = self.xmpp_jid.split_once('@') else {
                    bail!("xmpp_jid: {:?} is not a JID such as handoff@chat.example.com (needed with xmpp_server)", self.xmpp_jid);
                };
                let jid_domain = jid_domain.split('/').next().unwrap_or_default();
                if jid_domain.is_empty() {
                    bail!("xmpp_jid: {:?} has no domain", self.xmpp_jid);
                }
                if self.xmpp_password.is_empty() {
                    bail!("xmpp_password is needed with xmpp_server");
                }
                let tls = match self.xmpp_tls.as_str() {
                    "required" => xmpp::XmppTls::Required,
                    "off" => xmpp::XmppTls::Off,
                    other => bail!("xmpp_tls must be \"required\" or \"off\", not {other:?}"),
                };
                Some(xmpp::XmppSettings {
                    server: server.clone(),
                    jid: self.xmpp_jid.clone(),
                    password: self.xmpp_password.clone(),
                    agent_domain: self
                        .xmpp_agent_domain
                        .clone()
                        .unwrap_or_else(|| jid_domain.to_owned()),
                    tls,
                    tls_ca: self.xmpp_tls_ca.clone(),
                    show_map: xmpp::ShowMap::parse_overrides(&self.xmpp_show_map)
                        .map_err(|reason| anyhow::anyhow!("xmpp_show_map: {reason}"))?,
                    reconnect: std::time::Duration::from_millis(self.xmpp_reconnect_ms.max(100)),
                })
            }
        };
        let sip = match &self.sip_proxy {
            None => None,
            Some(proxy) => {
                host_port("sip_proxy", proxy)?;
                let bind = self
                    .sip_bind
                    .parse::<std::net::SocketAddr>()
                    .with_context(|| {
                        format!(
                            "sip_bind: {:?} is not an address like 0.0.0.0:5070",
                            self.sip_bind
                        )
                    })?;
                let proxy_host = proxy
                    .rsplit_once(':')
                    .map(|(host, _)| host)
                    .unwrap_or(proxy);
                let from = self
                    .sip_from
                    .clone()
                    .unwrap_or_else(|| format!("sip:handoff@{proxy_host}"));
                if !from.starts_with("sip:") || !from.contains('@') {
                    bail!("sip_from: {from:?} is not a SIP address such as sip:handoff@pbx.example.com");
                }
                if self.sip_username.is_some() != self.sip_password.is_some() {
                    bail!("sip_username and sip_password go together");
                }
                if !(60..=86_400).contains(&self.sip_expires_s) {
                    bail!("sip_expires_s must be from 60 to 86400");
                }
                Some(sip::SipSettings {
                    proxy: proxy.clone(),
                    bind,
                    contact_host: self.sip_contact_host.clone(),
                    from,
                    username: self.sip_username.clone(),
                    password: self.sip_password.clone(),
                    expires: std::time::Duration::from_secs(self.sip_expires_s),
                    presence: self.sip_presence,
                })
            }
        };
        let csta = match &self.csta_server {
            None => None,
            Some(server) => {
                host_port("csta_server", server)?;
                Some(csta::CstaSettings {
                    server: server.clone(),
                    application: self.csta_application.clone(),
                    password: self.csta_password.clone(),
                    reconnect: std::time::Duration::from_millis(self.csta_reconnect_ms.max(100)),
                })
            }
        };
        Ok(UcSettings {
            signals: UcSignalSettings {
                match_single_offer: self.uc_match_single_offer,
            },
            xmpp,
            sip,
            csta,
        })
    }

    /// Retries and records of webhook deliveries and call logs.
    pub fn outbox_settings(
        &self,
    ) -> anyhow::Result<handoff_api::integrations::outbox::OutboxSettings> {
        if self.outbox_retry_schedule_s.len() > 32 {
            bail!("outbox_retry_schedule_s: at most 32 retries");
        }
        let mut retry_schedule = Vec::with_capacity(self.outbox_retry_schedule_s.len());
        for (index, seconds) in self.outbox_retry_schedule_s.iter().enumerate() {
            if !seconds.is_finite() || *seconds < 0.0 || *seconds > 7.0 * 86_400.0 {
                bail!(
                    "outbox_retry_schedule_s[{index}]: {seconds} is not from 0 to 604800 seconds"
                );
            }
            retry_schedule.push(std::time::Duration::from_secs_f64(*seconds));
        }
        if self.outbox_attempts_kept == 0 {
            bail!("outbox_attempts_kept must be at least 1");
        }
        Ok(handoff_api::integrations::outbox::OutboxSettings {
            retry_schedule,
            attempts_kept: self.outbox_attempts_kept,
            ..handoff_api::integrations::outbox::OutboxSettings::default()
        })
    }

    /// The `[[connectors]]` tables as `PUT /v1/connectors/{name}` requests; the server checks
    /// each when it puts it.
    pub fn connector_requests(
        &self,
    ) -> anyhow::Result<Vec<(String, handoff_protocol::PutConnectorRequest)>> {
        let mut requests: Vec<(String, handoff_protocol::PutConnectorRequest)> = Vec::new();
        for (index, table) in self.connectors.iter().enumerate() {
            let mut table = table.clone();
            let name = match table.remove("name") {
                Some(toml::Value::String(name)) => name,
                _ => bail!("connectors[{index}]: a connector needs a name"),
            };
            if requests.iter().any(|(other, _)| *other == name) {
                bail!("connectors[{index}].name: {name:?} is declared twice");
            }
            let request = toml::Value::Table(table)
                .try_into::<handoff_protocol::PutConnectorRequest>()
                .map_err(|error| anyhow::anyhow!("connectors[{index}] ({name}): {error}"))?;
            requests.push((name, request));
        }
        Ok(requests)
    }

    /// The configured time zone.
    pub fn zone(&self) -> anyhow::Result<Zone> {
        Zone::named(&self.timezone).map_err(|error| anyhow::anyhow!("timezone: {error}"))
    }

    /// The `[[queues]]` tables as the core's queues, checked by the API's rules, in an order
    /// that puts every queue after the one it overflows to when that one is in the file too.
    pub fn queue_configs(&self) -> anyhow::Result<Vec<QueueConfig>> {
        let mut configs: Vec<QueueConfig> = Vec::new();
        for (index, table) in self.queues.iter().enumerate() {
            let Some(name) = table.name.as_deref() else {
                bail!("queues[{index}]: a queue needs a name");
            };
            let parsed = QueueName::parse(name)
                .map_err(|error| anyhow::anyhow!("queues[{index}].name: {name:?}: {error}"))?;
            if configs.iter().any(|c| c.name == parsed) {
                bail!("queues[{index}].name: {name:?} is declared twice");
            }
            let config = handoff_api::wire::queue_config_from_wire(parsed, table, true)
                .map_err(|error| anyhow::anyhow!("queues[{index}] ({name}): {}", error.message))?;
            configs.push(config);
        }
        let mut ordered: Vec<QueueConfig> = Vec::with_capacity(configs.len());
        while !configs.is_empty() {
            // A queue is ready once its overflow is not waiting to be put before it; a cycle
            // (a -> b -> a) leaves none ready, and then the first goes anyway: the server
            // creates it without its overflow first (see `serve`).
            let ready = configs
                .iter()
                .position(|c| {
                    c.overflow
                        .as_ref()
                        .is_none_or(|overflow| !configs.iter().any(|o| &o.name == overflow))
                })
                .unwrap_or(0);
            ordered.push(configs.remove(ready));
        }
        Ok(ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration from these `HANDOFF_*` variables alone.
    fn load_env(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::load(None, &env(pairs), &Overrides::default())
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_contracts() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./handoff-data"));
        assert_eq!(config.durability, "fsync");
        assert_eq!(config.max_context_bytes, 65536);
        assert_eq!(config.offer_timeout_s, 20);
        assert_eq!(config.agent_max_wait_s, 60);
        assert_eq!(config.presence_grace_s, 30);
        assert!(config.offline_on_disconnect);
        assert_eq!(config.timezone, "UTC");
        assert!(config.allowed_origins.is_empty());
        assert!(config.egress_allow.is_empty());
        assert_eq!(config.idempotency_window_s, 86_400);
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("handoff.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\noffer_timeout_s = 5\npresence_grace_s = 9\nallowed_origins = [\"https://a.example\"]\n",
        )
        .unwrap();
        let environment = env(&[
            ("HANDOFF_LISTEN", "127.0.0.1:7001"),
            ("HANDOFF_OFFER_TIMEOUT_S", "6"),
            ("HANDOFF_OFFLINE_ON_DISCONNECT", "false"),
            ("HANDOFF_EGRESS_ALLOW", "127.0.0.1, 10.0.0.0/8"),
            ("HANDOFF_SOMETHING_ELSE", "ignored"),
        ]);
        let overrides = Overrides {
            listen: Some("127.0.0.1:7002".to_owned()),
            data_dir: None,
        };
        let config = Config::load(Some(&file), &environment, &overrides).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7002");
        assert_eq!(config.offer_timeout_s, 6);
        assert_eq!(config.presence_grace_s, 9);
        assert!(!config.offline_on_disconnect);
        assert_eq!(config.allowed_origins, vec!["https://a.example".to_owned()]);
        assert_eq!(
            config.egress_allow,
            vec!["127.0.0.1".to_owned(), "10.0.0.0/8".to_owned()]
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let error = load_env(&[("HANDOFF_OFFER_TIMEOUT_S", "soon")]).unwrap_err();
        assert!(
            error.to_string().contains("HANDOFF_OFFER_TIMEOUT_S"),
            "{error}"
        );
        let error = load_env(&[("HANDOFF_DURABILITY", "maybe")]).unwrap_err();
        assert!(error.to_string().contains("durability"), "{error}");
        for window in ["0", "2592001"] {
            let error = load_env(&[("HANDOFF_IDEMPOTENCY_WINDOW_S", window)]).unwrap_err();
            assert!(
                error.to_string().contains("idempotency_window_s"),
                "{window}: {error}"
            );
        }
        let config = load_env(&[("HANDOFF_IDEMPOTENCY_WINDOW_S", "600")]).unwrap();
        assert_eq!(config.idempotency_window_s, 600);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listen_on = \"x\"\n").unwrap();
        let error = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(format!("{error:#}").contains("listen_on"), "{error:#}");
    }

    #[test]
    fn timezone_takes_any_iana_name_and_names_itself_when_unknown() {
        let config = load_env(&[("HANDOFF_TIMEZONE", "America/New_York")]).unwrap();
        assert_eq!(config.zone().unwrap().name(), "America/New_York");
        let error = load_env(&[("HANDOFF_TIMEZONE", "Mars/Olympus_Mons")]).unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("timezone") && text.contains("Mars/Olympus_Mons"),
            "{text}"
        );
    }

    #[test]
    fn rate_limit_is_off_by_default_and_its_burst_defaults_to_twice_the_rate() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config.rate_limit(), None);
        let config = load_env(&[("HANDOFF_RATE_LIMIT_PER_KEY", "50")]).unwrap();
        let limit = config.rate_limit().unwrap();
        assert_eq!((limit.per_second, limit.burst), (50, 100));
        let config = load_env(&[
            ("HANDOFF_RATE_LIMIT_PER_KEY", "50"),
            ("HANDOFF_RATE_LIMIT_BURST", "7"),
        ])
        .unwrap();
        let limit = config.rate_limit().unwrap();
        assert_eq!((limit.per_second, limit.burst), (50, 7));
        let error = load_env(&[("HANDOFF_RATE_LIMIT_PER_KEY", "-3")]).unwrap_err();
        assert!(
            error.to_string().contains("HANDOFF_RATE_LIMIT_PER_KEY"),
            "{error}"
        );
    }

    #[test]
    fn the_outbox_retries_on_standard_webhooks_schedule_unless_told_otherwise() {
        let config = load_env(&[]).unwrap();
        let waits: Vec<u64> = config
            .outbox_settings()
            .unwrap()
            .retry_schedule
            .iter()
            .map(|w| w.as_secs())
            .collect();
        assert_eq!(
            waits,
            [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
        );
        let config = load_env(&[("HANDOFF_OUTBOX_RETRY_SCHEDULE_S", "0.5, 2, 10")]).unwrap();
        let waits: Vec<u128> = config
            .outbox_settings()
            .unwrap()
            .retry_schedule
            .iter()
            .map(|w| w.as_millis())
            .collect();
        assert_eq!(waits, [500, 2000, 10000]);
        for (value, expected) in [
            ("soon", "HANDOFF_OUTBOX_RETRY_SCHEDULE_S"),
            ("-1", "outbox_retry_schedule_s[0]"),
        ] {
            let error = load_env(&[("HANDOFF_OUTBOX_RETRY_SCHEDULE_S", value)]).unwrap_err();
            assert!(
                format!("{error:#}").contains(expected),
                "{value}: {error:#}"
            );
        }
        let error = load_env(&[("HANDOFF_EGRESS_ALLOW", "10.0.0.0/8, not a host!")]).unwrap_err();
        assert!(format!("{error:#}").contains("egress_allow"), "{error:#}");
    }

    #[test]
    fn connectors_are_declared_as_tables_with_the_fields_of_put() {
        let config = load_file(
            r#"
enrich_wait_ms = 200

[[connectors]]
name = "hubspot"
preset = "hubspot"
agent_ids = { alice = "361" }

[[connectors]]
name = "erp"
[connectors.lookup]
url = "https://erp.example.com/customers?phone={{ caller }}"
fields = { account = "$.items[0].account" }
[connectors.log]
url = "https://erp.example.com/calls"
body = '{"caller": {{ caller }}}'
"#,
        )
        .unwrap();
        assert_eq!(config.enrich_wait_ms, 200);
        let connectors = config.connector_requests().unwrap();
        assert_eq!(connectors[0].0, "hubspot");
        assert_eq!(connectors[0].1.preset.as_deref(), Some("hubspot"));
        assert_eq!(connectors[1].0, "erp");
        let lookup = connectors[1].1.lookup.as_ref().unwrap();
        assert_eq!(lookup.fields["account"], "$.items[0].account");
        for (text, expected) in [
            ("[[connectors]]\npreset = \"hubspot\"\n", "needs a name"),
            ("[[connectors]]\nname = \"x\"\nlookp = {}\n", "lookp"),
            (
                "[[connectors]]\nname = \"x\"\n[[connectors]]\nname = \"x\"\n",
                "declared twice",
            ),
        ] {
            let error = format!("{:#}", load_file(text).unwrap_err());
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn max_missed_offers_defaults_to_two() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config.max_missed_offers, 2);
        let config = load_env(&[("HANDOFF_MAX_MISSED_OFFERS", "0")]).unwrap();
        assert_eq!(config.max_missed_offers, 0);
    }

    fn load_file(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("handoff.toml");
        std::fs::write(&file, text).unwrap();
        Config::load(Some(&file), &env(&[]), &Overrides::default())
    }

    #[test]
    fn queues_are_declared_as_tables_with_the_fields_of_put() {
        let config = load_file(
            r#"
timezone = "Europe/Paris"

[[queues]]
name = "billing"
skills = { billing = 3 }
strategy = "most_skilled"
offer_timeout_s = 15
max_wait_s = 300
overflow = { queue = "general" }
service_level_s = 30

[[queues.steps]]
after_s = 60
skills = { billing = 1 }

[[queues]]
name = "general"
"#,
        )
        .unwrap();
        let queues = config.queue_configs().unwrap();
        // The overflow queue comes first, so that it exists when billing is put.
        let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["general", "billing"]);
        let billing = &queues[1];
        assert_eq!(billing.strategy, handoff_core::Strategy::MostSkilled);
        assert_eq!(billing.offer_timeout_s, 15);
        assert_eq!(billing.wrap_up_s, 10, "an absent field takes its default");
        assert_eq!(billing.max_wait_s, Some(300));
        assert_eq!(
            billing.overflow.as_ref().map(|q| q.as_str()),
            Some("general")
        );
        assert_eq!(billing.steps.len(), 1);
        assert_eq!(
            queues[0],
            QueueConfig::new(QueueName::parse("general").unwrap())
        );
    }

    #[test]
    fn a_bad_queue_names_the_queue_and_the_field() {
        for (text, expected) in [
            (
                "[[queues]]\nskills = {}\n",
                "queues[0]: a queue needs a name",
            ),
            ("[[queues]]\nname = \"a b\"\n", "queues[0].name"),
            (
                "[[queues]]\nname = \"billing\"\nskills = { billing = 11 }\n",
                "skills.billing",
            ),
            (
                "[[queues]]\nname = \"billing\"\noverflow = { queue = \"billing\" }\n",
                "overflow.queue",
            ),
            (
                "[[queues]]\nname = \"a\"\n[[queues]]\nname = \"a\"\n",
                "declared twice",
            ),
            // A misspelt key would otherwise leave its setting at the default unnoticed.
            (
                "[[queues]]\nname = \"billing\"\nmax_wait = 60\n",
                "max_wait",
            ),
        ] {
            let error = format!("{:#}", load_file(text).unwrap_err());
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn pop_url_comes_from_the_file_or_the_environment_and_must_parse() {
        let config = load_file(
            "pop_url = \"https://crm.example.com/?p={{ caller }}\"\n\
             [[queues]]\nname = \"billing\"\npop_url = \"https://b.example.com/?a={{ context.account }}\"\n",
        )
        .unwrap();
        assert_eq!(
            config.pop_url.as_deref(),
            Some("https://crm.example.com/?p={{ caller }}")
        );
        assert_eq!(
            config.queue_configs().unwrap()[0].pop_url.as_deref(),
            Some("https://b.example.com/?a={{ context.account }}")
        );
        let config = load_env(&[("HANDOFF_POP_URL", "https://e.example.com/?i={{ id }}")]).unwrap();
        assert_eq!(
            config.pop_url.as_deref(),
            Some("https://e.example.com/?i={{ id }}")
        );
        let unset = load_env(&[("HANDOFF_POP_URL", "")]).unwrap();
        assert_eq!(unset.pop_url, None);
        let error = load_env(&[("HANDOFF_POP_URL", "https://e.example.com/?i={{ id")]).unwrap_err();
        assert!(format!("{error:#}").contains("pop_url"), "{error:#}");
        let error =
            load_file("[[queues]]\nname = \"billing\"\npop_url = \"{% if %}\"\n").unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("queues[0]") && text.contains("pop_url"),
            "{text}"
        );
    }

    #[test]
    fn overflow_cycles_still_give_every_queue_once() {
        let config = load_file(
            "[[queues]]\nname = \"a\"\nmax_wait_s = 5\noverflow = { queue = \"b\" }\n\
             [[queues]]\nname = \"b\"\nmax_wait_s = 5\noverflow = { queue = \"a\" }\n",
        )
        .unwrap();
        let names: Vec<String> = config
            .queue_configs()
            .unwrap()
            .iter()
            .map(|q| q.name.to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn no_uc_adapter_runs_unless_its_server_is_set() {
        let uc = load_env(&[]).unwrap().uc_settings().unwrap();
        assert!(!uc.any());
    }

    #[test]
    fn uc_adapters_are_read_from_the_environment() {
        let config = load_env(&[
            ("HANDOFF_XMPP_SERVER", "chat.example.com:5222"),
            ("HANDOFF_XMPP_JID", "handoff@chat.example.com"),
            ("HANDOFF_XMPP_PASSWORD", "pw"),
            ("HANDOFF_XMPP_SHOW_MAP", "xa=offline"),
            ("HANDOFF_SIP_PROXY", "pbx.example.com:5060"),
            ("HANDOFF_SIP_PRESENCE", "false"),
            ("HANDOFF_CSTA_SERVER", "pbx.example.com:7001"),
            ("HANDOFF_UC_MATCH_SINGLE_OFFER", "true"),
        ])
        .unwrap();
        let uc = config.uc_settings().unwrap();
        let xmpp = uc.xmpp.unwrap();
        assert_eq!(
            xmpp.agent_domain, "chat.example.com",
            "the JID's domain by default"
        );
        assert_eq!(xmpp.tls, handoff_api::uc::xmpp::XmppTls::Required);
        assert_eq!(xmpp.show_map.xa, handoff_core::PresenceStatus::Offline);
        let sip = uc.sip.unwrap();
        assert_eq!(sip.from, "sip:handoff@pbx.example.com");
        assert!(!sip.presence);
        assert_eq!(sip.expires, std::time::Duration::from_secs(600));
        assert_eq!(uc.csta.unwrap().application, "handoff");
        assert!(uc.signals.match_single_offer);
    }

    #[test]
    fn bad_uc_settings_are_refused_naming_the_setting() {
        let xmpp = [
            ("HANDOFF_XMPP_SERVER", "chat.example.com:5222"),
            ("HANDOFF_XMPP_JID", "handoff@chat.example.com"),
            ("HANDOFF_XMPP_PASSWORD", "pw"),
        ];
        for (bad, named) in [
            (("HANDOFF_XMPP_TLS", "maybe"), "xmpp_tls"),
            (("HANDOFF_XMPP_SHOW_MAP", "dnd=lunch"), "xmpp_show_map"),
            (("HANDOFF_XMPP_JID", "handoff"), "xmpp_jid"),
            (("HANDOFF_XMPP_PASSWORD", ""), "xmpp_password"),
            (("HANDOFF_XMPP_SERVER", "chat.example.com"), "xmpp_server"),
        ] {
            let mut env = xmpp.to_vec();
            env.retain(|(key, _)| *key != bad.0);
            env.push(bad);
            let error = format!("{:#}", load_env(&env).unwrap_err());
            assert!(error.contains(named), "{bad:?}: {error}");
        }
        for (env, named) in [
            (vec![("HANDOFF_SIP_PROXY", "pbx:sip")], "sip_proxy"),
            (
                vec![
                    ("HANDOFF_SIP_PROXY", "pbx:5060"),
                    ("HANDOFF_SIP_BIND", "any"),
                ],
                "sip_bind",
            ),
            (
                vec![
                    ("HANDOFF_SIP_PROXY", "pbx:5060"),
                    ("HANDOFF_SIP_USERNAME", "u"),
                ],
                "sip_username",
            ),
            (
                vec![
                    ("HANDOFF_SIP_PROXY", "pbx:5060"),
                    ("HANDOFF_SIP_EXPIRES_S", "5"),
                ],
                "sip_expires_s",
            ),
            (vec![("HANDOFF_CSTA_SERVER", "pbx")], "csta_server"),
            (vec![("HANDOFF_SIP_PRESENCE", "sometimes")], "SIP_PRESENCE"),
        ] {
            let error = format!("{:#}", load_env(&env).unwrap_err());
            assert!(error.contains(named), "{env:?}: {error}");
        }
    }
}

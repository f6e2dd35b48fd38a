//! CRM connectors: a lookup that enriches the screen pop when an interaction is created, and
//! requests made on events (the call log on `interaction.completed`, a CRM's own screen pop on
//! `interaction.accepted`) from the durable outbox.
//!
//! A lookup never holds up routing: the create handler waits for it at most `enrich_wait_ms`;
//! an answer in time rides in the interaction (and so in its offer), a later one follows as
//! `interaction.enriched`, a failure as `interaction.enrichment_failed` with the reason.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_core::{Event, Interaction, InteractionId, State};
use handoff_protocol::{ConnectorAction, ConnectorLookup, PutConnectorRequest};
use minijinja::value::Value as Jinja;
use serde::{Deserialize, Serialize};
use serde_json_path::JsonPath;

use super::outbox::{AttemptFuture, AttemptResult, Deliver};
use super::templates::{self, Landing};
use super::{presets, TypeFilter};
use crate::egress::{describe_error, EgressPolicy};
use crate::engine::{LiveEvent, Shared};
use crate::wire::format_time;

/// The kind under which connectors are stored.
pub const KIND: &str = "connector";
pub const DEFAULT_LOOKUP_TIMEOUT_MS: u64 = 800;
pub const DEFAULT_ACTION_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_CACHE_TTL_S: u64 = 60;
/// Answers kept per lookup's cache.
const CACHE_ENTRIES: usize = 1024;

/// An action's destination in the outbox.
pub fn destination(connector: &str, action: &str) -> String {
    format!("connector:{connector}:{action}")
}

/// A connector as stored: the request as it was put.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConnector {
    pub request: PutConnectorRequest,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A connector ready to run: its preset filled in, templates checked, paths parsed.
pub struct Connector {
    pub name: String,
    pub enabled: bool,
    pub settings: BTreeMap<String, String>,
    pub agent_ids: BTreeMap<String, String>,
    pub lookup: Option<Arc<Lookup>>,
    pub actions: Vec<Arc<Action>>,
    /// As shown: the preset's parts with what the request replaced.
    pub lookup_view: Option<ConnectorLookup>,
    pub log_view: Option<ConnectorAction>,
    pub actions_view: Vec<ConnectorAction>,
}

pub struct Lookup {
    pub connector: String,
    method: reqwest::Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    timeout: Duration,
    cache_ttl: Duration,
    fields: Vec<(String, JsonPath)>,
    when: Option<String>,
    settings: Jinja,
    cache: Mutex<Cache>,
}

pub struct Action {
    pub connector: String,
    pub name: String,
    on: TypeFilter,
    method: reqwest::Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    timeout: Duration,
    when: Option<String>,
    settings: Jinja,
    agent_ids: BTreeMap<String, String>,
}

/// What a lookup came to.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupOutcome {
    /// The pop fields, as a JSON object's text.
    Found {
        fields: String,
        cached: bool,
    },
    Failed(String),
    /// Its `when` did not hold.
    Skipped,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, (Instant, String)>,
    order: VecDeque<String>,
}

impl Cache {
    fn get(&mut self, key: &str, ttl: Duration) -> Option<String> {
        match self.entries.get(key) {
            Some((at, fields)) if at.elapsed() < ttl => Some(fields.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: String, fields: String) {
        if self
            .entries
            .insert(key.clone(), (Instant::now(), fields))
            .is_none()
        {
            self.order.push_back(key);
        }
        while self.order.len() > CACHE_ENTRIES {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }
}

/// Errors of a connector's configuration, each naming its field.
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn method(
    text: Option<&str>,
    default: reqwest::Method,
    field: &str,
) -> Result<reqwest::Method, Invalid> {
    match text.map(str::to_ascii_uppercase).as_deref() {
        None => Ok(default),
        Some(m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE")) => {
            Ok(m.parse().expect("a known method"))
        }
        Some(other) => Err(invalid(
            field,
            format!("{other:?} is not GET, POST, PUT, PATCH or DELETE"),
        )),
    }
}

fn template(text: &str, landing: Landing, field: &str) -> Result<String, Invalid> {
    templates::check(text, landing).map_err(|message| invalid(field, message))?;
    Ok(text.to_owned())
}

fn header_templates(
    headers: &Option<BTreeMap<String, String>>,
    field: &str,
) -> Result<Vec<(String, String)>, Invalid> {
    let mut checked = Vec::new();
    for (name, value) in headers.iter().flatten() {
        let field = format!("{field}.{name}");
        reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(&field, "not a header name"))?;
        checked.push((name.clone(), template(value, Landing::Header, &field)?));
    }
    Ok(checked)
}

fn when(expression: &Option<String>, field: &str) -> Result<Option<String>, Invalid> {
    match expression {
        None => Ok(None),
        Some(text) => {
            templates::check_expression(text).map_err(|message| invalid(field, message))?;
            Ok(Some(text.clone()))
        }
    }
}

fn timeout(ms: Option<i64>, default: u64, max: i64, field: &str) -> Result<Duration, Invalid> {
    match ms {
        None => Ok(Duration::from_millis(default)),
        Some(ms) if (1..=max).contains(&ms) => Ok(Duration::from_millis(ms as u64)),
        Some(ms) => Err(invalid(field, format!("{ms} is not from 1 to {max}"))),
    }
}

/// A URL template: `http://` or `https://`, and, when its host is written out rather than
/// printed from a variable, a host the egress rules allow (a printed host is checked when the
/// request is made).
fn url_template(text: &str, egress: &EgressPolicy, field: &str) -> Result<String, Invalid> {
    let url = template(text, Landing::Url, field)?;
    let lower = text.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| invalid(field, "must start with http:// or https://"))?;
    let origin_end = text.len() - rest.len() + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = &text[..origin_end];
    if !origin.contains('{') {
        egress
            .check_url(origin)
            .map_err(|error| invalid(field, error.to_string()))?;
    }
    Ok(url)
}

/// Checks a request and builds the connector it describes.
pub fn build(
    name: &str,
    request: &PutConnectorRequest,
    egress: &EgressPolicy,
) -> Result<Connector, Invalid> {
    let settings = request.settings.clone().unwrap_or_default();
    for (key, value) in &settings {
        if key.len() > 64 || value.len() > 2048 {
            return Err(invalid(
                format!("settings.{key}"),
                "keys up to 64 bytes, values up to 2048",
            ));
        }
    }
    let expanded = match &request.preset {
        Some(preset) => Some(presets::expand(preset, &settings).map_err(|message| {
            let field = message
                .split(':')
                .next()
                .filter(|f| f.starts_with("settings.") || *f == "preset")
                .unwrap_or("settings")
                .to_owned();
            invalid(field, message)
        })?),
        None => None,
    };
    let (preset_lookup, preset_log, preset_actions) = match expanded {
        Some(expanded) => (expanded.lookup, expanded.log, expanded.actions),
        None => (None, None, Vec::new()),
    };
    let lookup_view = request.lookup.clone().or(preset_lookup);
    let log_view = request.log.clone().or(preset_log);
    let actions_view = request.actions.clone().unwrap_or(preset_actions);
    let agent_ids = request.agent_ids.clone().unwrap_or_default();
    let settings_value = Jinja::from(settings.clone());
    let lookup = match &lookup_view {
        None => None,
        Some(spec) => {
            let mut fields = Vec::new();
            if spec.fields.is_empty() || spec.fields.len() > 64 {
                return Err(invalid("lookup.fields", "from 1 to 64 fields"));
            }
            for (field, path) in &spec.fields {
                let parsed = JsonPath::parse(path).map_err(|e| {
                    invalid(
                        format!("lookup.fields.{field}"),
                        format!("not a JSONPath: {e}"),
                    )
                })?;
                fields.push((field.clone(), parsed));
            }
            let cache_ttl = match spec.cache_ttl_s {
                None => DEFAULT_CACHE_TTL_S,
                Some(s) if (0..=86_400).contains(&s) => s as u64,
                Some(s) => {
                    return Err(invalid(
                        "lookup.cache_ttl_s",
                        format!("{s} is not from 0 to 86400"),
                    ))
                }
            };
            Some(Arc::new(Lookup {
                connector: name.to_owned(),
                method: method(
                    spec.method.as_deref(),
                    reqwest::Method::GET,
                    "lookup.method",
                )?,
                url: url_template(&spec.url, egress, "lookup.url")?,
                headers: header_templates(&spec.headers, "lookup.headers")?,
                body: spec
                    .body
                    .as_deref()
                    .map(|body| template(body, Landing::JsonBody, "lookup.body"))
                    .transpose()?,
                timeout: timeout(
                    spec.timeout_ms,
                    DEFAULT_LOOKUP_TIMEOUT_MS,
                    30_000,
                    "lookup.timeout_ms",
                )?,
                cache_ttl: Duration::from_secs(cache_ttl),
                fields,
                when: when(&spec.when, "lookup.when")?,
                settings: settings_value.clone(),
                cache: Mutex::default(),
            }))
        }
    };
    let mut actions = Vec::new();
    let mut all: Vec<(String, &ConnectorAction)> = Vec::new();
    if let Some(log) = &log_view {
        all.push(("log".to_owned(), log));
    }
    for (index, action) in actions_view.iter().enumerate() {
        let field = format!("actions[{index}]");
        let action_name = action
            .name
            .clone()
            .ok_or_else(|| invalid(format!("{field}.name"), "an action needs a name"))?;
        let valid = !action_name.is_empty()
            && action_name.len() <= 32
            && action_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid || action_name == "log" || all.iter().any(|(n, _)| *n == action_name) {
            return Err(invalid(
                format!("{field}.name"),
                format!("{action_name:?}: [a-z0-9_-]{{1,32}}, not log, once per connector"),
            ));
        }
        all.push((action_name, action));
    }
    for (action_name, spec) in all {
        let field = if action_name == "log" {
            "log".to_owned()
        } else {
            format!(
                "actions[{}]",
                actions_view
                    .iter()
                    .position(|a| a.name.as_deref() == Some(action_name.as_str()))
                    .unwrap_or(0)
            )
        };
        let on = match (&spec.on, action_name.as_str()) {
            (Some(on), _) => on.clone(),
            (None, "log") => vec!["interaction.completed".to_owned()],
            (None, _) => {
                return Err(invalid(
                    format!("{field}.on"),
                    "the event types it is made on",
                ))
            }
        };
        if on.is_empty() {
            return Err(invalid(format!("{field}.on"), "at least one event type"));
        }
        for (index, pattern) in on.iter().enumerate() {
            TypeFilter::check(pattern).map_err(|m| invalid(format!("{field}.on[{index}]"), m))?;
        }
        actions.push(Arc::new(Action {
            connector: name.to_owned(),
            name: action_name,
            on: TypeFilter(on),
            method: method(
                spec.method.as_deref(),
                reqwest::Method::POST,
                &format!("{field}.method"),
            )?,
            url: url_template(&spec.url, egress, &format!("{field}.url"))?,
            headers: header_templates(&spec.headers, &format!("{field}.headers"))?,
            body: spec
                .body
                .as_deref()
                .map(|body| template(body, Landing::JsonBody, &format!("{field}.body")))
                .transpose()?,
            timeout: timeout(
                spec.timeout_ms,
                DEFAULT_ACTION_TIMEOUT_MS,
                60_000,
                &format!("{field}.timeout_ms"),
            )?,
            when: when(&spec.when, &format!("{field}.when"))?,
            settings: settings_value.clone(),
            agent_ids: agent_ids.clone(),
        }));
    }
    if lookup.is_none() && actions.is_empty() {
        return Err(invalid(
            "lookup",
            "a connector needs a lookup, a log or an action (or a preset)",
        ));
    }
    Ok(Connector {
        name: name.to_owned(),
        enabled: request.enabled.unwrap_or(true),
        settings,
        agent_ids,
        lookup,
        actions,
        lookup_view,
        log_view,
        actions_view,
    })
}

impl Connector {
    /// Every template's text, for the secrets they name.
    pub fn templates(&self) -> Vec<&str> {
        let mut texts = Vec::new();
        if let Some(lookup) = &self.lookup {
            texts.push(lookup.url.as_str());
            texts.extend(lookup.headers.iter().map(|(_, v)| v.as_str()));
            texts.extend(lookup.body.as_deref());
        }
        for action in &self.actions {
            texts.push(action.url.as_str());
            texts.extend(action.headers.iter().map(|(_, v)| v.as_str()));
            texts.extend(action.body.as_deref());
        }
        texts
    }
}

/// The call as the IVR posted it: what a lookup sees, and every action too.
pub struct CallFacts<'a> {
    pub id: &'a InteractionId,
    pub caller: Option<&'a str>,
    pub dialed: Option<&'a str>,
    pub channel: &'a str,
    pub call_id: Option<&'a str>,
    pub priority: i32,
    pub context: &'a serde_json::Value,
    pub target: &'a handoff_core::Target,
}

/// The template variables of the call's facts.
pub fn lookup_variables(call: CallFacts<'_>) -> BTreeMap<&'static str, Jinja> {
    BTreeMap::from([
        ("id", Jinja::from(call.id.as_str())),
        ("caller", Jinja::from(call.caller)),
        ("dialed", Jinja::from(call.dialed)),
        ("channel", Jinja::from(call.channel)),
        ("call_id", Jinja::from(call.call_id)),
        ("priority", Jinja::from(call.priority)),
        ("context", templates::from_json(call.context)),
        ("target", target_value(call.target)),
    ])
}

fn target_value(target: &handoff_core::Target) -> Jinja {
    match target {
        handoff_core::Target::Agent(agent) => {
            Jinja::from(BTreeMap::from([("agent", Jinja::from(agent.as_str()))]))
        }
        handoff_core::Target::Queue(queue) => {
            Jinja::from(BTreeMap::from([("queue", Jinja::from(queue.as_str()))]))
        }
    }
}

/// A request rendered from templates.
struct Rendered {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

fn render_request(
    method: &reqwest::Method,
    url: &str,
    headers: &[(String, String)],
    body: Option<&str>,
    variables: &Jinja,
    egress: &EgressPolicy,
) -> Result<Rendered, String> {
    let url_text =
        templates::render(url, Landing::Url, variables).map_err(|e| format!("url: {e}"))?;
    let url = egress
        .check_url(&url_text)
        .map_err(|error| format!("refused by the egress rules: {error}"))?;
    let mut rendered_headers = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let value = templates::render(value, Landing::Header, variables)
            .map_err(|e| format!("header {name}: {e}"))?;
        rendered_headers.push((name.clone(), value));
    }
    let body = match body {
        Some(body) => {
            let text = templates::render(body, Landing::JsonBody, variables)
                .map_err(|e| format!("body: {e}"))?;
            serde_json::from_str::<serde::de::IgnoredAny>(&text)
                .map_err(|e| format!("the rendered body is not JSON: {e}"))?;
            Some(text)
        }
        None => None,
    };
    Ok(Rendered {
        method: method.clone(),
        url,
        headers: rendered_headers,
        body,
    })
}

fn send(client: &reqwest::Client, request: Rendered, timeout: Duration) -> reqwest::RequestBuilder {
    let mut builder = client.request(request.method, request.url).timeout(timeout);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if let Some(body) = request.body {
        let has_type = request
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if !has_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        builder = builder.body(body);
    }
    builder
}

impl Lookup {
    /// Looks the caller up: the fields found, why not, or skipped.
    pub async fn run(
        &self,
        mut variables: BTreeMap<&'static str, Jinja>,
        client: &reqwest::Client,
        egress: &EgressPolicy,
    ) -> LookupOutcome {
        variables.insert("settings", self.settings.clone());
        let variables = templates::variables(variables);
        if let Some(condition) = &self.when {
            match templates::holds(condition, &variables) {
                Ok(true) => {}
                Ok(false) => return LookupOutcome::Skipped,
                Err(error) => return LookupOutcome::Failed(format!("when: {error}")),
            }
        }
        let rendered = match render_request(
            &self.method,
            &self.url,
            &self.headers,
            self.body.as_deref(),
            &variables,
            egress,
        ) {
            Ok(rendered) => rendered,
            Err(error) => return LookupOutcome::Failed(error),
        };
        let host = rendered.url.host_str().unwrap_or("the CRM").to_owned();
        let cache_key = format!(
            "{} {} {}",
            rendered.method,
            rendered.url,
            rendered.body.as_deref().unwrap_or("")
        );
        if !self.cache_ttl.is_zero() {
            let cached = self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&cache_key, self.cache_ttl);
            if let Some(fields) = cached {
                return LookupOutcome::Found {
                    fields,
                    cached: true,
                };
            }
        }
        let response = match send(client, rendered, self.timeout).send().await {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                return LookupOutcome::Failed(format!(
                    "{host} did not answer within {} ms",
                    self.timeout.as_millis()
                ))
            }
            Err(error) => return LookupOutcome::Failed(describe_error(&error)),
        };
        let status = response.status();
        if !status.is_success() {
            return LookupOutcome::Failed(format!("HTTP {} from {host}", status.as_u16()));
        }
        let answer: serde_json::Value = match response.json().await {
            Ok(answer) => answer,
            Err(error) => {
                return LookupOutcome::Failed(format!("the answer of {host} is not JSON: {error}"))
            }
        };
        let mut found = serde_json::Map::new();
        for (name, path) in &self.fields {
            if let Some(value) = path.query(&answer).first() {
                found.insert(name.clone(), (*value).clone());
            }
        }
        let fields = serde_json::Value::Object(found).to_string();
        if !self.cache_ttl.is_zero() {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(cache_key, fields.clone());
        }
        LookupOutcome::Found {
            fields,
            cached: false,
        }
    }
}

/// Delivers one connector action from its outbox.
pub struct ActionDelivery {
    pub action: Arc<Action>,
    pub client: reqwest::Client,
    pub egress: Arc<EgressPolicy>,
    pub shared: Arc<Shared>,
    pub store: Arc<dyn handoff_store::Store>,
    pub core: handoff_core::Settings,
}

impl Deliver for ActionDelivery {
    fn wants(&self, event_type: &str) -> bool {
        self.action.on.matches(event_type)
    }

    fn attempt(&self, event: Arc<LiveEvent>, _attempt: u32) -> AttemptFuture {
        let action = self.action.clone();
        let client = self.client.clone();
        let egress = self.egress.clone();
        let shared = self.shared.clone();
        let store = self.store.clone();
        let core = self.core.clone();
        Box::pin(async move {
            let variables = match action_variables(&action, &event, &shared, &*store, core).await {
                Ok(variables) => variables,
                Err(error) => return failed(error),
            };
            if let Some(condition) = &action.when {
                match templates::holds(condition, &variables) {
                    Ok(true) => {}
                    Ok(false) => {
                        return AttemptResult {
                            status: None,
                            error: None,
                            retry_after: None,
                            gone: false,
                            skipped: true,
                        }
                    }
                    Err(error) => return failed(format!("when: {error}")),
                }
            }
            let rendered = match render_request(
                &action.method,
                &action.url,
                &action.headers,
                action.body.as_deref(),
                &variables,
                &egress,
            ) {
                Ok(rendered) => rendered,
                Err(error) => return failed(error),
            };
            let mut result =
                super::webhooks::classify(send(&client, rendered, action.timeout).send().await);
            // A CRM's 410 is about one record, not a request to stop: it is retried like any.
            result.gone = false;
            result
        })
    }
}

fn failed(error: String) -> AttemptResult {
    AttemptResult {
        status: None,
        error: Some(error),
        retry_after: None,
        gone: false,
        skipped: false,
    }
}

/// The variables of an action: the interaction the event is about with its times, the agent,
/// what the CRMs found, and the event itself.
async fn action_variables(
    action: &Action,
    event: &LiveEvent,
    shared: &Shared,
    store: &dyn handoff_store::Store,
    core: handoff_core::Settings,
) -> Result<Jinja, String> {
    let cloud: serde_json::Value = serde_json::from_str(&event.payload)
        .map_err(|e| format!("event {} cannot be read: {e}", event.seq))?;
    let mut parts: BTreeMap<&'static str, Jinja> = BTreeMap::new();
    parts.insert(
        "event",
        templates::from_json(&serde_json::json!({
            "id": cloud["id"], "type": cloud["type"], "seq": cloud["seq"],
            "time": cloud["time"], "data": cloud["data"],
        })),
    );
    parts.insert("settings", action.settings.clone());
    let mut agent_id = cloud["data"]["agent"].as_str().map(str::to_owned);
    if let Ok(id) = InteractionId::parse(&event.subject) {
        let logged = store
            .subject_events(id.as_str())
            .await
            .map_err(|e| format!("reading the interaction: {e}"))?;
        let mut events = Vec::with_capacity(logged.len());
        for stored in logged.iter().filter(|e| e.seq <= event.seq) {
            events.push(
                crate::wire::decode_event(stored.seq, &stored.payload)
                    .map_err(|e| e.to_string())?,
            );
        }
        if let Some(interaction) = State::interaction_from_events(core, &events) {
            agent_id = agent_id.or_else(|| interaction.agent.as_ref().map(|a| a.to_string()));
            add_interaction(&mut parts, &interaction, &events, &action.connector);
        }
    }
    if let Some(agent_id) = agent_id {
        let (name, address) = {
            let state = shared.state();
            let agent = handoff_core::AgentId::parse(&agent_id).ok().and_then(|id| {
                state
                    .agent(&id)
                    .map(|a| (a.profile.name.clone(), a.profile.address.clone()))
            });
            agent.unzip()
        };
        let crm_id = action
            .agent_ids
            .get(&agent_id)
            .map(|id| match id.parse::<i64>() {
                Ok(number) => Jinja::from(number),
                Err(_) => Jinja::from(id.as_str()),
            });
        parts.insert(
            "agent",
            Jinja::from(BTreeMap::from([
                ("id", Jinja::from(agent_id.as_str())),
                ("name", Jinja::from(name)),
                ("address", Jinja::from(address.flatten())),
                ("crm_id", crm_id.unwrap_or(Jinja::from(()))),
            ])),
        );
    }
    Ok(templates::variables(parts))
}

fn add_interaction(
    parts: &mut BTreeMap<&'static str, Jinja>,
    interaction: &Interaction,
    events: &[Event],
    connector: &str,
) {
    let spec = &interaction.spec;
    let context: serde_json::Value =
        serde_json::from_str(interaction.context()).unwrap_or(serde_json::Value::Null);
    for (name, value) in lookup_variables(CallFacts {
        id: &spec.id,
        caller: spec.caller.as_deref(),
        dialed: spec.dialed.as_deref(),
        channel: &spec.channel,
        call_id: spec.call_id.as_deref(),
        priority: spec.priority,
        context: &context,
        target: &spec.target,
    }) {
        parts.insert(name, value);
    }
    let mut enrichment = BTreeMap::new();
    for found in &interaction.enrichment {
        let fields: serde_json::Value =
            serde_json::from_str(&found.fields).unwrap_or(serde_json::Value::Null);
        enrichment.insert(found.connector.clone(), templates::from_json(&fields));
    }
    parts.insert(
        "found",
        enrichment
            .get(connector)
            .cloned()
            .unwrap_or(Jinja::from(())),
    );
    parts.insert("enrichment", Jinja::from(enrichment));
    let mut accepted = None;
    let mut ended = None;
    let mut completed = None;
    for event in events {
        match event {
            Event::InteractionAccepted { at, .. } => accepted = Some(*at),
            Event::InteractionEnded { at, .. } => ended = Some(*at),
            Event::InteractionCompleted { at, .. } => completed = Some(*at),
            _ => {}
        }
    }
    let seconds = |from: Option<handoff_core::Timestamp>, to: Option<handoff_core::Timestamp>| {
        from.zip(to)
            .map(|(from, to)| ((to.millis() - from.millis()).max(0) + 500) / 1000)
    };
    let talk_end = ended.or(completed);
    let time = |at: Option<handoff_core::Timestamp>| Jinja::from(at.map(format_time));
    parts.insert(
        "interaction",
        Jinja::from(BTreeMap::from([
            ("id", Jinja::from(spec.id.as_str())),
            ("state", Jinja::from(interaction.state.as_str())),
            ("disposition", Jinja::from(interaction.disposition.clone())),
            ("notes", Jinja::from(interaction.notes.clone())),
            (
                "transfer_note",
                Jinja::from(interaction.last_transfer_note.clone()),
            ),
            ("created_at", Jinja::from(format_time(spec.created_at))),
            ("accepted_at", time(accepted)),
            ("ended_at", time(ended)),
            ("completed_at", time(completed)),
            (
                "completed_date",
                Jinja::from(completed.map(|at| format_time(at)[..10].to_owned())),
            ),
            ("duration_s", Jinja::from(seconds(accepted, talk_end))),
            (
                "wait_s",
                Jinja::from(seconds(Some(spec.created_at), accepted)),
            ),
        ])),
    );
}

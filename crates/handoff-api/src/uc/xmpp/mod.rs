//! The XMPP presence adapter: handoff signs in to the chat server as a user and follows the
//! agents' presence (RFC 6121), mapping each `show` to handoff presence with source `uc`.
//!
//! handoff sees an agent's presence only if its account has a subscription to the agent: a
//! shared roster group on the server (Prosody's mod_groups, ejabberd's shared rosters,
//! Openfire's groups) is the usual way. For an agent missing from its roster, handoff asks for
//! a subscription once per session, which the agent's client then has to approve.

pub mod client;
pub mod element;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use handoff_core::{AgentId, PresenceStatus};
use quick_xml::escape::escape;

use self::client::{SignIn, XmppClient, XmppError};
use self::element::{Element, StreamItem};
use super::{PresenceChannel, UcSignals};
use crate::shutdown::Shutdown;

/// How often the agent list is read again, for agents added or changed.
const AGENTS_EVERY: Duration = Duration::from_secs(2);
/// How long after its initial presence handoff waits for the server's presence of the
/// contacts before it takes an agent it heard nothing of as unavailable.
const SETTLE_AFTER_SIGN_IN: Duration = Duration::from_secs(1);
/// Whitespace sent when the stream has been quiet this long, so NATs and the server's own
/// idle timers keep it open.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(60);
/// The longest wait between attempts to sign in again.
const RECONNECT_AT_MOST: Duration = Duration::from_secs(60);
/// Bounds on what is kept of the server's presence: contacts and resources per contact.
const CONTACTS_AT_MOST: usize = 100_000;
const RESOURCES_AT_MOST: usize = 16;

/// Which server, as whom, and how `show` maps to presence (`xmpp_*` in the configuration).
#[derive(Debug, Clone)]
pub struct XmppSettings {
    /// The server's client port, `host:port` (5222).
    pub server: String,
    /// handoff's own account, `handoff@chat.example.com`.
    pub jid: String,
    pub password: String,
    /// The domain of agents' JIDs: agent `alice` is `alice@<agent_domain>`, unless its
    /// `address` is an `xmpp:` URI.
    pub agent_domain: String,
    pub tls: XmppTls,
    /// PEM certificates to trust beside the public roots (a private CA or a self-signed
    /// server), for STARTTLS.
    pub tls_ca: Option<PathBuf>,
    /// What each `show` (and `unavailable`) means, in handoff's presence.
    pub show_map: ShowMap,
    /// How long to wait before signing in again after the connection drops.
    pub reconnect: Duration,
}

/// Whether the stream is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XmppTls {
    /// STARTTLS, refusing a server that does not offer it.
    Required,
    /// Plain TCP: for a server on loopback or inside a trusted network only.
    Off,
}

/// `show` → presence. `available` is a presence with no `show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowMap {
    pub available: PresenceStatus,
    pub chat: PresenceStatus,
    pub away: PresenceStatus,
    pub xa: PresenceStatus,
    pub dnd: PresenceStatus,
    pub unavailable: PresenceStatus,
}

impl Default for ShowMap {
    fn default() -> Self {
        ShowMap {
            available: PresenceStatus::Available,
            chat: PresenceStatus::Available,
            away: PresenceStatus::Away,
            xa: PresenceStatus::Away,
            dnd: PresenceStatus::Busy,
            unavailable: PresenceStatus::Offline,
        }
    }
}

impl ShowMap {
    /// The defaults with overrides such as `xa=offline, dnd=busy`.
    pub fn parse_overrides(text: &str) -> Result<ShowMap, String> {
        let mut map = ShowMap::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (show, status) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not show=status, such as dnd=busy"))?;
            let status = match status.trim() {
                "available" => PresenceStatus::Available,
                "away" => PresenceStatus::Away,
                "busy" => PresenceStatus::Busy,
                "offline" => PresenceStatus::Offline,
                other => {
                    return Err(format!(
                        "{other:?} is not a presence: available, away, busy or offline"
                    ))
                }
            };
            let slot = match show.trim() {
                "available" => &mut map.available,
                "chat" => &mut map.chat,
                "away" => &mut map.away,
                "xa" => &mut map.xa,
                "dnd" => &mut map.dnd,
                "unavailable" => &mut map.unavailable,
                other => {
                    return Err(format!(
                    "{other:?} is not an XMPP show: available, chat, away, xa, dnd or unavailable"
                ))
                }
            };
            *slot = status;
        }
        Ok(map)
    }

    /// The presence a resource's `show` means, with the show as its reason.
    fn status_of(&self, show: Show) -> (PresenceStatus, Option<String>) {
        let status = match show {
            Show::Available => self.available,
            Show::Chat => self.chat,
            Show::Away => self.away,
            Show::Xa => self.xa,
            Show::Dnd => self.dnd,
        };
        let reason = match show {
            Show::Available | Show::Chat => None,
            Show::Away => Some("away"),
            Show::Xa => Some("xa"),
            Show::Dnd => Some("dnd"),
        };
        (status, reason.map(str::to_owned))
    }
}

/// An available resource's `show` (RFC 6121 4.7.2.1); no `show` is plain available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    Available,
    Chat,
    Away,
    Xa,
    Dnd,
}

impl Show {
    fn parse(text: Option<&str>) -> Show {
        match text {
            Some("chat") => Show::Chat,
            Some("away") => Show::Away,
            Some("xa") => Show::Xa,
            Some("dnd") => Show::Dnd,
            // RFC 6121: an unknown value is to be taken as no value.
            _ => Show::Available,
        }
    }
}

fn rank(status: PresenceStatus) -> u8 {
    match status {
        PresenceStatus::Available => 0,
        PresenceStatus::Away => 1,
        PresenceStatus::Busy => 2,
        PresenceStatus::Offline => 3,
    }
}

/// Follows the agents' presence until shutdown, signing in again whenever the connection
/// drops; while it is down, what it reported is withdrawn.
pub async fn run(settings: XmppSettings, signals: UcSignals, mut shutdown: Shutdown) {
    let mut follower = PresenceFollower::new(&settings, signals);
    let mut wait = settings.reconnect;
    loop {
        match session(&settings, &mut follower, &mut wait, &mut shutdown).await {
            Ok(()) => return,
            Err(error) => {
                metrics::counter!("handoff_uc_xmpp_disconnects_total").increment(1);
                tracing::warn!(server = %settings.server, %error, retry_in = ?wait, "XMPP presence: not connected");
            }
        }
        follower.forget_all().await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.fired() => return,
        }
        wait = (wait * 2).min(RECONNECT_AT_MOST);
    }
}

/// One signed-in session, until the connection fails (an error) or shutdown (Ok).
async fn session(
    settings: &XmppSettings,
    follower: &mut PresenceFollower,
    wait: &mut Duration,
    shutdown: &mut Shutdown,
) -> Result<(), XmppError> {
    let sign_in = SignIn {
        server: &settings.server,
        jid: &settings.jid,
        password: &settings.password,
        tls: settings.tls,
        tls_ca: settings.tls_ca.as_deref(),
        resource: "handoff",
    };
    let mut client = tokio::select! {
        client = XmppClient::sign_in(&sign_in) => client?,
        _ = shutdown.fired() => return Ok(()),
    };
    tracing::info!(server = %settings.server, jid = %client.bound_jid, "XMPP presence: signed in");
    *wait = settings.reconnect;
    follower.own_jid = bare(&client.bound_jid).to_owned();
    follower.refresh_agents();
    client
        .send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
        .await?;
    // Negative priority: handoff's resource is never where chat messages are delivered.
    client
        .send("<presence><priority>-1</priority><status>handoff</status></presence>")
        .await?;
    let settle_at = tokio::time::Instant::now() + SETTLE_AFTER_SIGN_IN;
    let mut agents_every = tokio::time::interval(AGENTS_EVERY);
    agents_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent = tokio::time::Instant::now();
    loop {
        tokio::select! {
            item = client.next_item() => match item? {
                StreamItem::Stanza(stanza) => {
                    if let Some(answer) = follower.stanza(stanza).await? {
                        client.send(&answer).await?;
                        last_sent = tokio::time::Instant::now();
                    }
                }
                StreamItem::Opened(_) => {}
                StreamItem::Closed => return Err(XmppError::Closed),
            },
            _ = tokio::time::sleep_until(settle_at), if !follower.settled => {
                follower.settled = true;
                follower.report_all().await;
            }
            _ = agents_every.tick() => {
                follower.refresh_agents();
                for request in follower.subscriptions_to_ask() {
                    client.send(&request).await?;
                    last_sent = tokio::time::Instant::now();
                }
                if follower.settled {
                    follower.report_all().await;
                }
                if last_sent.elapsed() >= KEEPALIVE_EVERY {
                    client.send(" ").await?;
                    last_sent = tokio::time::Instant::now();
                }
            }
            _ = shutdown.fired() => {
                let _ = client.send("<presence type='unavailable'/></stream:stream>").await;
                return Ok(());
            }
        }
    }
}

/// What the server said of the contacts, and what handoff reported of the agents.
struct PresenceFollower {
    signals: UcSignals,
    show_map: ShowMap,
    agent_domain: String,
    own_jid: String,
    /// Bare JID → agent, read from the agents' ids and addresses.
    agents: HashMap<String, AgentId>,
    /// Bare JID → its available resources and their show.
    resources: HashMap<String, HashMap<String, Show>>,
    /// Contacts in the roster whose presence handoff receives (subscription to or both).
    subscribed: HashSet<String>,
    /// The roster has arrived this session.
    roster_known: bool,
    /// Subscriptions asked for this session.
    asked: HashSet<String>,
    /// Long enough after sign-in that silence means unavailable.
    settled: bool,
    reported: HashMap<AgentId, (PresenceStatus, Option<String>)>,
}

impl PresenceFollower {
    fn new(settings: &XmppSettings, signals: UcSignals) -> PresenceFollower {
        PresenceFollower {
            signals,
            show_map: settings.show_map.clone(),
            agent_domain: settings.agent_domain.to_ascii_lowercase(),
            own_jid: String::new(),
            agents: HashMap::new(),
            resources: HashMap::new(),
            subscribed: HashSet::new(),
            roster_known: false,
            asked: HashSet::new(),
            settled: false,
            reported: HashMap::new(),
        }
    }

    /// Reads the agents again: each one's JID is its `xmpp:` address, or its id at the
    /// agent domain.
    fn refresh_agents(&mut self) {
        let state = self.signals.state();
        self.agents = state
            .agents()
            .map(|agent| {
                let jid = match agent.profile.address.as_deref() {
                    Some(address) if address.starts_with("xmpp:") => {
                        let jid = &address["xmpp:".len()..];
                        bare(jid.split('?').next().unwrap_or(jid)).to_lowercase()
                    }
                    _ => format!(
                        "{}@{}",
                        agent.profile.id.as_str().to_lowercase(),
                        self.agent_domain
                    ),
                };
                (jid, agent.profile.id.clone())
            })
            .collect();
    }

    /// `subscribe` requests for agents the roster does not give handoff the presence of.
    fn subscriptions_to_ask(&mut self) -> Vec<String> {
        if !self.roster_known {
            return Vec::new();
        }
        let missing: Vec<String> = self
            .agents
            .keys()
            .filter(|jid| !self.subscribed.contains(*jid) && !self.asked.contains(*jid))
            .cloned()
            .collect();
        missing
            .into_iter()
            .map(|jid| {
                let request = format!("<presence type='subscribe' to='{}'/>", escape(&jid));
                tracing::info!(%jid, "XMPP presence: asking to see the agent's presence (not in handoff's roster)");
                self.asked.insert(jid);
                request
            })
            .collect()
    }

    /// Takes one stanza; returns the answer to send, if any.
    async fn stanza(&mut self, stanza: Element) -> Result<Option<String>, XmppError> {
        match stanza.name.as_str() {
            "presence" => {
                self.presence(&stanza).await;
                Ok(None)
            }
            "iq" => Ok(self.iq(&stanza)),
            "error" => Err(XmppError::StreamError(client::stream_error_condition(
                &stanza,
            ))),
            _ => Ok(None),
        }
    }

    async fn presence(&mut self, stanza: &Element) {
        let Some(from) = stanza.attribute("from") else {
            return;
        };
        let jid = bare(from).to_lowercase();
        if jid == self.own_jid {
            return;
        }
        let resource = from
            .split_once('/')
            .map(|(_, r)| r)
            .unwrap_or("")
            .to_owned();
        match stanza.attribute("type") {
            None => {
                if !self.resources.contains_key(&jid) && self.resources.len() >= CONTACTS_AT_MOST {
                    tracing::warn!(%jid, "XMPP presence: too many contacts followed; ignored");
                    return;
                }
                let resources = self.resources.entry(jid.clone()).or_default();
                if resources.len() >= RESOURCES_AT_MOST && !resources.contains_key(&resource) {
                    return;
                }
                resources.insert(resource, Show::parse(stanza.child_text("show")));
            }
            Some("unavailable") => {
                if let Some(resources) = self.resources.get_mut(&jid) {
                    resources.remove(&resource);
                    if resources.is_empty() {
                        self.resources.remove(&jid);
                    }
                }
            }
            Some(other) => {
                tracing::debug!(%jid, kind = other, "XMPP presence: not a presence change; ignored");
                return;
            }
        }
        if !self.agents.contains_key(&jid) {
            self.refresh_agents();
        }
        if let Some(agent) = self.agents.get(&jid).cloned() {
            self.report(&jid, &agent).await;
        }
    }

    fn iq(&mut self, stanza: &Element) -> Option<String> {
        let kind = stanza.attribute("type").unwrap_or("");
        let id = escape(stanza.attribute("id").unwrap_or("")).into_owned();
        let to = stanza
            .attribute("from")
            .map(|from| format!(" to='{}'", escape(from)))
            .unwrap_or_default();
        if let Some(query) = stanza.child("query") {
            // The roster (an answer to handoff's get) or a roster push (RFC 6121 2.1.6).
            let is_roster = query.attribute("xmlns") == Some("jabber:iq:roster");
            if is_roster && matches!(kind, "result" | "set") {
                if kind == "result" {
                    self.subscribed.clear();
                    self.roster_known = true;
                }
                for item in query.children_named("item") {
                    let Some(jid) = item.attribute("jid") else {
                        continue;
                    };
                    let jid = bare(jid).to_lowercase();
                    match item.attribute("subscription") {
                        Some("to" | "both") => {
                            self.subscribed.insert(jid);
                        }
                        _ => {
                            self.subscribed.remove(&jid);
                        }
                    }
                }
                return (kind == "set").then(|| format!("<iq type='result' id='{id}'{to}/>"));
            }
        }
        match kind {
            "get" if stanza.child("ping").is_some() => {
                Some(format!("<iq type='result' id='{id}'{to}/>"))
            }
            // RFC 6120 8.2.3: a request handoff does not serve still gets an answer.
            "get" | "set" => Some(format!(
                "<iq type='error' id='{id}'{to}><error type='cancel'>\
                 <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            )),
            _ => None,
        }
    }

    /// Reports every agent whose presence changed, taking silence as unavailable.
    async fn report_all(&mut self) {
        let agents: Vec<(String, AgentId)> = self
            .agents
            .iter()
            .map(|(jid, agent)| (jid.clone(), agent.clone()))
            .collect();
        for (jid, agent) in agents {
            self.report(&jid, &agent).await;
        }
    }

    /// Reports the agent's presence if it changed: its most available resource, or
    /// unavailable with none (once the session has settled).
    async fn report(&mut self, jid: &str, agent: &AgentId) {
        let presence = match self.resources.get(jid) {
            Some(resources) if !resources.is_empty() => resources
                .values()
                .map(|show| self.show_map.status_of(*show))
                .min_by_key(|(status, _)| rank(*status))
                .expect("not empty"),
            _ if !self.settled => return,
            _ => (self.show_map.unavailable, Some("unavailable".to_owned())),
        };
        if self.reported.get(agent) == Some(&presence) {
            return;
        }
        tracing::debug!(%agent, status = presence.0.as_str(), "XMPP presence");
        self.reported.insert(agent.clone(), presence.clone());
        self.signals
            .presence(agent, PresenceChannel::Chat, Some(presence))
            .await;
    }

    /// The connection is gone: withdraw everything reported, forget the server's word.
    async fn forget_all(&mut self) {
        let reported: Vec<AgentId> = self.reported.drain().map(|(agent, _)| agent).collect();
        for agent in reported {
            self.signals
                .presence(&agent, PresenceChannel::Chat, None)
                .await;
        }
        self.resources.clear();
        self.subscribed.clear();
        self.asked.clear();
        self.roster_known = false;
        self.settled = false;
    }
}

/// `user@domain` of `user@domain/resource`.
fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_map_overrides_replace_only_what_they_name() {
        let map = ShowMap::parse_overrides("xa = offline, dnd=away").unwrap();
        assert_eq!(map.xa, PresenceStatus::Offline);
        assert_eq!(map.dnd, PresenceStatus::Away);
        assert_eq!(map.away, PresenceStatus::Away);
        assert_eq!(map.chat, PresenceStatus::Available);
        assert_eq!(ShowMap::parse_overrides("").unwrap(), ShowMap::default());
    }

    #[test]
    fn show_map_errors_name_the_bad_part() {
        let error = ShowMap::parse_overrides("dnd=lunch").unwrap_err();
        assert!(error.contains("\"lunch\""), "{error}");
        let error = ShowMap::parse_overrides("sleeping=away").unwrap_err();
        assert!(error.contains("\"sleeping\""), "{error}");
        let error = ShowMap::parse_overrides("dnd").unwrap_err();
        assert!(error.contains("show=status"), "{error}");
    }

    #[test]
    fn unknown_show_values_are_plain_available() {
        assert_eq!(Show::parse(None), Show::Available);
        assert_eq!(Show::parse(Some("sleeping")), Show::Available);
        assert_eq!(Show::parse(Some("dnd")), Show::Dnd);
    }
}

//! SIP monitoring: handoff as a user agent that subscribes to each agent's `dialog` (RFC 4235)
//! and `presence` (RFC 3856, PIDF) event packages at the proxy.
//!
//! One UDP socket, one task. Every agent whose `address` is a `sip:` URI gets a subscription
//! per package (RFC 6665), refreshed before it runs out and made anew when it fails or the
//! notifier ends it. Each NOTIFY is answered at once, then read:
//!
//! - dialog-info: each dialog becomes a [`CallReport`] whose `device_call` is the agent and the
//!   dialog's id, and whose `call_id` is the dialog's `call-id` attribute. The signals match
//!   that against the interactions offered to the agent: through a proxy the Call-ID is end to
//!   end, so the call the IVR transferred carries the Call-ID the IVR posted as `call_id`, and
//!   its answer accepts the interaction; its end starts wrap-up. Any other call makes the agent
//!   busy. dialog-info carries no SIP headers, so an `X-Handoff-Interaction` header cannot be
//!   seen here; behind a B2BUA (which gives the agent's leg a Call-ID of its own) only
//!   `uc_match_single_offer` can tie the answered call to the offer.
//! - PIDF: basic `open`/`closed` and RPID activities become the agent's phone presence.
//!
//! A subscription that is lost (refused, timed out, terminated) makes its calls and presence
//! unknown rather than ended: the phone may still be on a call handoff no longer sees.

mod dialog_info;
mod digest;
mod message;
mod pidf;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use handoff_core::AgentId;
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{CallPhase, CallReport, PresenceChannel, UcSignals};
use crate::shutdown::Shutdown;
use digest::Challenge;
use message::{header_param, header_safe, header_uri, Message, StartLine};

/// Where handoff subscribes and as whom (`sip_*` in the configuration).
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// Where SUBSCRIBEs go: the proxy or PBX, `host:port` (UDP).
    pub proxy: String,
    /// The local UDP address handoff listens on for NOTIFYs.
    pub bind: SocketAddr,
    /// The host handoff names in its Via and Contact, when `bind` is a wildcard address.
    pub contact_host: Option<String>,
    /// handoff's own address, the From of its SUBSCRIBEs: `sip:handoff@pbx.example.com`.
    pub from: String,
    /// Digest credentials, when the proxy challenges SUBSCRIBEs.
    pub username: Option<String>,
    pub password: Option<String>,
    /// How long each subscription is asked for; refreshed before it runs out.
    pub expires: Duration,
    /// Subscribe to `presence` too, not only `dialog`.
    pub presence: bool,
}

/// How often retransmissions, refreshes and retries are looked at.
const TICK: Duration = Duration::from_millis(100);
/// How often the agents' addresses are read again.
const RECONCILE: Duration = Duration::from_secs(2);
/// RFC 3261's T1 and T2: the first retransmission interval and its ceiling.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// How long a SUBSCRIBE waits for a final answer (RFC 3261's Timer F is 64*T1, 32 s; half of
/// it is plenty on a LAN and makes a dead proxy noticed sooner).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(16);
/// Retries of a failed subscription wait from 1 s, doubling, up to a minute.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The most agents followed: each costs two subscriptions at the proxy.
const MAX_AGENTS: usize = 10_000;
/// New subscriptions started per tick, so that a restart does not flood the proxy.
const NEW_PER_TICK: usize = 20;
/// The most calls remembered per phone.
const MAX_CALLS: usize = 32;
/// Challenges answered in a row before a subscription counts as failed (wrong credentials).
const MAX_AUTH_TRIES: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Package {
    Dialog,
    Presence,
}

impl Package {
    fn event(self) -> &'static str {
        match self {
            Package::Dialog => "dialog",
            Package::Presence => "presence",
        }
    }

    fn accept(self) -> &'static str {
        match self {
            Package::Dialog => "application/dialog-info+xml",
            Package::Presence => "application/pidf+xml",
        }
    }
}

type Key = (AgentId, Package);

/// A SUBSCRIBE on its way: retransmitted until it has an answer (UDP, RFC 3261 §17.1.2).
struct Transaction {
    branch: String,
    bytes: Vec<u8>,
    started: Instant,
    next_send: Instant,
    interval: Duration,
}

/// One subscription dialog.
struct Subscription {
    call_id: String,
    from_tag: String,
    to_tag: Option<String>,
    cseq: u32,
    remote_target: Option<String>,
    route_set: Vec<String>,
    /// A 2xx or a NOTIFY came: the notifier knows the subscription.
    established: bool,
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
    txn: Option<Transaction>,
    auth: Option<Auth>,
    auth_tries: u32,
    /// The CSeq of the last NOTIFY read, to skip its retransmissions.
    last_notify: Option<u32>,
    /// Dialogs at the phone: their phase and Call-ID.
    calls: HashMap<String, (CallPhase, Option<String>)>,
    last_presence: Option<pidf::Reading>,
}

struct Auth {
    challenge: Challenge,
    proxy: bool,
    nc: u32,
}

/// A package of one agent: its subscription, or when the next one may start.
struct Slot {
    sub: Option<Subscription>,
    retry_at: Instant,
    failures: u32,
}

struct Ua {
    settings: SipSettings,
    signals: UcSignals,
    socket: UdpSocket,
    /// The host and port handoff names in Via and Contact.
    host: String,
    port: u16,
    /// The user part of the Contact, from `settings.from`.
    user: String,
    proxy: Option<SocketAddr>,
    /// Each followed agent's address.
    agents: HashMap<AgentId, String>,
    slots: HashMap<Key, Slot>,
    branches: HashMap<String, Key>,
    call_ids: HashMap<String, Key>,
    warned_too_many: bool,
}

/// Follows every agent whose `address` is a `sip:` URI until shutdown.
pub async fn run(settings: SipSettings, signals: UcSignals, mut shutdown: Shutdown) {
    let socket = loop {
        match UdpSocket::bind(settings.bind).await {
            Ok(socket) => break socket,
            Err(error) => {
                tracing::warn!(bind = %settings.bind, %error, "SIP: cannot bind; retrying");
                tokio::select! {
                    _ = shutdown.fired() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    let port = match socket.local_addr() {
        Ok(local) => local.port(),
        Err(_) => settings.bind.port(),
    };
    let user = message::uri_user(&settings.from)
        .filter(|user| header_safe(user))
        .unwrap_or("handoff")
        .to_owned();
    let mut ua = Ua {
        host: String::new(),
        port,
        user,
        proxy: None,
        agents: HashMap::new(),
        slots: HashMap::new(),
        branches: HashMap::new(),
        call_ids: HashMap::new(),
        warned_too_many: false,
        settings,
        signals,
        socket,
    };
    ua.resolve_proxy().await;
    tracing::info!(local = %format!("{}:{}", ua.host, ua.port), proxy = %ua.settings.proxy, "SIP monitoring started");
    let mut buffer = vec![0u8; message::MAX_DATAGRAM];
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reconcile = tokio::time::interval(RECONCILE);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.fired() => {
                ua.unsubscribe_all().await;
                return;
            }
            received = ua.socket.recv_from(&mut buffer) => match received {
                Ok((length, from)) => ua.on_datagram(&buffer[..length], from).await,
                Err(error) => {
                    tracing::debug!(%error, "SIP: receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = tick.tick() => ua.on_tick().await,
            _ = reconcile.tick() => ua.reconcile().await,
        }
    }
}

fn random_token() -> String {
    let value: u64 = rand::thread_rng().gen();
    format!("{value:016x}")
}

fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    (BACKOFF_MIN * 2u32.pow(exponent)).min(BACKOFF_MAX)
}

/// The part of a header value before its parameters (`active;expires=60` → `active`).
fn token(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a Contact from the network may become a request line's URI.
fn usable_target(uri: &str) -> bool {
    (uri.starts_with("sip:") || uri.starts_with("sips:"))
        && header_safe(uri)
        && !uri.contains(char::is_whitespace)
}

/// Whether an agent's address is one handoff can subscribe to.
fn subscribable(address: &str) -> bool {
    address.starts_with("sip:")
        && address.contains('@')
        && header_safe(address)
        && !address.contains(['<', '>', ' ', '"', ','])
}

impl Ua {
    /// Resolves the proxy's address, and from it the host handoff names when bound to a
    /// wildcard address without `contact_host`.
    async fn resolve_proxy(&mut self) {
        let proxy = if self.settings.proxy.contains(':') {
            self.settings.proxy.clone()
        } else {
            format!("{}:5060", self.settings.proxy)
        };
        match tokio::net::lookup_host(proxy.as_str()).await {
            Ok(mut addresses) => self.proxy = addresses.next(),
            Err(error) => {
                tracing::warn!(proxy = %self.settings.proxy, %error, "SIP: cannot resolve the proxy")
            }
        }
        let bind_ip = self.settings.bind.ip();
        let ip = if bind_ip.is_unspecified() {
            if let Some(host) = &self.settings.contact_host {
                self.host = host.clone();
                return;
            }
            // The address the system would send to the proxy from.
            let probe = match self.proxy {
                Some(proxy) => {
                    let any: SocketAddr = if proxy.is_ipv4() {
                        "0.0.0.0:0".parse().unwrap_or(self.settings.bind)
                    } else {
                        "[::]:0".parse().unwrap_or(self.settings.bind)
                    };
                    match std::net::UdpSocket::bind(any) {
                        Ok(socket) => socket
                            .connect(proxy)
                            .and_then(|_| socket.local_addr())
                            .map(|local| local.ip())
                            .ok(),
                        Err(_) => None,
                    }
                }
                None => None,
            };
            probe.unwrap_or(bind_ip)
        } else {
            bind_ip
        };
        self.host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        if let Err(error) = self.socket.send_to(bytes, to).await {
            tracing::debug!(%to, %error, "SIP: send failed");
        }
    }

    /// Follows the agents the state names: new and changed addresses subscribed, the others
    /// given up.
    async fn reconcile(&mut self) {
        if self.proxy.is_none() {
            self.resolve_proxy().await;
        }
        let mut too_many = false;
        let desired: HashMap<AgentId, String> = {
            let state = self.signals.state();
            let mut desired = HashMap::new();
            for agent in state.agents() {
                let Some(address) = agent.profile.address.as_deref() else {
                    continue;
                };
                if !subscribable(address) {
                    continue;
                }
                if desired.len() >= MAX_AGENTS {
                    too_many = true;
                    break;
                }
                desired.insert(agent.profile.id.clone(), address.to_owned());
            }
            desired
        };
        if too_many && !self.warned_too_many {
            self.warned_too_many = true;
            tracing::warn!(
                max = MAX_AGENTS,
                "SIP: more agents with SIP addresses than handoff follows; the rest are not monitored"
            );
        }
        let gone: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(agent, address)| desired.get(*agent) != Some(*address))
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in gone {
            let Some(address) = self.agents.remove(&agent) else {
                continue;
            };
            for package in [Package::Dialog, Package::Presence] {
                if let Some(slot) = self.slots.remove(&(agent.clone(), package)) {
                    if let Some(sub) = slot.sub {
                        self.forget(&sub);
                        if sub.established {
                            self.send_unsubscribe(&address, package, sub).await;
                        }
                    }
                    self.lost_signals(&agent, package).await;
                }
            }
        }
        let now = Instant::now();
        for (agent, address) in desired {
            if self.agents.contains_key(&agent) {
                continue;
            }
            self.agents.insert(agent.clone(), address);
            let mut packages = vec![Package::Dialog];
            if self.settings.presence {
                packages.push(Package::Presence);
            }
            for package in packages {
                self.slots.insert(
                    (agent.clone(), package),
                    Slot {
                        sub: None,
                        retry_at: now,
                        failures: 0,
                    },
                );
            }
        }
    }

    /// Retransmissions, timeouts, refreshes and new subscriptions.
    async fn on_tick(&mut self) {
        let now = Instant::now();
        let mut resend = Vec::new();
        let mut timed_out = Vec::new();
        let mut refresh = Vec::new();
        let mut start = Vec::new();
        for (key, slot) in &mut self.slots {
            match &mut slot.sub {
                None => {
                    if now >= slot.retry_at && start.len() < NEW_PER_TICK {
                        start.push(key.clone());
                    }
                }
                Some(sub) => {
                    if let Some(txn) = &mut sub.txn {
                        if now >= txn.started + TRANSACTION_TIMEOUT {
                            timed_out.push(key.clone());
                        } else if now >= txn.next_send {
                            txn.next_send = now + txn.interval;
                            txn.interval = (txn.interval * 2).min(T2);
                            resend.push(txn.bytes.clone());
                        }
                    } else if sub.expires_at.is_some_and(|at| now >= at) {
                        timed_out.push(key.clone());
                    } else if sub.refresh_at.is_some_and(|at| now >= at) {
                        refresh.push(key.clone());
                    }
                }
            }
        }
        if let Some(proxy) = self.proxy {
            for bytes in resend {
                self.send(&bytes, proxy).await;
            }
        }
        for key in timed_out {
            tracing::warn!(agent = %key.0, event = key.1.event(), "SIP: the subscription got no answer in time");
            self.lose(&key, None).await;
        }
        for key in refresh {
            self.send_subscribe(&key).await;
        }
        if self.proxy.is_none() {
            return;
        }
        for key in start {
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            let sub = Subscription {
                call_id: format!("{}@handoff", random_token()),
                from_tag: random_token(),
                to_tag: None,
                cseq: 0,
                remote_target: None,
                route_set: Vec::new(),
                established: false,
                refresh_at: None,
                expires_at: None,
                txn: None,
                auth: None,
                auth_tries: 0,
                last_notify: None,
                calls: HashMap::new(),
                last_presence: None,
            };
            self.call_ids.insert(sub.call_id.clone(), key.clone());
            slot.sub = Some(sub);
            self.send_subscribe(&key).await;
        }
    }

    /// Sends the subscription's next SUBSCRIBE (initial, refresh, or after a challenge) and
    /// starts its transaction.
    async fn send_subscribe(&mut self, key: &Key) {
        let Some(address) = self.agents.get(&key.0).cloned() else {
            return;
        };
        let Some(proxy) = self.proxy else {
            return;
        };
        let expires = self.settings.expires.as_secs().max(1);
        let branch = format!("z9hG4bK{}", random_token());
        let Some(sub) = self.slots.get_mut(key).and_then(|slot| slot.sub.as_mut()) else {
            return;
        };
        let bytes = build_subscribe(
            &self.settings,
            &self.host,
            self.port,
            &self.user,
            &address,
            key.1,
            sub,
            &branch,
            expires,
        );
        if let Some(old) = sub.txn.take() {
            self.branches.remove(&old.branch);
        }
        let now = Instant::now();
        sub.txn = Some(Transaction {
            branch: branch.clone(),
            bytes: bytes.clone(),
            started: now,
            next_send: now + T1,
            interval: T1 * 2,
        });
        sub.refresh_at = None;
        self.branches.insert(branch, key.clone());
        self.send(&bytes, proxy).await;
    }

    /// Ends a subscription with `Expires: 0`, once, without waiting: the agent is gone or
    /// handoff stops, and the notifier lets it run out anyway.
    async fn send_unsubscribe(&self, address: &str, package: Package, mut sub: Subscription) {
        let Some(proxy) = self.proxy else {
            return;
        };
        let branch = format!("z9hG4bK{}", random_token());
        let bytes = build_subscribe(
            &self.settings,
            &self.host,
            self.port,
            &self.user,
            address,
            package,
            &mut sub,
            &branch,
            0,
        );
        self.send(&bytes, proxy).await;
    }

    async fn unsubscribe_all(&mut self) {
        let keys: Vec<Key> = self.slots.keys().cloned().collect();
        for key in keys {
            let Some(sub) = self.slots.get_mut(&key).and_then(|slot| slot.sub.take()) else {
                continue;
            };
            if let (true, Some(address)) = (sub.established, self.agents.get(&key.0)) {
                self.send_unsubscribe(address, key.1, sub).await;
            }
        }
    }

    /// Drops a subscription's routing entries.
    fn forget(&mut self, sub: &Subscription) {
        self.call_ids.remove(&sub.call_id);
        if let Some(txn) = &sub.txn {
            self.branches.remove(&txn.branch);
        }
    }

    /// The subscription is gone: what it said is no longer known, and a new one starts after
    /// `retry` (None: the backoff).
    async fn lose(&mut self, key: &Key, retry: Option<Duration>) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let Some(sub) = slot.sub.take() else {
            return;
        };
        slot.failures = slot.failures.saturating_add(1);
        let wait = retry.unwrap_or_else(|| backoff(slot.failures));
        slot.retry_at = Instant::now() + wait;
        metrics::counter!("handoff_sip_subscriptions_lost_total", "event" => key.1.event())
            .increment(1);
        self.forget(&sub);
        self.lost_signals(&key.0, key.1).await;
    }

    async fn lost_signals(&self, agent: &AgentId, package: Package) {
        match package {
            Package::Dialog => self.signals.calls_unknown(agent).await,
            Package::Presence => {
                self.signals
                    .presence(agent, PresenceChannel::Phone, None)
                    .await
            }
        }
    }

    async fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        let Some(message) = Message::parse(data) else {
            if data.iter().any(|b| !b.is_ascii_whitespace()) {
                tracing::debug!(%from, length = data.len(), "SIP: not a SIP message; ignored");
            }
            return;
        };
        match &message.start {
            StartLine::Response { .. } => self.on_response(message).await,
            StartLine::Request { .. } => self.on_request(message, from).await,
        }
    }

    async fn on_response(&mut self, response: Message) {
        let (Some(code), Some(branch)) = (response.code(), response.top_branch()) else {
            return;
        };
        let Some(key) = self.branches.get(&branch).cloned() else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        let Some(sub) = slot.sub.as_mut() else {
            return;
        };
        let Some(txn) = sub.txn.as_mut() else {
            return;
        };
        if txn.branch != branch {
            return;
        }
        if code < 200 {
            // Proceeding: the proxy has it; retransmit only at T2 (RFC 3261 §17.1.2.2).
            txn.interval = T2;
            txn.next_send = Instant::now() + T2;
            return;
        }
        self.branches.remove(&branch);
        sub.txn = None;
        match code {
            200..=299 => {
                slot.failures = 0;
                sub.auth_tries = 0;
                if sub.to_tag.is_none() {
                    sub.to_tag = response.tag("to");
                }
                if !sub.established {
                    // The route set is the Record-Route of the first 2xx, reversed (§12.1.2).
                    sub.route_set = response.header_values("record-route");
                    sub.route_set.reverse();
                }
                if let Some(target) = response.header("contact").and_then(header_uri) {
                    if usable_target(&target) {
                        sub.remote_target = Some(target);
                    }
                }
                sub.established = true;
                let granted = response
                    .number("expires")
                    .map(Duration::from_secs)
                    .unwrap_or(self.settings.expires);
                if granted.is_zero() {
                    self.lose(&key, Some(BACKOFF_MIN)).await;
                    return;
                }
                schedule_refresh(sub, granted);
            }
            401 | 407 if self.settings.username.is_some() => {
                let header = if code == 401 {
                    "www-authenticate"
                } else {
                    "proxy-authenticate"
                };
                let challenge = Challenge::best(response.header_lines(header));
                match challenge {
                    Some(challenge) if sub.auth_tries < MAX_AUTH_TRIES || challenge.stale => {
                        sub.auth_tries += 1;
                        sub.auth = Some(Auth {
                            challenge,
                            proxy: code == 407,
                            nc: 0,
                        });
                        self.send_subscribe(&key).await;
                    }
                    _ => {
                        tracing::warn!(agent = %key.0, code, "SIP: the proxy refused handoff's credentials");
                        self.lose(&key, None).await;
                    }
                }
            }
            423 => {
                // Interval Too Brief: a configuration mistake, not worth second-guessing.
                let minimum = response.number("min-expires").unwrap_or(0);
                tracing::warn!(agent = %key.0, minimum, "SIP: the proxy wants longer subscriptions; raise sip_expires_s");
                self.lose(&key, None).await;
            }
            _ => {
                let retry = response
                    .number("retry-after")
                    .map(|s| Duration::from_secs(s.min(3600)));
                if code == 481 {
                    tracing::info!(agent = %key.0, event = key.1.event(), "SIP: the subscription was gone at the notifier; subscribing again");
                } else {
                    tracing::warn!(agent = %key.0, event = key.1.event(), code, "SIP: the subscription was refused");
                }
                let retry = if code == 481 {
                    Some(Duration::ZERO)
                } else {
                    retry
                };
                self.lose(&key, retry).await;
            }
        }
    }

    async fn on_request(&mut self, request: Message, from: SocketAddr) {
        let method = request.method().unwrap_or("").to_owned();
        match method.as_str() {
            "NOTIFY" => self.on_notify(request, from).await,
            "ACK" => {}
            "OPTIONS" => self.reply(&request, from, 200, "OK").await,
            _ => self.reply(&request, from, 405, "Method Not Allowed").await,
        }
    }

    /// Answers a request statelessly, to where it came from.
    async fn reply(&self, request: &Message, to: SocketAddr, code: u16, reason: &str) {
        let mut text = format!("SIP/2.0 {code} {reason}\r\n");
        for via in request.header_lines("via") {
            text.push_str(&format!("Via: {via}\r\n"));
        }
        for name in ["from", "to", "call-id", "cseq"] {
            let Some(value) = request.header(name) else {
                // Without these a response cannot be matched: nothing to answer.
                return;
            };
            let name = match name {
                "from" => "From",
                "to" => "To",
                "call-id" => "Call-ID",
                _ => "CSeq",
            };
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if code == 405 {
            text.push_str("Allow: NOTIFY, OPTIONS\r\n");
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.send(text.as_bytes(), to).await;
    }

    async fn on_notify(&mut self, notify: Message, from: SocketAddr) {
        let key = notify
            .call_id()
            .and_then(|call_id| self.call_ids.get(call_id))
            .cloned();
        let our_tag = notify.tag("to");
        let matched = key.filter(|key| {
            self.slots
                .get(key)
                .and_then(|slot| slot.sub.as_ref())
                .is_some_and(|sub| Some(&sub.from_tag) == our_tag.as_ref())
        });
        let event = notify.header("event").map(token);
        let Some(key) = matched.filter(|key| event.as_deref() == Some(key.1.event())) else {
            self.reply(&notify, from, 481, "Subscription Does Not Exist")
                .await;
            return;
        };
        self.reply(&notify, from, 200, "OK").await;
        metrics::counter!("handoff_sip_notifies_total", "event" => key.1.event()).increment(1);

        let state = notify.header("subscription-state").unwrap_or("active");
        let state_token = token(state);
        let Some(sub) = self.slots.get_mut(&key).and_then(|slot| slot.sub.as_mut()) else {
            return;
        };
        let cseq = notify.cseq().map(|(number, _)| number);
        let repeated = match (cseq, sub.last_notify) {
            (Some(cseq), Some(last)) => cseq <= last,
            _ => false,
        };
        if repeated {
            return;
        }
        sub.last_notify = cseq.or(sub.last_notify);
        if sub.to_tag.is_none() {
            sub.to_tag = notify.tag("from");
        }
        if let Some(target) = notify.header("contact").and_then(header_uri) {
            if usable_target(&target) {
                sub.remote_target = Some(target);
            }
        }
        sub.established = true;
        if state_token != "terminated" {
            if let Some(expires) = header_param(state, "expires").and_then(|e| e.parse().ok()) {
                let expires = Duration::from_secs(expires);
                // The notifier may shorten it; never lengthen what handoff plans.
                if sub
                    .expires_at
                    .is_none_or(|at| Instant::now() + expires < at)
                {
                    schedule_refresh(sub, expires);
                }
            }
        }

        match key.1 {
            Package::Dialog => self.on_dialog_info(&key, &notify.body).await,
            Package::Presence => self.on_pidf(&key, &notify.body).await,
        }

        if state_token == "terminated" {
            let reason = header_param(state, "reason").unwrap_or_default();
            let retry_after = header_param(state, "retry-after")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(3600)));
            tracing::info!(agent = %key.0, event = key.1.event(), %reason, "SIP: the notifier ended the subscription");
            let retry = match reason.as_str() {
                // RFC 6665 §4.1.3: subscribe again at once.
                "deactivated" | "timeout" | "" => Some(retry_after.unwrap_or(Duration::ZERO)),
                "probation" => Some(retry_after.unwrap_or(BACKOFF_MIN)),
                _ => retry_after,
            };
            self.lose(&key, retry).await;
            // A notifier that ends every subscription at once still gets a pause.
            if let Some(slot) = self.slots.get_mut(&key) {
                if slot.failures > 3 {
                    slot.retry_at = slot.retry_at.max(Instant::now() + backoff(slot.failures));
                }
            }
        }
    }

    async fn on_dialog_info(&mut self, key: &Key, body: &str) {
        let info = if body.trim().is_empty() {
            // No document: the notifier knows no dialog at the phone.
            dialog_info::DialogInfo {
                full: true,
                version: None,
                dialogs: Vec::new(),
            }
        } else {
            match dialog_info::parse(body) {
                Some(info) => info,
                None => {
                    tracing::warn!(agent = %key.0, "SIP: a dialog NOTIFY with a body that is not dialog-info; ignored");
                    return;
                }
            }
        };
        let Some(sub) = self.slots.get_mut(key).and_then(|slot| slot.sub.as_mut()) else {
            return;
        };
        let agent = &key.0;
        let reports = call_reports(agent, &mut sub.calls, info);
        for report in reports {
            tracing::debug!(%agent, device_call = %report.device_call, phase = ?report.phase, "SIP: call at the agent's phone");
            self.signals.call(agent, report).await;
        }
    }

    async fn on_pidf(&mut self, key: &Key, body: &str) {
        let reading = if body.trim().is_empty() {
            pidf::Reading::Unknown
        } else {
            match pidf::parse(body) {
                Some(reading) => reading,
                None => {
                    tracing::warn!(agent = %key.0, "SIP: a presence NOTIFY with a body that is not PIDF; ignored");
                    return;
                }
            }
        };
        let Some(sub) = self.slots.get_mut(key).and_then(|slot| slot.sub.as_mut()) else {
            return;
        };
        if sub.last_presence.as_ref() == Some(&reading) {
            return;
        }
        sub.last_presence = Some(reading.clone());
        let presence = match reading {
            pidf::Reading::Known(status, reason) => Some((status, reason)),
            pidf::Reading::Unknown => None,
        };
        self.signals
            .presence(&key.0, PresenceChannel::Phone, presence)
            .await;
    }
}

/// What a dialog-info document changes at the phone: a report for each dialog whose phase
/// moved, and for a full document an end for each known dialog it no longer lists. `calls`
/// is what the subscription knew, updated.
fn call_reports(
    agent: &AgentId,
    calls: &mut HashMap<String, (CallPhase, Option<String>)>,
    info: dialog_info::DialogInfo,
) -> Vec<CallReport> {
    // The dialog id is only unique at its notifier: prefixed with the agent, it is unique
    // on the board too.
    let device_call = |id: &str| format!("{agent}/{id}");
    let mut reports = Vec::new();
    let mut seen = HashSet::new();
    for dialog in info.dialogs {
        let phase = match dialog.state {
            dialog_info::DialogState::Ringing => CallPhase::Ringing,
            dialog_info::DialogState::Confirmed => CallPhase::Connected,
            dialog_info::DialogState::Terminated => CallPhase::Ended,
        };
        seen.insert(dialog.id.clone());
        let before = calls.get(&dialog.id).map(|(phase, _)| *phase);
        if before == Some(phase) {
            continue;
        }
        if phase == CallPhase::Ended {
            // A full document keeps listing a terminated dialog for a while: once is enough.
            if calls.remove(&dialog.id).is_none() {
                continue;
            }
        } else if before.is_none() && calls.len() >= MAX_CALLS {
            tracing::warn!(%agent, "SIP: too many dialogs at one phone; ignoring the newest");
            continue;
        } else {
            calls.insert(dialog.id.clone(), (phase, dialog.call_id.clone()));
        }
        reports.push(CallReport {
            device_call: device_call(&dialog.id),
            call_id: dialog.call_id,
            interaction: None,
            phase,
        });
    }
    if info.full {
        let absent: Vec<String> = calls
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in absent {
            if let Some((_, call_id)) = calls.remove(&id) {
                reports.push(CallReport {
                    device_call: device_call(&id),
                    call_id,
                    interaction: None,
                    phase: CallPhase::Ended,
                });
            }
        }
    }
    reports
}

/// Plans the refresh of a subscription granted for `granted`: well before it runs out, so a
/// lost SUBSCRIBE still has time for its retransmissions.
fn schedule_refresh(sub: &mut Subscription, granted: Duration) {
    let now = Instant::now();
    let margin = (granted / 4).clamp(Duration::from_millis(500), TRANSACTION_TIMEOUT * 2);
    let refresh_in = granted.saturating_sub(margin).max(granted / 2);
    sub.refresh_at = Some(now + refresh_in);
    sub.expires_at = Some(now + granted);
}

/// A SUBSCRIBE of `sub`, its CSeq counted and its credentials, if any, answered.
#[allow(clippy::too_many_arguments)]
fn build_subscribe(
    settings: &SipSettings,
    host: &str,
    port: u16,
    user: &str,
    address: &str,
    package: Package,
    sub: &mut Subscription,
    branch: &str,
    expires: u64,
) -> Vec<u8> {
    sub.cseq = sub.cseq.wrapping_add(1).max(1);
    let target = if sub.to_tag.is_some() {
        sub.remote_target.as_deref().unwrap_or(address)
    } else {
        address
    };
    let mut text = format!("SUBSCRIBE {target} SIP/2.0\r\n");
    text.push_str(&format!(
        "Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n"
    ));
    text.push_str("Max-Forwards: 70\r\n");
    for route in &sub.route_set {
        text.push_str(&format!("Route: {route}\r\n"));
    }
    text.push_str(&format!(
        "From: <{}>;tag={}\r\n",
        settings.from, sub.from_tag
    ));
    match &sub.to_tag {
        Some(tag) => text.push_str(&format!("To: <{address}>;tag={tag}\r\n")),
        None => text.push_str(&format!("To: <{address}>\r\n")),
    }
    text.push_str(&format!("Call-ID: {}\r\n", sub.call_id));
    text.push_str(&format!("CSeq: {} SUBSCRIBE\r\n", sub.cseq));
    text.push_str(&format!("Contact: <sip:{user}@{host}:{port}>\r\n"));
    text.push_str(&format!("Event: {}\r\n", package.event()));
    text.push_str(&format!("Accept: {}\r\n", package.accept()));
    text.push_str(&format!("Expires: {expires}\r\n"));
    if let (Some(auth), Some(username), Some(password)) =
        (sub.auth.as_mut(), &settings.username, &settings.password)
    {
        auth.nc = auth.nc.wrapping_add(1);
        let value = auth.challenge.answer(
            username,
            password,
            "SUBSCRIBE",
            target,
            auth.nc,
            &random_token(),
        );
        let name = if auth.proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Allow: NOTIFY, OPTIONS\r\n");
    text.push_str("User-Agent: handoff\r\n");
    text.push_str("Content-Length: 0\r\n\r\n");
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription() -> Subscription {
        Subscription {
            call_id: "c1@handoff".into(),
            from_tag: "ft".into(),
            to_tag: None,
            cseq: 0,
            remote_target: None,
            route_set: Vec::new(),
            established: false,
            refresh_at: None,
            expires_at: None,
            txn: None,
            auth: None,
            auth_tries: 0,
            last_notify: None,
            calls: HashMap::new(),
            last_presence: None,
        }
    }

    fn settings() -> SipSettings {
        SipSettings {
            proxy: "127.0.0.1:5060".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            contact_host: None,
            from: "sip:handoff@pbx.test".into(),
            username: Some("handoff".into()),
            password: Some("secret".into()),
            expires: Duration::from_secs(300),
            presence: true,
        }
    }

    #[test]
    fn builds_a_subscribe_that_parses_back() {
        let mut sub = subscription();
        let bytes = build_subscribe(
            &settings(),
            "127.0.0.1",
            5070,
            "handoff",
            "sip:a1@pbx.test",
            Package::Dialog,
            &mut sub,
            "z9hG4bKabc",
            300,
        );
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(
            message.start,
            StartLine::Request {
                method: "SUBSCRIBE".into(),
                uri: "sip:a1@pbx.test".into()
            }
        );
        assert_eq!(message.top_branch().as_deref(), Some("z9hG4bKabc"));
        assert_eq!(message.cseq(), Some((1, "SUBSCRIBE".into())));
        assert_eq!(message.header("event"), Some("dialog"));
        assert_eq!(message.number("expires"), Some(300));
        assert_eq!(message.tag("from").as_deref(), Some("ft"));
        assert_eq!(message.tag("to"), None);

        // In the dialog, with a challenge answered: to the remote target, counted.
        sub.to_tag = Some("tt".into());
        sub.remote_target = Some("sip:pbx@127.0.0.1:5060".into());
        sub.route_set = vec!["<sip:127.0.0.1;lr>".into()];
        sub.auth = Some(Auth {
            challenge: Challenge::parse(r#"Digest realm="pbx.test", nonce="n", qop="auth""#)
                .unwrap(),
            proxy: true,
            nc: 0,
        });
        let bytes = build_subscribe(
            &settings(),
            "127.0.0.1",
            5070,
            "handoff",
            "sip:a1@pbx.test",
            Package::Presence,
            &mut sub,
            "z9hG4bKdef",
            0,
        );
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.method(), Some("SUBSCRIBE"));
        assert!(
            matches!(&message.start, StartLine::Request { uri, .. } if uri == "sip:pbx@127.0.0.1:5060")
        );
        assert_eq!(message.tag("to").as_deref(), Some("tt"));
        assert_eq!(message.cseq(), Some((2, "SUBSCRIBE".into())));
        assert_eq!(message.header("route"), Some("<sip:127.0.0.1;lr>"));
        assert_eq!(message.header("accept"), Some("application/pidf+xml"));
        assert!(message
            .header("proxy-authorization")
            .unwrap()
            .contains("nc=00000001"));
    }

    #[test]
    fn refreshes_before_expiry_and_backs_off() {
        let mut sub = subscription();
        schedule_refresh(&mut sub, Duration::from_secs(300));
        let now = Instant::now();
        let refresh = sub.refresh_at.unwrap() - now;
        assert!(refresh >= Duration::from_secs(225) && refresh < Duration::from_secs(300));
        schedule_refresh(&mut sub, Duration::from_secs(2));
        assert!(sub.refresh_at.unwrap() - Instant::now() <= Duration::from_millis(1500));
        assert_eq!(backoff(1), BACKOFF_MIN);
        assert_eq!(backoff(2), BACKOFF_MIN * 2);
        assert_eq!(backoff(50), BACKOFF_MAX);
    }

    #[test]
    fn dialog_documents_become_call_reports() {
        use dialog_info::{Dialog, DialogInfo, DialogState};
        let agent = AgentId::parse("a1").unwrap();
        let mut calls = HashMap::new();
        let dialog = |id: &str, state| Dialog {
            id: id.into(),
            call_id: Some(format!("call-{id}")),
            state,
        };
        let document = |full, dialogs| DialogInfo {
            full,
            version: None,
            dialogs,
        };
        let phases = |reports: &[CallReport]| {
            reports
                .iter()
                .map(|r| (r.device_call.clone(), r.phase))
                .collect::<Vec<_>>()
        };

        let reports = call_reports(
            &agent,
            &mut calls,
            document(true, vec![dialog("x", DialogState::Ringing)]),
        );
        assert_eq!(phases(&reports), vec![("a1/x".into(), CallPhase::Ringing)]);
        assert_eq!(reports[0].call_id.as_deref(), Some("call-x"));
        // The same state again says nothing new.
        let same = document(true, vec![dialog("x", DialogState::Ringing)]);
        assert!(call_reports(&agent, &mut calls, same).is_empty());
        // A partial document touches only what it lists.
        let reports = call_reports(
            &agent,
            &mut calls,
            document(false, vec![dialog("y", DialogState::Confirmed)]),
        );
        assert_eq!(
            phases(&reports),
            vec![("a1/y".into(), CallPhase::Connected)]
        );
        // A full document without x ends it; y answered earlier stays.
        let reports = call_reports(
            &agent,
            &mut calls,
            document(true, vec![dialog("y", DialogState::Confirmed)]),
        );
        assert_eq!(phases(&reports), vec![("a1/x".into(), CallPhase::Ended)]);
        assert_eq!(reports[0].call_id.as_deref(), Some("call-x"));
        // Terminated ends it once; a dialog never seen that is terminated says nothing.
        let over = document(
            true,
            vec![
                dialog("y", DialogState::Terminated),
                dialog("z", DialogState::Terminated),
            ],
        );
        let reports = call_reports(&agent, &mut calls, over.clone());
        assert_eq!(phases(&reports), vec![("a1/y".into(), CallPhase::Ended)]);
        assert!(call_reports(&agent, &mut calls, over).is_empty());
        assert!(calls.is_empty());
    }

    #[test]
    fn mangled_input_never_panics() {
        let notify = "NOTIFY sip:handoff@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n\
            From: <sip:a1@pbx.test>;tag=x\r\nTo: <sip:handoff@pbx.test>;tag=y\r\nCall-ID: c\r\n\
            CSeq: 2 NOTIFY\r\nEvent: dialog\r\nSubscription-State: active;expires=60\r\n\
            Content-Length: 150\r\n\r\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"1\" \
            state=\"full\" entity=\"sip:a1@pbx.test\"><dialog id=\"d\"><state>confirmed</state></dialog></dialog-info>";
        let pidf = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><tuple id="t"><status><basic>open</basic></status></tuple></presence>"#;
        let mut rng = rand::thread_rng();
        for sample in [notify.as_bytes(), pidf.as_bytes()] {
            for _ in 0..3000 {
                let mut bytes = sample.to_vec();
                for _ in 0..rng.gen_range(0..4) {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] = rng.gen();
                }
                bytes.truncate(rng.gen_range(0..=bytes.len()));
                if let Some(message) = Message::parse(&bytes) {
                    let _ = (message.cseq(), message.top_branch(), message.tag("from"));
                    let _ = message.header("from").and_then(header_uri);
                }
                let text = String::from_utf8_lossy(&bytes);
                let _ = dialog_info::parse(&text);
                let _ = pidf::parse(&text);
                let _ = Challenge::parse(&text);
            }
        }
    }

    #[test]
    fn only_plain_sip_addresses_are_followed() {
        assert!(subscribable("sip:alice@pbx.example.com"));
        assert!(!subscribable("tel:+15551234567"));
        assert!(!subscribable("sip:pbx.example.com"));
        assert!(!subscribable("sip:a@b\r\nX: y"));
        assert!(!subscribable("sip:a@b>;x"));
    }
}

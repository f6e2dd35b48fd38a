//! SIP monitoring: handoff as a user agent that subscribes to each agent's `dialog` (RFC 4235)
//! and `presence` (RFC 3856, PIDF) event packages at the proxy.

use std::net::SocketAddr;
use std::time::Duration;

use super::UcSignals;
use crate::shutdown::Shutdown;

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

/// Not yet: the SIP subscriptions land in the next commit; until then nothing is followed.
pub async fn run(settings: SipSettings, signals: UcSignals, mut shutdown: Shutdown) {
    let _ = (settings, signals);
    shutdown.fired().await;
}

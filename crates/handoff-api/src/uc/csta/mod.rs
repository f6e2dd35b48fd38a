//! The CSTA bridge: a client of CSTA Phase III XML (ECMA-323) for PBXs that offer only CSTA.
//!
//! handoff connects to the PBX's CSTA server over TCP (`framing.rs`), opens an application
//! session when one is configured, and monitors the device of every agent whose address names
//! one (`session.rs`). Call events at those devices become the call reports of [`UcSignals`]:
//! an answered call that carries a handed-off interaction accepts it, its end puts the agent
//! in wrap-up, and any other call makes the agent busy while it lasts.
//!
//! Which device is an agent's, from its `address`:
//! - `tel:2001` → `2001` (parameters after `;` and RFC 3966 visual separators dropped:
//!   `tel:+1-555-0100;ext=7` → `+15550100`);
//! - `sip:2001@pbx.example.com`, `sips:…` → the user part, `2001`;
//! - `csta:2001` → `2001`, as it is: for devices no other scheme expresses;
//! - a bare dial string of digits, `+`, `*` and `#` → itself.
//!
//! Anything else (an `xmpp:` address, no address) leaves the agent unmonitored.

mod framing;
mod messages;
mod session;

use std::time::Duration;

use super::UcSignals;
use crate::shutdown::Shutdown;

/// Which CSTA server handoff monitors devices on (`csta_*` in the configuration).
#[derive(Debug, Clone)]
pub struct CstaSettings {
    /// The CSTA server, `host:port` (TCP).
    pub server: String,
    /// The application id and password of the start-application-session, when it asks. An
    /// empty application id means the server wants no session: handoff monitors at once.
    pub application: String,
    pub password: Option<String>,
    /// How long to wait before connecting again after the link drops; also the first wait
    /// before asking again for a monitor the server refused (doubling on each refusal, up to
    /// a minute).
    pub reconnect: Duration,
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Monitors every agent's device until shutdown.
pub async fn run(settings: CstaSettings, signals: UcSignals, mut shutdown: Shutdown) {
    loop {
        let connect = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(settings.server.as_str()),
        );
        let connected = tokio::select! {
            _ = shutdown.fired() => return,
            connected = connect => connected,
        };
        match connected {
            Ok(Ok(stream)) => {
                tracing::info!(server = %settings.server, "CSTA: connected");
                match session::run(stream, &settings, &signals, &mut shutdown).await {
                    session::End::Shutdown => return,
                    session::End::Dropped(reason) => {
                        tracing::warn!(server = %settings.server, %reason, "CSTA: the link dropped; connecting again")
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(server = %settings.server, %error, "CSTA: cannot connect")
            }
            Err(_) => {
                tracing::warn!(server = %settings.server, "CSTA: connecting timed out")
            }
        }
        tokio::select! {
            _ = shutdown.fired() => return,
            _ = tokio::time::sleep(settings.reconnect) => {}
        }
    }
}

/// The device an agent's address names, if any (see the module's documentation).
pub fn device_of_address(address: &str) -> Option<String> {
    let address = address.trim();
    let (scheme, rest) = match address.split_once(':') {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => {
            return is_dial_string(address).then(|| address.to_owned());
        }
    };
    let device = match scheme.as_str() {
        "tel" => {
            let number = rest.split(';').next().unwrap_or_default();
            number
                .chars()
                .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
                .collect::<String>()
        }
        "sip" | "sips" => {
            let (user, _host) = rest.split_once('@')?;
            user.split(';').next().unwrap_or_default().to_owned()
        }
        "csta" => rest.trim().to_owned(),
        _ => return None,
    };
    (!device.is_empty()).then_some(device)
}

fn is_dial_string(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '*' | '#'))
}

/// Whether a device identifier from an event names the monitored `device`: the same text, or
/// an address naming it, or the same text before the first `:` (Avaya's `2001:CM1:0.0.0.0:0`
/// style, where the switch and address follow the extension).
fn same_device(device: &str, reported: Option<&str>) -> bool {
    let Some(reported) = reported.map(str::trim) else {
        return false;
    };
    if reported.eq_ignore_ascii_case(device) {
        return true;
    }
    if let Some(named) = device_of_address(reported) {
        if named.eq_ignore_ascii_case(device) {
            return true;
        }
    }
    reported
        .split_once(':')
        .is_some_and(|(head, _)| head.eq_ignore_ascii_case(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_device_comes_from_its_address() {
        let cases = [
            ("tel:2001", Some("2001")),
            ("tel:+1-555-0100;ext=7", Some("+15550100")),
            ("sip:2001@pbx.example.com", Some("2001")),
            (
                "SIP:2001;user=phone@pbx.example.com;transport=tcp",
                Some("2001"),
            ),
            ("sips:alice@pbx.example.com", Some("alice")),
            ("csta:N<2001>", Some("N<2001>")),
            ("2001", Some("2001")),
            ("+15550100", Some("+15550100")),
            ("sip:pbx.example.com", None),
            ("xmpp:alice@chat.example.com", None),
            ("tel:", None),
            ("alice", None),
            ("", None),
        ];
        for (address, device) in cases {
            assert_eq!(device_of_address(address).as_deref(), device, "{address}");
        }
    }

    #[test]
    fn a_reported_device_matches_in_the_forms_servers_use() {
        assert!(same_device("2001", Some("2001")));
        assert!(same_device("2001", Some("2001:CM1:10.0.0.5:0")));
        assert!(same_device("2001", Some("tel:2001")));
        assert!(same_device("2001", Some("sip:2001@pbx")));
        assert!(!same_device("2001", Some("20011")));
        assert!(!same_device("2001", Some("+15551234567")));
        assert!(!same_device("2001", None));
    }
}

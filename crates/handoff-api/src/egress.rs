//! Egress safety: the addresses CRM connectors and webhooks may reach, and the one HTTP client
//! they use.
//!
//! A URL an admin (or a stolen admin key) configures must not turn handoff into a way into the
//! network it runs in: loopback, private, link-local (cloud metadata at 169.254.169.254
//! included), shared, multicast and unspecified addresses are refused unless `egress_allow`
//! names the host or a CIDR that holds the address. The rule is applied twice: to a URL when it
//! is configured (a literal address, `localhost`), and to every address a name resolves to when
//! a request is made, by the client's own resolver, so that a name pointed at 127.0.0.1 later
//! (DNS rebinding) is refused too. Redirects are never followed (a 3xx could point anywhere) and
//! proxies from the environment are not used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// What `egress_allow` lets through although it would be refused: host names (exact, case
/// insensitive) and networks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressPolicy {
    hosts: Vec<String>,
    networks: Vec<IpNet>,
}

/// Why a URL or an address may not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("{0}")]
    BadUrl(String),
    #[error("{host} is {why} ({ip}); add it to egress_allow to allow it")]
    Forbidden {
        host: String,
        ip: IpAddr,
        why: &'static str,
    },
}

impl EgressPolicy {
    /// Parses `egress_allow`: each entry a host name, an address, or a CIDR such as
    /// `10.0.0.0/8` (an IPv6 address may be in brackets).
    pub fn parse(entries: &[String]) -> Result<EgressPolicy, String> {
        let mut policy = EgressPolicy::default();
        for entry in entries {
            let entry = entry.trim();
            let bare = entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or(entry);
            if let Ok(network) = bare.parse::<IpNet>() {
                policy.networks.push(network);
            } else if let Ok(ip) = bare.parse::<IpAddr>() {
                policy.networks.push(IpNet::from(ip));
            } else if is_host_name(bare) {
                policy.hosts.push(bare.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "egress_allow: {entry:?} is neither a host name, an address nor a CIDR"
                ));
            }
        }
        Ok(policy)
    }

    /// Whether the host is allowed by name: then any address it resolves to may be reached.
    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(host))
    }

    /// Why `ip` may not be reached from `host`, if it may not.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), EgressError> {
        if self.allows_host(host) || self.networks.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match forbidden_range(ip) {
            Some(why) => Err(EgressError::Forbidden {
                host: host.to_owned(),
                ip,
                why,
            }),
            None => Ok(()),
        }
    }

    /// Checks a URL as configured: `http` or `https`, a host, no credentials in it, and, for a
    /// literal address or a `localhost` name, an address that may be reached. Names are
    /// checked again, address by address, when they are resolved.
    pub fn check_url(&self, text: &str) -> Result<reqwest::Url, EgressError> {
        let url = reqwest::Url::parse(text)
            .map_err(|error| EgressError::BadUrl(format!("{text:?} is not a URL: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::BadUrl(format!(
                "{text:?} is not an http:// or https:// URL"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EgressError::BadUrl(
                "a URL must not carry credentials; use a header with a secret".to_owned(),
            ));
        }
        let Some(host) = url.host() else {
            return Err(EgressError::BadUrl(format!("{text:?} has no host")));
        };
        let name = host.to_string();
        match host {
            url::Host::Ipv4(ip) => self.check_ip(&name, IpAddr::V4(ip))?,
            url::Host::Ipv6(ip) => self.check_ip(&name, IpAddr::V6(ip))?,
            url::Host::Domain(domain) => {
                let lower = domain.trim_end_matches('.').to_ascii_lowercase();
                if lower == "localhost" || lower.ends_with(".localhost") {
                    self.check_ip(domain, IpAddr::V4(Ipv4Addr::LOCALHOST))?;
                }
            }
        }
        Ok(url)
    }
}

/// A host name as RFC 1123 has them: letters, digits, hyphens and dots.
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The kind of address that is refused unless allowed, or `None` for a public one.
pub fn forbidden_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("the cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("a broadcast, multicast or reserved address")
    } else if a == 192 && b == 0 && c == 0 {
        Some("an IETF protocol address")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("a benchmarking address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    // Addresses that carry an IPv4 address: judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return forbidden_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    }
    if segments[0] == 0x2002 {
        return forbidden_v4(Ipv4Addr::from(
            ((segments[1] as u32) << 16) | segments[2] as u32,
        ));
    }
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if segments == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] {
        Some("the cloud metadata address")
    } else if segments[0] & 0xfe00 == 0xfc00 {
        Some("a private (unique local) address")
    } else if segments[0] & 0xffc0 == 0xfe80 || segments[0] & 0xffc0 == 0xfec0 {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if segments[..6] == [0, 0, 0, 0, 0, 0] {
        Some("an IPv4-compatible address")
    } else {
        None
    }
}

/// Resolves names for the client, keeping only the addresses the policy lets through.
struct EgressResolver {
    policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| match policy.check_ip(&host, address.ip()) {
                    Ok(()) => true,
                    Err(error) => {
                        refused.get_or_insert(error);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some(error) => Box::new(error),
                    None => format!("{host} resolves to no address").into(),
                };
                return Err(error);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of connectors and webhooks: this policy's resolver, no redirects, no proxy,
/// rustls, a connect timeout (each request sets its own total timeout).
pub fn client(policy: Arc<EgressPolicy>) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(EgressResolver { policy }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("handoff/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("an HTTP client with rustls and a resolver builds")
}

/// The whole chain of an HTTP error in one line: reqwest's own text says little ("error
/// sending request"), its sources say why (refused, timed out, a forbidden address).
pub fn describe_error(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // The URL may carry a secret in its query; the destination is named elsewhere.
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), &redacted(url));
    }
    text
}

/// A URL as logs and delivery records show it: no query, no fragment.
pub fn redacted(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.query().is_some() {
        shown.set_query(Some("…"));
    }
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let none = policy(&[]);
        for url in [
            "http://127.0.0.1:8080/x",
            "http://127.9.9.9/",
            "http://localhost/",
            "http://api.localhost:99/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.10.10/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fc00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
        ] {
            let error = none.check_url(url).unwrap_err();
            assert!(
                matches!(error, EgressError::Forbidden { .. }),
                "{url}: {error}"
            );
            assert!(error.to_string().contains("egress_allow"), "{error}");
        }
        for url in [
            "https://crm.example.com/api?q=1",
            "http://93.184.216.34/",
            "http://[2606:2800:220:1::]/",
            "https://zendesk.com:443/",
        ] {
            none.check_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn egress_allow_lets_named_hosts_and_networks_through() {
        let allowed = policy(&["127.0.0.1", "10.0.0.0/8", "CRM.internal", "[::1]"]);
        for url in [
            "http://127.0.0.1:9/",
            "http://10.200.0.1/",
            "http://crm.internal/",
            "http://[::1]:80/",
        ] {
            allowed
                .check_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        assert!(allowed
            .check_ip("crm.internal", "192.168.0.9".parse().unwrap())
            .is_ok());
        assert!(allowed
            .check_ip("other.internal", "192.168.0.9".parse().unwrap())
            .is_err());
        assert!(
            allowed.check_url("http://127.0.0.2/").is_err(),
            "only the address named"
        );
        assert!(
            allowed.check_url("http://localhost/").is_ok(),
            "localhost reaches 127.0.0.1, which is allowed"
        );
        assert!(policy(&["10.0.0.0/8"])
            .check_url("http://localhost/")
            .is_err());
        let error = EgressPolicy::parse(&["not a host!".to_owned()]).unwrap_err();
        assert!(error.contains("egress_allow"), "{error}");
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        let none = policy(&[]);
        for (url, expected) in [
            ("ftp://example.com/", "http"),
            ("file:///etc/passwd", "http"),
            ("not a url", "not a URL"),
            ("https://user:pass@example.com/", "credentials"),
        ] {
            let error = none.check_url(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_forbidden_addresses() {
        use reqwest::dns::Resolve;
        let resolver = EgressResolver {
            policy: Arc::new(policy(&[])),
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let error = match resolver.resolve(name).await {
            Err(error) => error.to_string(),
            Ok(addresses) => panic!("resolved to {:?}", addresses.collect::<Vec<_>>()),
        };
        assert!(error.contains("loopback"), "{error}");
        let allowed = EgressResolver {
            policy: Arc::new(policy(&["localhost"])),
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let found: Vec<SocketAddr> = allowed.resolve(name).await.unwrap().collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
    }
}

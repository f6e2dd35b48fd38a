//! Webhooks: every event, as its CloudEvents JSON, POSTed to the receivers an admin configured,
//! signed as the Standard Webhooks specification says, from the durable outbox.
//!
//! A delivery carries `webhook-id` (the event's id: the same on every retry, after a restart
//! too), `webhook-timestamp` (the attempt's time, seconds) and `webhook-signature`: `v1,` and
//! the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the secret's bytes, one per secret
//! while a rotation lasts. 2xx is delivered; 410 disables the webhook; anything else (a 3xx,
//! which is never followed, included) is retried on the schedule.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::outbox::{AttemptFuture, AttemptResult, Deliver, OutboxObserver};
use super::TypeFilter;
use crate::egress::{describe_error, EgressPolicy};
use crate::engine::LiveEvent;

/// The kind under which webhooks are stored.
pub const KIND: &str = "webhook";

/// A webhook's destination in the outbox.
pub fn destination(name: &str) -> String {
    format!("webhook:{name}")
}

/// How long a replaced secret keeps signing deliveries, so receivers can switch over.
pub const SECRET_OVERLAP: Duration = Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

/// A webhook as stored (the store keeps it as this JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookConfig {
    pub url: String,
    pub types: Vec<String>,
    /// The current secret first; a previous one with its expiry while a rotation lasts.
    pub secrets: Vec<StoredSecret>,
    pub enabled: bool,
    #[serde(default)]
    pub disabled: Option<Disabled>,
    pub max_in_flight: usize,
    pub timeout_ms: u64,
    #[serde(default)]
    pub description: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSecret {
    pub secret: String,
    #[serde(default)]
    pub expires_ms: Option<i64>,
}

/// Why and when a webhook stopped being sent events on its own (a 410).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disabled {
    pub at_ms: i64,
    pub reason: String,
}

impl WebhookConfig {
    /// Whether deliveries go out: enabled, and not disabled by a 410.
    pub fn active(&self) -> bool {
        self.enabled && self.disabled.is_none()
    }

    /// The secrets that sign a delivery at `now_ms`.
    fn signing_secrets(&self, now_ms: i64) -> Vec<WebhookSecret> {
        self.secrets
            .iter()
            .filter(|s| s.expires_ms.is_none_or(|expires| expires > now_ms))
            .filter_map(|s| WebhookSecret::parse(&s.secret).ok())
            .collect()
    }
}

/// A Standard Webhooks symmetric secret: `whsec_` and the base64 of 24 to 64 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

impl WebhookSecret {
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or("a secret starts with whsec_ (Standard Webhooks)")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "the part after whsec_ is not base64")?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the secret is {} bytes; Standard Webhooks asks for 24 to 64",
                key.len()
            ));
        }
        Ok(WebhookSecret {
            text: text.to_owned(),
            key,
        })
    }

    /// 32 random bytes.
    pub fn generate() -> WebhookSecret {
        let key: [u8; 32] = rand::random();
        let text = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        WebhookSecret {
            text,
            key: key.to_vec(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }
}

/// The `webhook-signature` header: one signature per secret, space separated.
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Delivers events to one webhook.
pub struct WebhookDelivery {
    pub config: WebhookConfig,
    pub types: TypeFilter,
    pub client: reqwest::Client,
    pub egress: Arc<EgressPolicy>,
}

impl Deliver for WebhookDelivery {
    fn wants(&self, event_type: &str) -> bool {
        self.types.matches(event_type)
    }

    fn attempt(&self, event: Arc<LiveEvent>, _attempt: u32) -> AttemptFuture {
        let client = self.client.clone();
        let checked = self.egress.check_url(&self.config.url);
        let now_ms = crate::wire::now().millis();
        let secrets = self.config.signing_secrets(now_ms);
        let timeout = Duration::from_millis(self.config.timeout_ms);
        Box::pin(async move {
            let url = match checked {
                Ok(url) => url,
                Err(error) => return failed(None, format!("refused by the egress rules: {error}")),
            };
            let id = crate::wire::event_id(event.seq);
            let timestamp = now_ms.div_euclid(1000);
            let body = event.payload.as_bytes();
            let signature = signature_header(&secrets, &id, timestamp, body);
            let sent = client
                .post(url)
                .timeout(timeout)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/cloudevents+json; charset=utf-8",
                )
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(event.payload.clone())
                .send()
                .await;
            classify(sent)
        })
    }
}

fn failed(status: Option<u16>, error: String) -> AttemptResult {
    AttemptResult {
        status,
        error: Some(error),
        retry_after: None,
        gone: false,
        skipped: false,
    }
}

/// What a response (or its absence) means for the delivery.
pub fn classify(sent: Result<reqwest::Response, reqwest::Error>) -> AttemptResult {
    let response = match sent {
        Ok(response) => response,
        Err(error) => return failed(None, describe_error(&error)),
    };
    let status = response.status();
    let code = status.as_u16();
    if status.is_success() {
        return AttemptResult {
            status: Some(code),
            error: None,
            retry_after: None,
            gone: false,
            skipped: false,
        };
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after);
    let error = if status.is_redirection() {
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere");
        format!("HTTP {code}: a redirect (to {to}), which is not followed; update the URL")
    } else {
        format!("HTTP {code}")
    };
    AttemptResult {
        status: Some(code),
        error: Some(error),
        retry_after,
        gone: code == 410,
        skipped: false,
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Tells the registry of a 410 and makes the stored record that disables the webhook.
pub struct WebhookObserver {
    pub name: String,
    pub config: WebhookConfig,
    /// Shared with the registry's entry, which shows it before the record is read back.
    pub disabled: Arc<Mutex<Option<Disabled>>>,
}

impl OutboxObserver for WebhookObserver {
    fn gone(&self, reason: &str) -> Option<handoff_store::IntegrationRecord> {
        let now_ms = crate::wire::now().millis();
        let disabled = Disabled {
            at_ms: now_ms,
            reason: format!("the receiver answered {reason}: it asked for no more deliveries"),
        };
        tracing::warn!(webhook = %self.name, "webhook disabled: the receiver answered 410 Gone");
        *self.disabled.lock().unwrap_or_else(|p| p.into_inner()) = Some(disabled.clone());
        let mut config = self.config.clone();
        config.disabled = Some(disabled);
        config.updated_ms = now_ms;
        Some(handoff_store::IntegrationRecord {
            kind: KIND.to_owned(),
            name: self.name.clone(),
            config: serde_json::to_string(&config).ok()?,
            updated_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_whsec_and_24_to_64_bytes_of_base64() {
        let made = WebhookSecret::generate();
        assert!(made.as_str().starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(made.as_str()).unwrap(), made);
        for (text, expected) in [
            ("abc", "whsec_"),
            ("whsec_***", "base64"),
            ("whsec_c2hvcnQ=", "24 to 64"),
        ] {
            let error = WebhookSecret::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    /// The specification's own example: its secret, id, timestamp and payload, and the
    /// signature it gives for them.
    #[test]
    fn the_signature_is_the_specifications_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: at once"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}

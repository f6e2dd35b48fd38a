//! Who is calling and what they may do: bearer tokens (stored only as SHA-256) resolved to a
//! `Principal`, and the role rules of the contract's Auth section.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use handoff_core::{AgentId, Interaction};
use handoff_store::KeyRecord;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Ivr,
    Supervisor,
    Presence,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ivr => "ivr",
            Role::Supervisor => "supervisor",
            Role::Presence => "presence",
            Role::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [
            Role::Admin,
            Role::Ivr,
            Role::Supervisor,
            Role::Presence,
            Role::Agent,
        ]
        .into_iter()
        .find(|role| role.as_str() == text)
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
    /// Set for agent tokens.
    pub agent: Option<AgentId>,
}

impl Principal {
    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a key of role {} may not do this",
                self.role.as_str()
            )))
        }
    }

    pub fn is_agent(&self, agent: &AgentId) -> bool {
        self.role == Role::Agent && self.agent.as_ref() == Some(agent)
    }

    /// Reads everything: admin and supervisor.
    pub fn reads_everything(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Supervisor)
    }

    /// May read this interaction: readers of everything, the IVR key that created it, and
    /// agents it was ever offered or assigned to.
    pub fn may_read_interaction(&self, interaction: &Interaction) -> bool {
        match self.role {
            Role::Admin | Role::Supervisor => true,
            Role::Ivr => interaction.spec.created_by.as_deref() == Some(self.key_id.as_str()),
            Role::Agent => self
                .agent
                .as_ref()
                .is_some_and(|agent| interaction.involved_agents.contains(agent)),
            Role::Presence => false,
        }
    }
}

/// Every key, by the SHA-256 of its token, kept in memory for a lookup per request; and the
/// one-time sign-in codes, which live in memory only.
#[derive(Default)]
pub struct KeyRing {
    by_hash: RwLock<HashMap<[u8; 32], KeyRecord>>,
    codes: Mutex<HashMap<[u8; 32], SigninCode>>,
}

/// Who a one-time sign-in code signs in, and until when.
#[derive(Debug, Clone)]
struct SigninCode {
    role: Role,
    agent: Option<AgentId>,
    expires: Instant,
}

/// How long a one-time sign-in code stays valid.
pub const SIGNIN_CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// At most this many sign-in codes wait to be used; issuing more first drops expired ones,
/// then refuses.
pub const MAX_SIGNIN_CODES: usize = 10_000;
/// How long a browser session (a `ses_` key) is accepted after it was opened.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The id prefix of session keys: only these are accepted from the session cookie.
pub const SESSION_KEY_PREFIX: &str = "ses_";
/// The name every session key is listed with.
pub const SESSION_KEY_NAME: &str = "session";

impl KeyRing {
    pub fn load(records: Vec<KeyRecord>) -> KeyRing {
        let ring = KeyRing::default();
        for record in records {
            ring.insert(record);
        }
        ring
    }

    pub fn insert(&self, record: KeyRecord) {
        if let Ok(mut map) = self.by_hash.write() {
            map.insert(record.token_sha256, record);
        }
    }

    /// Makes the ring hold exactly `records` (a follower reading the store again); returns
    /// the ids of the keys that are gone.
    pub fn replace_all(&self, records: Vec<KeyRecord>) -> Vec<String> {
        let Ok(mut map) = self.by_hash.write() else {
            return Vec::new();
        };
        let fresh: HashMap<[u8; 32], KeyRecord> = records
            .into_iter()
            .map(|record| (record.token_sha256, record))
            .collect();
        let gone = map
            .values()
            .filter(|old| !fresh.contains_key(&old.token_sha256))
            .map(|old| old.id.clone())
            .collect();
        *map = fresh;
        gone
    }

    pub fn remove(&self, key_id: &str) -> Option<KeyRecord> {
        let mut map = self.by_hash.write().ok()?;
        let hash = map.iter().find(|(_, r)| r.id == key_id).map(|(h, _)| *h)?;
        map.remove(&hash)
    }

    pub fn get(&self, key_id: &str) -> Option<KeyRecord> {
        let map = self.by_hash.read().ok()?;
        map.values().find(|r| r.id == key_id).cloned()
    }

    pub fn all(&self) -> Vec<KeyRecord> {
        let mut keys: Vec<KeyRecord> = self
            .by_hash
            .read()
            .map(|map| map.values().cloned().collect())
            .unwrap_or_default();
        keys.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        keys
    }

    pub fn for_agent(&self, agent: &AgentId) -> Vec<String> {
        self.by_hash
            .read()
            .map(|map| {
                map.values()
                    .filter(|r| r.agent_id.as_deref() == Some(agent.as_str()))
                    .map(|r| r.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn resolve(&self, token: &str) -> Option<Principal> {
        self.resolve_with_age(token).map(|(principal, _)| principal)
    }

    /// The principal of a token and when its key was created.
    fn resolve_with_age(&self, token: &str) -> Option<(Principal, i64)> {
        let hash = hash_token(token);
        let map = self.by_hash.read().ok()?;
        let record = map.get(&hash)?;
        let role = Role::parse(&record.role)?;
        let agent = match role {
            Role::Agent => Some(AgentId::parse(record.agent_id.as_deref()?).ok()?),
            _ => None,
        };
        let principal = Principal {
            key_id: record.id.clone(),
            role,
            agent,
        };
        Some((principal, record.created_ms))
    }
}

impl KeyRing {
    /// The principal of a session token from the cookie: only session keys (`ses_...`) younger
    /// than [`SESSION_TTL`] count, so a cookie never carries a long-lived API token.
    pub fn resolve_session(&self, token: &str, now_ms: i64) -> Option<Principal> {
        let (principal, created_ms) = self.resolve_with_age(token)?;
        let fresh = now_ms - created_ms < SESSION_TTL.as_millis() as i64;
        (principal.key_id.starts_with(SESSION_KEY_PREFIX) && fresh).then_some(principal)
    }

    /// Session keys past [`SESSION_TTL`], to revoke.
    pub fn expired_sessions(&self, now_ms: i64) -> Vec<String> {
        let ttl = SESSION_TTL.as_millis() as i64;
        self.by_hash
            .read()
            .map(|map| {
                map.values()
                    .filter(|r| {
                        r.id.starts_with(SESSION_KEY_PREFIX) && now_ms - r.created_ms >= ttl
                    })
                    .map(|r| r.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A new one-time sign-in code for `role` (and `agent`, for an agent), valid for
    /// [`SIGNIN_CODE_TTL`]. Only its hash is kept; `None` when too many are outstanding.
    pub fn issue_code(&self, role: Role, agent: Option<AgentId>) -> Option<String> {
        let mut codes = self.codes.lock().ok()?;
        let now = Instant::now();
        codes.retain(|_, code| code.expires > now);
        if codes.len() >= MAX_SIGNIN_CODES {
            return None;
        }
        let code = generate_secret("hc_");
        codes.insert(
            hash_token(&code),
            SigninCode {
                role,
                agent,
                expires: now + SIGNIN_CODE_TTL,
            },
        );
        Some(code)
    }

    /// Uses up a sign-in code: who it signs in, once, if it has not expired.
    pub fn redeem_code(&self, code: &str) -> Option<(Role, Option<AgentId>)> {
        let mut codes = self.codes.lock().ok()?;
        let entry = codes.remove(&hash_token(code))?;
        (entry.expires > Instant::now()).then_some((entry.role, entry.agent))
    }
}

/// A key record made now: a fresh id with `id_prefix`, only the token's hash kept.
pub fn new_key(
    id_prefix: &str,
    role: Role,
    name: impl Into<String>,
    agent: Option<&AgentId>,
    token_sha256: [u8; 32],
) -> KeyRecord {
    KeyRecord {
        id: generate_id(id_prefix),
        role: role.as_str().to_owned(),
        name: name.into(),
        agent_id: agent.map(|a| a.to_string()),
        token_sha256,
        created_ms: crate::wire::now().millis(),
    }
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new 256-bit random token, hex-encoded with a prefix naming what it is.
pub fn generate_token() -> String {
    generate_secret("hk_")
}

/// 256 random bits, hex-encoded after `prefix` (`hk_` API tokens, `hs_` browser sessions,
/// `hc_` one-time sign-in codes).
pub fn generate_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A short random id for keys and interactions.
pub fn generate_id(prefix: &str) -> String {
    let mut bytes = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The web UI's session cookie: it carries a session key's token (never an API token),
/// HttpOnly and SameSite=Strict.
pub const SESSION_COOKIE: &str = "handoff_session";

/// The session token in the request's cookie, if any.
pub fn session_cookie_value(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The principal of the request's session cookie, if it holds a live session.
pub fn session_principal(headers: &axum::http::HeaderMap, state: &AppState) -> Option<Principal> {
    let token = session_cookie_value(headers)?;
    state
        .shared
        .keys
        .resolve_session(token, crate::wire::now().millis())
}

/// Whether the browser reached us over https: directly, or through a proxy that says so
/// (`X-Forwarded-Proto`, `Forwarded: proto=https`), or from an https page (`Origin`). The
/// session cookie is then `Secure`.
pub fn request_is_https(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    uri.scheme_str() == Some("https")
        || header("x-forwarded-proto")
            .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim() == "https"))
        || header("forwarded").is_some_and(|v| {
            v.split([';', ','])
                .any(|pair| pair.trim().replace(' ', "") == "proto=https")
        })
        || header("origin").is_some_and(|v| v.starts_with("https://"))
}

/// Middleware on every protected route: 401 before anything else is looked at. A bearer token
/// wins; the session cookie is the browser's way, and a change made with it must come from an
/// allowed `Origin` (what SameSite does not cover, this does).
/// At most one read of the keys every quarter second for unknown tokens on a follower, so that
/// a flood of bad tokens costs the store nothing more.
fn follower_may_reload_keys() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1000;
    let last = LAST_MS.load(Ordering::Relaxed);
    now_ms.saturating_sub(last) >= 250
        && LAST_MS
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

pub async fn authenticate(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let principal = match bearer(&parts) {
        Some(token) => state.shared.keys.resolve(token),
        None => {
            let principal = session_principal(&parts.headers, &state);
            let changes_state = !matches!(
                parts.method,
                axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
            );
            let origin_present = parts.headers.contains_key(axum::http::header::ORIGIN);
            if principal.is_some()
                && changes_state
                && !(origin_present && crate::routes::origin_allowed(&parts.headers, &state))
            {
                return Err(ApiError::forbidden(
                    "a change made with the session cookie must come from an allowed Origin",
                ));
            }
            principal
        }
    };
    let principal = match principal {
        Some(principal) => principal,
        // A follower's keys may be a moment old: a token the writer issued since is read
        // from the store before the request is refused.
        None if state.follower && follower_may_reload_keys() => {
            let keys = state.store.keys().await.map_err(|error| {
                ApiError::internal(format!("cannot read the keys again: {error}"))
            })?;
            state.shared.replace_keys(keys);
            match bearer(&parts) {
                Some(token) => state.shared.keys.resolve(token),
                None => session_principal(&parts.headers, &state),
            }
            .ok_or_else(ApiError::unauthorized)?
        }
        None => return Err(ApiError::unauthorized()),
    };
    if let Err(retry_after_s) = state
        .rate_limiter
        .check(&principal.key_id, std::time::Instant::now())
    {
        metrics::counter!("handoff_rate_limited_total").increment(1);
        let per_second = state.rate_limiter.limit().map_or(0, |l| l.per_second);
        return Err(ApiError::rate_limited(per_second, retry_after_s));
    }
    parts.extensions.insert(principal);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }
}

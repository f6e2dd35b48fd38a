//! `Client`: one typed method per HTTP endpoint of the v1 contract.

use std::fmt;
use std::time::Duration;

use handoff_protocol::{
    AgentList, AgentView, CompleteRequest, CreateInteractionRequest, CreateKeyRequest,
    CreatedAgentToken, CreatedKey, Health, InteractionList, InteractionView, KeyView,
    PresenceStatus, PutAgentRequest, PutPresenceRequest, TransferRequest,
};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{api_error, ClientError, Result};

/// Where the client commands look when `HANDOFF_URL` is not set.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// An ordinary request that takes longer than this has failed; long polls get their wait on top.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on one handoff server, authenticated by one token.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
}

/// Tokens are secrets, so the `Debug` output leaves them out.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &"<redacted>")
            .finish()
    }
}

/// What `POST /v1/interactions` answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The interaction as created (or as first created, when replayed).
    pub interaction: InteractionView,
    /// `true` when the server answered 200: the same `Idempotency-Key` with an equal body was
    /// seen before, so this is the earlier interaction and nobody was popped again.
    pub replayed: bool,
}

/// Filters of `GET /v1/interactions`; `None` leaves a filter out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InteractionFilter {
    /// Only interactions in this state, e.g. `queued`.
    pub state: Option<String>,
    /// Only interactions offered or assigned to this agent.
    pub agent: Option<String>,
    /// Only interactions targeting this queue.
    pub queue: Option<String>,
    /// Only interactions with this call id.
    pub call_id: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

/// Filters of `GET /v1/agents`; `None` leaves a filter out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFilter {
    /// Only agents with this presence.
    pub status: Option<PresenceStatus>,
    /// Only agents having this skill.
    pub skill: Option<String>,
}

/// `GET /v1/keys`; the protocol crate has no type for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeyList {
    keys: Vec<KeyView>,
}

/// The contract's name of a presence status, as used in query strings.
pub fn presence_status_name(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Available => "available",
        PresenceStatus::Away => "away",
        PresenceStatus::Busy => "busy",
        PresenceStatus::Offline => "offline",
    }
}

impl Client {
    /// A client for the server at `base_url` (e.g. `https://handoff.example.com`, a path prefix
    /// is kept), authenticating with `token`.
    ///
    /// An empty token sends no `Authorization` header, which is enough for [`Client::health`].
    pub fn new(base_url: &str, token: &str) -> Result<Client> {
        let base = parse_base_url(base_url)?;
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ClientError::Config(
                "the token contains spaces or control characters".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("handoff-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::transport)?;
        Ok(Client {
            http,
            base,
            token: token.to_string(),
        })
    }

    /// A client configured by `HANDOFF_URL` (default [`DEFAULT_URL`]) and `HANDOFF_TOKEN`.
    pub fn from_env() -> Result<Client> {
        let url = env_var("HANDOFF_URL")?.unwrap_or_else(|| DEFAULT_URL.to_string());
        let token = env_var("HANDOFF_TOKEN")?
            .ok_or_else(|| ClientError::Config("HANDOFF_TOKEN is not set".into()))?;
        Client::new(&url, token.trim())
    }

    /// The server's base URL, as normalised.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    // ----- health -----------------------------------------------------------------------

    /// `GET /healthz`: succeeds once the server has recovered and serves.
    pub async fn health(&self) -> Result<Health> {
        let url = self.endpoint(&["healthz"])?;
        self.json(self.request(Method::GET, url))
            .await
            .map(|(_, h)| h)
    }

    // ----- interactions -----------------------------------------------------------------

    /// `POST /v1/interactions`: hands off one call. With an `idempotency_key`, repeating the
    /// same request (after a timeout, say) answers the same interaction, `replayed`.
    pub async fn create_interaction(
        &self,
        request: &CreateInteractionRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Created> {
        let url = self.endpoint(&["v1", "interactions"])?;
        let mut builder = self.request(Method::POST, url).json(request);
        if let Some(key) = idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        let (status, interaction) = self.json(builder).await?;
        Ok(Created {
            interaction,
            replayed: status == StatusCode::OK,
        })
    }

    /// `GET /v1/interactions/{id}`, with its history.
    pub async fn get_interaction(&self, id: &str) -> Result<InteractionView> {
        let url = self.endpoint(&["v1", "interactions", id])?;
        self.json(self.request(Method::GET, url))
            .await
            .map(|(_, i)| i)
    }

    /// `GET /v1/interactions/{id}?state=S&wait_s=N`: answers as soon as the interaction's state
    /// differs from `state`, or after `wait_s` seconds with the interaction as it is.
    pub async fn get_interaction_wait(
        &self,
        id: &str,
        state: &str,
        wait_s: u64,
    ) -> Result<InteractionView> {
        let mut url = self.endpoint(&["v1", "interactions", id])?;
        url.query_pairs_mut()
            .append_pair("state", state)
            .append_pair("wait_s", &wait_s.to_string());
        let builder = self
            .request(Method::GET, url)
            .timeout(REQUEST_TIMEOUT + Duration::from_secs(wait_s));
        self.json(builder).await.map(|(_, i)| i)
    }

    /// `GET /v1/interactions` (supervisor, admin).
    pub async fn list_interactions(
        &self,
        filter: &InteractionFilter,
    ) -> Result<Vec<InteractionView>> {
        let mut url = self.endpoint(&["v1", "interactions"])?;
        let limit = filter.limit.map(|l| l.to_string());
        set_query(
            &mut url,
            &[
                ("state", filter.state.as_deref()),
                ("agent", filter.agent.as_deref()),
                ("queue", filter.queue.as_deref()),
                ("call_id", filter.call_id.as_deref()),
                ("limit", limit.as_deref()),
            ],
        );
        let (_, list): (_, InteractionList) = self.json(self.request(Method::GET, url)).await?;
        Ok(list.interactions)
    }

    /// `POST /v1/interactions/{id}/accept` (the offered agent).
    pub async fn accept(&self, id: &str) -> Result<InteractionView> {
        self.action(id, "accept").await
    }

    /// `POST /v1/interactions/{id}/reject` (the offered agent).
    pub async fn reject(&self, id: &str) -> Result<InteractionView> {
        self.action(id, "reject").await
    }

    /// `POST /v1/interactions/{id}/hangup` (ivr, admin): the caller is gone.
    pub async fn hangup(&self, id: &str) -> Result<InteractionView> {
        self.action(id, "hangup").await
    }

    /// `POST /v1/interactions/{id}/complete` (the assigned agent).
    pub async fn complete(&self, id: &str, request: &CompleteRequest) -> Result<InteractionView> {
        let url = self.endpoint(&["v1", "interactions", id, "complete"])?;
        self.json(self.request(Method::POST, url).json(request))
            .await
            .map(|(_, i)| i)
    }

    /// `POST /v1/interactions/{id}/transfer` (the assigned agent, from `accepted`).
    pub async fn transfer(&self, id: &str, request: &TransferRequest) -> Result<InteractionView> {
        let url = self.endpoint(&["v1", "interactions", id, "transfer"])?;
        self.json(self.request(Method::POST, url).json(request))
            .await
            .map(|(_, i)| i)
    }

    /// The contract wants action endpoints called with an empty body and no `Content-Type`.
    async fn action(&self, id: &str, action: &str) -> Result<InteractionView> {
        let url = self.endpoint(&["v1", "interactions", id, action])?;
        self.json(self.request(Method::POST, url))
            .await
            .map(|(_, i)| i)
    }

    // ----- agents -----------------------------------------------------------------------

    /// `PUT /v1/agents/{id}` (admin): creates or updates an agent.
    pub async fn put_agent(&self, id: &str, request: &PutAgentRequest) -> Result<AgentView> {
        let url = self.endpoint(&["v1", "agents", id])?;
        self.json(self.request(Method::PUT, url).json(request))
            .await
            .map(|(_, a)| a)
    }

    /// `GET /v1/agents/{id}`.
    pub async fn get_agent(&self, id: &str) -> Result<AgentView> {
        let url = self.endpoint(&["v1", "agents", id])?;
        self.json(self.request(Method::GET, url))
            .await
            .map(|(_, a)| a)
    }

    /// `GET /v1/agents`.
    pub async fn list_agents(&self, filter: &AgentFilter) -> Result<Vec<AgentView>> {
        let mut url = self.endpoint(&["v1", "agents"])?;
        set_query(
            &mut url,
            &[
                ("status", filter.status.map(presence_status_name)),
                ("skill", filter.skill.as_deref()),
            ],
        );
        let (_, list): (_, AgentList) = self.json(self.request(Method::GET, url)).await?;
        Ok(list.agents)
    }

    /// `DELETE /v1/agents/{id}` (admin).
    pub async fn delete_agent(&self, id: &str) -> Result<()> {
        let url = self.endpoint(&["v1", "agents", id])?;
        self.send(self.request(Method::DELETE, url)).await.map(drop)
    }

    /// `PUT /v1/agents/{id}/presence`: the server records the source from the token's role.
    pub async fn set_presence(&self, id: &str, request: &PutPresenceRequest) -> Result<AgentView> {
        let url = self.endpoint(&["v1", "agents", id, "presence"])?;
        self.json(self.request(Method::PUT, url).json(request))
            .await
            .map(|(_, a)| a)
    }

    // ----- keys -------------------------------------------------------------------------

    /// `POST /v1/keys` (admin): a new token for a role; the token is shown only here.
    pub async fn create_key(&self, request: &CreateKeyRequest) -> Result<CreatedKey> {
        let url = self.endpoint(&["v1", "keys"])?;
        self.json(self.request(Method::POST, url).json(request))
            .await
            .map(|(_, k)| k)
    }

    /// `POST /v1/agents/{agent_id}/tokens` (admin): a new token for one agent's desktop.
    pub async fn create_agent_token(&self, agent_id: &str) -> Result<CreatedAgentToken> {
        let url = self.endpoint(&["v1", "agents", agent_id, "tokens"])?;
        self.json(self.request(Method::POST, url))
            .await
            .map(|(_, t)| t)
    }

    /// `GET /v1/keys` (admin): every key, without its token.
    pub async fn list_keys(&self) -> Result<Vec<KeyView>> {
        let url = self.endpoint(&["v1", "keys"])?;
        let (_, list): (_, KeyList) = self.json(self.request(Method::GET, url)).await?;
        Ok(list.keys)
    }

    /// `DELETE /v1/keys/{id}` (admin): revokes a key or an agent token, open streams included.
    pub async fn delete_key(&self, id: &str) -> Result<()> {
        let url = self.endpoint(&["v1", "keys", id])?;
        self.send(self.request(Method::DELETE, url)).await.map(drop)
    }

    // ----- plumbing ---------------------------------------------------------------------

    /// `ws(s)://…/v1/agents/{id}/stream[?after=N]`, for the agent stream.
    pub(crate) fn stream_url(&self, agent_id: &str, after: Option<u64>) -> Result<Url> {
        let mut url = self.endpoint(&["v1", "agents", agent_id, "stream"])?;
        if let Some(after) = after {
            url.query_pairs_mut()
                .append_pair("after", &after.to_string());
        }
        let scheme = match url.scheme() {
            "https" => "wss",
            _ => "ws",
        };
        url.set_scheme(scheme)
            .map_err(|()| ClientError::InvalidUrl(format!("cannot make {url} a WebSocket URL")))?;
        Ok(url)
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The base URL with `segments` appended, each percent-encoded as one path segment.
    fn endpoint(&self, segments: &[&str]) -> Result<Url> {
        for segment in segments {
            // The URL parser drops these (and empty ones would address the collection),
            // so they would silently reach a different endpoint.
            if matches!(*segment, "" | "." | "..") {
                return Err(ClientError::InvalidUrl(format!(
                    "{segment:?} is not a usable identifier"
                )));
            }
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl(format!("{} cannot be a base", self.base)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self.http.request(method, url).timeout(REQUEST_TIMEOUT);
        if self.token.is_empty() {
            builder
        } else {
            builder.bearer_auth(&self.token)
        }
    }

    /// Sends; a 4xx/5xx becomes `ClientError::Api`.
    async fn send(&self, builder: RequestBuilder) -> Result<(StatusCode, Vec<u8>)> {
        let response = builder.send().await.map_err(ClientError::transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(ClientError::transport)?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &body));
        }
        Ok((status, body.to_vec()))
    }

    async fn json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<(StatusCode, T)> {
        let (status, body) = self.send(builder).await?;
        let value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Decode(format!("HTTP {status}: {e}")))?;
        Ok((status, value))
    }
}

fn parse_base_url(base_url: &str) -> Result<Url> {
    let url = Url::parse(base_url.trim())
        .map_err(|e| ClientError::InvalidUrl(format!("{base_url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ClientError::InvalidUrl(format!(
            "{base_url:?}: the scheme must be http or https"
        )));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(ClientError::InvalidUrl(format!("{base_url:?}: no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ClientError::InvalidUrl(format!(
            "{base_url:?}: a base URL takes no query or fragment"
        )));
    }
    Ok(url)
}

fn set_query(url: &mut Url, pairs: &[(&str, Option<&str>)]) {
    // `query_pairs_mut` would leave a bare `?` behind when nothing is appended.
    if pairs.iter().all(|(_, v)| v.is_none()) {
        return;
    }
    let mut query = url.query_pairs_mut();
    for (name, value) in pairs {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
}

/// An unset variable is `None`; an empty one counts as unset.
fn env_var(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ClientError::Config(format!("{name} is not valid UTF-8")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(base, "secret").expect("valid base URL")
    }

    #[test]
    fn endpoints_are_appended_to_the_base() {
        let c = client("http://127.0.0.1:8080");
        assert_eq!(
            c.endpoint(&["v1", "agents", "alice"]).unwrap().as_str(),
            "http://127.0.0.1:8080/v1/agents/alice"
        );
        let c = client("https://pbx.example.com/handoff/");
        assert_eq!(
            c.endpoint(&["v1", "interactions"]).unwrap().as_str(),
            "https://pbx.example.com/handoff/v1/interactions"
        );
        let c = client("https://pbx.example.com/handoff");
        assert_eq!(
            c.endpoint(&["healthz"]).unwrap().as_str(),
            "https://pbx.example.com/handoff/healthz"
        );
    }

    #[test]
    fn identifiers_are_single_encoded_segments() {
        let c = client("http://h");
        assert_eq!(
            c.endpoint(&["v1", "agents", "a/b?c#d e"]).unwrap().as_str(),
            "http://h/v1/agents/a%2Fb%3Fc%23d%20e"
        );
        for bad in ["", ".", ".."] {
            assert!(matches!(
                c.endpoint(&["v1", "agents", bad]),
                Err(ClientError::InvalidUrl(_))
            ));
        }
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://h",
            "mailto:x@y",
            "http://h/?a=1",
            "http://h/#x",
        ] {
            assert!(
                matches!(Client::new(bad, "t"), Err(ClientError::InvalidUrl(_))),
                "{bad:?} was accepted"
            );
        }
        assert!(matches!(
            Client::new("http://h", "bad token"),
            Err(ClientError::Config(_))
        ));
    }

    #[test]
    fn stream_urls_switch_to_websocket_schemes() {
        assert_eq!(
            client("http://127.0.0.1:8080")
                .stream_url("alice", None)
                .unwrap()
                .as_str(),
            "ws://127.0.0.1:8080/v1/agents/alice/stream"
        );
        assert_eq!(
            client("https://h.example/x/")
                .stream_url("bob", Some(41))
                .unwrap()
                .as_str(),
            "wss://h.example/x/v1/agents/bob/stream?after=41"
        );
        assert_eq!(
            client("http://h:80")
                .stream_url("a", None)
                .unwrap()
                .as_str(),
            "ws://h/v1/agents/a/stream"
        );
        assert_eq!(
            client("https://h:8443")
                .stream_url("a", Some(0))
                .unwrap()
                .as_str(),
            "wss://h:8443/v1/agents/a/stream?after=0"
        );
    }

    #[test]
    fn queries_leave_out_unset_filters() {
        let mut url = Url::parse("http://h/v1/interactions").unwrap();
        set_query(&mut url, &[("state", None), ("agent", None)]);
        assert_eq!(url.as_str(), "http://h/v1/interactions");
        set_query(
            &mut url,
            &[
                ("state", Some("queued")),
                ("agent", None),
                ("call_id", Some("a b&c")),
            ],
        );
        assert_eq!(
            url.as_str(),
            "http://h/v1/interactions?state=queued&call_id=a+b%26c"
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let text = format!("{:?}", client("http://h"));
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn presence_names_match_the_wire() {
        for status in [
            PresenceStatus::Available,
            PresenceStatus::Away,
            PresenceStatus::Busy,
            PresenceStatus::Offline,
        ] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(presence_status_name(status).into())
            );
        }
    }
}

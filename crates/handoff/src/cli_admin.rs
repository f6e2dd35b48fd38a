//! `handoff admin`: agents, presence and keys from the command line, plus the connection
//! options and token lookup shared by every client command.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use handoff_client::protocol::{
    CreateKeyRequest, PresenceStatus, PutAgentRequest, PutPresenceRequest,
};
use handoff_client::{AgentFilter, Client};
use handoff_protocol::{SigninLink, SigninLinkRequest};
use serde::Serialize;

/// Where a client command finds the server and how it authenticates.
#[derive(Args, Clone)]
pub struct ConnArgs {
    /// The server's base URL.
    #[arg(long, global = true, env = "HANDOFF_URL", default_value = handoff_client::DEFAULT_URL)]
    pub url: String,
    /// The bearer token. Without one, the admin token that `handoff serve` stored in
    /// `<data dir>/admin.token` is used (data dir: HANDOFF_DATA_DIR, else ./handoff-data).
    #[arg(long, global = true, env = "HANDOFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Tokens are secrets: `Debug` leaves them out.
impl fmt::Debug for ConnArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnArgs")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ConnArgs {
    /// A client for these options, the token resolved by [`resolve_token`].
    pub fn client(&self) -> anyhow::Result<Client> {
        let token = resolve_token(self.token.clone())?;
        Ok(Client::new(&self.url, &token)?)
    }
}

/// The admin token: `--token`/`HANDOFF_TOKEN`, else the one the server stored in its data
/// directory (`handoff_client::local::resolve_admin_token`).
pub fn resolve_token(explicit: Option<String>) -> anyhow::Result<String> {
    Ok(handoff_client::local::resolve_admin_token(explicit)?)
}

/// Manage agents, presence and API keys.
#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create, list, show and delete agents; issue desktop tokens.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Set an agent's presence.
    Presence {
        /// The agent's id.
        id: String,
        /// available, away, busy or offline.
        #[arg(value_parser = parse_presence)]
        status: PresenceStatus,
        /// Why, e.g. "lunch".
        #[arg(long)]
        reason: Option<String>,
    },
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print a one-time sign-in link to the web UI for an agent or a supervisor: single use,
    /// valid ten minutes, forgotten when the server restarts.
    #[command(group(clap::ArgGroup::new("who").required(true).args(["agent", "role"])))]
    SigninLink {
        /// The agent who signs in with the link.
        #[arg(long)]
        agent: Option<String>,
        /// supervisor or admin.
        #[arg(long)]
        role: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Create an agent, or replace its profile.
    Put {
        /// The agent's id: [A-Za-z0-9._-]{1,64}.
        id: String,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Where the IVR transfers its calls, e.g. sip:alice@pbx.example.com.
        #[arg(long)]
        address: Option<String>,
        /// A skill and its level 0..=10; repeat for more.
        #[arg(long = "skill", value_name = "NAME=LEVEL", value_parser = parse_skill)]
        skills: Vec<(String, i64)>,
        /// How many interactions it handles at once (default 1).
        #[arg(long)]
        capacity: Option<i64>,
    },
    /// List agents.
    List {
        /// Only agents with this presence.
        #[arg(long, value_parser = parse_presence)]
        status: Option<PresenceStatus>,
        /// Only agents with this skill.
        #[arg(long)]
        skill: Option<String>,
    },
    /// Show one agent.
    Get {
        /// The agent's id.
        id: String,
    },
    /// Delete an agent.
    Delete {
        /// The agent's id.
        id: String,
    },
    /// Issue a token for the agent's desktop and print it (it is shown only once).
    Token {
        /// The agent's id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an API key; its token is printed only once.
    Create {
        /// admin, ivr, supervisor or presence.
        #[arg(long)]
        role: String,
        /// A name to recognise it by, e.g. main-ivr.
        #[arg(long)]
        name: String,
    },
    /// List keys (without their tokens).
    List,
    /// Revoke a key or an agent token at once, open streams included.
    Revoke {
        /// The key's id.
        id: String,
    },
}

/// Creates a one-time sign-in link on the server at `base_url` with an admin `token`, for an
/// agent or a role (`supervisor`, `admin`); returns the full URL to open
/// (`<base>/signin#code=...`) and the server's answer.
pub async fn create_signin_link(
    base_url: &str,
    token: &str,
    agent: Option<&str>,
    role: Option<&str>,
) -> anyhow::Result<(String, SigninLink)> {
    let base = base_url.trim().trim_end_matches('/');
    let request = SigninLinkRequest {
        agent: agent.map(str::to_owned),
        role: role.map(str::to_owned),
    };
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/signin-links"))
        .bearer_auth(token)
        .json(&request)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let body = response.bytes().await.context("reading the answer")?;
    if !status.is_success() {
        let message = serde_json::from_slice::<handoff_protocol::ErrorBody>(&body)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        bail!("the server refused the sign-in link (HTTP {status}): {message}");
    }
    let link: SigninLink =
        serde_json::from_slice(&body).context("the server's answer is not a sign-in link")?;
    Ok((format!("{base}{}", link.url), link))
}

/// Runs `handoff admin`.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::SigninLink { agent, role } = &args.command {
        let token = resolve_token(args.conn.token.clone())?;
        let (url, link) =
            create_signin_link(&args.conn.url, &token, agent.as_deref(), role.as_deref()).await?;
        // The URL alone on stdout, so `URL=$(handoff admin signin-link --agent alice)` works.
        println!("{url}");
        eprintln!(
            "single use, valid until {} (and only until the server restarts)",
            link.expires_at
        );
        return Ok(());
    }
    let client = args.conn.client()?;
    match args.command {
        AdminCommand::Agent(AgentCommand::Put {
            id,
            name,
            address,
            skills,
            capacity,
        }) => {
            let request = PutAgentRequest {
                name,
                address,
                skills: skills.into_iter().collect::<BTreeMap<_, _>>(),
                capacity: capacity.map(handoff_protocol::Capacity::Total),
            };
            print_json(&client.put_agent(&id, &request).await?)
        }
        AdminCommand::Agent(AgentCommand::List { status, skill }) => {
            print_json(&client.list_agents(&AgentFilter { status, skill }).await?)
        }
        AdminCommand::Agent(AgentCommand::Get { id }) => print_json(&client.get_agent(&id).await?),
        AdminCommand::Agent(AgentCommand::Delete { id }) => {
            client.delete_agent(&id).await?;
            eprintln!("deleted agent {id}");
            Ok(())
        }
        AdminCommand::Agent(AgentCommand::Token { id }) => {
            let created = client.create_agent_token(&id).await?;
            // The token alone on stdout, so `TOKEN=$(handoff admin agent token alice)` works.
            println!("{}", created.token);
            eprintln!(
                "token for agent {id}, key id {0}; revoke with `handoff admin key revoke {0}`",
                created.id
            );
            Ok(())
        }
        AdminCommand::Presence { id, status, reason } => {
            let request = PutPresenceRequest { status, reason };
            print_json(&client.set_presence(&id, &request).await?)
        }
        AdminCommand::Key(KeyCommand::Create { role, name }) => {
            let created = client.create_key(&CreateKeyRequest { role, name }).await?;
            print_json(&created)?;
            eprintln!("the token is shown only now; store it safely");
            Ok(())
        }
        AdminCommand::Key(KeyCommand::List) => print_json(&client.list_keys().await?),
        AdminCommand::Key(KeyCommand::Revoke { id }) => {
            client.delete_key(&id).await?;
            eprintln!("revoked key {id}");
            Ok(())
        }
        AdminCommand::SigninLink { .. } => unreachable!("handled above"),
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `available`, `away`, `busy` or `offline`.
pub fn parse_presence(text: &str) -> Result<PresenceStatus, String> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_ascii_lowercase()))
        .map_err(|_| format!("{text:?} is not a presence: use available, away, busy or offline"))
}

/// `name=level`, e.g. `billing=7`.
fn parse_skill(text: &str) -> Result<(String, i64), String> {
    let (name, level) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=LEVEL, e.g. billing=7"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!(
            "{text:?} has no skill name; use NAME=LEVEL, e.g. billing=7"
        ));
    }
    let level = level
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: the level must be an integer 0..=10"))?;
    Ok((name.to_string(), level))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skills_parse() {
        assert_eq!(parse_skill("billing=7"), Ok(("billing".into(), 7)));
        assert_eq!(parse_skill(" es = 4 "), Ok(("es".into(), 4)));
        assert!(parse_skill("billing").is_err());
        assert!(parse_skill("=3").is_err());
        assert!(parse_skill("billing=high").is_err());
    }

    #[test]
    fn presences_parse() {
        assert_eq!(parse_presence("Away"), Ok(PresenceStatus::Away));
        assert!(parse_presence("gone").is_err());
    }

    #[test]
    fn explicit_tokens_win_and_are_trimmed() {
        assert_eq!(resolve_token(Some(" abc \n".into())).unwrap(), "abc");
    }
}

//! `handoff ivr`: hands off one call as an IVR would, and tells where to transfer it.

use std::time::Duration;

use clap::Args;
use handoff_client::protocol::{CreateInteractionRequest, InteractionView, Target};
use handoff_client::Client;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::cli_admin::ConnArgs;

/// The longest single long poll; the server may cap `wait_s` lower, which only costs a request.
const MAX_POLL_S: u64 = 30;

/// Hand off one call, as an IVR would, and print where to transfer it.
#[derive(Args, Debug)]
pub struct IvrArgs {
    /// Where the call goes.
    #[arg(long, value_name = "agent:ID|queue:NAME", value_parser = parse_target)]
    pub to: Target,
    /// Where it goes when an agent target's offer is rejected or times out.
    #[arg(long, value_name = "agent:ID|queue:NAME", value_parser = parse_target)]
    pub fallback: Option<Target>,
    /// The caller's number, e.g. +15551234567.
    #[arg(long)]
    pub caller: Option<String>,
    /// The number dialed.
    #[arg(long)]
    pub dialed: Option<String>,
    /// The channel (default voice).
    #[arg(long)]
    pub channel: Option<String>,
    /// The telephony call id (SIP Call-ID, CallSid).
    #[arg(long)]
    pub call_id: Option<String>,
    /// What the IVR learned, as a JSON object, e.g. '{"account": "42"}'.
    #[arg(long, value_name = "JSON", value_parser = parse_context)]
    pub context: Option<Map<String, Value>>,
    /// Higher is served first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// For an agent target who cannot take the call now: how long it waits for that agent
    /// before its fallback takes it (or it ends timed_out); default the server's.
    #[arg(long, value_name = "SECONDS")]
    pub max_wait_s: Option<i64>,
    /// Repeating the request with the same key answers the same interaction.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// After creating, wait up to this many seconds for the interaction to leave
    /// offered/queued, printing each change.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub wait: u64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Runs `handoff ivr`: the interaction as JSON on stdout (after `--wait`, as it ended up);
/// the human summary on stderr, so stdout stays one JSON document for scripts.
pub async fn run(args: IvrArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let request = CreateInteractionRequest {
        caller: args.caller,
        dialed: args.dialed,
        channel: args.channel,
        call_id: args.call_id,
        context: args.context,
        target: args.to,
        fallback: args.fallback,
        priority: args.priority,
        max_wait_s: args.max_wait_s,
    };
    let created = client
        .create_interaction(&request, args.idempotency_key.as_deref())
        .await?;
    if created.replayed {
        eprintln!("(replayed: this idempotency key was used before; nobody was popped again)");
    }
    let mut interaction = created.interaction;
    if args.wait == 0 {
        println!("{}", serde_json::to_string_pretty(&interaction)?);
        eprintln!("{}", describe(&interaction));
        return Ok(());
    }
    eprintln!("{}", describe(&interaction));
    if is_pending(&interaction) {
        interaction = wait_for_change(&client, interaction, Duration::from_secs(args.wait)).await?;
    }
    println!("{}", serde_json::to_string_pretty(&interaction)?);
    Ok(())
}

/// Long-polls until the interaction leaves `offered`/`queued` or `total` has passed.
async fn wait_for_change(
    client: &Client,
    mut current: InteractionView,
    total: Duration,
) -> anyhow::Result<InteractionView> {
    let deadline = Instant::now() + total;
    while is_pending(&current) {
        let now = Instant::now();
        if now >= deadline {
            eprintln!("still {} after {}s", current.state, total.as_secs());
            break;
        }
        let wait_s = (deadline - now)
            .as_millis()
            .div_ceil(1000)
            .clamp(1, u128::from(MAX_POLL_S)) as u64;
        let asked = Instant::now();
        let next = client
            .get_interaction_wait(&current.id, &current.state, wait_s)
            .await?;
        if next.state != current.state || agent_id(&next) != agent_id(&current) {
            eprintln!("{} -> {}", current.state, describe(&next));
        } else if asked.elapsed() < Duration::from_millis(500) {
            // A server that answers at once although nothing changed must not be hammered.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        current = next;
    }
    Ok(current)
}

fn is_pending(interaction: &InteractionView) -> bool {
    matches!(interaction.state.as_str(), "offered" | "queued")
}

fn agent_id(interaction: &InteractionView) -> Option<&str> {
    interaction.agent.as_ref().map(|a| a.id.as_str())
}

/// One line telling the IVR what to do now.
fn describe(interaction: &InteractionView) -> String {
    match (interaction.state.as_str(), &interaction.agent) {
        ("offered", Some(agent)) => format!(
            "transfer the call to {} (agent {})",
            agent.address.as_deref().unwrap_or(&agent.id),
            agent.id
        ),
        ("queued", _) => match interaction.position {
            Some(position) => format!("queued at position {position}"),
            None => "queued".to_string(),
        },
        (state, Some(agent)) => format!("{state} (agent {})", agent.id),
        (state, None) => state.to_string(),
    }
}

/// `agent:ID` or `queue:NAME`.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let usage = "use agent:ID or queue:NAME, e.g. agent:alice or queue:billing";
    let Some((kind, name)) = text.split_once(':') else {
        return Err(format!("{text:?} is not a target; {usage}"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{text:?} names no {kind}; {usage}"));
    }
    match kind.trim().to_ascii_lowercase().as_str() {
        "agent" => Ok(Target::Agent(name.to_string())),
        "queue" => Ok(Target::Queue(name.to_string())),
        other => Err(format!("{other:?} is not agent or queue; {usage}")),
    }
}

/// A JSON object, as the contract wants for `context`.
fn parse_context(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "the context must be a JSON object like '{{\"account\": \"42\"}}', not {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            }
        )),
        Err(e) => Err(format!("the context is not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("agent:alice"),
            Ok(Target::Agent("alice".into()))
        );
        assert_eq!(
            parse_target("queue:billing"),
            Ok(Target::Queue("billing".into()))
        );
        assert_eq!(parse_target("Queue: x"), Ok(Target::Queue("x".into())));
        for bad in ["alice", "agent:", "team:x", ""] {
            assert!(parse_target(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn context_must_be_an_object() {
        assert_eq!(parse_context(r#"{"a": 1}"#).unwrap()["a"], 1);
        assert!(parse_context("[1]").unwrap_err().contains("an array"));
        assert!(parse_context("{").unwrap_err().contains("not valid JSON"));
    }
}

//! `handoff agent`: a terminal agent desktop that prints screen pops and can accept them.
//!
//! It keeps one resilient stream open (reconnecting with `after` = the last event shown), acks
//! each event once printed, and takes one-letter commands on stdin.

use std::io::BufRead;

use clap::Args;
use handoff_client::protocol::{CloudEvent, CompleteRequest, PresenceStatus, PutPresenceRequest};
use handoff_client::{Client, ClientError, ResilientAgentStream, StreamItem};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::cli_admin::{parse_presence, ConnArgs};

/// A terminal agent: prints its screen pops and accepts, rejects and completes them.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent to be.
    #[arg(long, value_name = "ID")]
    pub agent: String,
    /// Replay every event after this seq (default: after the agent's last acknowledged one).
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// Accept every offer as soon as it pops.
    #[arg(long)]
    pub auto_accept: bool,
    /// Leave presence alone instead of setting it to available on start.
    #[arg(long)]
    pub no_available: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

const HELP: &str = "commands: a[ccept] [ID] | r[eject] [ID] | c[omplete] [DISPOSITION] | \
                    p[resence] available|away|busy|offline [REASON] | s[tatus] | h[elp] | q[uit]";

/// Runs `handoff agent` until `q`, Ctrl-C, or an error reconnecting cannot cure.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let mut desk = Desk {
        client: client.clone(),
        agent: args.agent.clone(),
        auto_accept: args.auto_accept,
        keep_available: !args.no_available,
        offers: Vec::new(),
        assigned: Vec::new(),
    };

    // Presence first: it fails fast on a bad token or an unknown agent, and tells where the
    // server will resume the stream.
    let mut acked_seq = None;
    if desk.keep_available {
        let agent = client.set_presence(&desk.agent, &available(None)).await?;
        println!("{} ({}) is available", agent.id, agent.name);
        acked_seq = Some(agent.acked_seq);
    }

    let mut stream = ResilientAgentStream::new(client, args.agent.clone(), args.after);
    let mut lines = spawn_stdin_reader();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut connects = 0u32;
    if !args.auto_accept {
        println!("{HELP}");
    }

    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                println!("bye");
                break;
            }
            line = next_line(&mut lines) => match line {
                Some(line) => {
                    if desk.command(line.trim()).await == Flow::Quit {
                        break;
                    }
                }
                // stdin closed (not a terminal, or EOF): go on with events only.
                None => lines = None,
            },
            item = stream.next() => match item {
                Ok(StreamItem::Connected { after }) => {
                    connects += 1;
                    let verb = if connects == 1 { "connected" } else { "reconnected" };
                    match after.or(acked_seq.filter(|_| connects == 1)) {
                        Some(seq) => println!("{verb} as {}, resuming after seq {seq}", desk.agent),
                        None => println!(
                            "{verb} as {}, resuming after its last acknowledged event",
                            desk.agent
                        ),
                    }
                }
                Ok(StreamItem::Disconnected { error, retry_in }) => {
                    println!("disconnected: {error}; retrying in {:.1}s", retry_in.as_secs_f64());
                }
                Ok(StreamItem::Event(event)) => {
                    desk.show(&event);
                    stream.ack(event.seq).await?;
                    desk.react(&event).await;
                }
                Err(error @ ClientError::Decode(_)) => eprintln!("skipping a frame: {error}"),
                Err(error) => return Err(error.into()),
            },
        }
    }
    let _ = stream.close().await;
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// What the terminal agent knows of its work, learnt from its events and its own actions.
struct Desk {
    client: Client,
    agent: String,
    auto_accept: bool,
    keep_available: bool,
    /// Interactions offered to this agent and still open, oldest first.
    offers: Vec<String>,
    /// Interactions accepted by this agent and not yet completed, oldest first.
    assigned: Vec<String>,
}

impl Desk {
    /// Prints the event: a screen pop in full, anything else on one line.
    fn show(&mut self, event: &CloudEvent) {
        let id = interaction_id(event);
        match event.event_type.as_str() {
            "interaction.offered" if self.is_mine(&event.data) => {
                print_screen_pop(event, self.auto_accept);
                remember(&mut self.offers, &id);
            }
            "interaction.accepted" => {
                forget(&mut self.offers, &id);
                if self.is_mine(&event.data) || event.data.get("agent").is_none() {
                    remember(&mut self.assigned, &id);
                }
                print_line(event);
            }
            "interaction.ended" => {
                print_line(event);
                if self.assigned.contains(&id) {
                    println!("  the caller hung up; complete it with `c [DISPOSITION]`");
                }
            }
            "interaction.offer_revoked"
            | "interaction.rejected"
            | "interaction.unanswered"
            | "interaction.timed_out" => {
                forget(&mut self.offers, &id);
                print_line(event);
            }
            "interaction.abandoned" | "interaction.transferred" | "interaction.completed" => {
                forget(&mut self.offers, &id);
                forget(&mut self.assigned, &id);
                print_line(event);
            }
            _ => print_line(event),
        }
    }

    /// What the desk does by itself after an event was shown and acked.
    async fn react(&mut self, event: &CloudEvent) {
        match event.event_type.as_str() {
            "interaction.offered" if self.auto_accept && self.is_mine(&event.data) => {
                self.accept(Some(&interaction_id(event))).await;
            }
            // The server takes an agent offline when its stream stays closed too long; this
            // desktop is back, so it says it is available again. Other sources (an admin,
            // the UC system) are the agent's real state and are left alone.
            "agent.presence_changed" if self.keep_available => {
                let presence = event.data.get("presence").unwrap_or(&event.data);
                if str_at(presence, "status") == Some("offline")
                    && str_at(presence, "source") == Some("system")
                {
                    match self
                        .client
                        .set_presence(&self.agent, &available(Some("reconnected")))
                        .await
                    {
                        Ok(_) => println!("  presence restored to available"),
                        Err(e) => println!("  could not restore presence: {e}"),
                    }
                }
            }
            _ => {}
        }
    }

    async fn command(&mut self, line: &str) -> Flow {
        let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let arg = (!rest.is_empty()).then_some(rest);
        match verb.to_ascii_lowercase().as_str() {
            "" => {}
            "a" | "accept" => self.accept(arg).await,
            "r" | "reject" => self.reject(arg).await,
            "c" | "complete" => self.complete(arg).await,
            "p" | "presence" => self.presence(arg).await,
            "s" | "status" => {
                println!("open offers: {}", list(&self.offers));
                println!("accepted:    {}", list(&self.assigned));
            }
            "q" | "quit" | "exit" => return Flow::Quit,
            "h" | "help" | "?" => println!("{HELP}"),
            other => println!("unknown command {other:?}; {HELP}"),
        }
        Flow::Continue
    }

    /// Accepts `id`, or the newest open offer.
    async fn accept(&mut self, id: Option<&str>) {
        let Some(id) = id
            .map(str::to_string)
            .or_else(|| self.offers.last().cloned())
        else {
            println!("no open offer to accept");
            return;
        };
        match self.client.accept(&id).await {
            Ok(interaction) => {
                forget(&mut self.offers, &id);
                remember(&mut self.assigned, &id);
                println!(
                    "accepted {id} (now {}): the call is yours",
                    interaction.state
                );
            }
            Err(e) => {
                self.forget_if_gone(&id, &e);
                println!("could not accept {id}: {e}");
            }
        }
    }

    /// Rejects `id`, or the newest open offer.
    async fn reject(&mut self, id: Option<&str>) {
        let Some(id) = id
            .map(str::to_string)
            .or_else(|| self.offers.last().cloned())
        else {
            println!("no open offer to reject");
            return;
        };
        match self.client.reject(&id).await {
            Ok(_) => {
                forget(&mut self.offers, &id);
                println!("rejected {id}");
            }
            Err(e) => {
                self.forget_if_gone(&id, &e);
                println!("could not reject {id}: {e}");
            }
        }
    }

    /// Completes the newest accepted interaction with an optional disposition.
    async fn complete(&mut self, disposition: Option<&str>) {
        let Some(id) = self.assigned.last().cloned() else {
            println!("nothing accepted to complete");
            return;
        };
        let request = CompleteRequest {
            disposition: disposition.map(str::to_string),
            notes: None,
        };
        match self.client.complete(&id, &request).await {
            Ok(_) => {
                forget(&mut self.assigned, &id);
                println!("completed {id}");
            }
            Err(e) => {
                if matches!(e.status(), Some(404 | 409)) {
                    forget(&mut self.assigned, &id);
                }
                println!("could not complete {id}: {e}");
            }
        }
    }

    async fn presence(&mut self, arg: Option<&str>) {
        let Some(arg) = arg else {
            println!("usage: p available|away|busy|offline [REASON]");
            return;
        };
        let (status, reason) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
        let status = match parse_presence(status) {
            Ok(status) => status,
            Err(e) => {
                println!("{e}");
                return;
            }
        };
        // Going away or offline on purpose must not be undone by the reconnect logic.
        self.keep_available = status == PresenceStatus::Available;
        let reason = reason.trim();
        let request = PutPresenceRequest {
            status,
            reason: (!reason.is_empty()).then(|| reason.to_string()),
        };
        match self.client.set_presence(&self.agent, &request).await {
            Ok(agent) => println!("presence: {}", agent.presence.status),
            Err(e) => println!("could not set presence: {e}"),
        }
    }

    /// An offer that is gone (409: no longer offered; 404) is not worth keeping.
    fn forget_if_gone(&mut self, id: &str, error: &ClientError) {
        if matches!(error.status(), Some(404 | 409)) {
            forget(&mut self.offers, id);
        }
    }

    /// Whether the event's `agent` (an id, or an object with one) is this agent.
    fn is_mine(&self, data: &Value) -> bool {
        let agent = data.get("agent");
        let id = agent
            .and_then(Value::as_str)
            .or_else(|| agent.and_then(|a| str_at(a, "id")));
        id == Some(self.agent.as_str())
    }
}

fn available(reason: Option<&str>) -> PutPresenceRequest {
    PutPresenceRequest {
        status: PresenceStatus::Available,
        reason: reason.map(str::to_string),
    }
}

fn print_screen_pop(event: &CloudEvent, auto_accept: bool) {
    let data = &event.data;
    let interaction = data.get("interaction").unwrap_or(&Value::Null);
    let field = |name: &str| str_at(interaction, name).unwrap_or("-").to_string();
    println!();
    println!(
        "=== SCREEN POP === interaction {}  (seq {}, {})",
        field("id"),
        event.seq,
        event.time
    );
    println!("  caller    {}", field("caller"));
    println!("  dialed    {}", field("dialed"));
    println!("  call id   {}", field("call_id"));
    let target = interaction
        .get("target")
        .map(target_text)
        .unwrap_or_else(|| "-".into());
    let priority = interaction
        .get("priority")
        .map_or_else(|| "-".into(), Value::to_string);
    println!("  target    {target}   priority {priority}");
    if let Some(note) = str_at(interaction, "transfer_note") {
        println!("  note      {note}");
    }
    if let Some(routing) = data.get("routing").filter(|r| r.is_object()) {
        let strategy = str_at(routing, "strategy").unwrap_or("-");
        let reason = str_at(routing, "reason").unwrap_or("");
        let eligible = match routing.get("eligible") {
            Some(Value::Array(agents)) => format!(", {} eligible", agents.len()),
            Some(Value::Number(n)) => format!(", {n} eligible"),
            _ => String::new(),
        };
        let reason = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        println!("  routing   {strategy}{eligible}{reason}");
    }
    println!(
        "  expires   {}",
        str_at(data, "offer_expires_at").unwrap_or("-")
    );
    match interaction.get("context") {
        Some(context) if context.as_object().is_some_and(|c| !c.is_empty()) => {
            println!("  context");
            let pretty = serde_json::to_string_pretty(context).unwrap_or_default();
            for line in pretty.lines() {
                println!("    {line}");
            }
        }
        _ => println!("  context   (none)"),
    }
    if !auto_accept {
        println!("  -> `a` to accept, `r` to reject");
    }
    println!();
}

/// `#43 12:00:01.234Z interaction.accepted i-1 state=accepted agent=alice`
fn print_line(event: &CloudEvent) {
    let time = event
        .time
        .split_once('T')
        .map_or(event.time.as_str(), |(_, t)| t);
    let mut details = Vec::new();
    let mut collect = |value: &Value| {
        for key in [
            "state",
            "agent",
            "status",
            "reason",
            "source",
            "disposition",
            "position",
            "queue",
            "target",
        ] {
            let text = match value.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(agent @ Value::Object(_)) if key == "agent" => match str_at(agent, "id") {
                    Some(id) => id.to_string(),
                    None => continue,
                },
                Some(target @ Value::Object(_)) if key == "target" => target_text(target),
                _ => continue,
            };
            details.push(format!("{key}={text}"));
        }
    };
    collect(&event.data);
    if let Some(presence) = event.data.get("presence") {
        collect(presence);
    }
    println!(
        "#{} {time} {} {} {}",
        event.seq,
        event.event_type,
        event.subject,
        details.join(" ")
    );
}

/// `{"queue": "billing"}` as `queue billing`.
fn target_text(target: &Value) -> String {
    match target.as_object().and_then(|t| t.iter().next()) {
        Some((kind, Value::String(name))) => format!("{kind} {name}"),
        _ => target.to_string(),
    }
}

fn interaction_id(event: &CloudEvent) -> String {
    event
        .data
        .get("interaction")
        .and_then(|i| str_at(i, "id"))
        .unwrap_or(&event.subject)
        .to_string()
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn remember(list: &mut Vec<String>, id: &str) {
    if !list.iter().any(|x| x == id) {
        list.push(id.to_string());
    }
}

fn forget(list: &mut Vec<String>, id: &str) {
    list.retain(|x| x != id);
}

fn list(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_string()
    } else {
        ids.join(", ")
    }
}

/// Lines typed on stdin, read on a plain thread: tokio's stdin would hold up the runtime's
/// shutdown until Enter is pressed.
fn spawn_stdin_reader() -> Option<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        })
        .ok()?;
    Some(rx)
}

/// The next stdin line; never resolves once stdin is gone, so `select!` just waits on the rest.
async fn next_line(lines: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match lines {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(event_type: &str, data: Value) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".into(),
            id: "e1".into(),
            source: "handoff".into(),
            event_type: event_type.into(),
            time: "2024-05-01T12:00:00.000Z".into(),
            subject: "i1".into(),
            seq: 1,
            data,
        }
    }

    fn desk() -> Desk {
        Desk {
            client: Client::new("http://127.0.0.1:9", "t").unwrap(),
            agent: "alice".into(),
            auto_accept: false,
            keep_available: true,
            offers: Vec::new(),
            assigned: Vec::new(),
        }
    }

    #[test]
    fn offers_and_assignments_follow_the_events() {
        let mut desk = desk();
        let pop = json!({"interaction": {"id": "i1", "context": {"a": 1}}, "agent": "alice"});
        desk.show(&event("interaction.offered", pop));
        assert_eq!(desk.offers, ["i1"]);
        let other = json!({"interaction": {"id": "i2"}, "agent": "bob"});
        desk.show(&event("interaction.offered", other));
        assert_eq!(desk.offers, ["i1"]);
        desk.show(&event("interaction.accepted", json!({"agent": "alice"})));
        assert!(desk.offers.is_empty());
        assert_eq!(desk.assigned, ["i1"]);
        desk.show(&event("interaction.completed", json!({})));
        assert!(desk.assigned.is_empty());
    }

    #[test]
    fn targets_read_well() {
        assert_eq!(target_text(&json!({"queue": "billing"})), "queue billing");
        assert_eq!(target_text(&json!(3)), "3");
    }
}

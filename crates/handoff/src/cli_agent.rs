//! `handoff agent`: a terminal agent desktop that prints screen pops and can accept them.
//!
//! It keeps one resilient stream open (reconnecting with `after` = the last event shown), acks
//! each event once printed, and takes one-letter commands on stdin. With `--exec` and `--open`
//! it drives a desktop CRM application: a command, or the pop's `pop_url`, for every pop.

use std::collections::{HashSet, VecDeque};
use std::io::BufRead;
use std::time::Duration;

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
    /// Run CMD for every screen pop (with `sh -c`; `cmd /C` on Windows): the event JSON on its
    /// standard input; HANDOFF_INTERACTION_ID, HANDOFF_CALLER, HANDOFF_DIALED, HANDOFF_CALL_ID,
    /// HANDOFF_QUEUE, HANDOFF_POP_URL and HANDOFF_AGENT in its environment (empty when the pop
    /// has no such value; HANDOFF_TOKEN is not passed on). Once per pop, also across
    /// reconnects; one at a time in the order of the pops, without holding up the stream.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Open each pop's `pop_url` with the system's opener (xdg-open, open; on Windows the URL
    /// protocol handler). Only http and https URLs; never through a shell.
    #[arg(long)]
    pub open: bool,
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

    let mut hooks = PopHooks::new(&args.agent, args.exec.clone(), args.open);
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
                    // Before the ack: a desktop that dies in between runs it again on restart
                    // rather than never.
                    if event.event_type == "interaction.offered" && desk.is_mine(&event.data) {
                        hooks.pop(&event);
                    }
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

/// How many pops `PopHooks` remembers to refuse a second run: far more than can be replayed.
const HOOKS_REMEMBERED: usize = 4096;
/// After this long an `--exec` command no longer holds up the next pop's command; it keeps
/// running and is still reported when it ends.
const EXEC_HOLD: Duration = Duration::from_secs(10);

/// `--exec` and `--open`: what runs for each pop, once per pop.
struct PopHooks {
    agent: String,
    /// The `--exec` jobs, run in order by one task so that they never overlap or reorder.
    exec: Option<mpsc::UnboundedSender<ExecJob>>,
    open: bool,
    /// (interaction id, seq) of the pops handled, oldest first. The stream already drops
    /// replayed seqs; this makes "once" hold whatever the stream does.
    seen: HashSet<(String, u64)>,
    seen_order: VecDeque<(String, u64)>,
}

struct ExecJob {
    interaction: String,
    stdin: String,
    env: Vec<(&'static str, String)>,
}

impl PopHooks {
    fn new(agent: &str, exec: Option<String>, open: bool) -> PopHooks {
        let exec = exec.map(|command| {
            let (jobs, mut inbox) = mpsc::unbounded_channel::<ExecJob>();
            tokio::spawn(async move {
                while let Some(job) = inbox.recv().await {
                    run_exec(&command, job).await;
                }
            });
            jobs
        });
        PopHooks {
            agent: agent.to_owned(),
            exec,
            open,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
        }
    }

    /// Runs the hooks for a pop to this agent, unless they already ran for it.
    fn pop(&mut self, event: &CloudEvent) {
        if self.exec.is_none() && !self.open {
            return;
        }
        let id = interaction_id(event);
        let key = (id.clone(), event.seq);
        if !self.seen.insert(key.clone()) {
            return;
        }
        self.seen_order.push_back(key);
        if self.seen_order.len() > HOOKS_REMEMBERED {
            if let Some(oldest) = self.seen_order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        let pop_url = str_at(&event.data, "pop_url");
        if let Some(jobs) = &self.exec {
            let job = ExecJob {
                interaction: id.clone(),
                stdin: serde_json::to_string(event).unwrap_or_default(),
                env: exec_env(event, &self.agent),
            };
            if jobs.send(job).is_err() {
                eprintln!("--exec: the command runner has stopped; pop {id} not passed on");
            }
        }
        if self.open {
            match pop_url {
                Some(url) if is_openable(url) => open_url(url),
                Some(_) => eprintln!("--open: pop {id}: pop_url is not an http(s) URL; not opened"),
                None => {}
            }
        }
    }
}

/// The `HANDOFF_*` variables of an `--exec` command; a value the pop lacks is empty, so that
/// scripts under `set -u` need no special case.
fn exec_env(event: &CloudEvent, agent: &str) -> Vec<(&'static str, String)> {
    let data = &event.data;
    let interaction = data.get("interaction").unwrap_or(&Value::Null);
    let text = |value: Option<&str>| value.unwrap_or_default().to_owned();
    let queue = data
        .get("offer_target")
        .and_then(|t| str_at(t, "queue"))
        .or_else(|| interaction.get("target").and_then(|t| str_at(t, "queue")));
    vec![
        ("HANDOFF_INTERACTION_ID", interaction_id(event)),
        ("HANDOFF_CALLER", text(str_at(interaction, "caller"))),
        ("HANDOFF_DIALED", text(str_at(interaction, "dialed"))),
        ("HANDOFF_CALL_ID", text(str_at(interaction, "call_id"))),
        ("HANDOFF_QUEUE", text(queue)),
        ("HANDOFF_POP_URL", text(str_at(data, "pop_url"))),
        ("HANDOFF_AGENT", agent.to_owned()),
    ]
}

#[cfg(not(windows))]
fn shell(command: &str) -> tokio::process::Command {
    let mut shell = tokio::process::Command::new("sh");
    shell.arg("-c").arg(command);
    shell
}

#[cfg(windows)]
fn shell(command: &str) -> tokio::process::Command {
    let mut shell = tokio::process::Command::new("cmd");
    // As typed: Rust's quoting of an ordinary argument is not what cmd.exe parses.
    shell.arg("/C").raw_arg(command);
    shell
}

/// Runs one `--exec` job. Failures are reported on stderr and never end the agent.
async fn run_exec(command: &str, job: ExecJob) {
    use tokio::io::AsyncWriteExt;
    let ExecJob {
        interaction,
        stdin,
        env,
    } = job;
    let mut child = match shell(command)
        .envs(env)
        // The agent's token is this desktop's credential, not the CRM application's.
        .env_remove("HANDOFF_TOKEN")
        .stdin(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            eprintln!("--exec: pop {interaction}: cannot start the command: {error}");
            return;
        }
    };
    let input = child.stdin.take();
    let mut running = tokio::spawn(async move {
        if let Some(mut input) = input {
            // A command that does not read its input is fine: a closed pipe is no failure.
            let _ = input.write_all(stdin.as_bytes()).await;
            let _ = input.shutdown().await;
        }
        child.wait().await
    });
    let report = |interaction: &str,
                  result: Result<
        std::io::Result<std::process::ExitStatus>,
        tokio::task::JoinError,
    >| {
        match result {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("--exec: pop {interaction}: the command {status}"),
            Ok(Err(error)) => eprintln!("--exec: pop {interaction}: {error}"),
            Err(error) => eprintln!("--exec: pop {interaction}: {error}"),
        }
    };
    match tokio::time::timeout(EXEC_HOLD, &mut running).await {
        Ok(result) => report(&interaction, result),
        Err(_) => {
            eprintln!(
                "--exec: pop {interaction}: the command is still running after {}s; the next pop's command will not wait for it",
                EXEC_HOLD.as_secs()
            );
            tokio::spawn(async move { report(&interaction, running.await) });
        }
    }
}

/// An absolute http(s) URL with nothing an opener could take for an option or a second word.
fn is_openable(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
}

/// Hands `url` to the system's opener as one argument, with no shell in between.
fn open_url(url: &str) {
    #[cfg(target_os = "macos")]
    let mut opener = {
        let mut opener = tokio::process::Command::new("open");
        opener.arg(url);
        opener
    };
    // `cmd /c start` would parse the URL's `&` as a command separator: the URL protocol
    // handler takes it as it is.
    #[cfg(windows)]
    let mut opener = {
        let mut opener = tokio::process::Command::new("rundll32");
        opener.arg("url.dll,FileProtocolHandler").arg(url);
        opener
    };
    #[cfg(not(any(target_os = "macos", windows)))]
    let mut opener = {
        let mut opener = tokio::process::Command::new("xdg-open");
        opener.arg(url);
        opener
    };
    opener
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .env_remove("HANDOFF_TOKEN");
    match opener.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) if status.success() => {}
                    Ok(status) => eprintln!("--open: the opener {status}"),
                    Err(error) => eprintln!("--open: {error}"),
                }
            });
        }
        Err(error) => eprintln!("--open: cannot start the system's opener: {error}"),
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
    if let Some(url) = str_at(data, "pop_url") {
        println!("  crm       {url}");
    } else if let Some(reason) = str_at(data, "pop_url_error") {
        println!("  crm       (no pop_url: {reason})");
    }
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
    fn exec_env_names_the_pops_main_fields() {
        let pop = event(
            "interaction.offered",
            json!({
                "interaction": {"id": "i1", "caller": "+1 555", "dialed": null,
                                "call_id": "c@pbx", "target": {"agent": "alice"}},
                "agent": "alice",
                "offer_target": {"queue": "billing"},
                "pop_url": "https://crm.example.com/?p=%2B1%20555",
            }),
        );
        let env: std::collections::HashMap<_, _> = exec_env(&pop, "alice").into_iter().collect();
        assert_eq!(env["HANDOFF_INTERACTION_ID"], "i1");
        assert_eq!(env["HANDOFF_CALLER"], "+1 555");
        assert_eq!(env["HANDOFF_DIALED"], "");
        assert_eq!(env["HANDOFF_CALL_ID"], "c@pbx");
        assert_eq!(env["HANDOFF_QUEUE"], "billing");
        assert_eq!(
            env["HANDOFF_POP_URL"],
            "https://crm.example.com/?p=%2B1%20555"
        );
        assert_eq!(env["HANDOFF_AGENT"], "alice");
    }

    #[test]
    fn only_plain_http_urls_are_opened() {
        assert!(is_openable("https://crm.example.com/?a=1&b=2"));
        assert!(is_openable("HTTP://crm.example.com/"));
        for url in [
            "javascript:alert(1)",
            "file:///etc/passwd",
            "-https://x",
            "https://x.example/ --flag",
            "https://x.example/\"&calc",
        ] {
            assert!(!is_openable(url), "{url}");
        }
    }

    #[tokio::test]
    async fn a_pop_runs_its_hooks_once() {
        let mut hooks = PopHooks::new("alice", None, false);
        let (jobs, mut inbox) = mpsc::unbounded_channel();
        hooks.exec = Some(jobs);
        let pop = event("interaction.offered", json!({"interaction": {"id": "i1"}}));
        hooks.pop(&pop);
        hooks.pop(&pop);
        let mut again = pop.clone();
        again.seq = 2;
        hooks.pop(&again);
        drop(hooks);
        let mut runs = Vec::new();
        while let Some(job) = inbox.recv().await {
            runs.push(job.interaction);
        }
        assert_eq!(
            runs,
            ["i1", "i1"],
            "a new offer of the same interaction is a new pop"
        );
    }

    #[test]
    fn targets_read_well() {
        assert_eq!(target_text(&json!({"queue": "billing"})), "queue billing");
        assert_eq!(target_text(&json!(3)), "3");
    }
}

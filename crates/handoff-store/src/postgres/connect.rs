//! Connections to PostgreSQL: where they go, how they are set up, and what their errors say.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

/// Longest a schema name may be: PostgreSQL cuts identifiers at 63 bytes, and a cut name would
/// no longer be found under the name we were given.
const MAX_SCHEMA_BYTES: usize = 63;

/// Longest `application_name` PostgreSQL keeps.
const MAX_APPLICATION_NAME_BYTES: usize = 63;

/// Used when the URL names no `connect_timeout`: without one, an address that drops packets
/// holds the open (or a reconnect inside a commit) for as long as the kernel keeps trying.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the store lives: a server and a schema in it.
#[derive(Debug)]
pub(super) struct Target {
    config: Config,
    pub(super) schema: String,
    /// The server, user, database and schema, without the password: for errors and logs.
    pub(super) description: String,
}

impl Target {
    /// Parses `url` (a `postgres://` URL or `key=value` pairs) and checks `schema`. The error
    /// is what to name as the store's place in `StoreError::Open` (never the password), and
    /// why.
    pub(super) fn new(url: &str, schema: &str) -> Result<Self, (String, String)> {
        let mut config: Config = url.parse().map_err(|e| {
            (
                "PostgreSQL (the URL did not parse)".to_owned(),
                format!(
                    "the URL is not a PostgreSQL connection string: {}",
                    message(&e)
                ),
            )
        })?;
        let description = describe_target(&config, schema);
        if schema.is_empty() || schema.len() > MAX_SCHEMA_BYTES || schema.contains('\0') {
            return Err((
                description,
                format!(
                    "the schema name must be 1 to {MAX_SCHEMA_BYTES} bytes without NUL, got {schema:?}"
                ),
            ));
        }
        // No TLS connector is linked (see the module doc): refuse rather than let the driver
        // fail with a less telling message, and never fall back to plain text silently.
        if config.get_ssl_mode() == SslMode::Require {
            return Err((
                description,
                "sslmode=require asks for TLS, which this build does not offer yet; \
                 connect in plain text over a trusted network or a local socket"
                    .to_owned(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        Ok(Self {
            config,
            schema: schema.to_owned(),
            description,
        })
    }

    /// Opens a connection for `role` (`writer`, `reader`, `lease`) whose unqualified names
    /// resolve in the store's schema, its driver task spawned on tokio.
    pub(super) async fn connect(&self, role: &'static str) -> Result<Client, String> {
        let mut config = self.config.clone();
        if config.get_application_name().is_none() {
            // Says in pg_stat_activity which store and which of its connections a backend is.
            config.application_name(truncate(
                format!("handoff {role} {}", self.schema),
                MAX_APPLICATION_NAME_BYTES,
            ));
        }
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| format!("cannot connect: {}", message(&e)))?;
        let schema = self.schema.clone();
        tokio::spawn(async move {
            // Ends with Ok when the client is dropped; an error is the server or the network
            // going away, which the next use of the client reports and repairs.
            if let Err(e) = connection.await {
                tracing::warn!(role, schema, error = %describe(&e), "store: a PostgreSQL connection ended");
            }
        });
        client
            .batch_execute(&format!("SET search_path TO {}", quote_ident(&self.schema)))
            .await
            .map_err(|e| format!("cannot set search_path: {}", describe(&e)))?;
        Ok(client)
    }
}

/// `postgresql://user@host:port/db, schema "s"`, never with the password.
fn describe_target(config: &Config, schema: &str) -> String {
    let mut out = String::from("postgresql://");
    if let Some(user) = config.get_user() {
        let _ = write!(out, "{user}@");
    }
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match host {
            Host::Tcp(name) => out.push_str(name),
            #[cfg(unix)]
            Host::Unix(path) => out.push_str(&path.display().to_string()),
        }
        // One port for all hosts, or one each.
        if let Some(port) = ports
            .get(i)
            .or_else(|| ports.first().filter(|_| ports.len() == 1))
        {
            let _ = write!(out, ":{port}");
        }
    }
    if let Some(db) = config.get_dbname() {
        let _ = write!(out, "/{db}");
    }
    let _ = write!(out, ", schema {}", quote_ident(schema));
    out
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `name` as a quoted SQL identifier.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `e` means the connection is gone (closed, broken, or the server ending it), so that
/// the next use must reconnect.
pub(super) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        Some(db) => {
            matches!(db.severity(), "FATAL" | "PANIC")
                || db.code().code().starts_with("08")
                || matches!(
                    *db.code(),
                    SqlState::ADMIN_SHUTDOWN
                        | SqlState::CRASH_SHUTDOWN
                        | SqlState::CANNOT_CONNECT_NOW
                )
        }
        // An I/O error: the socket is broken whether or not the driver noticed yet.
        None => std::error::Error::source(e).is_some_and(|cause| cause.is::<std::io::Error>()),
    }
}

/// What went wrong on a connection that was working, in a line (`message`), saying so when the
/// connection is gone.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut out = message(e);
    if connection_lost(e) {
        out.push_str("; the connection to PostgreSQL was lost and is made again on next use");
    }
    out
}

/// The server's message with its detail (which names the offending key), or the driver's
/// error with its cause (its own text is often just "db error" or "error connecting to
/// server").
fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut out = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                let _ = write!(out, " ({detail})");
            }
            out
        }
        None if e.is_closed() => String::from("connection closed"),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// One statement sent on a connection, answering the rows it affected or returned.
pub(super) type OpFuture<'a> =
    Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Runs `ops` as one pipeline: tokio-postgres sends a statement when its future is first
/// polled, and these are first polled in order, so the server receives and runs them in that
/// order back to back, and the whole list costs one round trip instead of one each.
pub(super) async fn pipeline(ops: Vec<OpFuture<'_>>) -> Vec<Result<u64, tokio_postgres::Error>> {
    drive(ops, false).await.into_iter().flatten().collect()
}

/// As `pipeline`, for statements whose last one is a `COMMIT`, which is sent only if no
/// statement before it failed before it was even sent (its parameters could not be encoded):
/// such a statement leaves the transaction open and healthy, and a `COMMIT` behind it would
/// commit the rest without it. (A statement the server refuses aborts the transaction instead,
/// and a `COMMIT` behind it rolls back.) Returns the others' results and the `COMMIT`'s, `None`
/// when it was held back.
pub(super) async fn pipeline_commit(
    ops: Vec<OpFuture<'_>>,
) -> (
    Vec<Result<u64, tokio_postgres::Error>>,
    Option<Result<u64, tokio_postgres::Error>>,
) {
    let mut results = drive(ops, true).await;
    let commit = results.pop().flatten();
    (results.into_iter().flatten().collect(), commit)
}

/// Sends every statement in order, the last one only if `hold_back_last` finds no error so
/// far, then waits for the answers. They come back in the order sent, so each wake-up polls
/// from the first unanswered statement up to the first still waiting, not all of them again.
/// `None` for a statement held back.
async fn drive(
    ops: Vec<OpFuture<'_>>,
    hold_back_last: bool,
) -> Vec<Option<Result<u64, tokio_postgres::Error>>> {
    let count = ops.len();
    let mut running: Vec<Option<OpFuture<'_>>> = ops.into_iter().map(Some).collect();
    let mut done: Vec<Option<Result<u64, tokio_postgres::Error>>> =
        running.iter().map(|_| None).collect();
    let mut sent = 0;
    let mut first_waiting = 0;
    std::future::poll_fn(|cx| {
        while sent < count {
            let held =
                hold_back_last && sent + 1 == count && done.iter().flatten().any(Result::is_err);
            if held {
                running[sent] = None;
            } else if let Some(future) = &mut running[sent] {
                if let Poll::Ready(result) = future.as_mut().poll(cx) {
                    done[sent] = Some(result);
                    running[sent] = None;
                }
            }
            sent += 1;
        }
        while first_waiting < count {
            if let Some(future) = &mut running[first_waiting] {
                match future.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        done[first_waiting] = Some(result);
                        running[first_waiting] = None;
                    }
                    // Its waker is registered; those after it have theirs from being sent.
                    Poll::Pending => return Poll::Pending,
                }
            }
            first_waiting += 1;
        }
        Poll::Ready(())
    })
    .await;
    done
}

/// Awaits `futures` together, polling each first in the order given (tokio-postgres then sends
/// their statements in that order, pipelined), and returns their outputs in that order.
pub(super) async fn join_in_order<F: Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut running: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, out) in running.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *out = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    // Every slot is filled once nothing is pending.
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_names_no_password() {
        let target = Target::new(
            "postgres://handoff:s3cret@db.example:6432/calls?connect_timeout=3",
            "handoff",
        )
        .expect("a valid URL");
        assert_eq!(
            target.description,
            "postgresql://handoff@db.example:6432/calls, schema \"handoff\""
        );
        // Nor does its Debug form: the driver redacts it.
        assert!(!format!("{target:?}").contains("s3cret"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn long_application_names_are_cut_on_a_character() {
        let cut = truncate("é".repeat(40), 63);
        assert_eq!(cut.len(), 62);
    }
}

//! What the UC adapters' tests share: the servers they start from Debian's packages (found
//! through `HANDOFF_TEST_*` variables, which `.ci/run` sets), free loopback ports, child
//! processes killed when a test ends, and waiting on a condition with a deadline.

use std::process::{Child, Command};
use std::time::Duration;

/// The binary a `HANDOFF_TEST_*` variable names, or None after saying the test is skipped.
pub fn server_binary(variable: &str, test: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            eprintln!("skipped {test}: {variable} is not set (.ci/run sets it)");
            None
        }
    }
}

/// A TCP port nobody listens on right now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port nobody has bound right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when dropped, so a failed test leaves no server behind.
pub struct ChildGuard {
    pub name: String,
    child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &str, command: &mut Command) -> ChildGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{name} starts: {error}"));
        ChildGuard {
            name: name.to_owned(),
            child,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to end by itself, up to `patience`; its exit status.
    pub async fn wait_exit(&mut self, patience: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not end within {patience:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 20 ms until it holds, or panics naming `what` after `patience`.
pub async fn wait_until<F, Fut>(what: &str, patience: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until something listens on 127.0.0.1:`port` (TCP).
pub async fn wait_for_tcp(name: &str, port: u16, patience: Duration) {
    wait_until(
        &format!("{name} listens on {port}"),
        patience,
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
}

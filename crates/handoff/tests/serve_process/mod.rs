//! The real `handoff serve` as a child process on a free loopback port, for the tests that
//! SIGKILL it (`crash.rs`, `webhook_crash.rs`): started with the settings a test gives, waited
//! for until healthy, killed with no shutdown path, and killed when dropped so a failed test
//! leaves no server behind.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct ServeProcess {
    child: Child,
    pub base: String,
}

impl ServeProcess {
    /// `handoff serve` on `data_dir` with the admin token `admin` and `env` added.
    pub fn start(data_dir: &std::path::Path, admin: &str, env: &[(&str, &str)]) -> ServeProcess {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_handoff"));
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env("HANDOFF_ADMIN_TOKEN", admin)
            .env("HANDOFF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        ServeProcess {
            child: command.spawn().expect("the handoff binary starts"),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Returns once `/healthz` answers 200, or panics after `patience`.
    #[allow(dead_code)] // The cluster tests wait for a node's role instead.
    pub async fn wait_healthy(&self, http: &reqwest::Client, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Ok(response) = http.get(format!("{}/healthz", self.base)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(self) {}

    /// SIGTERM, then waits for the process to end (its orderly shutdown), at most `patience`.
    #[allow(dead_code)] // Not every test binary that shares this module stops a server kindly.
    pub fn terminate(mut self, patience: Duration) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid, which `child` keeps from being reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop within {patience:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

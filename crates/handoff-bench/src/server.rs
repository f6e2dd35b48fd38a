//! The server under test as a separate process, and what `/proc` says about a process.
//!
//! `binary` finds the `handoff` executable to run: `--server-bin`, else `HANDOFF_SERVER_BIN`
//! (which `handoff bench` sets to itself, so that the bench measures the server it came with),
//! else `handoff` next to this executable, where cargo puts both.
//! `ServerProcess::start` runs its `serve` on a throwaway data directory, on a free loopback port, with the settings the bench needs given as `HANDOFF_*` variables
//! (every other `HANDOFF_*` variable of the bench's environment is removed). The port is read
//! from the line `serve` prints on its standard output. The process is killed when the value is
//! dropped, on any path out of the bench, Ctrl-C included; `stop` ends it with SIGTERM first.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long `serve` may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `handoff` binary that `serve`s: `explicit` (`--server-bin` or `HANDOFF_SERVER_BIN`), else
/// `handoff` next to this executable. An error that says how to get one when it is not there.
pub fn binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    // An empty HANDOFF_SERVER_BIN names nothing; it does not mean the current directory.
    if let Some(path) = explicit.filter(|path| !path.as_os_str().is_empty()) {
        if !path.is_file() {
            bail!(
                "the server binary {} (--server-bin or HANDOFF_SERVER_BIN) does not exist",
                path.display()
            );
        }
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no directory", exe.display()))?;
    beside(dir)
}

fn beside(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("handoff{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "no handoff server binary at {}: the bench runs `handoff serve`; build it with \
             `cargo build --release -p handoff` (cargo puts it next to handoff-bench), or name \
             one with --server-bin or HANDOFF_SERVER_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// How the bench's server is set up.
pub struct ServerOptions<'a> {
    /// The `handoff` executable.
    pub bin: &'a Path,
    /// `fsync` or `os`.
    pub durability: &'static str,
    /// Offer timeout of agent targets, in seconds; the bench's queues set their own.
    pub offer_timeout_s: u64,
}

/// A `handoff serve` child process on a temporary data directory.
pub struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    admin: String,
    log: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl ServerProcess {
    pub async fn start(options: &ServerOptions<'_>) -> anyhow::Result<ServerProcess> {
        let exe = options.bin;
        let dir = tempfile::Builder::new()
            .prefix("handoff-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let admin = handoff_api::auth::generate_token();
        let mut command = tokio::process::Command::new(exe);
        command.arg("serve");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HANDOFF_") {
                command.env_remove(key);
            }
        }
        command
            .env("HANDOFF_DATA_DIR", &data)
            .env("HANDOFF_LISTEN", "127.0.0.1:0")
            .env("HANDOFF_DURABILITY", options.durability)
            .env("HANDOFF_ADMIN_TOKEN", &admin)
            .env(
                "HANDOFF_OFFER_TIMEOUT_S",
                options.offer_timeout_s.to_string(),
            )
            // An agent that misses offers must not be set away mid-run: the bench counts them.
            .env("HANDOFF_MAX_MISSED_OFFERS", "0")
            .env("HANDOFF_LOG", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child
            .stdout
            .take()
            .context("no standard output from the server")?;
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("handoff listening on ") {
                    return Ok::<_, std::io::Error>(Some(url.trim().to_owned()));
                }
            }
            Ok(None)
        })
        .await;
        let base = match announced {
            Ok(Ok(Some(url))) => url,
            Ok(Ok(None)) | Ok(Err(_)) => bail!(
                "the server exited before it listened; its log: {}",
                tail(&log)
            ),
            Err(_) => bail!(
                "the server did not listen within {} s; its log: {}",
                START_TIMEOUT.as_secs(),
                tail(&log)
            ),
        };
        // Keep reading its standard output, so the pipe never fills and blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProcess {
            child,
            pid,
            base,
            admin,
            log,
            dir: Some(dir),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of the server's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// SIGTERM, a bounded wait, then SIGKILL; then removes the data directory.
    pub async fn stop(mut self) {
        #[cfg(unix)]
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet
            // (we hold its `Child`), so the pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        if let Some(dir) = self.dir.take() {
            if let Err(error) = dir.close() {
                eprintln!("[bench] warning: the temporary directory was not removed: {error}");
            }
        }
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    if lines.is_empty() {
        "(empty)".to_owned()
    } else {
        lines[start..].join("\n")
    }
}

/// Resident memory of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// CPU time `pid` has used, user and system, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_seconds_of(&stat, clock_ticks())
}

fn cpu_seconds_of(stat: &str, ticks_per_second: f64) -> Option<f64> {
    // The command name, field 2, is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second)
}

fn clock_ticks() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            return ticks as f64;
        }
    }
    100.0
}

/// The median of a few `VmRSS` readings a short while apart, once the process has settled.
pub async fn steady_rss_kib(pid: u32) -> Option<u64> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.extend(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

/// Raises this process's soft limit on open files to its hard limit (children inherit it):
/// thousands of agent sockets need it. Returns the soft limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        Some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_binary_is_the_one_named_else_handoff_beside_the_bench() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let error = binary(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("nowhere"), "{error}");
        let error = beside(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("cargo build --release -p handoff`"),
            "{error}"
        );
        let handoff = dir
            .path()
            .join(format!("handoff{}", std::env::consts::EXE_SUFFIX));
        std::fs::write(&handoff, "").unwrap();
        assert_eq!(beside(dir.path()).unwrap(), handoff);
        assert_eq!(binary(Some(&handoff)).unwrap(), handoff);
    }

    #[test]
    fn cpu_seconds_reads_utime_and_stime_after_a_name_with_spaces() {
        let stat =
            "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 2 3";
        assert_eq!(cpu_seconds_of(stat, 100.0), Some(3.0));
        assert_eq!(cpu_seconds_of("garbage", 100.0), None);
    }

    #[test]
    fn this_process_has_a_resident_size_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_seconds(pid).is_some());
    }
}

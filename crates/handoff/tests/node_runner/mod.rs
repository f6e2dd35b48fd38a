//! Runs one `e2e/*.spec.mjs` file of browser tests under `node --test`, bounded in time, for the
//! integration tests that drive headless Chromium (`browser.rs`, `demo.rs`). They run only when
//! `HANDOFF_TEST_BROWSER` is set: `.ci/run` sets it once node, `npm ci --prefix e2e` and
//! Chromium are installed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The whole node run, browser start included, must end within this.
const NODE_LIMIT: Duration = Duration::from_secs(180);

/// Whether the browser tests are to run here.
pub fn browser_tests_enabled() -> bool {
    std::env::var_os("HANDOFF_TEST_BROWSER").is_some()
}

/// Kills the child when dropped: a failed test leaves no process behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// Where screenshots go: `<CARGO_TARGET_TMPDIR>/e2e/artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    artifacts
}

fn drain(stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut stream = stream;
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `spec` (a path under the repository root) with `env` added to node's environment
/// (plus CHROMIUM and ARTIFACTS), prints its output and panics unless every test passed.
pub fn run_node_spec(spec: &str, env: &[(&str, &str)]) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let artifacts = artifacts_dir();
    let started = Instant::now();
    let mut command = Command::new("node");
    command
        .args(["--test", "--test-reporter=spec", spec])
        .current_dir(repository_root())
        .env("CHROMIUM", chromium)
        .env("ARTIFACTS", &artifacts)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut node = Killed(
        command
            .spawn()
            .expect("node runs (install node, and `npm ci --prefix e2e`)"),
    );
    let stdout = drain(node.0.stdout.take().unwrap());
    let stderr = drain(node.0.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > NODE_LIMIT {
            let _ = node.0.kill();
            let _ = node.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A killed node may leave Chromium holding the pipes: don't wait on them forever.
    let output = |handle: std::thread::JoinHandle<String>| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if handle.is_finished() {
            handle.join().unwrap_or_default()
        } else {
            "(output not closed)".to_owned()
        }
    };
    let (stdout, stderr) = (output(stdout), output(stderr));
    println!("{stdout}");
    eprintln!("{stderr}");
    println!(
        "{spec}: node finished in {:.1} s; artifacts in {}",
        started.elapsed().as_secs_f64(),
        artifacts.display()
    );
    let status = status.unwrap_or_else(|| panic!("{spec} ran past {NODE_LIMIT:?} and was killed"));
    assert!(status.success(), "{spec} failed: {status}");
}

//! `handoff bench` end to end against the real binaries, so the benchmark cannot rot: a short
//! clean run must report every pop and nothing lost, duplicated or failed; a run whose agent
//! drops one pop (the hidden test-only switch) must report it lost and exit non-zero. Speed is
//! not asserted here: figures live in docs/benchmarks.md, correctness in the tests.
//!
//! Each run goes the way a user's does: `handoff bench`, which runs this package's
//! `handoff-bench`, which starts that `handoff`'s `serve`. Cargo builds only this package's
//! binaries for these tests; `handoff` is the one next to `handoff-bench` in the target
//! directory, which `cargo test --workspace` builds (and rebuilds) before any test runs. With
//! `cargo test -p handoff-bench` alone it may be missing, and the tests then fail saying how to
//! build it; it may also be older than the server's source.

use std::ffi::OsStr;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A 2 s run plus start-up, set-up and the 10 s wait for missing pops, on a slow debug build.
const RUN_LIMIT: Duration = Duration::from_secs(120);

const BENCH: &str = env!("CARGO_BIN_EXE_handoff-bench");

/// The `handoff` binary beside this package's `handoff-bench`; a failure naming the command that
/// builds it when it is not there, so that a missing server never passes for a skipped test.
fn handoff() -> PathBuf {
    let path =
        PathBuf::from(BENCH).with_file_name(format!("handoff{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "no {}: these tests run `handoff bench` and the server it starts; build it with \
         `cargo build -p handoff`, or run `cargo test --workspace`, which builds every binary",
        path.display()
    );
    path
}

/// `handoff bench ARGS` that runs this package's `handoff-bench`.
fn handoff_bench<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Command {
    let mut command = Command::new(handoff());
    command
        .arg("bench")
        .args(args)
        .env("HANDOFF_BENCH_BIN", BENCH)
        .env_remove("HANDOFF_SERVER_BIN");
    command
}

/// Runs `handoff bench` with `args`, killing it past `RUN_LIMIT`. The baselines' variables are
/// passed on only when `baselines` says so.
fn run_bench(args: &[&str]) -> Output {
    run_bench_with(args, false)
}

fn run_bench_with(args: &[&str], baselines: bool) -> Output {
    let mut command = handoff_bench(args);
    command.env_remove("HANDOFF_TOKEN");
    if !baselines {
        command
            .env_remove("HANDOFF_BENCH_NATS_SERVER")
            .env_remove("REDIS_URL");
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the handoff binary starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("handoff bench {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// The JSON report of a run that must have passed; its standard error when it did not.
fn report_of_success(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    report_of(output)
}

fn report_of(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|error| {
        panic!(
            "not one JSON object on stdout ({error}):\n{text}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

const SMALL: &[&str] = &[
    "--agents",
    "20",
    "--queues",
    "2",
    "--rate",
    "50",
    "--duration",
    "2",
    "--handle-ms",
    "50",
    "--json",
];

#[test]
fn a_short_run_reports_every_pop_and_the_servers_costs() {
    let report = report_of_success(&run_bench(SMALL));
    let handoff = &report["handoff"];
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(handoff["requests_scheduled"], 100, "{report:#}");
    assert_eq!(handoff["created"], 100, "{report:#}");
    assert_eq!(handoff["pops_received"], handoff["created"], "{report:#}");
    assert_eq!(handoff["completed"], handoff["created"], "{report:#}");
    assert_eq!(handoff["lost_pops"], 0, "{report:#}");
    assert_eq!(handoff["duplicate_pops"], 0, "{report:#}");
    assert_eq!(handoff["errors"], 0, "{report:#}");
    let p99 = handoff["pop_latency_ms"]["p99"]
        .as_f64()
        .expect("a pop p99");
    assert!(p99 > 0.0, "{report:#}");
    assert!(
        handoff["request_latency_ms"]["p99"].as_f64().is_some(),
        "{report:#}"
    );
    let server = &report["server"];
    assert!(
        server["memory_per_idle_agent_kib"].is_number(),
        "{report:#}"
    );
    assert!(
        server["cpu_s_per_1000_interactions"].is_number(),
        "{report:#}"
    );
    assert_eq!(report["baselines"], Value::Array(Vec::new()));
}

#[test]
fn a_dropped_pop_is_reported_lost_and_fails_the_bench() {
    let mut args = SMALL.to_vec();
    args.push("--drop-pop-for-test");
    let output = run_bench(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the bench passed; stderr:\n{stderr}"
    );
    let report = report_of(&output);
    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(report["handoff"]["lost_pops"], 1, "{report:#}");
    assert_eq!(report["handoff"]["duplicate_pops"], 0, "{report:#}");
    assert!(stderr.contains("lost pops"), "stderr:\n{stderr}");
}

#[test]
fn agents_that_ack_every_event_find_their_acks_kept_by_the_server() {
    let mut args = SMALL.to_vec();
    args.push("--acks");
    let report = report_of_success(&run_bench(&args));
    assert_eq!(report["config"]["acks"], true, "{report:#}");
    assert_eq!(report["handoff"]["errors"], 0, "{report:#}");
    assert_eq!(
        report["handoff"]["pops_received"], report["handoff"]["created"],
        "{report:#}"
    );
}

#[test]
fn acks_the_server_never_got_are_reported_and_fail_the_bench() {
    let mut args = SMALL.to_vec();
    args.extend(["--acks", "--withhold-acks-for-test"]);
    let output = run_bench(&args);
    assert!(
        !output.status.success(),
        "the bench passed; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = report_of(&output);
    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(
        report["handoff"]["errors_by_kind"]["ack_not_durable"]["count"], 1,
        "{report:#}"
    );
}

#[test]
fn bad_arguments_are_refused_before_anything_starts() {
    let output = run_bench(&["--agents", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--agents must be"), "stderr:\n{stderr}");
}

/// The baselines go through the same scheduler and recording: with a nats-server 2.10 or later
/// (`HANDOFF_BENCH_NATS_SERVER`, see tools/install-nats-server) and Redis (`REDIS_URL`), each
/// must deliver every message of a short run.
#[test]
fn baselines_deliver_every_message_when_their_servers_are_there() {
    let mut kinds = Vec::new();
    if std::env::var_os("HANDOFF_BENCH_NATS_SERVER").is_some() {
        kinds.extend(["nats", "jetstream"]);
    }
    if std::env::var_os("REDIS_URL").is_some() {
        kinds.push("redis");
    }
    if kinds.is_empty() {
        println!("skipped: neither HANDOFF_BENCH_NATS_SERVER nor REDIS_URL is set");
        return;
    }
    let list = kinds.join(",");
    let mut args = SMALL.to_vec();
    args.extend(["--baseline", &list]);
    let report = report_of_success(&run_bench_with(&args, true));
    let baselines = report["baselines"].as_array().expect("a list of baselines");
    assert_eq!(baselines.len(), kinds.len(), "{report:#}");
    for (baseline, kind) in baselines.iter().zip(&kinds) {
        assert_eq!(baseline["system"], *kind, "{report:#}");
        assert!(baseline["skipped"].is_null(), "{report:#}");
        assert_eq!(baseline["created"], 100, "{report:#}");
        assert_eq!(baseline["pops_received"], 100, "{report:#}");
        assert_eq!(baseline["lost_pops"], 0, "{report:#}");
        assert_eq!(baseline["duplicate_pops"], 0, "{report:#}");
        assert!(
            baseline["handoff_p99_ratio"].as_f64().is_some(),
            "{report:#}"
        );
    }
}

/// `handoff bench` is handoff-bench under the server binary's name: every argument (`--help`
/// too) goes through untouched, handoff-bench's exit code comes back, handoff-bench is told to
/// run this very server binary whatever the environment says, and its usage lines still say
/// `handoff bench`. A handoff-bench that is not there is an error that says how to build it.
#[cfg(unix)]
#[test]
fn handoff_bench_forwards_to_handoff_bench_and_names_the_build_when_it_is_missing() {
    let handoff = handoff();
    // A stand-in for handoff-bench that shows what it was given.
    let output = Command::new(&handoff)
        .args([
            "bench",
            "-c",
            r#"printf '%s\n' "$HANDOFF_SERVER_BIN" "$@"; exit 7"#,
        ])
        .args(["sh", "--help", "-h", "--agents", "5"])
        .env("HANDOFF_BENCH_BIN", "/bin/sh")
        .env("HANDOFF_SERVER_BIN", "/some/other/handoff")
        .output()
        .expect("the handoff binary starts");
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let canonical = handoff.canonicalize().expect("the handoff binary's path");
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(
        PathBuf::from(lines[0]).canonicalize().ok(),
        Some(canonical),
        "{stdout}"
    );
    assert_eq!(lines[1..], ["--help", "-h", "--agents", "5"], "{stdout}");

    // The real one.
    let help = handoff_bench(["--help"])
        .output()
        .expect("handoff bench --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{help:?}");
    assert!(text.contains("Usage: handoff bench [OPTIONS]"), "{text}");
    assert!(text.contains("--agents <AGENTS>"), "{text}");
    assert!(text.contains("--server-bin <PATH>"), "{text}");
    let wrong = handoff_bench(["--no-such-flag"])
        .output()
        .expect("handoff bench --no-such-flag");
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{text}");
    assert!(text.contains("Usage: handoff bench [OPTIONS]"), "{text}");

    let missing = Command::new(&handoff)
        .args(["bench", "--agents", "1"])
        .env("HANDOFF_BENCH_BIN", "/nonexistent/handoff-bench")
        .output()
        .expect("the handoff binary starts");
    let text = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{text}");
    assert!(text.contains("/nonexistent/handoff-bench"), "{text}");
    assert!(
        text.contains("cargo build --release -p handoff-bench"),
        "{text}"
    );
}

/// handoff-bench on its own runs the server binary it is given, and says how to build one when
/// it is not there, before it starts anything.
#[test]
fn a_missing_server_binary_is_named_before_anything_starts() {
    for (flag, env) in [(true, false), (false, true)] {
        let mut command = Command::new(BENCH);
        command.args([
            "--agents",
            "1",
            "--queues",
            "1",
            "--rate",
            "1",
            "--duration",
            "1",
        ]);
        command.env_remove("HANDOFF_SERVER_BIN");
        if flag {
            command.args(["--server-bin", "/nonexistent/handoff"]);
        }
        if env {
            command.env("HANDOFF_SERVER_BIN", "/nonexistent/handoff");
        }
        let output = command.output().expect("handoff-bench starts");
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains("/nonexistent/handoff"), "{text}");
        assert!(text.contains("does not exist"), "{text}");
    }
}

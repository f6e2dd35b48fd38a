//! `handoff bench` end to end against the real binary, so the benchmark cannot rot: a short
//! clean run must report every pop and nothing lost, duplicated or failed; a run whose agent
//! drops one pop (the hidden test-only switch) must report it lost and exit non-zero. Speed is
//! not asserted here: figures live in docs/benchmarks.md, correctness in the tests.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A 2 s run plus start-up, set-up and the 10 s wait for missing pops, on a slow debug build.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs the binary with `args`, killing it past `RUN_LIMIT`. The baselines' variables are
/// passed on only when `baselines` says so.
fn run_bench(args: &[&str]) -> Output {
    run_bench_with(args, false)
}

fn run_bench_with(args: &[&str], baselines: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handoff"));
    command.arg("bench").args(args).env_remove("HANDOFF_TOKEN");
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

//! The OpenAPI document against what the server enforces, from outside: schemathesis (a
//! property-based fuzzer that reads `/openapi.json`) sends generated valid and invalid requests
//! to every operation with an admin, an IVR and an agent key, and checks every answer against the
//! document. The run must find no server error (5xx) and no answer the document does not allow.
//!
//! Skipped unless HANDOFF_TEST_SCHEMATHESIS names the `st` binary (`.ci/run` installs the pinned
//! version from `tools/schemathesis/requirements.txt` into `.tools/` and sets it).
//!
//! Also here, without schemathesis: every operation of the document is served by the router
//! (the router and the document come from one route table, `routes::api`), and the schema
//! states the rules the server enforces.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// Test cases per operation and phase; with three keys and ~50 operations the whole run stays
/// within a few minutes on two CPUs.
const MAX_EXAMPLES: &str = "25";
/// The time budget of one `st run` (per key), and the bound past which the test fails.
const MAX_TIME_S: u64 = 80;

/// The checks that must hold: no 5xx, and every answer's status, content type, headers and body
/// as the document says.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation_with_admin_ivr_and_agent_keys()
{
    let test = "schemathesis_finds_no_server_error_and_no_schema_violation";
    let Some(st) = std::env::var_os("HANDOFF_TEST_SCHEMATHESIS").filter(|v| !v.is_empty()) else {
        eprintln!("skipped {test}: HANDOFF_TEST_SCHEMATHESIS is not set (.ci/run sets it)");
        return;
    };
    let app = spawn_app().await;
    // Something for the generated requests to find: an agent, a queue, an interaction.
    let agent = app.agent("st-agent", true).await;
    let (status, body) = app
        .put(
            "/v1/queues/st-queue",
            &app.admin,
            json!({"skills": {}, "strategy": "longest_idle"}),
        )
        .await;
    assert!(status == 201 || status == 200, "queue: {status} {body}");
    let ivr = app.key("ivr").await;
    app.create_interaction(
        &ivr,
        json!({"caller": "+15550100", "target": {"agent": "st-agent"}, "context": {}}),
    )
    .await;

    let report_dir = tempfile::tempdir().expect("report dir");
    // tools/schemathesis/handoff_hooks.py: the long poll's wait_s, lowered.
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/schemathesis");
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    // The agent first and the admin last: the admin's run may delete what the others use.
    for (who, token) in [("agent", &agent), ("ivr", &ivr), ("admin", &app.admin)] {
        let report = report_dir.path().join(format!("{who}.json"));
        let mut command = tokio::process::Command::new(&st);
        command
            .arg("run")
            .arg(app.url("/openapi.json"))
            .arg("--url")
            .arg(&app.base)
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--checks", CHECKS])
            .args(["--max-examples", MAX_EXAMPLES])
            .args(["--max-time", &MAX_TIME_S.to_string()])
            .args(["--seed", "18"])
            // One worker: with two, CPython 3.11's `ast.parse` in hypothesis (describing a
            // lambda) can fail from two threads at once ("AST constructor recursion depth
            // mismatch"), an error of the tool, not of the server.
            .args(["--workers", "1"])
            .args(["--request-timeout", "10"])
            .args(["--generation-database", "none"])
            .args(["--phases", "examples,coverage,fuzzing"])
            // An SSE response never ends: a request/response fuzzer can only time out on it.
            // Its parameters and refusals are checked in tests/api (events, protocol_edges).
            .args(["--exclude-path", "/v1/events"])
            .args(["--report", "ndjson"])
            .arg("--report-ndjson-path")
            .arg(&report)
            .args(["--no-color", "--output-truncate", "false"])
            // st keeps state in `.schemathesis/` of its working directory: not in the tree.
            .current_dir(report_dir.path())
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .env("PYTHONPATH", &hooks)
            .env("SCHEMATHESIS_HOOKS", "handoff_hooks")
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(MAX_TIME_S + 60), command.output())
            .await
            .unwrap_or_else(|_| panic!("st run with the {who} key ran past its time"))
            .expect("st runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let counts = read_counts(&stdout);
        println!("schemathesis ({who} key): {counts}");
        summary.push(format!("{who}: {counts}"));
        if !output.status.success() || counts.failures != 0 || counts.server_errors != 0 {
            failed.push(format!(
                "st run with the {who} key: {}\n{stdout}\n{stderr}",
                output.status
            ));
        }
        assert!(
            counts.operations_tested > 0,
            "st tested nothing with the {who} key:\n{stdout}\n{stderr}"
        );
    }
    println!("schemathesis summary: {}", summary.join("; "));
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[derive(Debug, Default)]
struct Counts {
    operations_tested: u64,
    test_cases: u64,
    failures: u64,
    server_errors: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} operations, {} test cases, {} failures, {} server errors",
            self.operations_tested, self.test_cases, self.failures, self.server_errors
        )
    }
}

/// The numbers of schemathesis 4's summary:
///
/// ```text
/// API Operations:
///   Selected: 44/45
///   Tested: 44
/// ...
/// Test cases:
///   7041 generated, 7039 passed, 2 failed, 1 errored
/// ```
///
/// and every failure titled "Server error".
fn read_counts(stdout: &str) -> Counts {
    let mut counts = Counts::default();
    let number_before = |text: &str, word: &str| -> u64 {
        text.split(',')
            .find(|part| part.contains(word))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut lines = stdout.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("Tested:") {
            counts.operations_tested = rest.trim().parse().unwrap_or(0);
        } else if line == "Test cases:" {
            if let Some(next) = lines.peek() {
                counts.test_cases = number_before(next, "generated");
                counts.failures = number_before(next, "failed") + number_before(next, "errored");
            }
        } else if line.contains("Server error") {
            counts.server_errors += 1;
        }
    }
    counts
}

/// Every operation the document names is routed: none answers the router's own "no such
/// route" 404 or "method not allowed" 405 (the document and the router are one table).
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = spawn_app().await;
    let (status, doc) = app.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() > 30, "{} paths", paths.len());
    let mut unrouted = Vec::new();
    for (path, item) in paths {
        let concrete = path
            .replace("{agent_id}", "nobody")
            .replace("{interaction_id}", "nothing")
            .replace("{key_id}", "nokey")
            .replace("{name}", "none")
            .replace("{file}", "none.css");
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_none() {
                continue;
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // Only the status and, for a 404 or 405, the error body: an SSE answer never ends.
            let response = app
                .http
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(&app.admin)
                .send()
                .await
                .expect("request sent");
            let status = response.status().as_u16();
            let body: Value = if status == 404 || status == 405 {
                response.json().await.unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            let router_refused = (status == 404 && body["error"]["code"] == "not_found")
                || (status == 405 && body["error"]["code"] == "method_not_allowed");
            if router_refused {
                unrouted.push(format!("{method} {path}: {status}"));
            }
        }
    }
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

/// The web pages are routed but are no part of the API's document.
#[tokio::test]
async fn web_pages_are_served_but_not_documented() {
    let app = spawn_app().await;
    let (_, doc) = app.send(Method::GET, "/openapi.json", None, None).await;
    for page in ["/", "/signin", "/supervisor", "/assets/{file}"] {
        assert!(doc["paths"][page].is_null(), "{page} is documented");
    }
    let response = app.http.get(app.url("/signin")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// The document states the server's rules: id patterns, ranges, enums, exactly-one-of bodies.
#[tokio::test]
async fn the_document_states_the_rules_the_server_enforces() {
    let app = spawn_app().await;
    let (_, doc) = app.send(Method::GET, "/openapi.json", None, None).await;
    let schemas = &doc["components"]["schemas"];
    let parameter = |path: &str, method: &str, name: &str| -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{method} {path} {name}"))
    };
    let id = "^[A-Za-z0-9._-]{1,64}$";
    // Path parameters carry the identifier pattern.
    for (path, name) in [
        ("/v1/agents/{agent_id}", "agent_id"),
        ("/v1/interactions/{interaction_id}", "interaction_id"),
        ("/v1/queues/{name}", "name"),
    ] {
        let parameter = parameter(path, "get", name);
        assert_eq!(parameter["schema"]["pattern"], id, "{path} {name}");
    }
    // Enums.
    let role = &schemas["CreateKeyRequest"]["properties"]["role"];
    assert!(
        role["enum"].is_array() || role["$ref"].is_string(),
        "{role}"
    );
    // Exactly one of a target's agent and queue.
    let target = &schemas["Target"];
    assert!(target["oneOf"].is_array(), "Target: {target}");
    // And of the sign-in bodies: token or code; agent or role.
    for (schema, keys) in [
        ("SessionRequest", ["token", "code"]),
        ("SigninLinkRequest", ["agent", "role"]),
    ] {
        let branches = schemas[schema]["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}: {}", schemas[schema]));
        let required: Vec<&Value> = branches.iter().map(|b| &b["required"][0]).collect();
        assert_eq!(required, [&json!(keys[0]), &json!(keys[1])], "{schema}");
        assert!(
            branches.iter().all(|b| b["additionalProperties"] == false),
            "{schema}"
        );
    }
    let (code, answer) = app
        .send(
            Method::POST,
            "/v1/session",
            None,
            Some(json!({"token": "x", "code": "y"})),
        )
        .await;
    assert_eq!(code, 400, "both token and code: {answer}");
    // Ranges.
    let wait = serde_json::to_string(&schemas["CreateInteractionRequest"]).unwrap();
    assert!(wait.contains("\"minimum\""), "{wait}");
    let roles = serde_json::to_string(&schemas["KeyRole"]).unwrap();
    assert!(roles.contains("presence"), "{roles}");
    // Capacity: 1 to 1000, as a number or per channel (at least one).
    let capacity = &schemas["Capacity"]["oneOf"];
    assert_eq!(capacity[0]["minimum"], 1, "{capacity}");
    assert_eq!(capacity[0]["maximum"], 1000, "{capacity}");
    assert_eq!(capacity[1]["minProperties"], 1, "{capacity}");
    assert_eq!(
        capacity[1]["additionalProperties"]["maximum"], 1000,
        "{capacity}"
    );
    for (body, status) in [
        (json!({"name": "A", "capacity": 0}), 422),
        (json!({"name": "A", "capacity": 1001}), 422),
        (json!({"name": "A", "capacity": {}}), 422),
        (json!({"name": "A", "capacity": {"chat": 1000}}), 201),
    ] {
        put_agent_expecting(&app, "capacity-probe", body, status).await;
    }
    // Skills: names of 1 to 64 characters, levels 0 to 10, wherever a body takes them; and
    // lengths counted in characters, as JSON Schema counts them, not in bytes.
    for (schema, pointer) in [
        ("PutAgentRequest", "/properties/skills"),
        ("PutQueueRequest", "/properties/skills"),
        ("EscalationStep", "/properties/skills"),
    ] {
        let skills = schemas[schema].pointer(pointer).unwrap_or(&Value::Null);
        assert_eq!(
            skills["propertyNames"]["maxLength"], 64,
            "{schema}: {skills}"
        );
        assert_eq!(
            skills["additionalProperties"]["minimum"], 0,
            "{schema}: {skills}"
        );
        assert_eq!(
            skills["additionalProperties"]["maximum"], 10,
            "{schema}: {skills}"
        );
    }
    let name_200 = "é".repeat(200);
    let skill_64 = "ü".repeat(64);
    for (body, status) in [
        (json!({"name": "A", "skills": {"billing": 11}}), 422),
        (json!({"name": "A", "skills": {"billing": -1}}), 422),
        (json!({"name": "A", "skills": {"": 1}}), 422),
        (json!({"name": "A", "skills": {"ü".repeat(65): 1}}), 422),
        (json!({"name": "A", "capacity": {"ü".repeat(65): 1}}), 422),
        (json!({"name": "é".repeat(201)}), 422),
        (
            json!({"name": name_200, "skills": {skill_64.clone(): 10}, "capacity": {skill_64: 1}}),
            201,
        ),
    ] {
        put_agent_expecting(&app, "skills-probe", body, status).await;
    }
    let (code, answer) = app
        .send(
            Method::POST,
            "/v1/keys",
            Some(&app.admin),
            Some(json!({"role": "ivr", "name": "é".repeat(200)})),
        )
        .await;
    assert_eq!(
        code, 201,
        "a key named with 200 two-byte characters: {answer}"
    );
    // Query filters and headers: state names, attempt ids, idempotency keys.
    for (path, method) in [
        ("/v1/interactions", "get"),
        ("/v1/interactions/{interaction_id}", "get"),
    ] {
        let state = parameter(path, method, "state");
        let reference = state["schema"]["$ref"].as_str().unwrap_or_default();
        let states = &schemas[reference.trim_start_matches("#/components/schemas/")]["enum"];
        assert!(
            states.as_array().is_some_and(|s| s.len() == 8) && states[3] == "wrap_up",
            "{path} state: {state} {states}"
        );
    }
    for path in [
        "/v1/webhooks/{name}/deliveries",
        "/v1/connectors/{name}/deliveries",
    ] {
        let before = parameter(path, "get", "before");
        assert_eq!(before["schema"]["minimum"], 1, "{path}: {before}");
    }
    let since = parameter("/v1/interactions", "get", "since");
    assert_eq!(since["schema"]["format"], "date-time", "{since}");
    let (code, answer) = app
        .send(
            Method::GET,
            "/v1/interactions?since=yesterday",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(code, 400, "since is not a date-time: {answer}");
    let key = parameter("/v1/interactions", "post", "Idempotency-Key");
    assert_eq!(key["schema"]["pattern"], "^[\\x21-\\x7E]{1,255}$", "{key}");
    let webhook = &schemas["PutWebhookRequest"]["properties"];
    assert_eq!(webhook["max_in_flight"]["maximum"], 64, "{webhook}");
    assert_eq!(webhook["timeout_ms"]["minimum"], 100, "{webhook}");
    assert_eq!(webhook["url"]["maxLength"], 2048, "{webhook}");
    let url = webhook["url"]["pattern"].as_str().unwrap_or_default();
    assert!(
        url.ends_with("://[A-Za-z0-9\\[]"),
        "a host after the scheme: {url}"
    );
    let (code, answer) = app
        .put(
            "/v1/webhooks/no-host",
            &app.admin,
            json!({"url": "HTTP://"}),
        )
        .await;
    assert_eq!(code, 422, "a URL without a host: {answer}");
    assert_eq!(webhook["types"]["minItems"], 1, "{webhook}");
    let queue = &schemas["PutQueueRequest"]["properties"];
    assert_eq!(queue["offer_timeout_s"]["minimum"], 1, "{queue}");
    let wait = parameter("/v1/interactions/{interaction_id}", "get", "wait_s");
    assert_eq!(wait["schema"]["maximum"], 300, "{wait}");
}

/// PUTs `body` as agent `agent`, expecting `status` (201 also takes 200: the agent may exist).
async fn put_agent_expecting(app: &TestApp, agent: &str, body: Value, status: u16) {
    let (code, answer) = app
        .send(
            Method::PUT,
            &format!("/v1/agents/{agent}"),
            Some(&app.admin),
            Some(body.clone()),
        )
        .await;
    assert!(
        code == status || (status == 201 && code == 200),
        "{body}: {code} {answer}"
    );
}

/// Whole-number floats and type mistakes get readable errors naming the field.
#[tokio::test]
async fn type_mistakes_get_readable_errors_naming_the_field() {
    let app = spawn_app().await;
    let (status, body) = app
        .put(
            "/v1/agents/float-agent",
            &app.admin,
            json!({"name": "F", "address": "sip:f@pbx.example.com", "capacity": {"voice": 2.0}}),
        )
        .await;
    assert!(status == 201 || status == 200, "2.0 is 2: {status} {body}");
    let (status, body) = app
        .put(
            "/v1/agents/float-agent",
            &app.admin,
            json!({"name": "F", "address": "sip:f@pbx.example.com", "capacity": {"voice": 2.5}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(body["error"]["field"], "capacity.voice", "{body}");
    assert!(!message.contains("u32"), "{message}");
    assert!(!message.contains("line 1"), "{message}");
    assert!(!message.contains("floating point"), "{message}");
    assert!(message.contains("whole number"), "{message}");
}

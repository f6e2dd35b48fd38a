//! The command line end to end against the real binary: `serve` on an empty data directory
//! (admin token printed and stored), `admin` to set up, `agent` receiving and accepting the pop
//! (on its own, and by keystroke), `ivr` handing off a call.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(20);

fn handoff() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handoff"));
    command
        .env_remove("HANDOFF_TOKEN")
        .env_remove("HANDOFF_URL");
    command
}

struct Server {
    child: Child,
    url: String,
    admin_token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(data_dir: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = handoff()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("HANDOFF_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("serve starts");
    // The server prints the admin token once, then the address it listens on.
    let lines = lines_of(child.stdout.take().unwrap());
    let mut admin_token = None;
    loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .expect("serve prints its address");
        if let Some(token) = line
            .split(": ")
            .nth(1)
            .filter(|_| line.starts_with("admin token"))
        {
            admin_token = Some(token.trim().to_owned());
        }
        if line.starts_with("handoff listening on") {
            break;
        }
    }
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        admin_token: admin_token.expect("the admin token is printed on first start"),
    }
}

fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The interaction once it is in `state`, read over HTTP with the admin token; panics after
/// [`PATIENCE`].
fn wait_for_state(server: &Server, id: &str, state: &str) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let view: Value = http
                .get(format!("{}/v1/interactions/{id}", server.url))
                .bearer_auth(&server.admin_token)
                .send()
                .await
                .expect("the server answers")
                .json()
                .await
                .expect("JSON");
            if view["state"] == state {
                return view;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {state}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[test]
fn serve_admin_agent_and_ivr_hand_off_a_call_from_the_command_line() {
    let temporary = tempfile::tempdir().unwrap();
    let data_dir = temporary.path().join("data");
    let server = start_server(&data_dir);

    // The admin token is stored for the local CLI, readable by the owner only.
    let stored = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    assert_eq!(stored.trim(), server.admin_token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file_mode = std::fs::metadata(data_dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&data_dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    // `admin` with no token finds the stored admin token through HANDOFF_DATA_DIR.
    let admin = |args: &[&str]| {
        run_ok(
            handoff()
                .arg("admin")
                .args(args)
                .env("HANDOFF_URL", &server.url)
                .env("HANDOFF_DATA_DIR", &data_dir),
        )
    };
    admin(&[
        "agent",
        "put",
        "alice",
        "--name",
        "Alice Smith",
        "--address",
        "sip:alice@pbx.example.com",
        "--skill",
        "billing=7",
    ]);
    let agent_token = String::from_utf8(admin(&["agent", "token", "alice"]).stdout).unwrap();
    let agent_token = agent_token.trim().to_owned();
    assert!(agent_token.starts_with("hk_"), "{agent_token}");
    let ivr_key: Value = serde_json::from_slice(
        &admin(&["key", "create", "--role", "ivr", "--name", "cli-ivr"]).stdout,
    )
    .unwrap();
    let ivr_token = ivr_key["token"].as_str().unwrap().to_owned();

    // The terminal agent: available, auto-accepting, printing its pops.
    let mut agent = handoff()
        .args(["agent", "--agent", "alice", "--auto-accept"])
        .env("HANDOFF_URL", &server.url)
        .env("HANDOFF_TOKEN", &agent_token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let agent_out = lines_of(agent.stdout.take().unwrap());
    let agent_err = lines_of(agent.stderr.take().unwrap());
    // Wait until the agent says it is connected (on either stream), so it is available.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut connected = false;
    while !connected && std::time::Instant::now() < deadline {
        for receiver in [&agent_out, &agent_err] {
            if let Ok(line) = receiver.recv_timeout(Duration::from_millis(100)) {
                connected |= line.contains("connected");
            }
        }
    }
    assert!(connected, "the terminal agent connects");

    let handed_off = run_ok(
        handoff()
            .args([
                "ivr",
                "--to",
                "agent:alice",
                "--caller",
                "+15551234567",
                "--context",
                r#"{"intent":"billing","name":"Zoë"}"#,
                "--wait",
                "10",
            ])
            .env("HANDOFF_URL", &server.url)
            .env("HANDOFF_TOKEN", &ivr_token),
    );
    let final_state: Value = serde_json::from_slice(&handed_off.stdout).expect("ivr prints JSON");
    assert_eq!(final_state["agent"]["id"], "alice");
    assert_eq!(
        final_state["state"], "accepted",
        "the terminal agent accepted it: {final_state}"
    );
    assert_eq!(final_state["context"]["name"], "Zoë");

    // The pop showed the caller and the context on the agent's terminal.
    let mut screen = String::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !(screen.contains("+15551234567") && screen.contains("Zoë")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pop is printed: {screen}"
        );
        if let Ok(line) = agent_out.recv_timeout(Duration::from_millis(100)) {
            screen.push_str(&line);
            screen.push('\n');
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();

    // Without --auto-accept, the agent accepts by keystroke: "a" and Enter on its terminal.
    admin(&["agent", "put", "bob", "--name", "Bob Jones"]);
    let bob_token = String::from_utf8(admin(&["agent", "token", "bob"]).stdout).unwrap();
    let mut bob = handoff()
        .args(["agent", "--agent", "bob"])
        .env("HANDOFF_URL", &server.url)
        .env("HANDOFF_TOKEN", bob_token.trim())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bob_out = lines_of(bob.stdout.take().unwrap());
    let mut bob_keys = bob.stdin.take().unwrap();
    let wait_for_screen = |needle: &str| {
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut screen = String::new();
        while !screen.contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "bob's terminal never showed {needle:?}: {screen}"
            );
            if let Ok(line) = bob_out.recv_timeout(Duration::from_millis(100)) {
                screen.push_str(&line);
                screen.push('\n');
            }
        }
    };
    wait_for_screen("connected");
    let offered = run_ok(
        handoff()
            .args(["ivr", "--to", "agent:bob", "--caller", "+15550009999"])
            .env("HANDOFF_URL", &server.url)
            .env("HANDOFF_TOKEN", &ivr_token),
    );
    let offered: Value = serde_json::from_slice(&offered.stdout).expect("ivr prints JSON");
    assert_eq!(offered["state"], "offered", "{offered}");
    wait_for_screen("+15550009999");
    use std::io::Write;
    bob_keys.write_all(b"a\n").unwrap();
    bob_keys.flush().unwrap();
    let id = offered["id"].as_str().unwrap();
    let accepted = wait_for_state(&server, id, "accepted");
    assert_eq!(accepted["agent"]["id"], "bob", "{accepted}");
    let _ = bob.kill();
    let _ = bob.wait();
}

#[test]
fn a_bad_configuration_is_refused_with_a_message_naming_the_setting() {
    let temporary = tempfile::tempdir().unwrap();
    let output = handoff()
        .args(["serve", "--data-dir"])
        .arg(temporary.path().join("data"))
        .env("HANDOFF_OFFER_TIMEOUT_S", "soon")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HANDOFF_OFFER_TIMEOUT_S"), "{stderr}");
}

#[test]
fn a_second_server_on_one_data_directory_refuses_to_start_and_names_the_first() {
    let temporary = tempfile::tempdir().unwrap();
    let data_dir = temporary.path().join("data");
    let first = start_server(&data_dir);
    let mut second = handoff()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("HANDOFF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the second serve starts");
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second server on the same data directory kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "the second server must fail: {stderr}");
    assert!(
        stderr.contains("already using this data directory"),
        "the refusal says why: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "the refusal names the first server: {stderr}"
    );
    // The first one was not disturbed: it still answers with its own admin token.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/v1/agents", first.url))
            .bearer_auth(&first.admin_token)
            .send()
            .await
            .expect("the first server still answers")
            .status()
    });
    assert_eq!(status, 200);
}

//! The command line end to end against the real binary: `serve` on an empty data directory
//! (admin token printed and stored), `admin` to set up, `agent` receiving and accepting the pop,
//! `ivr` handing off a call.

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

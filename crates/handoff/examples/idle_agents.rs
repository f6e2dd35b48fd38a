//! Server memory per connected idle agent: creates N agents on a running server, reads the
//! server's resident set, opens one agent stream (WebSocket) per agent, lets them sit idle and
//! reads it again.
//!
//! ```sh
//! target/release/handoff serve --data-dir /tmp/idle --listen 127.0.0.1:18080 &
//! cargo run --release -p handoff --example idle_agents -- \
//!     http://127.0.0.1:18080 "$(cat /tmp/idle/admin.token)" 10000 $!
//! ```
//! The server's and this program's open-file limits must allow N sockets each (`ulimit -n`).

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Requests or handshakes in flight at once.
const PARALLEL: usize = 64;

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, token, count, pid] = args.as_slice() else {
        bail!("usage: idle_agents BASE_URL ADMIN_TOKEN COUNT SERVER_PID");
    };
    let count: usize = count.parse()?;
    let pid: u32 = pid.parse()?;
    let http = reqwest::Client::new();
    let start = rss_kib(pid)?;

    futures_util::stream::iter(0..count)
        .map(|i| {
            let request = http
                .put(format!("{base}/v1/agents/idle{i:05}"))
                .bearer_auth(token)
                .json(&serde_json::json!({"name": format!("Idle {i}")}))
                .send();
            async move {
                let response = request.await?;
                if !response.status().is_success() {
                    bail!("creating agent {i}: {}", response.status());
                }
                Ok(())
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<anyhow::Result<()>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agents = rss_kib(pid)?;

    let ws_base = base.replacen("http", "ws", 1);
    let sockets = futures_util::stream::iter(0..count)
        .map(|i| {
            let url = format!("{ws_base}/v1/agents/idle{i:05}/stream");
            let token = token.clone();
            async move {
                let mut request = url.into_client_request()?;
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                let (ws, _) = tokio_tungstenite::connect_async(request).await?;
                anyhow::Ok(ws)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    let mut open = 0;
    for ws in sockets {
        let mut ws = ws?;
        open += 1;
        // Reading answers the server's pings, so the stream stays open while idle.
        tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let connected = rss_kib(pid)?;
    println!(
        "server VmRSS: {start} KiB at start, {agents} KiB with {count} agents \
         ({:.1} KiB per agent), {connected} KiB with {open} idle streams open \
         ({:.1} KiB per connected idle agent)",
        (agents.saturating_sub(start)) as f64 / count as f64,
        (connected.saturating_sub(agents)) as f64 / open.max(1) as f64,
    );
    Ok(())
}

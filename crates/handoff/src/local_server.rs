//! A handoff server inside this process, on a throwaway data directory: what `handoff demo`
//! shows. It runs the same server that `handoff serve` runs (the real SQLite store, the real
//! router) and tidies up after itself. (`handoff bench` runs `serve` as a separate process
//! instead, so that its memory and CPU can be read apart from the load generator's.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use handoff_api::{ApiSettings, Running};
use handoff_store::{Durability, StoreEngine};

/// How long `stop` waits for the HTTP server to finish its last requests.
const SERVE_DRAIN: Duration = Duration::from_secs(10);

/// What to start.
pub struct LocalOptions {
    /// Address to listen on, e.g. `127.0.0.1:0`.
    pub listen: String,
    pub durability: Durability,
    pub settings: ApiSettings,
    /// The admin key's name, as `GET /v1/keys` lists it.
    pub admin_name: String,
    /// Prefix of the messages this server prints, e.g. `[demo]`.
    pub label: &'static str,
}

/// A running in-process server. `stop` then `remove_data` tear it down; dropping it without
/// them still removes the directory, but does not wait for the engine's last commit.
pub struct LocalServer {
    base: String,
    address: SocketAddr,
    admin: String,
    running: Option<Running>,
    serve: Option<tokio::task::JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

impl LocalServer {
    /// Creates the data directory, opens the store, recovers (nothing, it is empty), adds an
    /// admin key through the engine and starts serving on `options.listen`.
    pub async fn start(options: LocalOptions) -> anyhow::Result<LocalServer> {
        let dir = tempfile::Builder::new()
            .prefix("handoff-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        // As `handoff serve` keeps its data directory: the store holds the keys' hashes.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .context("cannot make the temporary data directory private")?;
        }
        let store = handoff_store::open(StoreEngine::Sqlite {
            data_dir: dir.path().to_path_buf(),
            durability: options.durability,
        })
        .await
        .context("cannot open the store")?;
        let running = Running::start(store, options.settings)
            .await
            .context("the server did not start")?;
        let admin = handoff_api::auth::generate_token();
        let key = handoff_api::auth::new_key(
            "key_",
            handoff_api::auth::Role::Admin,
            options.admin_name,
            None,
            handoff_api::auth::hash_token(&admin),
        );
        let listener = async {
            running
                .state
                .engine
                .add_key(key)
                .await
                .context("cannot add the admin key")?;
            tokio::net::TcpListener::bind(&options.listen)
                .await
                .with_context(|| format!("cannot listen on {}", options.listen))
        }
        .await;
        let listener = match listener {
            Ok(listener) => listener,
            Err(error) => {
                // The engine is running: stop it before its directory goes.
                running.shutdown().await;
                return Err(error);
            }
        };
        let address = listener.local_addr().context("no local address")?;
        let base = format!("http://{}", reachable(address));
        let router = running.router();
        let mut shutdown = running.shutdown_signal();
        let label = options.label;
        let serve = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.fired().await })
                .await;
            if let Err(error) = served {
                eprintln!("{label} the in-process server failed: {error}");
            }
        });
        Ok(LocalServer {
            base,
            address,
            admin,
            running: Some(running),
            serve: Some(serve),
            dir: Some(dir),
        })
    }

    /// The base URL clients use, e.g. `http://127.0.0.1:41234`: a wildcard listen address
    /// becomes the loopback address of its family, which always reaches it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The address actually bound, port 0 resolved.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    /// Where the store lives until `remove_data`.
    pub fn data_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|dir| dir.path())
    }

    /// Stops streams, timers and the engine (its last commit included), then waits a while for
    /// the HTTP server's open requests. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        if let Some(serve) = self.serve.take() {
            let _ = tokio::time::timeout(SERVE_DRAIN, serve).await;
        }
    }

    /// Removes the data directory; call after `stop`, so nothing writes into it any more.
    pub fn remove_data(&mut self) -> std::io::Result<()> {
        match self.dir.take() {
            Some(dir) => dir.close(),
            None => Ok(()),
        }
    }
}

/// The address a client on this machine connects to for a server bound to `bound`.
fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_reached_over_loopback() {
        let at = |text: &str| reachable(text.parse().unwrap()).to_string();
        assert_eq!(at("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(at("[::]:8080"), "[::1]:8080");
        assert_eq!(at("127.0.0.1:9"), "127.0.0.1:9");
        assert_eq!(at("192.0.2.7:80"), "192.0.2.7:80");
    }
}

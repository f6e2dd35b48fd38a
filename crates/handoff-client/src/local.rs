//! What the command-line programs built on this library share on the server's own machine: the
//! admin token a server stored in its data directory, and Ctrl-C and SIGTERM as one stop.

use std::path::{Path, PathBuf};

/// Why no admin token was found.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("{} is empty; pass --token or set HANDOFF_TOKEN", .0.display())]
    Empty(PathBuf),
    #[error(
        "no token: pass --token or set HANDOFF_TOKEN (on the server's machine, {} is used when \
         present; set HANDOFF_DATA_DIR to find it)",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot read {path}: {error}", path = .0.display(), error = .1)]
    Unreadable(PathBuf, std::io::Error),
}

/// The admin token: `explicit` (from `--token` or `HANDOFF_TOKEN`) when it is not blank, else
/// the one `handoff serve` stored in `HANDOFF_DATA_DIR` (default `./handoff-data`).
pub fn resolve_admin_token(explicit: Option<String>) -> Result<String, AdminTokenError> {
    if let Some(token) = explicit {
        let token = token.trim();
        if !token.is_empty() {
            return Ok(token.to_string());
        }
    }
    let data_dir = std::env::var_os("HANDOFF_DATA_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("./handoff-data"), PathBuf::from);
    admin_token_in(&data_dir)
}

/// The admin token stored in `data_dir`.
pub fn admin_token_in(data_dir: &Path) -> Result<String, AdminTokenError> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(AdminTokenError::Empty(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AdminTokenError::Missing(path)),
        Err(e) => Err(AdminTokenError::Unreadable(path, e)),
    }
}

/// SIGINT (Ctrl-C) or SIGTERM, registered as soon as it is installed.
pub struct StopSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignal {
    pub fn install() -> std::io::Result<StopSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignal {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(StopSignal {})
        }
    }

    /// Waits for the next signal; its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "interrupted",
                _ = self.terminate.recv() => "terminated",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_the_explicit_one_else_the_data_directorys() {
        assert_eq!(resolve_admin_token(Some(" abc \n".into())).unwrap(), "abc");
        let dir = std::env::temp_dir().join(format!("handoff-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = admin_token_in(&dir).unwrap_err().to_string();
        assert!(missing.contains("pass --token"), "{missing}");
        std::fs::write(dir.join("admin.token"), " \n").unwrap();
        let empty = admin_token_in(&dir).unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
        std::fs::write(dir.join("admin.token"), "hk_x\n").unwrap();
        assert_eq!(admin_token_in(&dir).unwrap(), "hk_x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

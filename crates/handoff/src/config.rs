//! Configuration: one TOML file with documented defaults, overridden by `HANDOFF_*` environment
//! variables, then by command-line flags.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// Every setting, with the contract's defaults. Each is a TOML key and `HANDOFF_<KEY>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the server listens on.
    pub listen: String,
    /// Where the embedded store and the admin token live.
    pub data_dir: PathBuf,
    /// `fsync` (default: a 2xx means on disk) or `os` (flushing left to the OS).
    pub durability: String,
    /// Largest `context` of an interaction, serialized.
    pub max_context_bytes: usize,
    /// How long an offer to an agent target stays open.
    pub offer_timeout_s: u64,
    /// How long after its last stream closes an agent is set offline.
    pub presence_grace_s: u64,
    /// Whether a lost connection sets the agent offline and revokes its offers.
    pub offline_on_disconnect: bool,
    /// The time zone of "today" in statistics.
    pub timezone: String,
    /// Browser origins allowed beside the server's own.
    pub allowed_origins: Vec<String>,
    /// Hosts or CIDRs that connectors and webhooks may reach although loopback or private.
    pub egress_allow: Vec<String>,
    /// Seconds between WebSocket pings on agent streams.
    pub ping_interval_s: u64,
    /// Log filter, e.g. `info` or `handoff_api=debug,info`.
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("./handoff-data"),
            durability: "fsync".to_owned(),
            max_context_bytes: 65536,
            offer_timeout_s: 20,
            presence_grace_s: 30,
            offline_on_disconnect: true,
            timezone: "UTC".to_owned(),
            allowed_origins: Vec::new(),
            egress_allow: Vec::new(),
            ping_interval_s: 15,
            log: "info".to_owned(),
        }
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

impl Config {
    /// File (if any), then `env`, then `overrides`; then checks the result.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
        overrides: &Overrides,
    ) -> anyhow::Result<Config> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the configuration file {}", path.display())
                })?;
                toml::from_str::<Config>(&text)
                    .with_context(|| format!("invalid configuration file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(listen) = &overrides.listen {
            config.listen = listen.clone();
        }
        config.check()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> anyhow::Result<()> {
        fn get<'a>(env: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
            env.get(&format!("HANDOFF_{}", key.to_ascii_uppercase()))
                .map(String::as_str)
        }
        fn number<T: std::str::FromStr>(key: &str, text: &str) -> anyhow::Result<T> {
            text.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "HANDOFF_{}: {text:?} is not a valid number",
                    key.to_ascii_uppercase()
                )
            })
        }
        fn boolean(key: &str, text: &str) -> anyhow::Result<bool> {
            match text.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => bail!(
                    "HANDOFF_{}: {text:?} is not true or false",
                    key.to_ascii_uppercase()
                ),
            }
        }
        fn list(text: &str) -> Vec<String> {
            // A TOML/JSON-style array or a comma-separated list.
            if let Ok(items) = serde_json::from_str::<Vec<String>>(text) {
                return items;
            }
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        }
        if let Some(v) = get(env, "listen") {
            self.listen = v.to_owned();
        }
        if let Some(v) = get(env, "data_dir") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get(env, "durability") {
            self.durability = v.to_owned();
        }
        if let Some(v) = get(env, "max_context_bytes") {
            self.max_context_bytes = number("max_context_bytes", v)?;
        }
        if let Some(v) = get(env, "offer_timeout_s") {
            self.offer_timeout_s = number("offer_timeout_s", v)?;
        }
        if let Some(v) = get(env, "presence_grace_s") {
            self.presence_grace_s = number("presence_grace_s", v)?;
        }
        if let Some(v) = get(env, "offline_on_disconnect") {
            self.offline_on_disconnect = boolean("offline_on_disconnect", v)?;
        }
        if let Some(v) = get(env, "timezone") {
            self.timezone = v.to_owned();
        }
        if let Some(v) = get(env, "allowed_origins") {
            self.allowed_origins = list(v);
        }
        if let Some(v) = get(env, "egress_allow") {
            self.egress_allow = list(v);
        }
        if let Some(v) = get(env, "ping_interval_s") {
            self.ping_interval_s = number("ping_interval_s", v)?;
        }
        if let Some(v) = get(env, "log") {
            self.log = v.to_owned();
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        if !matches!(self.durability.as_str(), "fsync" | "os") {
            bail!(
                "durability must be \"fsync\" or \"os\", not {:?}",
                self.durability
            );
        }
        if self.max_context_bytes < 2 || self.max_context_bytes > 16 * 1024 * 1024 {
            bail!("max_context_bytes must be from 2 to 16777216");
        }
        if self.offer_timeout_s == 0 {
            bail!("offer_timeout_s must be at least 1");
        }
        if self.ping_interval_s == 0 {
            bail!("ping_interval_s must be at least 1");
        }
        if self.timezone != "UTC" {
            // Statistics by time zone arrive with queues; refuse what would be ignored.
            bail!(
                "timezone: only \"UTC\" is supported so far, not {:?}",
                self.timezone
            );
        }
        self.listen
            .parse::<std::net::SocketAddr>()
            .with_context(|| {
                format!(
                    "listen: {:?} is not an address like 127.0.0.1:8080",
                    self.listen
                )
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_contracts() {
        let config = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./handoff-data"));
        assert_eq!(config.durability, "fsync");
        assert_eq!(config.max_context_bytes, 65536);
        assert_eq!(config.offer_timeout_s, 20);
        assert_eq!(config.presence_grace_s, 30);
        assert!(config.offline_on_disconnect);
        assert_eq!(config.timezone, "UTC");
        assert!(config.allowed_origins.is_empty());
        assert!(config.egress_allow.is_empty());
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("handoff.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\noffer_timeout_s = 5\npresence_grace_s = 9\nallowed_origins = [\"https://a.example\"]\n",
        )
        .unwrap();
        let environment = env(&[
            ("HANDOFF_LISTEN", "127.0.0.1:7001"),
            ("HANDOFF_OFFER_TIMEOUT_S", "6"),
            ("HANDOFF_OFFLINE_ON_DISCONNECT", "false"),
            ("HANDOFF_EGRESS_ALLOW", "127.0.0.1, 10.0.0.0/8"),
            ("HANDOFF_SOMETHING_ELSE", "ignored"),
        ]);
        let overrides = Overrides {
            listen: Some("127.0.0.1:7002".to_owned()),
            data_dir: None,
        };
        let config = Config::load(Some(&file), &environment, &overrides).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7002");
        assert_eq!(config.offer_timeout_s, 6);
        assert_eq!(config.presence_grace_s, 9);
        assert!(!config.offline_on_disconnect);
        assert_eq!(config.allowed_origins, vec!["https://a.example".to_owned()]);
        assert_eq!(
            config.egress_allow,
            vec!["127.0.0.1".to_owned(), "10.0.0.0/8".to_owned()]
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let error = Config::load(
            None,
            &env(&[("HANDOFF_OFFER_TIMEOUT_S", "soon")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("HANDOFF_OFFER_TIMEOUT_S"),
            "{error}"
        );
        let error = Config::load(
            None,
            &env(&[("HANDOFF_DURABILITY", "maybe")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("durability"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listen_on = \"x\"\n").unwrap();
        let error = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(format!("{error:#}").contains("listen_on"), "{error:#}");
    }
}

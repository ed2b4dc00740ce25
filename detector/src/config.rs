//! Configuration: `/etc/detector/detector.toml`, then command-line flags on top.
//!
//! Every key is documented in `detector.toml.example`. Unknown keys are errors (a typo must not
//! silently leave a default in force), and every error names the key it is about.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::enforce::AttachMode;

/// Where `detector run` looks when `--config` is not given. A missing default file is fine
/// (flags alone are a complete configuration); a missing explicit `--config` file is an error.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/detector/detector.toml";

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub xdp: XdpConfig,
    pub metrics: MetricsConfig,
    pub sources: crate::source::SourceConfig,
    pub engine: crate::engine::EngineConfig,
    pub crowdsec: crate::crowdsec::CrowdsecConfig,
    pub cluster: crate::cluster::ClusterConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Engine snapshot, journal cursor and file offsets.
    pub state_dir: PathBuf,
    /// How often expired bans are removed from the kernel maps and kernel counters are read.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How often the engine state and source positions are persisted (also on shutdown).
    #[serde(with = "humantime_serde")]
    pub persist_interval: Duration,
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
    /// How far a live line's time may run ahead of the wall clock. Lines further ahead are
    /// counted and dropped (never given to the engine, whose clock would otherwise jump).
    #[serde(with = "humantime_serde")]
    pub max_clock_ahead: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: PathBuf::from("/var/lib/detector"),
            sweep_interval: Duration::from_secs(10),
            persist_interval: Duration::from_secs(30),
            log_format: LogFormat::Text,
            max_clock_ahead: crate::pipeline::DEFAULT_MAX_AHEAD,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// Interfaces to attach the XDP program to. Empty: enforce nothing in the kernel (the
    /// daemon still writes bans into the pinned maps if they exist).
    pub interfaces: Vec<String>,
    /// `auto` (native, falling back to generic), `native` or `generic`.
    pub mode: AttachMode,
    /// bpffs directory for the pinned maps and links.
    pub pin_dir: PathBuf,
    /// Capacity of each exact-ban map (per address family).
    pub max_exact_bans: u32,
    /// Capacity of each prefix-ban trie (per address family).
    pub max_prefix_bans: u32,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            interfaces: Vec::new(),
            mode: AttachMode::Auto,
            pin_dir: PathBuf::from(detector_common::PIN_DIR),
            max_exact_bans: 1 << 20,
            max_prefix_bans: 1 << 16,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus `/metrics` endpoint; absent = off. Keep it on loopback.
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Reads and validates a TOML file (`check-config`). Errors name the offending key
    /// (`engine.burst_count`) and the file.
    pub fn from_file(path: &Path) -> crate::Result<Config> {
        let config = Config::read(path)?;
        config.validate().map_err(|e| in_file(e, path))?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> crate::Result<Config> {
        let config = Config::parse(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `--config PATH` (must exist) or the default path (may be absent), without the
    /// checks of [`Config::validate`]: flags may still complete it (a `[sources]` table that
    /// only tunes settings, with `--file` giving the file), so callers validate after applying
    /// them.
    pub fn load(explicit: Option<&Path>) -> crate::Result<Config> {
        match explicit {
            Some(path) => Config::read(path),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Config::read(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(Config::default()),
        }
    }

    /// Reads and parses a file; unknown keys and values of the wrong type are errors here.
    fn read(path: &Path) -> crate::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Config::parse(&text).map_err(|e| in_file(e, path))
    }

    fn parse(text: &str) -> crate::Result<Config> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // toml's message carries a source excerpt over several lines; keep the first line
            // that says what is wrong, so the error stays one line.
            let message = inner
                .message()
                .lines()
                .next()
                .unwrap_or("invalid value")
                .to_string();
            let key = if key == "." {
                "configuration".to_string()
            } else {
                key
            };
            Error::config(key, message)
        })?;
        config.normalise();
        Ok(config)
    }

    /// Allowlist entries written as IPv4-mapped IPv6 (`::ffff:198.18.0.1`) become the IPv4
    /// address they stand for: that is what packets and log lines carry, and what a ban
    /// target is normalised to. Call again after adding entries from flags.
    pub fn normalise(&mut self) {
        for net in &mut self.engine.allowlist {
            *net = crate::enforce::canonical(*net);
        }
    }

    /// Checks values serde cannot (ranges, relations between keys).
    pub fn validate(&self) -> crate::Result<()> {
        if self.daemon.sweep_interval.is_zero() {
            return Err(Error::config(
                "daemon.sweep_interval",
                "must be greater than 0",
            ));
        }
        if self.daemon.persist_interval.is_zero() {
            return Err(Error::config(
                "daemon.persist_interval",
                "must be greater than 0",
            ));
        }
        if self.daemon.max_clock_ahead > Duration::from_secs(24 * 3600) {
            return Err(Error::config(
                "daemon.max_clock_ahead",
                "must be at most 24h (a wider tolerance lets one line stop the engine's clock)",
            ));
        }
        if self.xdp.max_exact_bans == 0 {
            return Err(Error::config("xdp.max_exact_bans", "must be at least 1"));
        }
        if self.xdp.max_prefix_bans == 0 {
            return Err(Error::config("xdp.max_prefix_bans", "must be at least 1"));
        }
        if let Some(addr) = self.metrics.listen
            && !addr.ip().is_loopback()
        {
            tracing::warn!(%addr, "metrics.listen is not a loopback address; the endpoint has no authentication");
        }
        for iface in &self.xdp.interfaces {
            if iface.is_empty() || iface.len() > 15 || iface.contains('/') {
                return Err(Error::config(
                    "xdp.interfaces",
                    format!("{iface:?} is not an interface name"),
                ));
            }
        }
        self.engine.validate()?;
        self.crowdsec.validate()?;
        self.cluster.validate()?;
        // A CrowdSec bouncer alone, or a cluster node that only enforces (no log source), is a
        // complete configuration.
        if !(self.sources.is_empty() && (self.crowdsec.enabled() || self.cluster.enabled())) {
            self.sources.validate()?;
        }
        Ok(())
    }
}

/// Adds the file name to a configuration error.
fn in_file(err: Error, path: &Path) -> Error {
    match err {
        Error::Config { key, message } => Error::Config {
            key,
            message: format!("{message} (in {})", path.display()),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[sources]` table that only tunes settings is fine in a file: `--file` may complete it.
    /// The complete configuration is still checked (`validate`) after the flags.
    #[test]
    fn sources_may_come_from_flags_but_are_still_required() {
        let c = Config::parse("[sources]\nfile_start = \"beginning\"\n").unwrap();
        assert!(c.sources.is_empty());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("sources"), "{err}");
        assert!(Config::from_toml("[sources]\nfile_start = \"beginning\"\n").is_err());
    }

    #[test]
    fn ipv4_mapped_allowlist_entries_become_ipv4() {
        let c = Config::from_toml(
            "[engine]\nallowlist = [\"::ffff:198.18.0.1/128\", \"::ffff:198.18.4.0/120\", \"2001:db8::/32\"]\n",
        )
        .unwrap();
        let got: Vec<String> = c.engine.allowlist.iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ["198.18.0.1/32", "198.18.4.0/24", "2001:db8::/32"]);
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/detector"));
        assert_eq!(c.xdp.mode, AttachMode::Auto);
        assert!(c.metrics.listen.is_none());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[daemon]\nstate_dri = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon"), "{err}");
        assert!(err.contains("state_dri"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::from_toml("[daemon]\nsweep_interval = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid daemon.sweep_interval"), "{err}");
        let err = Config::from_toml("[engine]\nallowlist = [\"10.0.0.300/8\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine.allowlist"), "{err}");
        let err = Config::from_toml("[xdp]\nmax_exact_bans = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid xdp.max_exact_bans"), "{err}");
    }

    /// The example documents the defaults: loading it must give exactly `Config::default()`,
    /// so a changed default cannot leave the documentation behind.
    #[test]
    fn the_shipped_example_is_valid_and_equals_the_defaults() {
        let text = include_str!("../../detector.toml.example");
        let example = serde_json::to_value(Config::from_toml(text).unwrap()).unwrap();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(example, defaults);
    }
}

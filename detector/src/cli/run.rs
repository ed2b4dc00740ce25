//! `detector run`: the daemon.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use ipnet::IpNet;

use crate::config::{Config, LogFormat};
use crate::enforce::AttachMode;
use crate::source::JournalConfig;

/// Follow the logs, correlate, and ban in the pinned kernel maps.
///
/// Settings come from the config file (default /etc/detector/detector.toml, if it exists);
/// the flags below override it, so `detector run --iface eth0 --journal` works with no file.
/// SIGTERM/SIGINT finish the lines already read, save state and source positions, and exit 0.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML; every key is documented in detector.toml.example).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Attach the XDP program to this interface (repeatable; replaces `xdp.interfaces`).
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// XDP attach mode (overrides `xdp.mode`).
    #[arg(long, value_enum)]
    pub mode: Option<AttachMode>,
    /// bpffs directory for pins (overrides `xdp.pin_dir`).
    #[arg(long, value_name = "DIR", env = "DETECTOR_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Follow this log file (repeatable). With --file/--journal/--journal-dir the flags replace
    /// the sources of the config file.
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Follow the system journal with the default matches (Postfix and Dovecot).
    #[arg(long)]
    pub journal: bool,
    /// Follow the journal files in DIR (as `journalctl --directory`).
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Read log lines from standard input until EOF.
    #[arg(long)]
    pub stdin: bool,
    /// State directory (overrides `daemon.state_dir`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Never ban this network (repeatable; added to `engine.allowlist`).
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<IpNet>,
    /// Decide and log, but let banned traffic pass (the XDP program counts it as observed).
    #[arg(long)]
    pub dry_run: bool,
    /// Serve Prometheus metrics on this address (overrides `metrics.listen`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Pull bans from this CrowdSec Local API (overrides `crowdsec.lapi_url`); with no log
    /// source, detector runs as a CrowdSec bouncer only.
    #[arg(long, value_name = "URL")]
    pub crowdsec_lapi: Option<String>,
    /// File holding the CrowdSec bouncer API key (overrides `crowdsec.api_key_file`).
    #[arg(long, value_name = "FILE")]
    pub crowdsec_key_file: Option<PathBuf>,
    /// Join the cluster through this Redis (`redis://` or `rediss://`; overrides
    /// `cluster.redis`); with no log source, the node only enforces the cluster's bans.
    #[arg(long = "cluster", value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's name in the cluster (overrides `cluster.node`; default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Log format on stderr (overrides `daemon.log_format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Accepts `192.0.2.0/24` and a bare address (`192.0.2.7` = /32).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not an IP address or CIDR prefix"))
}

impl Args {
    /// The config file with the flags applied on top, validated.
    pub fn effective_config(&self) -> crate::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if !self.ifaces.is_empty() {
            config.xdp.interfaces = self.ifaces.clone();
        }
        if let Some(mode) = self.mode {
            config.xdp.mode = mode;
        }
        if let Some(dir) = &self.pin_dir {
            config.xdp.pin_dir = dir.clone();
        }
        if !self.files.is_empty() || self.journal || self.journal_dir.is_some() || self.stdin {
            let mut sources = crate::source::SourceConfig {
                files: self.files.clone(),
                ..config.sources.clone()
            };
            sources.stdin = self.stdin;
            sources.journal = (self.journal || self.journal_dir.is_some()).then(|| JournalConfig {
                directory: self.journal_dir.clone(),
                ..config.sources.journal.clone().unwrap_or_default()
            });
            config.sources = sources;
        }
        if let Some(dir) = &self.state_dir {
            config.daemon.state_dir = dir.clone();
        }
        config.engine.allowlist.extend(self.allow.iter().copied());
        config.normalise();
        if self.dry_run {
            config.engine.dry_run = true;
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics.listen = Some(addr);
        }
        if let Some(url) = &self.crowdsec_lapi {
            config.crowdsec.lapi_url = Some(url.clone());
        }
        if let Some(file) = &self.crowdsec_key_file {
            config.crowdsec.api_key_file = Some(file.clone());
        }
        if let Some(url) = &self.cluster {
            config.cluster.redis = Some(url.clone());
        }
        if let Some(node) = &self.node {
            config.cluster.node = Some(node.clone());
        }
        if let Some(format) = self.log_format {
            config.daemon.log_format = format;
        }
        config.validate()?;
        Ok(config)
    }
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let config = args.effective_config()?;
    init_tracing(config.daemon.log_format);
    crate::daemon::run(config)
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("DETECTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already initialised (tests calling run twice): keep the first subscriber.
    drop(result);
}

//! The crate's one error type. Each variant names what failed in words an admin can act on;
//! the CLI prints it on one line and exits non-zero.
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `key` names it (`engine.probe_window`, `--for`).
    #[error("invalid {key}: {message}")]
    Config { key: String, message: String },

    /// Bad user input on the command line (address, CIDR, duration).
    #[error("{0}")]
    Usage(String),

    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Loading, attaching or using the BPF program and maps failed.
    #[error("{0}")]
    Bpf(String),

    /// A log source failed (journalctl missing, file unreadable).
    #[error("{0}")]
    Source(String),

    /// Persisted state could not be read or written.
    #[error("state: {0}")]
    Store(String),

    /// Talking to a CrowdSec Local API failed (unreachable, refused key, bad answer).
    #[error("CrowdSec Local API: {message}")]
    CrowdSec {
        message: String,
        #[source]
        source: Option<reqwest::Error>,
    },

    #[error("must run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): {0}")]
    Permission(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}

//! The crate's one error type. Each variant names what failed in words an admin can act on;
//! the CLI prints it on one line and exits non-zero.
//!
//! Variants that wrap a failure of something else keep it as their [`std::error::Error::source`]
//! so callers can classify by errno ([`Error::errno`], [`Error::is_out_of_space`]) instead of
//! matching message text. Their `Display` still names the causes too, because the CLI and the
//! daemon's log print one line and an admin needs the errno text there.
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A kept cause: any error from a dependency (aya, io, serde).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

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

    /// Loading, attaching or using the BPF program and maps failed, for a reason of our own
    /// (no cause to keep): a missing program, a pin of another build.
    #[error("{0}")]
    Bpf(String),

    /// A BPF operation failed; `source` is aya's (or the kernel's) error.
    #[error("{context}: {}", causes(source.as_ref()))]
    BpfCall {
        context: String,
        #[source]
        source: Cause,
    },

    /// A ban map has no room left (the kernel said E2BIG, ENOSPC or ENOMEM).
    #[error(
        "{map} is full ({capacity} entries); raise the capacity (detach and attach again) or unban something"
    )]
    MapFull {
        map: &'static str,
        capacity: u32,
        #[source]
        source: Cause,
    },

    /// A log source failed (journalctl missing, file unreadable).
    #[error("{0}")]
    Source(String),

    /// A log source failed because of `source`.
    #[error("{context}: {}", causes(source.as_ref()))]
    SourceCall {
        context: String,
        #[source]
        source: Cause,
    },

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

    /// Talking to the cluster's Redis failed (unreachable, refused credentials, bad answer).
    #[error("cluster Redis: {context}{}", source.as_ref().map_or(String::new(), |e| format!(": {e}")))]
    Cluster {
        context: String,
        #[source]
        source: Option<redis::RedisError>,
    },

    /// Persisted state could not be encoded or decoded because of `source`.
    #[error("state: {context}: {}", causes(source.as_ref()))]
    StoreCall {
        context: String,
        #[source]
        source: Cause,
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

    /// A BPF operation (`context` says which) failed with `source`.
    pub fn bpf(context: impl std::fmt::Display, source: impl Into<Cause>) -> Self {
        Error::BpfCall {
            context: context.to_string(),
            source: source.into(),
        }
    }

    /// A log source failed with `source`.
    pub fn source_failed(context: impl std::fmt::Display, source: impl Into<Cause>) -> Self {
        Error::SourceCall {
            context: context.to_string(),
            source: source.into(),
        }
    }

    /// Reading or writing state failed with `source`.
    pub fn store(context: impl std::fmt::Display, source: impl Into<Cause>) -> Self {
        Error::StoreCall {
            context: context.to_string(),
            source: source.into(),
        }
    }

    /// The OS error number at the bottom of the cause chain, if a syscall failed.
    pub fn errno(&self) -> Option<i32> {
        if let Error::Io { source, .. } = self {
            return source.raw_os_error();
        }
        errno_in(std::error::Error::source(self)?)
    }

    /// The kernel had no room: a full map (E2BIG from a hash, ENOSPC from an LPM trie) or no
    /// memory to create one (ENOMEM).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Error::MapFull { .. })
            || matches!(
                self.errno(),
                Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)
            )
    }
}

/// The errno of the first `io::Error` in `err`'s chain.
pub fn errno_in(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(n) = io.raw_os_error()
        {
            return Some(n);
        }
        cur = e.source();
    }
    None
}

/// An error and its causes on one line, each message once (aya's wrappers often repeat the
/// text of what they wrap).
pub fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall(errno: i32) -> aya::maps::MapError {
        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn the_errno_is_found_through_aya_wrappers_and_kept_as_source() {
        let e = Error::bpf("writing BANS_V4", syscall(libc::E2BIG));
        assert_eq!(e.errno(), Some(libc::E2BIG));
        assert!(e.is_out_of_space());
        assert!(std::error::Error::source(&e).is_some());
        let text = e.to_string();
        assert!(
            text.starts_with("writing BANS_V4: `bpf_map_update_elem` failed: "),
            "{text}"
        );
        assert!(text.contains("Argument list too long"), "{text}");

        let e = Error::bpf("writing PREFIX_V6", syscall(libc::ENOSPC));
        assert!(e.is_out_of_space());
        let e = Error::bpf("writing BANS_V6", syscall(libc::EPERM));
        assert_eq!(e.errno(), Some(libc::EPERM));
        assert!(!e.is_out_of_space());
        assert_eq!(Error::Bpf("no such program".into()).errno(), None);
    }

    #[test]
    fn io_errors_report_their_errno() {
        let e = Error::io("/x", std::io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(e.is_out_of_space());
    }
}

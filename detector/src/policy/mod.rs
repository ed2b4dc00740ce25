//! In-band policy services: Postfix and Dovecot ask `detector` before they answer a client,
//! instead of `detector` reading about it afterwards in their logs.
//!
//! Each service is an event source beside the log sources (its requests become the same
//! [`crate::event::Event`]s) and answers from the engine's current bans. Both fail open: the
//! mail server is configured to go on when `detector` does not answer.
//!
//! [`listen`] is the socket plumbing both share: an address that is a TCP socket address or a
//! unix socket path, and a listener that accepts either.
pub mod bans;
pub mod dovecot;
pub mod listen;
pub mod postfix;

pub use bans::BanView;
pub use listen::{ListenAddr, Listener, Stream, UnixSocketOptions};

/// The running daemon's policy listeners, in the state directory (`detector status` reads it;
/// the daemon removes it when it stops).
pub const LISTENERS_FILE: &str = "policy-listeners.json";

/// One entry of [`LISTENERS_FILE`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerRecord {
    /// "postfix".
    pub service: String,
    pub address: String,
}

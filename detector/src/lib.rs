//! detector: follows Postfix and Dovecot logs, correlates slow login botnets across services
//! and hours, and bans their addresses in BPF maps that an XDP program checks for every packet.
//!
//! Data flows one way:
//! `source` (journal, files, stdin) -> `parse` (postfix, dovecot) -> [`event::Event`] ->
//! `engine` (rules, state) -> decisions -> `enforce` (pinned BPF maps) and `store`.
pub mod cli;
pub mod config;
pub mod crowdsec;
pub mod daemon;
pub mod enforce;
pub mod engine;
pub mod error;
pub mod event;
pub mod metrics;
pub mod parse;
pub mod source;
pub mod store;

pub use error::{Error, Result};

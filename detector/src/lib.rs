//! detector: follows Postfix and Dovecot logs, correlates slow login botnets across services
//! and hours, and bans their addresses in BPF maps that an XDP program checks for every packet.
//!
//! Data flows one way:
//! `source` (journal, files, stdin) -> `parse` (postfix, dovecot) -> [`event::Event`] ->
//! `engine` (rules, state) -> decisions -> `enforce` (pinned BPF maps) and `store`.
//! [`pipeline::Pipeline`] is the parser-plus-engine step both `replay` (decisions to stdout)
//! and the daemon (decisions to the kernel maps) run.
pub mod blocklist;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crowdsec;
pub mod daemon;
pub mod enforce;
pub mod engine;
pub mod error;
pub mod event;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod replay;
pub mod report;
pub mod source;
pub mod store;

pub use error::{Error, Result};
pub use pipeline::{DecisionRecord, Fed, Pipeline, Sink};
pub use replay::{Input, ReplayReport, replay};

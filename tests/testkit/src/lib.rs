//! Helpers that `xtask` and the test harness (`detector-tests`) share. This crate depends on
//! nothing of `detector` itself, so `cargo xtask setup` can use it before the eBPF toolchain
//! (bpf-linker, nightly rust-src) is installed.
//!
//! - [`rng`]: the one deterministic generator of simulated logs;
//! - [`loggen`]: the Postfix and Dovecot line formats and their envelopes;
//! - [`cmd`], [`apt`], [`lock`]: the command runner, the apt installer and its lock.
//! - [`redis`]: a private redis-server for the cluster tests.
pub mod apt;
pub mod cmd;
pub mod crowdsec;
pub mod lock;
pub mod loggen;
pub mod redis;
pub mod rng;

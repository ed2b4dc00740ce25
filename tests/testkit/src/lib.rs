//! Helpers that `xtask` and the test harness (`detector-tests`) share. This crate depends on
//! nothing of `detector` itself, so `cargo xtask setup` can use it before the eBPF toolchain
//! (bpf-linker, nightly rust-src) is installed.
pub mod apt;
pub mod cmd;
pub mod lock;

//! Shared harness for the kernel and end-to-end tests: network namespaces, veth pairs, and
//! running the detector binary.

pub mod lab;
pub mod mailclient;

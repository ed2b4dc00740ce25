//! Shared harness for the kernel and end-to-end tests: network namespaces, veth pairs, TCP
//! probes, hand-made frames, running the detector binary, the mail lab (real Postfix + Dovecot
//! in namespaces), a mail client, and the scenario simulator.
//!
//! Every resource is owned by a guard whose `Drop` removes it, so a failing test cleans up
//! too. Names carry the test's tag and the process id, so tests run in parallel safely.
pub mod bin;
pub mod cluster_node;
pub mod crowdsec;
pub mod e2e;
pub mod frames;
pub mod lab;
pub mod mailclient;
pub mod netns;
pub mod sim;

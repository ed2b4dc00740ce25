#![no_main]
//! The whole `parse_line` path over every envelope: the first two bytes pick the envelope and
//! the syslog tag, the rest are messages (one per `\n`).
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::drive_wrapped(detector::parse::Format::Auto, data);
});

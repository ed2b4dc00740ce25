#![no_main]
//! journalctl -o json objects.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::drive(detector::parse::Format::JournalJson, b"", data);
});

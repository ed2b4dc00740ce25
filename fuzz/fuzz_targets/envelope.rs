#![no_main]
//! Raw lines, auto-detected envelope (syslog, RFC 5424, ISO, TAI64N, bare, JSON).
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::drive(detector::parse::Format::Auto, b"", data);
});

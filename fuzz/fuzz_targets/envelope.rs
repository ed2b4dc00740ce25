#![no_main]
//! Raw lines, auto-detected envelope (syslog, RFC 5424, ISO, TAI64N, bare, JSON, container
//! prefixes); the first byte also picks a forced format now and then.
mod common;
use detector::parse::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let format = match data.first() {
        Some(b'\x01') => Format::Syslog,
        Some(b'\x02') => Format::JournalJson,
        _ => Format::Auto,
    };
    common::drive(format, b"", data);
});

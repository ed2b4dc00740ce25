#![no_main]
//! Dovecot login/auth messages, syslog and log_path forms.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (tag, rest): (&[u8], &[u8]) = match data.first() {
        Some(0) => (b"Nov 27 05:31:03 imap-login: Info: ", &data[1..]),
        Some(1) => (b"Nov 27 05:31:03 auth: Info: ", &data[1..]),
        Some(2) => (b"Aug 30 00:10:57 auth(", &data[1..]),
        // imap_id_log: client-chosen text before the key=value list.
        Some(3) => (b"Nov 27 05:31:03 imap-login: Info: ID sent: name=", &data[1..]),
        Some(4) => (b"Aug 30 00:11:05 imap-login: Info: Login aborted: ", &data[1..]),
        _ => (b"Nov 27 05:31:03 mail dovecot: ", data),
    };
    common::drive(detector::parse::Format::Syslog, tag, rest);
});

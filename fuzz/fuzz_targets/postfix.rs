#![no_main]
//! Postfix smtpd/postscreen/qmgr messages behind a fixed syslog header.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (tag, rest): (&[u8], &[u8]) = match data.first() {
        Some(0) => (b"Nov 27 05:30:59 mail postfix/postscreen[1]: ", &data[1..]),
        Some(1) => (b"Nov 27 05:30:59 mail postfix/qmgr[2]: ", &data[1..]),
        Some(2) => (b"Nov 27 05:30:59 mail postfix/submission/smtpd[3]: ", &data[1..]),
        _ => (b"Nov 27 05:30:59 mail postfix/smtpd[4]: ", data),
    };
    common::drive(detector::parse::Format::Syslog, tag, rest);
});

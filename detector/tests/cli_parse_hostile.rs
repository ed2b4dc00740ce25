//! `detector parse` on odd input: other time zones, garbage bytes. It never panics.
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn parse_stdin(env: &[(&str, &str)], args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_detector"))
        .arg("parse")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Write from another thread: the child may fill its stdout pipe before reading all input.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Local times (Dovecot log_path, RFC 3164) are converted with the offset in force on their
/// own date: winter and summer lines of one run differ by the DST hour.
#[test]
fn local_times_follow_the_zone_rules_of_their_date() {
    let log = b"2025-01-15 12:00:00 auth: Info: passwd-file(a,198.18.0.2): unknown user\n\
                2025-07-01 12:00:00 auth: Info: passwd-file(a,198.18.0.2): unknown user\n\
                2025-10-26 02:59:00 auth: Info: passwd-file(a,198.18.0.2): unknown user\n\
                2025-10-26 02:01:00 auth: Info: passwd-file(a,198.18.0.2): unknown user\n";
    let out = parse_stdin(&[("TZ", "Europe/Berlin")], &["--json"], log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let times: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["time"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        times,
        [
            "2025-01-15T11:00:00Z",
            "2025-07-01T10:00:00Z",
            // The repeated hour: first summer time, then (going back in local time) winter.
            "2025-10-26T00:59:00Z",
            "2025-10-26T01:01:00Z",
        ]
    );
}

/// Random and crafted bytes through the binary: exit 0, a summary, no panic.
#[test]
fn garbage_input_never_panics() {
    let mut inputs: Vec<Vec<u8>> = vec![
        b"@000000000000000\xc3\xa90000000 x\n".to_vec(),
        b"@\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\n".to_vec(),
        b"{\"MESSAGE\":\"auth: passwd-file(u,198.18.0.2,<S>): unknown user\",\"SYSLOG_IDENTIFIER\":\"dovecot\",\"__REALTIME_TIMESTAMP\":\"-9223372036854775808\"}\n".to_vec(),
        b"mailserver-1  | \xe2\x82\xac\n2024-07-03T17:18:06.6\xc3\xa9Z Jul 03\n".to_vec(),
        b"Jun 16 09:37:32 h mail.warn \xc3\n".to_vec(),
    ];
    // A simple xorshift: the same "random" bytes each run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [1usize, 7, 25, 80, 300, 4096, 70_000] {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        inputs.push(v);
    }
    for (i, input) in inputs.iter().enumerate() {
        for format in ["auto", "syslog", "journal-json"] {
            let out = parse_stdin(&[], &["--format", format], input);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "input {i} --format {format}: {stderr}"
            );
            assert!(stderr.contains("lines read"), "input {i}: {stderr}");
        }
    }
}

/// A line over the limit is cut while reading (memory stays bounded) and not parsed: here the
/// part that would be left names an address that is not the client's.
#[test]
fn overlong_lines_are_counted_and_not_parsed() {
    let mut log = b"Nov 27 05:31:03 imap-login: Info: Disconnected (auth failed, 1 attempts): user=<x, rip=203.0.113.9, ".to_vec();
    log.extend(std::iter::repeat_n(b'a', 2 << 20));
    log.extend_from_slice(b">, method=PLAIN, rip=198.18.0.2, lip=198.18.0.1\n");
    log.extend_from_slice(
        b"Nov 27 05:31:04 mail postfix/smtpd[1]: connect from unknown[198.18.0.3]\n",
    );
    let out = parse_stdin(&[], &[], &log);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("203.0.113.9"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("198.18.0.3"), "{stdout}");
    assert!(
        stderr.contains("2 lines read, 1 events, 1 unparsed lines (1 longer than 1048576 bytes"),
        "{stderr}"
    );
}

//! `detector parse` end to end: output shape, stdin, missing files, odd input.
use std::io::Write;
use std::process::{Command, Stdio};

fn detector() -> Command {
    Command::new(env!("CARGO_BIN_EXE_detector"))
}

#[test]
fn json_lines_have_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.log");
    // Invalid UTF-8 in the user name, a junk line, and no newline at the end.
    let mut log = Vec::new();
    log.extend_from_slice(
        b"Nov 27 04:58:37 mail postfix/smtpd[123]: connect from unknown[198.18.0.7]\n",
    );
    log.extend_from_slice(b"\xff\xfe binary junk\n");
    log.extend_from_slice(b"Nov 27 04:58:38 mail postfix/smtpd[123]: NOQUEUE: reject: RCPT from unknown[198.18.0.7]: 550 5.1.1 <a@b.example>: Recipient address rejected; from=<x@y> to=<A@b.example> proto=ESMTP helo=<h>\n");
    log.extend_from_slice(
        b"Nov 27 04:58:39 auth: Info: passwd-file(bad\xffuser,198.18.0.7,<S1>): unknown user",
    );
    std::fs::write(&path, &log).unwrap();
    let out = detector()
        .args(["parse", "--json", "--show-unknown"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{stdout}");
    let year = chrono::Utc::now().format("%Y").to_string();
    let e = &events[1];
    assert!(e["time"].as_str().unwrap().ends_with("-11-27T04:58:38Z"));
    assert!(
        e["time"].as_str().unwrap().starts_with(&year)
            || e["time"]
                .as_str()
                .unwrap()
                .starts_with(&(year.parse::<i32>().unwrap() - 1).to_string())
    );
    assert_eq!(e["service"], "postfix");
    assert_eq!(e["kind"], "rcpt_rejected");
    assert_eq!(e["ip"], "198.18.0.7");
    assert_eq!(e["user"], serde_json::Value::Null);
    assert_eq!(e["recipient"], "a@b.example");
    assert_eq!(e["protocol"], "smtp");
    assert_eq!(e["line"], 3);
    assert_eq!(events[2]["kind"], "auth_unknown_user");
    assert_eq!(events[2]["user"], "bad\u{fffd}user");
    assert_eq!(events[2]["line"], 4);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("4 lines read, 3 events, 1 unparsed lines"),
        "{stderr}"
    );
    assert!(stderr.contains("unparsed 2:"), "{stderr}");
}

#[test]
fn stdin_and_text_form() {
    let mut child = detector()
        .args(["parse", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Nov 27 05:31:03 imap-login: Info: Disconnected (auth failed, 2 attempts in 4 secs): user=<u>, method=PLAIN, rip=198.18.0.9, lip=198.18.0.1, session=<s>\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("dovecot auth_failure 198.18.0.9 proto=imap user=\"u\" failures=2"),
        "{text}"
    );
}

#[test]
fn missing_file_is_one_clear_error() {
    let out = detector()
        .args(["parse", "/nonexistent/mail.log"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/mail.log"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn journal_format_forced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.json");
    std::fs::write(&path, br#"{"MESSAGE":"imap-login: Login: user=<a>, method=PLAIN, rip=198.18.0.3, lip=198.18.0.1, mpid=1, session=<x>","SYSLOG_IDENTIFIER":"dovecot","__REALTIME_TIMESTAMP":"1795757470793360"}
Nov 27 05:31:03 imap-login: Info: Login: user=<a>, method=PLAIN, rip=198.18.0.3, lip=198.18.0.1, mpid=1, session=<y>
"#).unwrap();
    let out = detector()
        .args(["parse", "--json", "--format", "journal-json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(r#""time":"2026-11-27T05:31:10.793360Z""#),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 lines read, 1 events, 1 unparsed lines")
    );
}

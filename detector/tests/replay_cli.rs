//! `detector replay` as a command: arguments, errors, and the lab's real bot round.
use std::path::Path;
use std::process::{Command, Output};

const POSTFIX: &str = "\
Nov 27 05:30:59 mail postfix/smtpd[21937]: connect from unknown[198.18.0.2]
Nov 27 05:30:59 mail postfix/smtpd[21937]: NOQUEUE: info: RCPT from unknown[198.18.0.2]: lab-rcpt=<txrj3ejbb3@example.test>; from=<probe@bot.invalid> to=<txrj3ejbb3@example.test> proto=ESMTP helo=<bot.invalid>
Nov 27 05:30:59 mail postfix/smtpd[21937]: C6109D0061: client=unknown[198.18.0.2]
Nov 27 05:30:59 mail postfix/smtpd[21937]: disconnect from unknown[198.18.0.2] ehlo=1 mail=1 rcpt=1 quit=1 commands=4
Nov 27 05:31:03 mail postfix/submission/smtpd[21963]: connect from unknown[198.18.0.2]
Nov 27 05:31:04 mail postfix/submission/smtpd[21963]: warning: unknown[198.18.0.2]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=txrj3ejbb3@example.test
Nov 27 05:31:04 mail postfix/submission/smtpd[21963]: disconnect from unknown[198.18.0.2] ehlo=1 auth=0/1 quit=1 commands=2/3
";

const DOVECOT: &str = "\
Nov 27 05:31:02 auth: Info: passwd-file(txrj3ejbb3@example.test,198.18.0.2,<Mb2sXTthtZfGEgAC>): unknown user
Nov 27 05:31:03 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<txrj3ejbb3@example.test>, method=PLAIN, rip=198.18.0.2, lip=198.18.0.1, session=<Mb2sXTthtZfGEgAC>
";

fn detector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(args)
        .output()
        .expect("run detector")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn bad_config_names_the_key_and_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "d.toml", "[engine]\nprobe_window = \"soon\"\n");
    let out = detector(&["replay", "--config", &cfg, "/dev/null"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid engine.probe_window"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");

    let out = detector(&["replay", "/nonexistent/mail.log"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mail.log"));
}

#[test]
fn empty_input_gives_no_decisions_and_a_summary() {
    let out = detector(&["replay", "--json", "/dev/null"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replay: 0 lines"));
}

#[test]
fn lab_bot_round_in_two_files_is_one_probe_login_ban() {
    let dir = tempfile::tempdir().unwrap();
    // Dovecot first on the command line: the merge by time must still see the probe first.
    let d = write(dir.path(), "dovecot.log", DOVECOT);
    let p = write(dir.path(), "postfix.log", POSTFIX);
    let out = detector(&["replay", "--json", &d, &p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["action"], "ban");
    assert_eq!(v["ip"], "198.18.0.2");
    assert_eq!(v["prefix"], "198.18.0.2/32");
    assert_eq!(v["rule"], "probe-login");
    assert_eq!(v["duration_s"], 3600);
    assert!(v["time"].as_str().unwrap().ends_with("05:31:02Z"), "{v}");
    let evidence: Vec<&str> = v["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        evidence.iter().any(|e| e.contains("NOQUEUE: info: RCPT")),
        "{evidence:?}"
    );
    assert!(
        evidence.iter().any(|e| e.contains("unknown user")),
        "{evidence:?}"
    );
    assert!(
        v["note"].as_str().unwrap().contains("probed address"),
        "{v}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bans by probe-login: 1"), "{err}");
}

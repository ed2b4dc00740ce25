//! `detector report` as a command: from the daemon's saved engine state and from a replay.
use std::path::Path;
use std::process::{Command, Output};

use detector::engine::{Engine, EngineConfig};
use detector::parse::Format;
use detector::replay::{inputs_from_texts, replay};
use detector::store::{ENGINE_STATE_FILE, StateDir};

/// A probe then a login as the probed mailbox (possible compromise), and three addresses
/// failing on a mailbox named like a script tag (a campaign).
const LOG: &str = "\
Nov 27 05:30:59 mail postfix/smtpd[21937]: connect from unknown[198.18.0.2]
Nov 27 05:30:59 mail postfix/smtpd[21937]: NOQUEUE: info: RCPT from unknown[198.18.0.2]: lab-rcpt=<txrj3ejbb3@example.test>; from=<probe@bot.invalid> to=<txrj3ejbb3@example.test> proto=ESMTP helo=<bot.invalid>
Nov 27 05:30:59 mail postfix/smtpd[21937]: disconnect from unknown[198.18.0.2] ehlo=1 mail=1 rcpt=1 quit=1 commands=4
Nov 27 05:31:03 mail dovecot: imap-login: Login: user=<txrj3ejbb3@example.test>, method=PLAIN, rip=198.18.0.2, lip=198.18.0.1, mpid=100, session=<Mb2sXTthtZfGEgAC>
Nov 27 06:00:01 mail dovecot: imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<<script>x</script>@example.test>, method=PLAIN, rip=198.18.1.10, lip=198.18.0.1, session=<a1>
Nov 27 06:00:02 mail dovecot: imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<<script>x</script>@example.test>, method=PLAIN, rip=198.18.1.11, lip=198.18.0.1, session=<a2>
Nov 27 06:00:03 mail dovecot: imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<<script>x</script>@example.test>, method=PLAIN, rip=198.18.1.12, lip=198.18.0.1, session=<a3>
";

fn detector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(args)
        .output()
        .expect("run detector")
}

/// A state directory holding what the daemon would have saved after these lines, an empty
/// configuration and a pin directory with no maps (the report must not need the kernel).
fn saved_state(dir: &Path) -> (String, String, String) {
    let inputs = inputs_from_texts(vec![("mail.log".into(), LOG.into())], Format::Auto);
    let done = replay(inputs, Engine::new(EngineConfig::default()), |_| {}, |_| {}).unwrap();
    let state = dir.join("state");
    StateDir::open(&state)
        .unwrap()
        .write_json(ENGINE_STATE_FILE, &done.engine.unwrap().snapshot())
        .unwrap();
    let config = dir.join("detector.toml");
    std::fs::write(&config, "").unwrap();
    let pins = dir.join("pins");
    std::fs::create_dir(&pins).unwrap();
    let s = |p: &Path| p.display().to_string();
    (s(&state), s(&config), s(&pins))
}

#[test]
fn report_from_the_state_dir_in_every_format_leaves_the_state_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (state, config, pins) = saved_state(dir.path());
    let snapshot = Path::new(&state).join(ENGINE_STATE_FILE);
    let before = std::fs::read(&snapshot).unwrap();
    let base = [
        "report",
        "--state-dir",
        &state,
        "--config",
        &config,
        "--pin-dir",
        &pins,
    ];
    let run = |extra: &[&str]| {
        let out = detector(&[&base[..], extra].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let json: serde_json::Value = serde_json::from_str(&run(&["--format", "json"])).unwrap();
    assert_eq!(json["campaigns"][0]["mailbox"], "<script>x</script>");
    assert_eq!(json["campaigns"][0]["failing_ips"], 3);
    assert_eq!(json["compromises"][0]["user"], "txrj3ejbb3@example.test");
    assert_eq!(json["bans_per_rule"]["target-campaign"], 3);
    assert_eq!(json["bans_per_rule"]["possible-compromise"], 1);
    assert_eq!(json["top_networks"][0]["network"], "198.18.1.0/24");

    let text = run(&[]);
    assert!(text.contains("possible-compromise | 1"), "{text}");
    assert!(
        text.contains("198.18.0.2 | txrj3ejbb3@example.test"),
        "{text}"
    );

    let html = run(&["--format", "html"]);
    assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"), "{html}");
    assert!(!html.contains("<script>"), "{html}");

    // A 10-minute window before the last line leaves the compromise out.
    let json: serde_json::Value =
        serde_json::from_str(&run(&["--format", "json", "--since", "10m"])).unwrap();
    assert_eq!(json["compromises"], serde_json::json!([]));

    assert_eq!(std::fs::read(&snapshot).unwrap(), before, "read-only");
}

#[test]
fn report_over_a_replay_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    std::fs::write(&log, LOG).unwrap();
    let out = detector(&[
        "report",
        "--format",
        "json",
        "--replay",
        &log.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["bans_per_origin"]["detector"], 4);
    assert_eq!(json["compromises"][0]["ip"], "198.18.0.2");

    let out = detector(&["report", "--replay", "/nonexistent/mail.log"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mail.log"));
    let out = detector(&["report", "--since", "soon", "--replay", "/dev/null"]);
    assert!(!out.status.success());

    // No saved state: an empty report, and a warning saying why it is empty.
    let (config, none, pins) = (
        dir.path().join("e.toml"),
        dir.path().join("none"),
        dir.path(),
    );
    std::fs::write(&config, "").unwrap();
    let s = |p: &Path| p.display().to_string();
    let out = detector(&[
        "report",
        "--config",
        &s(&config),
        "--state-dir",
        &s(&none),
        "--pin-dir",
        &s(pins),
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no saved engine state at"), "{err}");
    assert!(!none.exists(), "report creates nothing");
}

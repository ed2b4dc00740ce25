//! The report path end to end without a network: Dovecot-shaped `report` bodies and the log
//! lines Dovecot writes for the same attempts, through one pipeline, over simulated hours.
use chrono::{DateTime, Duration, Utc};

use super::protocol::Request;
use super::report::Reports;
use crate::engine::{Action, Engine, EngineConfig};
use crate::parse::{Format, LineParser, Outcome};
use crate::pipeline::{DecisionRecord, FnSink, Pipeline};

/// Attempts a few days back: old enough that no log line waits for its report (a backlog).
fn base() -> DateTime<Utc> {
    Utc::now() - Duration::days(3)
}

/// Dovecot's two lines for one failed IMAP login (file mode, as the lab logs them).
fn log_lines(at: DateTime<Utc>, user: &str, ip: &str, session: &str) -> [String; 2] {
    let stamp = at.with_timezone(&chrono::Local).format("%b %e %H:%M:%S");
    [
        format!("{stamp} auth: Info: passwd-file({user},{ip},<{session}>): Password mismatch"),
        format!(
            "{stamp} imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 \
             attempts in 0 secs): user=<{user}>, method=PLAIN, rip={ip}, lip=198.18.0.1, \
             session=<{session}>"
        ),
    ]
}

/// The time the parser reads from a line (so that the report carries the same time).
fn time_of(line: &str) -> DateTime<Utc> {
    match LineParser::new(Format::Auto).parse_line(line.as_bytes(), 1) {
        Outcome::Event(e) => e.time,
        other => panic!("{line}: {other:?}"),
    }
}

/// What Dovecot 2.3 POSTs with `?command=report` after a failed login.
fn report_body(user: &str, ip: &str, session: &str, pwhash: &str) -> String {
    format!(
        r#"{{"device_id":"","login":"{user}","protocol":"imap","pwhash":"{pwhash}","remote":"{ip}","session_id":"{session}","tls":false,"success":false,"policy_reject":false}}"#
    )
}

/// Bans decided for `ip`.
fn bans_for(decisions: &[DecisionRecord], ip: &str) -> usize {
    decisions
        .iter()
        .filter(|d| d.decision.action == Action::Ban && d.decision.ip.to_string() == ip)
        .count()
}

/// Runs `attempts` (address, password hash, minutes after the base) through one pipeline:
/// each attempt's report (when `with_reports`) and its two log lines.
fn run(attempts: &[(&str, String, i64)], with_reports: bool) -> Vec<DecisionRecord> {
    let engine = Engine::new(EngineConfig::default());
    let mut pipeline = Pipeline::new(LineParser::new(Format::Auto), engine);
    if with_reports {
        pipeline = pipeline.with_policy_reports();
    }
    let mut reports = Reports::new(EngineConfig::default().horizon);
    let mut decisions = Vec::new();
    let mut sink = FnSink(|d: &DecisionRecord| decisions.push(d.clone()));
    let user = "alice@example.test";
    for (n, (ip, pwhash, minute)) in attempts.iter().enumerate() {
        let session = format!("sess{n}");
        let lines = log_lines(base() + Duration::minutes(*minute), user, ip, &session);
        if with_reports {
            let body = report_body(user, ip, &session, pwhash);
            let req = Request::parse(body.as_bytes()).unwrap();
            let event = reports.event(&req, time_of(&lines[0])).unwrap();
            pipeline.feed_dovecot_report(event, "dovecot-policy", String::new, &mut sink);
        }
        for (i, line) in lines.iter().enumerate() {
            pipeline.feed_line(
                "dovecot.log",
                (2 * n + i) as u64,
                line.as_bytes(),
                &mut sink,
            );
        }
    }
    decisions
}

/// Issue 12, test 2: a phone repeating one stale password every minute for an hour is not
/// banned; a guesser trying distinct passwords from one address is. Without the reports, the
/// log alone bans the phone too (the control that shows what the password hash adds).
#[test]
fn a_stale_password_for_an_hour_is_not_banned_and_a_guesser_is() {
    let phone = "198.18.3.3";
    let guesser = "198.18.3.9";
    let mut attempts: Vec<(&str, String, i64)> =
        (0..60).map(|m| (phone, "0a1f".to_string(), m)).collect();
    attempts.extend((0..6).map(|i| (guesser, format!("{:04x}", 0x100 + i), 61 + i)));

    let with = run(&attempts, true);
    assert_eq!(bans_for(&with, phone), 0, "{with:#?}");
    assert_eq!(bans_for(&with, guesser), 1, "{with:#?}");

    let logs_only = run(&attempts, false);
    assert_eq!(bans_for(&logs_only, phone), 1, "{logs_only:#?}");
}

/// `detector run` with only the policy listener and no log source is a valid configuration.
#[test]
fn a_policy_listener_alone_is_a_complete_configuration() {
    use crate::config::Config;
    // An empty [sources] table: no log source (without one, the journal is followed).
    let c =
        Config::from_toml("[sources]\n[dovecot_policy]\nlisten = \"127.0.0.1:9478\"\n").unwrap();
    assert!(c.sources.is_empty());
    assert!(c.dovecot_policy.enabled());
    let c = Config::from_toml("[sources]\n[dovecot_policy]\nlisten = \"/run/detector/d.sock\"\n");
    assert!(c.is_ok(), "{c:?}");
    assert!(
        Config::from_toml("[sources]\n").is_err(),
        "no source and no listener"
    );
    let err = Config::from_toml(
        "[dovecot_policy]\nlisten = \"127.0.0.1:9478\"\ncampaign_action = \"delay\"\ncampaign_delay = \"0s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("dovecot_policy.campaign_delay"), "{err}");
    let err = Config::from_toml("[dovecot_policy]\nlisten = \"9478\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("dovecot_policy"), "{err}");
}

#[test]
fn the_api_key_file_is_read_trimmed_and_may_not_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let cfg = super::DovecotPolicyConfig {
        api_key_file: Some(path.clone()),
        ..Default::default()
    };
    assert!(cfg.api_key().is_err(), "missing file");
    std::fs::write(&path, " s3cret \n").unwrap();
    assert_eq!(cfg.api_key().unwrap().as_deref(), Some(&b"s3cret"[..]));
    std::fs::write(&path, "\n").unwrap();
    let err = cfg.api_key().unwrap_err().to_string();
    assert!(err.contains("dovecot_policy.api_key_file"), "{err}");
}

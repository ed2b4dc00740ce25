//! Issue 12 (Postfix half) on the lab's real Postfix 3.7: `check_policy_service` points at
//! `detector run --postfix-policy-listen 127.0.0.1:9479` (inside the mail namespace, so the
//! port cannot clash with another lab's).
//!
//! - Test 3: with the `INFO` access-map recipe removed from Postfix's configuration, the log
//!   names no recipient; the seed bot's probe evidence (the probed mailbox) arrives through
//!   the policy service and the bot is still banned by `probe-login`.
//! - With the `INFO` recipe kept as well, each probed recipient reaches the engine once.
//! - Test 4: with `detector` stopped, mail is still accepted on port 25 and on submission
//!   (`default_action=DUNNO`, `try_limit=1`: a refused connection costs nothing).
//!
//! Needs root (`cargo xtask test`) and fails without it.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use detector_tests::bin::detector_bin;
use detector_tests::e2e::{E2e, E2eOptions};
use detector_tests::lab::{self, LogMode, Peer, PostfixOptions};
use detector_tests::mailclient::{Outcome, Report, random_token};

const BAN_WAIT: Duration = Duration::from_secs(20);
const POLICY_PORT: u16 = 9479;

fn require_root() {
    assert!(
        lab::is_root(),
        "the Postfix policy tests need root (XDP, network namespaces): run them as root, e.g. `cargo xtask test`"
    );
}

/// A lab whose Postfix asks the policy service and logs no RCPT.
fn opts(tag: &str, mode: LogMode) -> E2eOptions {
    E2eOptions {
        mailbot: Some(PathBuf::from(env!("CARGO_BIN_EXE_mailbot"))),
        metrics_port: Some(9477),
        postfix: PostfixOptions {
            rcpt_info_log: false,
            policy_port: Some(POLICY_PORT),
        },
        ..E2eOptions::new(tag, mode)
    }
}

fn steps(reports: &[Report]) -> Vec<(&str, Outcome)> {
    reports
        .iter()
        .map(|r| (r.step.as_str(), r.outcome))
        .collect()
}

fn postfix_log(e: &E2e) -> String {
    let path = e.lab.postfix_log().expect("file mode");
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// A message to bob: from `peer` on port 25 without AUTH (what a remote MTA does), or as
/// alice on submission.
fn deliver(e: &E2e, peer: &Peer, submission: bool) -> Report {
    let to = "bob@example.test";
    let mut args = vec!["deliver", "--to", to];
    if submission {
        args.extend(["--user", "alice@example.test", "--password", "AlicePass123"]);
    }
    let r = e.lab.mailbot(peer, &args).expect("mailbot deliver");
    assert_eq!(r.len(), 1, "{r:#?}");
    r.into_iter().next().unwrap()
}

#[test]
fn probe_evidence_arrives_through_the_policy_service_without_the_info_recipe() {
    require_root();
    let e = E2e::up(opts("ppi", LogMode::File)).expect("e2e up");
    let bot = e.lab.bots()[0].clone();
    let local = format!("r{}", random_token(9));
    let reports = e
        .mailbot_fast(
            &bot,
            &["round", "--local", &local, "--password", "WrongPass1"],
        )
        .expect("mailbot round");
    let got = steps(&reports);
    assert_eq!(got[0], ("probe", Outcome::Ok), "{reports:#?}");
    let ban = e.wait_banned("198.18.0.10", BAN_WAIT).unwrap();
    assert_eq!(ban.reason, "probe-login", "{ban:?}\n{}", e.daemon_logs());
    let line = e
        .ban_lines(1)
        .into_iter()
        .find(|b| b["prefix"] == "198.18.0.10/32")
        .unwrap_or_else(|| panic!("no ban line:\n{}", e.daemon_logs()));
    let addr = format!("{local}@example.test");
    assert!(
        line["note"].as_str().unwrap_or("").contains(&addr),
        "the ban should name the probed address {addr}: {line}"
    );
    // The log never named the recipient: the evidence came through the policy service.
    let log = postfix_log(&e);
    assert!(
        log.contains("disconnect from unknown[198.18.0.10]"),
        "{log}"
    );
    assert!(
        !log.contains("NOQUEUE: info: RCPT"),
        "the INFO recipe is still on:\n{log}"
    );
    assert!(
        !log.contains(&local),
        "the log names the probed mailbox:\n{log}"
    );

    // The customer's mail goes through (the policy answered DUNNO to it).
    let client = e.lab.client().clone();
    let r = deliver(&e, &client, true);
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert!(e.ban("198.18.0.2").unwrap().is_none());

    let m = e.metrics().unwrap();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    // The bot's RCPT, the customer's RCPT and end of message.
    assert!(
        get("detector_postfix_policy_requests_total") >= 3.0,
        "{m:#?}"
    );
    assert_eq!(
        get("detector_postfix_policy_requests_total"),
        get(r#"detector_postfix_policy_answers_total{verdict="dunno"}"#),
        "{m:#?}"
    );
    assert!(
        get(r#"detector_events_total{kind="rcpt"}"#) >= 2.0,
        "{m:#?}"
    );
    assert_eq!(
        get("detector_postfix_policy_malformed_total"),
        0.0,
        "{m:#?}"
    );

    // `detector status`, run where Postfix runs, shows the listener the daemon was given by
    // flag, and that it accepts connections.
    let out = lab::command_in_net_ns(e.lab.mail_ns(), detector_bin())
        .unwrap()
        .args(["status", "--json", "--state-dir"])
        .arg(e.state_dir())
        .arg("--pin-dir")
        .arg(&e.pins.path)
        .env_remove("DETECTOR_PIN_DIR")
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        status["policy_listeners"],
        serde_json::json!([{"service": "postfix", "address": "127.0.0.1:9479", "listening": true}]),
        "{status}"
    );
}

#[test]
fn mail_is_still_accepted_when_detector_is_down() {
    require_root();
    let mut e = E2e::up(opts("ppd", LogMode::File)).expect("e2e up");
    let client = e.lab.client().clone();
    let mta = e.lab.bots()[0].clone();
    // Up: both paths ask the policy service and get DUNNO.
    for submission in [false, true] {
        let r = deliver(&e, if submission { &client } else { &mta }, submission);
        assert_eq!(r.outcome, Outcome::Ok, "with detector up: {r:#?}");
    }
    assert!(e.metrics().unwrap()["detector_postfix_policy_requests_total"] >= 4.0);

    e.stop_daemon().expect("stop detector");
    for submission in [false, true] {
        let started = Instant::now();
        let r = deliver(&e, if submission { &client } else { &mta }, submission);
        assert_eq!(r.outcome, Outcome::Ok, "with detector down: {r:#?}");
        assert!(r.detail.contains("queued as"), "{r:#?}");
        eprintln!(
            "delivery with detector down (submission: {submission}) took {:?}",
            started.elapsed()
        );
    }
    // Postfix did try the policy service and went on without it.
    let log = postfix_log(&e);
    assert!(
        log.contains(&format!("127.0.0.1:{POLICY_PORT}")),
        "Postfix never noticed the policy service was down:\n{log}"
    );
}

/// Polls the metrics until `key` reaches `at_least`.
fn wait_metric(e: &E2e, key: &str, at_least: f64) -> std::collections::HashMap<String, f64> {
    let deadline = Instant::now() + BAN_WAIT;
    loop {
        let m = e.metrics().unwrap();
        if m.get(key).copied().unwrap_or(0.0) >= at_least {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{key} below {at_least}: {m:#?}\n{}",
            e.daemon_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_recipient_both_the_log_and_the_policy_service_report_counts_once() {
    require_root();
    let mut o = opts("ppb", LogMode::File);
    o.postfix.rcpt_info_log = true;
    let e = E2e::up(o).expect("e2e up");
    let bot = e.lab.bots()[0].clone();
    let rcpt = format!("r{}@example.test", random_token(9));
    let r = e.lab.probe(&bot, &rcpt, false).expect("probe");
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    // The log's disconnect line comes after its RCPT line: once it is counted, both reports
    // of the recipient have reached the pipeline.
    let m = wait_metric(
        &e,
        r#"detector_events_total{kind="transaction_aborted"}"#,
        1.0,
    );
    let log = postfix_log(&e);
    assert!(
        log.contains(&format!("to=<{rcpt}>")),
        "the INFO recipe is off:\n{log}"
    );
    assert!(m["detector_postfix_policy_requests_total"] >= 1.0, "{m:#?}");
    assert_eq!(
        m.get(r#"detector_events_total{kind="rcpt"}"#).copied(),
        Some(1.0),
        "{m:#?}"
    );
}

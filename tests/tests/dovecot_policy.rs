//! Issue 12 on the real Dovecot 2.3 of the lab: `auth_policy_server_url` points at
//! `detector run --dovecot-policy-listen` in the mail namespace (with an API key), checked
//! before and after the password, every outcome reported. Needs root (`cargo xtask test`).
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use detector_tests::e2e::{E2e, E2eOptions, WORK_ROOT};
use detector_tests::lab::{self, LogMode};
use detector_tests::mailclient::Outcome;

const BAN_WAIT: Duration = Duration::from_secs(20);
/// Inside the mail namespace: every lab has its own, so the port never clashes.
const POLICY: &str = "127.0.0.1:9478";
const METRICS_PORT: u16 = 9479;
const KEY: &str = "lab-policy-key";
const ALICE: &str = "alice@example.test";
const ALICE_PASS: &str = "AlicePass123";

fn require_root() {
    assert!(
        lab::is_root(),
        "the Dovecot policy tests need root (network namespaces, XDP): run them as root"
    );
}

/// A lab whose Dovecot asks the daemon, and the daemon following the lab's logs.
fn up(tag: &str) -> E2e {
    up_with(tag, false)
}

/// The same; with `policy_only` the daemon has no log source at all (an empty `[sources]`
/// table), only the policy listener.
fn up_with(tag: &str, policy_only: bool) -> E2e {
    let opts = E2eOptions::new(tag, LogMode::File);
    let work = PathBuf::from(WORK_ROOT).join(&opts.tag);
    let key_file = work.join("api-key");
    let policy = format!(
        "[dovecot_policy]\nlisten = \"{POLICY}\"\napi_key_file = \"{}\"\n",
        key_file.display()
    );
    let mut e = E2e::up_without_daemon(E2eOptions {
        bots: 5,
        mailbot: Some(PathBuf::from(env!("CARGO_BIN_EXE_mailbot"))),
        metrics_port: Some(METRICS_PORT),
        dovecot_extra: lab::dovecot_policy_conf(&format!("http://{POLICY}/"), Some(KEY), 1000),
        extra_config: policy.clone(),
        source_args: policy_only.then(Vec::new),
        ..opts
    })
    .expect("e2e up");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    if policy_only {
        // The harness's configuration follows the journal too; this one reads no log at all.
        let config = format!(
            "[daemon]\npersist_interval = \"1h\"\nsweep_interval = \"1s\"\n\n[sources]\n\n{policy}"
        );
        std::fs::write(work.join("detector.toml"), config).unwrap();
    }
    e.start_daemon().expect("daemon start");
    e
}

fn metric(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// Polls the metrics until `name` reaches `at_least`.
fn wait_metric(e: &E2e, name: &str, at_least: f64) -> HashMap<String, f64> {
    let deadline = Instant::now() + BAN_WAIT;
    loop {
        let m = e.metrics().expect("metrics");
        if metric(&m, name) >= at_least {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed below {at_least}: {m:?}\n{}",
            e.daemon_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 12, test 1: a one-shot botnet. Two bots each probe alice's mailbox and log in once
/// with a wrong password: the engine bans them and puts the mailbox under a probe campaign.
/// The next bots, new addresses that never probed, log in with alice's *right* password (what
/// a botnet that guessed it would do): Dovecot's policy check refuses them before the password
/// is checked. alice, from the address she logged in from before, still logs in.
#[test]
fn one_shot_botnet_is_refused_by_policy_and_the_owner_is_not() {
    require_root();
    let e = up("dp1");
    let client = e.lab.client().clone();
    let r = e.lab.imap_login(&client, ALICE, ALICE_PASS).unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    let bots: Vec<_> = e.lab.bots().into_iter().cloned().collect();
    for bot in &bots[..2] {
        let r = e.lab.probe(bot, ALICE, false).unwrap();
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        let r = e.lab.imap_login(bot, ALICE, "Summer2024!").unwrap();
        assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
        e.wait_banned(&bot.ip.to_string(), BAN_WAIT).unwrap();
    }
    // The owner's login and both probes' failures came through the policy reports.
    let m = e.metrics().unwrap();
    assert!(
        metric(
            &m,
            r#"detector_dovecot_policy_requests_total{command="report"}"#
        ) >= 3.0,
        "{m:?}"
    );
    let r = e.lab.imap_login(&bots[2], ALICE, ALICE_PASS).unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "bot 2 got in: {r:#?}");
    let r = e.lab.pop3_login(&bots[3], ALICE, ALICE_PASS).unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "bot 3 got in: {r:#?}");
    wait_metric(
        &e,
        r#"detector_dovecot_policy_answers_total{verdict="reject_campaign"}"#,
        2.0,
    );
    let r = e.lab.imap_login(&client, ALICE, ALICE_PASS).unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "the owner was refused: {r:#?}");
    let m = e.metrics().unwrap();
    assert!(
        metric(
            &m,
            r#"detector_dovecot_policy_answers_total{verdict="known_client"}"#
        ) >= 1.0,
        "{m:?}"
    );
    // bob's mailbox is not under attack: a new address still logs in as bob.
    let r = e
        .lab
        .imap_login(&bots[4], "bob@example.test", "BobPass123")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
}

/// Issue 12, test 2 on the real server: a phone repeating one stale password (more often than
/// the burst rule allows) is not banned; a guesser with distinct passwords from one address
/// is. The log alone would ban both (five failures within ten minutes).
#[test]
fn a_stale_password_is_not_banned_and_a_guesser_is() {
    require_root();
    stale_phone_and_guesser(up("dp2"));
}

/// The same with no log source at all: the reports are a complete event source.
#[test]
fn on_the_policy_alone_a_guesser_is_banned_and_the_stale_phone_is_not() {
    require_root();
    let e = up_with("dp3", true);
    assert!(
        e.daemon_logs().contains(r#""sources":0"#),
        "{}",
        e.daemon_logs()
    );
    stale_phone_and_guesser(e);
}

fn stale_phone_and_guesser(e: E2e) {
    let bots: Vec<_> = e.lab.bots().into_iter().cloned().collect();
    let (phone, guesser) = (&bots[0], &bots[1]);
    for i in 0..7 {
        let r = e.lab.imap_login(phone, ALICE, "OldAlicePass1").unwrap();
        assert_ne!(
            r.outcome,
            Outcome::Timeout,
            "the phone was banned after {i} attempts"
        );
        assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
    }
    for i in 0..7 {
        let r = e
            .lab
            .imap_login(guesser, ALICE, &format!("Guess{i}x"))
            .unwrap();
        if r.outcome == Outcome::Timeout {
            break; // banned and dropped at XDP already
        }
        assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
    }
    e.wait_banned(&guesser.ip.to_string(), BAN_WAIT).unwrap();
    // Every phone attempt was reported and handled before the guesser's.
    let m = e.metrics().unwrap();
    assert!(
        metric(
            &m,
            r#"detector_dovecot_policy_requests_total{command="report"}"#
        ) >= 12.0,
        "{m:?}"
    );
    let bans = e.list().unwrap();
    assert!(
        bans.iter().all(|b| b.address != phone.ip.to_string()),
        "the phone with a stale password was banned: {bans:?}\n{}",
        e.daemon_logs()
    );
}

/// Resumes a stopped daemon even when the test fails half-way.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// Issue 12, test 4: fail open. A hung daemon (stopped, its socket still accepting) costs a
/// login Dovecot's timeout and no more; a daemon that is gone costs nothing. alice logs in
/// both times.
#[test]
fn logins_go_on_when_the_daemon_hangs_or_is_gone() {
    require_root();
    let mut e = up("dp4");
    let client = e.lab.client().clone();
    let r = e.lab.imap_login(&client, ALICE, ALICE_PASS).unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    let pid = e.daemon().unwrap().pid().expect("daemon pid");
    {
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let _resume = Resume(pid);
        let r = e.lab.imap_login(&client, ALICE, ALICE_PASS).unwrap();
        assert_eq!(r.outcome, Outcome::Ok, "with the daemon hung: {r:#?}");
        let r = e.lab.pop3_login(&client, ALICE, ALICE_PASS).unwrap();
        assert_eq!(r.outcome, Outcome::Ok, "with the daemon hung: {r:#?}");
    }
    e.stop_daemon().unwrap();
    // `detector status` shows the listener and what it answered, as of the last save.
    let state = e.state_dir();
    let status = e
        .detector_json(&["status", "--state-dir", state.to_str().unwrap()])
        .unwrap();
    let policy = &status["untrusted"]["dovecot_policy"];
    assert_eq!(policy["listen"], POLICY, "{status}");
    assert!(policy["requests_allow"].as_u64() >= Some(2), "{status}");
    assert!(policy["requests_report"].as_u64() >= Some(1), "{status}");
    let r = e.lab.imap_login(&client, ALICE, ALICE_PASS).unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "with the daemon gone: {r:#?}");
    let r = e
        .lab
        .send_mail(&client, ALICE, ALICE_PASS, "bob@example.test")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
}

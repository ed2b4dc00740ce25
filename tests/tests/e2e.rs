//! Proof on real servers: `detector run` follows the lab's Postfix and Dovecot (log files or a
//! real journal), is attached to the mail host's interfaces, bans the bots that do the
//! botnet's round, drops their next SYN at XDP, and leaves real users, remote MTAs and
//! customers with a typo alone. Needs root (`cargo xtask test`) and fails
//! without it. Each test has its own lab (tag), pin directory and state directory.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use detector_tests::bin::detector_bin;
use detector_tests::e2e::{Ban, E2e, E2eOptions};
use detector_tests::lab::{self, LogMode, Peer};
use detector_tests::mailclient::{Outcome, Report, random_token};
use serde_json::Value;

/// Ban within this long of the round (the chain itself takes milliseconds; the margin is for
/// a loaded 2-CPU machine running several labs).
const BAN_WAIT: Duration = Duration::from_secs(20);

/// Fails (never skips) without root, so that a green run means these tests ran.
fn require_root() {
    assert!(
        lab::is_root(),
        "the end-to-end tests need root (XDP, network namespaces): run them as root, e.g. `cargo xtask test`"
    );
}

fn opts(tag: &str, mode: LogMode) -> E2eOptions {
    E2eOptions {
        mailbot: Some(PathBuf::from(env!("CARGO_BIN_EXE_mailbot"))),
        ..E2eOptions::new(tag, mode)
    }
}

fn steps(reports: &[Report]) -> Vec<(&str, Outcome)> {
    reports
        .iter()
        .map(|r| (r.step.as_str(), r.outcome))
        .collect()
}

/// The seed's round from `bot`: RCPT to a random catch-all address, QUIT, then IMAP, POP3 and
/// submission logins with that address. The ban lands right after the first failed login, so
/// the later steps may already time out (their SYN dropped).
fn bot_round(e: &E2e, bot: &Peer) -> String {
    let local = format!("r{}", random_token(9));
    let reports = e
        .mailbot_fast(
            bot,
            &["round", "--local", &local, "--password", "WrongPass1"],
        )
        .expect("mailbot round");
    let got = steps(&reports);
    assert_eq!(got.len(), 4, "{reports:#?}");
    assert_eq!(got[0], ("probe", Outcome::Ok), "{reports:#?}");
    assert_eq!(got[1], ("imap", Outcome::Rejected), "{reports:#?}");
    for (step, outcome) in &got[2..] {
        assert!(
            matches!(outcome, Outcome::Rejected | Outcome::Timeout),
            "{step}: {outcome:?}\n{reports:#?}"
        );
    }
    format!("{local}@example.test")
}

/// A fresh SYN from `peer` to each of 25/143/110/587 is dropped: the mailbot reports a
/// connect timeout, and the ban's hit counter rises.
fn assert_dropped(e: &E2e, peer: &Peer, ban_addr: &str) {
    let before = e.ban(ban_addr).unwrap().expect("ban present").hits;
    let user = "someone@example.test";
    let attempts: [(&str, Vec<&str>); 4] = [
        ("probe", vec!["probe", "--to", user]),
        ("imap", vec!["imap", "--user", user, "--password", "x"]),
        ("pop3", vec!["pop3", "--user", user, "--password", "x"]),
        (
            "smtp-auth",
            vec!["smtp-auth", "--user", user, "--password", "x"],
        ),
    ];
    for (step, args) in attempts {
        let r = e.mailbot_fast(peer, &args).unwrap();
        assert_eq!(
            steps(&r),
            vec![(step, Outcome::Timeout)],
            "{step} from {} was not dropped: {r:#?}",
            peer.ip
        );
    }
    let after = e.ban(ban_addr).unwrap().expect("ban present").hits;
    assert!(
        after >= before + 4,
        "the ban's hit counter should count the 4 dropped SYNs: {before} -> {after}"
    );
}

/// alice logs in on IMAP and sends bob a message through submission.
fn client_still_fine(e: &E2e) {
    let client = e.lab.client().clone();
    let r = e
        .lab
        .imap_login(&client, "alice@example.test", "AlicePass123")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    let r = e
        .lab
        .send_mail(
            &client,
            "alice@example.test",
            "AlicePass123",
            "bob@example.test",
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert!(r.detail.contains("queued as"), "{r:#?}");
}

fn assert_not_banned(e: &E2e, addr: &str) {
    let bans = e.list().unwrap();
    assert!(
        bans.iter().all(|b| b.address != addr),
        "{addr} is banned: {bans:?}\n{}",
        e.daemon_logs()
    );
}

/// The ban record the daemon logged for `prefix` in run `run`.
fn ban_line(e: &E2e, run: u32, prefix: &str) -> Value {
    e.ban_lines(run)
        .into_iter()
        .find(|b| b["prefix"] == prefix)
        .unwrap_or_else(|| panic!("no ban line for {prefix}:\n{}", e.daemon_logs()))
}

/// Test 1: the bot is banned after its first round, its next SYNs are dropped at XDP, the
/// legitimate client still logs in and sends mail.
fn bot_banned_and_dropped_client_fine(tag: &str, mode: LogMode) {
    let e = E2e::up(E2eOptions {
        metrics_port: Some(9477),
        ..opts(tag, mode)
    })
    .expect("e2e up");
    let bot = e.lab.bots()[0].clone();
    let addr = bot_round(&e, &bot);
    let ban: Ban = e.wait_banned("198.18.0.10", BAN_WAIT).unwrap();
    assert_eq!(ban.reason, "probe-login", "{ban:?}");
    assert!(ban.expires_in_s.is_some_and(|s| s > 3000), "{ban:?}");
    let line = ban_line(&e, 1, "198.18.0.10/32");
    assert_eq!(line["rule"], "probe-login", "{line}");
    assert!(
        line["note"].as_str().unwrap_or("").contains(&addr),
        "the ban should name the probed address {addr}: {line}"
    );
    assert_dropped(&e, &bot, "198.18.0.10");
    client_still_fine(&e);
    assert_not_banned(&e, "198.18.0.2");
    let stats = e.detector_json(&["stats"]).unwrap();
    assert!(stats["dropped"].as_u64().unwrap() >= 4, "{stats}");
    // The daemon's metrics (served inside the mail namespace) tell the same story; the
    // kernel counters are copied in by the 1 s sweep: wait for the first copy (bounded).
    let dropped = r#"detector_xdp_packets_total{verdict="dropped"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = e.metrics().unwrap();
        if m.get(dropped).copied().unwrap_or(0.0) >= 4.0 || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get(r#"detector_decisions_total{rule="probe-login"}"#),
        1.0,
        "{m:#?}"
    );
    assert!(get(dropped) >= 4.0, "{m:#?}");
    let lines: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("detector_lines_read_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(lines >= 10.0, "{m:#?}");
    eprintln!("stats after the test: {stats}; daemon read {lines} lines");
}

#[test]
fn file_bot_banned_dropped_client_fine() {
    require_root();
    bot_banned_and_dropped_client_fine("e2f", LogMode::File);
}

#[test]
fn journal_bot_banned_dropped_client_fine() {
    require_root();
    bot_banned_and_dropped_client_fine("e2j", LogMode::Journal);
}

/// Test 2: a remote MTA verifying sender addresses (RCPT then QUIT, never a login, several
/// times) is not banned. A bot round afterwards proves that the daemon read past the probes.
#[test]
fn sender_verification_probes_are_not_banned() {
    require_root();
    let e = E2e::up(E2eOptions {
        bots: 2,
        ..opts("e2m", LogMode::File)
    })
    .expect("e2e up");
    let mta = e.lab.bots()[0].clone();
    for i in 0..6 {
        let rcpt = match i % 3 {
            0 => format!("v{}@example.test", random_token(8)),
            1 => "alice@example.test".to_string(),
            _ => "postmaster@example.test".to_string(),
        };
        let r = e.lab.probe(&mta, &rcpt, i == 5).unwrap();
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    }
    // Positive control: its lines come after the MTA's in both logs.
    let bot = e.lab.bots()[1].clone();
    bot_round(&e, &bot);
    e.wait_banned("198.18.0.11", BAN_WAIT).unwrap();
    assert_not_banned(&e, "198.18.0.10");
    let r = e
        .lab
        .probe(&mta, &format!("v{}@example.test", random_token(8)), false)
        .unwrap();
    assert_eq!(
        r.outcome,
        Outcome::Ok,
        "the MTA must still reach port 25: {r:#?}"
    );
}

/// Test 3: a customer who mistypes once, then logs in, is not banned; nor when a stale
/// phone mistypes once more later (two failures would be a slow-repeat ban without the
/// successful login).
#[test]
fn customer_typo_then_success_is_not_banned() {
    require_root();
    let e = E2e::up(opts("e2c", LogMode::File)).expect("e2e up");
    let client = e.lab.client().clone();
    let alice = "alice@example.test";
    let r = e.lab.imap_login(&client, alice, "AlicePass12").unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
    let r = e.lab.imap_login(&client, alice, "AlicePass123").unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    let r = e.lab.pop3_login(&client, alice, "OldPass1").unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
    // Positive control after the customer's lines.
    let bot = e.lab.bots()[0].clone();
    bot_round(&e, &bot);
    e.wait_banned("198.18.0.10", BAN_WAIT).unwrap();
    assert_not_banned(&e, "198.18.0.2");
    client_still_fine(&e);
}

/// A customer who has logged in fine mistypes the user name once (the local part only,
/// which the lab's passwd-file does not know: "unknown user"), then logs in again: not banned.
/// A user-name typo from a known client maps to the mailbox it was meant for.
#[test]
fn customer_user_name_typo_is_not_banned() {
    require_root();
    let e = E2e::up(opts("e2n", LogMode::File)).expect("e2e up");
    let client = e.lab.client().clone();
    for _ in 0..3 {
        let r = e
            .lab
            .imap_login(&client, "alice@example.test", "AlicePass123")
            .unwrap();
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    }
    let r = e.lab.imap_login(&client, "alice", "AlicePass123").unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
    let r = e
        .lab
        .imap_login(&client, "alice@example.test", "AlicePass123")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    // Positive control after the customer's lines.
    let bot = e.lab.bots()[0].clone();
    bot_round(&e, &bot);
    e.wait_banned("198.18.0.10", BAN_WAIT).unwrap();
    assert_not_banned(&e, "198.18.0.2");
    client_still_fine(&e);
}

/// Split roles: one bot namespace probes a real mailbox (RCPT, QUIT) and never logs in;
/// another, which never probes, logs in as the probed address seconds later with a wrong
/// password. The login address is banned as part of the pattern, and so is the prober; the
/// customer is left alone. (A single wrong password for an existing mailbox, without the probe
/// by someone else, bans no one today: the link is by the probed address.)
#[test]
fn split_role_bot_is_banned() {
    require_root();
    let e = E2e::up(E2eOptions {
        bots: 2,
        ..opts("e2s", LogMode::File)
    })
    .expect("e2e up");
    let prober = e.lab.bots()[0].clone();
    let login = e.lab.bots()[1].clone();
    let r = e.lab.probe(&prober, "bob@example.test", false).unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    let r = e
        .mailbot_fast(
            &login,
            &[
                "imap",
                "--user",
                "bob@example.test",
                "--password",
                "WrongPass1",
            ],
        )
        .unwrap();
    assert_eq!(steps(&r), vec![("imap", Outcome::Rejected)], "{r:#?}");
    e.wait_banned("198.18.0.11", BAN_WAIT).unwrap();
    e.wait_banned("198.18.0.10", BAN_WAIT).unwrap();
    assert_dropped(&e, &login, "198.18.0.11");
    assert_not_banned(&e, "198.18.0.2");
    client_still_fine(&e);
}

/// An administrator's `detector unban` while the daemon runs: the daemon notices the entry left
/// the kernel early and tells the engine, so the bot's next offence bans it again at once (as a
/// repeat offence: 24 h) instead of only after the first ban's hour has passed.
#[test]
fn admin_unban_lets_the_next_offence_ban_again() {
    require_root();
    let e = E2e::up(opts("e2u", LogMode::File)).expect("e2e up");
    let bot = e.lab.bots()[0].clone();
    bot_round(&e, &bot);
    e.wait_banned("198.18.0.10", BAN_WAIT).unwrap();
    let out = Command::new(detector_bin())
        .args(["unban", "198.18.0.10", "--pin-dir"])
        .arg(&e.pins.path)
        .env_remove("DETECTOR_PIN_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_not_banned(&e, "198.18.0.10");
    // The daemon sweeps every second (e2e CONFIG); wait until it has noticed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !e.daemon_logs().contains("unbanned by the administrator") {
        assert!(
            Instant::now() < deadline,
            "daemon did not notice the unban:\n{}",
            e.daemon_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bot_round(&e, &bot);
    let again = e.wait_banned("198.18.0.10", BAN_WAIT).unwrap();
    assert!(
        again.expires_in_s.unwrap() > 3600,
        "second offence escalates to 24h: {again:?}"
    );
    let second = e
        .ban_lines(1)
        .into_iter()
        .filter(|b| b["prefix"] == "198.18.0.10/32")
        .count();
    assert_eq!(second, 2, "two ban lines for the bot:\n{}", e.daemon_logs());
}

/// Test 4: an IPv6 bot is banned for its whole /64 (2001:db8:1:6::/64, not the mail host's
/// 2001:db8:1::/64) and dropped; the mail host stays reachable for others.
#[test]
fn ipv6_bot_is_banned() {
    require_root();
    let e = E2e::up(E2eOptions {
        ipv6: true,
        ..opts("e26", LogMode::File)
    })
    .expect("e2e up");
    let bot6 = e.lab.bot6().expect("ipv6 bot").clone();
    bot_round(&e, &bot6);
    let ban = e.wait_banned("2001:db8:1:6::/64", BAN_WAIT).unwrap();
    assert_eq!(ban.reason, "probe-login", "{ban:?}");
    let line = ban_line(&e, 1, "2001:db8:1:6::/64");
    assert_eq!(line["ip"], "2001:db8:1:6::6", "{line}");
    assert!(
        e.list()
            .unwrap()
            .iter()
            .all(|b| b.address != "2001:db8:1:6::6"),
        "the bot is covered by its /64, not banned one address at a time"
    );
    assert_dropped(&e, &bot6, "2001:db8:1:6::/64");
    // IPv4 bots and the client are unaffected.
    client_still_fine(&e);
}

/// What a source has processed, as the daemon's checkpoints.json says.
fn positions(e: &E2e) -> Value {
    let text = std::fs::read_to_string(e.state_dir().join("checkpoints.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["positions"].clone()
}

fn engine_events(e: &E2e) -> u64 {
    let text = std::fs::read_to_string(e.state_dir().join("engine.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["stats"]["events"].as_u64().expect("stats.events")
}

/// `journalctl --directory <lab journal> -o json <the daemon's default matches> EXTRA`.
fn journal_json(e: &E2e, extra: &[String]) -> Vec<String> {
    let dir = e.lab.journal_dir().unwrap();
    let out = std::process::Command::new("journalctl")
        .arg(format!("--directory={}", dir.display()))
        .args(["--output=json", "--no-pager"])
        .args(extra)
        .args(detector::source::DEFAULT_MATCHES)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The saved journal cursor (the source id is `journal:<directory>`).
fn journal_cursor<'a>(e: &E2e, pos: &'a Value) -> &'a str {
    let id = format!("journal:{}", e.lab.journal_dir().unwrap().display());
    pos[&id]["cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("no cursor for {id} in {pos}"))
}

/// Log data after the saved positions (bytes of the files, entries of the journal): what a
/// restart has to read again.
fn unprocessed(e: &E2e, pos: &Value) -> u64 {
    match e.lab.log_mode() {
        LogMode::File => log_files(e)
            .iter()
            .map(|f| {
                let size = std::fs::metadata(f).unwrap().len();
                size - file_offset(pos, f)
            })
            .sum(),
        LogMode::Journal => {
            let cursor = journal_cursor(e, pos);
            journal_json(e, &[format!("--after-cursor={cursor}")]).len() as u64
        }
    }
}

fn log_files(e: &E2e) -> Vec<PathBuf> {
    vec![e.lab.postfix_log().unwrap(), e.lab.dovecot_log().unwrap()]
}

fn file_offset(pos: &Value, f: &Path) -> u64 {
    pos[format!("file:{}", f.display())]["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset for {} in {pos}", f.display()))
}

/// Copies of exactly the log data the positions cover (file bytes `[0, offset)`; journal
/// entries up to and including the cursor), for `detector parse`.
fn processed_copies(e: &E2e, pos: &Value) -> Vec<PathBuf> {
    match e.lab.log_mode() {
        LogMode::File => log_files(e)
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let bytes = std::fs::read(f).unwrap();
                let offset = file_offset(pos, f) as usize;
                assert!(
                    offset <= bytes.len(),
                    "{}: checkpoint beyond the end",
                    f.display()
                );
                let out = e.work_dir().join(format!("processed-{i}.log"));
                std::fs::write(&out, &bytes[..offset]).unwrap();
                out
            })
            .collect(),
        LogMode::Journal => {
            let cursor = journal_cursor(e, pos);
            let all = journal_json(e, &[]);
            let end = all
                .iter()
                .position(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["__CURSOR"].as_str() == Some(cursor)
                })
                .unwrap_or_else(|| panic!("cursor {cursor} not in the journal"));
            let out = e.work_dir().join("processed.json");
            std::fs::write(&out, all[..=end].join("\n") + "\n").unwrap();
            vec![out]
        }
    }
}

/// Events `detector parse` finds in these files (its summary line on stderr).
fn parsed_events(files: &[PathBuf]) -> u64 {
    let out = std::process::Command::new(detector_tests::bin::detector_bin())
        .args(["parse", "--json"])
        .args(files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json_lines = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    // One JSON line per event; cross-check with the summary.
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    let events: u64 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" events")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no event count in the parse summary: {summary}"));
    assert_eq!(json_lines, events, "{summary}");
    events
}

/// Test 5: the daemon is SIGKILLed mid-run and restarted. Bans keep dropping during the gap
/// and after; the restarted daemon resumes from the last saved checkpoint on top of the
/// engine state saved with it, so no entry counts twice and none is lost.
///
/// Proof by counts: the engine's cumulative event counter (saved with the positions) equals
/// the number of events `detector parse` finds in exactly the log data the final checkpoint
/// says was processed (file bytes up to the offsets, journal entries up to the cursor).
/// Entries the killed run processed after its last save are read again; had they counted
/// twice (state newer than positions) the counter would be higher, had they been skipped
/// (positions newer than state) it would be lower. A canary IP with one failed login in that
/// window proves the same on a ban: one more failure after the restart must ban it
/// (slow-repeat, score 2: not lost), and it must not be banned before (not counted twice).
fn sigkill_and_restart(tag: &str, mode: LogMode) {
    let mut e = E2e::up(E2eOptions {
        bots: 3,
        // The canary's slow-repeat ban must be made at its second failure, not held for the
        // grace period (in which a success would cancel it).
        extra_config: "[engine]\ngrace_period = \"0s\"\n".into(),
        ..opts(tag, mode)
    })
    .expect("e2e up");
    let (bot, canary, late) = (
        e.lab.bots()[0].clone(),
        e.lab.bots()[1].clone(),
        e.lab.bots()[2].clone(),
    );

    // Run 1: bot0 banned; a clean stop saves state and positions.
    bot_round(&e, &bot);
    e.wait_banned("198.18.0.10", BAN_WAIT).unwrap();
    let st = e.stop_daemon().unwrap();
    assert!(st.success(), "SIGTERM exit: {st}\n{}", e.daemon_logs());
    let saved = positions(&e);
    let events_1 = engine_events(&e);
    assert!(events_1 > 0);

    // Run 2 resumes there; it only saves at start, so everything it reads from now on is
    // after the last save when it is killed.
    e.start_daemon().unwrap();
    let r = e
        .lab
        .imap_login(&canary, "alice@example.test", "Wrong-1")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
    bot_round(&e, &late);
    e.wait_banned("198.18.0.12", BAN_WAIT).unwrap();
    assert_eq!(ban_line(&e, 2, "198.18.0.12/32")["offence"], 1);
    assert!(
        e.ban_lines(2)
            .iter()
            .all(|b| b["prefix"] != "198.18.0.10/32"),
        "run 2 re-read run 1's lines (bot0 banned again):\n{}",
        e.daemon_logs()
    );
    assert_not_banned(&e, "198.18.0.11");
    e.kill_daemon().unwrap();
    let at_kill = positions(&e);
    assert_eq!(at_kill, saved, "run 2 saved positions after its start");
    let reread = unprocessed(&e, &at_kill);
    assert!(reread > 0, "nothing to re-read after the kill: {at_kill}");

    // The gap: no daemon, the bans still drop.
    assert_dropped(&e, &bot, "198.18.0.10");
    assert_dropped(&e, &late, "198.18.0.12");

    // Run 3 re-reads what run 2 read after the save, on top of the state saved with it.
    e.start_daemon().unwrap();
    // The late bot's ban, decided again from the re-read lines: still the first offence.
    let deadline = std::time::Instant::now() + BAN_WAIT;
    while e
        .ban_lines(3)
        .iter()
        .all(|b| b["prefix"] != "198.18.0.12/32")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "run 3 did not re-read run 2's lines:\n{}",
            e.daemon_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ban_line(&e, 3, "198.18.0.12/32")["offence"], 1);
    // The canary's failure (logged before the late bot's, so re-read by now) counted once:
    // not banned yet.
    assert_not_banned(&e, "198.18.0.11");
    let r = e
        .lab
        .imap_login(&canary, "alice@example.test", "Wrong-2")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
    let ban = e.wait_banned("198.18.0.11", BAN_WAIT).unwrap();
    assert_eq!(ban.reason, "slow-repeat", "{ban:?}");
    assert_dropped(&e, &bot, "198.18.0.10");

    let st = e.stop_daemon().unwrap();
    assert!(st.success(), "SIGTERM exit: {st}\n{}", e.daemon_logs());
    let end = positions(&e);
    let expected = parsed_events(&processed_copies(&e, &end));
    let counted = engine_events(&e);
    eprintln!(
        "restart proof ({mode:?}): run 1 counted {events_1} events; run 3 re-read {reread} \
         {} after the kill; the engine counted {counted} events in all, `detector parse` finds \
         {expected} in the processed log data ({end})",
        match mode {
            LogMode::File => "bytes",
            LogMode::Journal => "entries",
        }
    );
    assert_eq!(
        counted,
        expected,
        "engine events vs events in the processed log data\n{}",
        e.daemon_logs()
    );
}

#[test]
fn file_sigkill_and_restart_lose_nothing_and_repeat_nothing() {
    require_root();
    sigkill_and_restart("e2k", LogMode::File);
}

#[test]
fn journal_sigkill_and_restart_lose_nothing_and_repeat_nothing() {
    require_root();
    sigkill_and_restart("e2l", LogMode::Journal);
}

//! detector as a CrowdSec bouncer (and alert source) against a real CrowdSec Local API, with
//! XDP attached in a namespace. Each test starts its own Local API (private config, sqlite
//! database, loopback port) and stops it.
//!
//! Run: `cargo build -p detector && DETECTOR_BIN=$PWD/target/debug/detector \
//!       cargo test -p detector-tests --test crowdsec`
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use detector_tests::bin::{PinDir, detector_ok};
use detector_tests::crowdsec::{DetectorRun, Lapi, wait_until};
use detector_tests::netns::{SERVER_IFACE, Topology};
use serde_json::Value;

/// Every wait is bounded by this; the daemon polls every second.
const WAIT: Duration = Duration::from_secs(20);
const PORT: u16 = 2525;

fn work_dir(tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("detector-cs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `detector list --json` with the daemon's state directory (for the CrowdSec labels).
fn list(pins: &PinDir, state: &Path) -> Result<Vec<Value>> {
    let run = detector_ok(
        pins,
        None,
        &["list", "--json", "--state-dir", state.to_str().unwrap()],
    )?;
    let v: Value = serde_json::from_str(&run.stdout)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn find<'a>(bans: &'a [Value], address: &str) -> Option<&'a Value> {
    bans.iter().find(|b| b["address"] == address)
}

fn wait_listed(pins: &PinDir, state: &Path, address: &str) -> Result<Value> {
    let mut found = None;
    wait_until(WAIT, || {
        found = find(&list(pins, state)?, address).cloned();
        Ok(found.is_some())
    })
    .with_context(|| format!("{address} never banned"))?;
    Ok(found.unwrap())
}

fn wait_gone(pins: &PinDir, state: &Path, address: &str) -> Result<()> {
    wait_until(WAIT, || Ok(find(&list(pins, state)?, address).is_none()))
        .with_context(|| format!("{address} never unbanned"))
}

/// A config file with a 1 s poll interval; the Local API and key come as flags. No grace
/// period: the push test's ban is made at the second failure, not held for a success.
fn config(dir: &Path, extra: &str) -> Result<PathBuf> {
    let path = dir.join("detector.toml");
    std::fs::write(
        &path,
        format!(
            "[crowdsec]\npoll_interval = \"1s\"\n{extra}\n[engine]\nallowlist = [\"198.18.19.40/32\"]\n\
             grace_period = \"0s\"\n"
        ),
    )?;
    Ok(path)
}

fn start_bouncer(lapi: &Lapi, pins: &PinDir, dir: &Path, extra: &str) -> Result<DetectorRun> {
    let config = config(dir, extra)?;
    let key = lapi.key_file()?;
    let state = dir.join("state");
    let url = lapi.url();
    let args: Vec<&OsStr> = vec![
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--crowdsec-lapi"),
        OsStr::new(&url),
        OsStr::new("--crowdsec-key-file"),
        key.as_os_str(),
        OsStr::new("--pin-dir"),
        pins.path.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    let mut run = DetectorRun::start(&args, dir.join("detector.log"))?;
    run.wait_log("CrowdSec decisions applied", 1, WAIT)?;
    Ok(run)
}

#[test]
fn decisions_are_enforced_at_xdp_and_removed_when_deleted() -> Result<()> {
    let lapi = Lapi::start("flow")?;
    let t = Topology::new("csflow", 19)?;
    let pins = PinDir::new("csflow")?;
    let dir = work_dir("flow")?;
    let state = dir.join("state");
    detector_ok(&pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?;
    let _listeners = t.listen(PORT)?;
    // Bouncer only: no log source at all.
    let mut daemon = start_bouncer(&lapi, &pins, &dir, "")?;
    let (bot, bot6, other, allowed) = (t.v4(2), t.v6(3), t.v4(3), t.v4(40));
    assert!(t.connects(bot, PORT)?, "nothing banned yet");

    // An Ip decision: in the map with its remaining time, its origin and scenario, dropped.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &bot.to_string(),
        "--duration",
        "2h",
    ])?;
    let ban = wait_listed(&pins, &state, &bot.to_string())?;
    let left = ban["expires_in_s"].as_u64().unwrap();
    assert!((7000..=7200).contains(&left), "{ban}");
    let reason = ban["reason"].as_str().unwrap();
    assert!(reason.starts_with("crowdsec/cscli/manual 'ban'"), "{ban}");
    assert!(
        !t.can_connect(bot, PORT)?,
        "banned by CrowdSec, still connects"
    );
    assert!(
        t.connects(other, PORT)?,
        "only the decided address is dropped"
    );
    let explained = detector_ok(
        &pins,
        None,
        &[
            "explain",
            &bot.to_string(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )?;
    assert!(
        explained.stdout.contains("crowdsec/cscli/"),
        "{}",
        explained.stdout
    );

    // IPv6.
    lapi.cscli(&["decisions", "add", "--ip", &bot6.to_string()])?;
    wait_listed(&pins, &state, &bot6.to_string())?;
    assert!(!t.can_connect(bot6, PORT)?, "IPv6 decision not enforced");

    // Another type is left alone (and counted): a captcha is for an HTTP bouncer.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &other.to_string(),
        "--type",
        "captcha",
    ])?;
    daemon.wait_log("\"captcha\": 1", 1, WAIT)?;
    assert!(find(&list(&pins, &state)?, &other.to_string()).is_none());
    assert!(t.connects(other, PORT)?, "a captcha decision must not drop");

    // An admin bans the IPv6 address too (shorter than CrowdSec's 4 h): the entry is shared,
    // and CrowdSec's delete must leave the admin's ban in place.
    detector_ok(
        &pins,
        None,
        &[
            "ban",
            &bot6.to_string(),
            "--for",
            "1h",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )?;
    lapi.cscli(&["decisions", "delete", "--ip", &bot6.to_string()])?;

    // Deleted: gone from the map and the address connects again. Deltas arrive in order, so
    // once this delete is applied the IPv6 one before it is too.
    lapi.cscli(&["decisions", "delete", "--ip", &bot.to_string()])?;
    wait_gone(&pins, &state, &bot.to_string())?;
    assert!(t.connects(bot, PORT)?, "deleted decision still drops");
    let kept = list(&pins, &state)?;
    let kept6 = find(&kept, &bot6.to_string()).expect("CrowdSec's delete lifted the admin's ban");
    assert_eq!(kept6["reason"].as_str(), Some("manual"), "{kept6}");
    assert!(
        !t.can_connect(bot6, PORT)?,
        "the admin's IPv6 ban no longer drops"
    );

    // A range becomes a prefix ban; the allowlisted .40 inside it is cut out.
    let range = format!("198.18.{}.0/24", t.net);
    lapi.cscli(&["decisions", "add", "--range", &range])?;
    daemon.wait_log("banning the rest of it only", 1, WAIT)?;
    let bans = list(&pins, &state)?;
    let pieces: Vec<&Value> = bans
        .iter()
        .filter(|b| b["address"].as_str().unwrap().starts_with("198.18.19."))
        .collect();
    assert_eq!(pieces.len(), 8, "{bans:?}");
    assert!(find(&bans, "198.18.19.0/27").is_some(), "{bans:?}");
    assert!(!t.can_connect(other, PORT)?, "range decision not enforced");
    assert!(
        t.connects(allowed, PORT)?,
        "the allowlisted address was banned"
    );

    lapi.cscli(&["decisions", "delete", "--range", &range])?;
    wait_until(WAIT, || {
        Ok(!list(&pins, &state)?
            .iter()
            .any(|b| b["address"].as_str().unwrap().starts_with("198.18.19.")))
    })?;
    assert!(t.connects(other, PORT)?);

    daemon.stop()?;
    detector_ok(&pins, None, &["detach"])?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn a_local_api_that_lost_its_decisions_is_resynced() -> Result<()> {
    let mut lapi = Lapi::start("resync")?;
    let pins = PinDir::new("csresync")?;
    let dir = work_dir("resync")?;
    let state = dir.join("state");
    // No interface: the daemon pins the maps itself and bans are recorded.
    let mut daemon = start_bouncer(&lapi, &pins, &dir, "")?;
    for ip in ["198.18.19.7", "198.18.19.8"] {
        lapi.cscli(&["decisions", "add", "--ip", ip])?;
    }
    wait_listed(&pins, &state, "198.18.19.7")?;
    wait_listed(&pins, &state, "198.18.19.8")?;
    // An administrator's own ban is not CrowdSec's to remove.
    detector_ok(&pins, None, &["ban", "198.18.19.9", "--for", "1h"])?;

    // The Local API comes back with an empty database and one new decision. A delta would
    // only bring the new one; the resync must also drop .7 and .8.
    lapi.restart_with_empty_database()?;
    lapi.cscli(&["decisions", "add", "--ip", "198.18.19.10"])?;
    wait_listed(&pins, &state, "198.18.19.10")?;
    wait_gone(&pins, &state, "198.18.19.7")?;
    wait_gone(&pins, &state, "198.18.19.8")?;
    let bans = list(&pins, &state)?;
    assert_eq!(
        find(&bans, "198.18.19.9").map(|b| b["reason"].clone()),
        Some(Value::from("manual")),
        "{bans:?}"
    );
    let log = daemon.log_text();
    assert!(log.contains("unreachable"), "{log}");
    assert!(log.contains("full resync"), "{log}");

    daemon.stop()?;
    detector_ok(&pins, None, &["detach"])?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn detectors_own_bans_are_pushed_as_alerts_and_not_reimported() -> Result<()> {
    let lapi = Lapi::start("push")?;
    let pins = PinDir::new("cspush")?;
    let dir = work_dir("push")?;
    let state = dir.join("state");
    // Six failed logins within a minute, just now: one of the rules bans.
    let bot = "198.18.19.66";
    let now = chrono::Utc::now();
    let mut log = String::new();
    for i in 0..6 {
        let t = now - chrono::Duration::seconds(60 - i * 10);
        log.push_str(&format!(
            "{} mx dovecot[4242]: imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<u{i}@x.test>, method=PLAIN, rip={bot}, lip=198.18.19.1, session=<s{i}>\n",
            t.format("%Y-%m-%dT%H:%M:%S%.6f+0000")
        ));
    }
    let maillog = dir.join("mail.log");
    std::fs::write(&maillog, log)?;
    let extra = format!(
        "push = true\ncredentials_file = \"{}\"\n[sources]\nfiles = [\"{}\"]\nfile_start = \"beginning\"\n",
        lapi.credentials().display(),
        maillog.display()
    );
    let mut daemon = start_bouncer(&lapi, &pins, &dir, &extra)?;
    let ban = wait_listed(&pins, &state, bot)?;
    let rule = ban["reason"].as_str().unwrap().to_string();
    assert!(!rule.starts_with("crowdsec"), "{ban}");

    // The alert: scenario, source, evidence count and time range.
    let mut alert = Value::Null;
    wait_until(WAIT, || {
        let alerts = lapi.cscli_json(&["alerts", "list"])?;
        alert = alerts
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| {
                a["scenario"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("detector/")
                    && a["source"]["value"] == bot
            })
            .cloned()
            .unwrap_or(Value::Null);
        Ok(!alert.is_null())
    })
    .with_context(|| {
        format!(
            "no alert in {:?}; detector log:\n{}",
            lapi.cscli_json(&["alerts", "list"]).ok(),
            daemon.log_text()
        )
    })?;
    assert!(
        alert["scenario"].as_str().unwrap().ends_with(&*rule),
        "{alert} for a {rule} ban"
    );
    // The rule fired on the second failure: two evidence lines, ten seconds apart.
    assert_eq!(alert["events_count"], 2, "{alert}");
    assert!(
        alert["start_at"].as_str().unwrap() < alert["stop_at"].as_str().unwrap(),
        "{alert}"
    );

    // Its decision comes back in the stream and is recognised as our own.
    wait_until(WAIT, || {
        let status: Value =
            serde_json::from_slice(&std::fs::read(state.join("crowdsec.json")).unwrap_or_default())
                .unwrap_or(Value::Null);
        Ok(status["counts"]["own"].as_u64().unwrap_or(0) >= 1)
    })
    .with_context(|| daemon.log_text())?;
    let ban = find(&list(&pins, &state)?, bot).cloned().unwrap();
    assert_eq!(ban["reason"], rule, "re-imported as a foreign ban: {ban}");
    daemon.stop()?;
    detector_ok(&pins, None, &["detach"])?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// An `https://` Local API whose certificate a private CA signed, authenticating the bouncer
/// by its client certificate: detector trusts `ca_file`, presents `cert_file` and `key_file`
/// (no API key at all) and applies the decisions.
#[test]
fn an_https_local_api_with_a_private_ca_and_a_client_certificate() -> Result<()> {
    let lapi = Lapi::start_tls("tls")?;
    let tls = lapi.tls.clone().context("a TLS Local API has TLS files")?;
    let pins = PinDir::new("cstls")?;
    let dir = work_dir("tls")?;
    let state = dir.join("state");
    let config = config(
        &dir,
        &format!(
            "lapi_url = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            lapi.url(),
            tls.ca.display(),
            tls.client_cert.display(),
            tls.client_key.display()
        ),
    )?;
    let args: Vec<&OsStr> = vec![
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--pin-dir"),
        pins.path.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    let mut daemon = DetectorRun::start(&args, dir.join("detector.log"))?;
    daemon.wait_log("CrowdSec decisions applied", 1, WAIT)?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.18.21.7",
        "--duration",
        "1h",
    ])?;
    let ban = wait_listed(&pins, &state, "198.18.21.7")?;
    let reason = ban["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("crowdsec/cscli/"), "{ban}");

    daemon.stop()?;
    detector_ok(&pins, None, &["detach"])?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

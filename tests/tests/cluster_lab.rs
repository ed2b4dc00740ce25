//! Issue 11, test 4: the real Postfix + Dovecot lab as two mail hosts, one cluster.
//!
//! The MX namespace runs Postfix, the IMAP namespace runs Dovecot (a split lab, see
//! tests/src/lab/mod.rs). Each host has its own `detector run --cluster` node following its
//! own daemon's log, with its own state and pin directory and XDP attached to its own
//! interfaces. A private redis-server runs on the lab's internal network (198.18.2.1 on the
//! MX). The seed bot probes a catch-all address on the MX and fails to log in as it on the
//! IMAP host: neither host's log alone holds the pattern. It must be banned and dropped at XDP on both
//! hosts, while the legitimate client keeps working on both. Needs root (`cargo xtask test`)
//! and fails without it.
use std::path::PathBuf;

use detector_tests::cluster_node::{Node, NodeOptions, NsRedis, WorkDir};
use detector_tests::lab::{self, Host, Lab, LabOptions, LogMode, Peer, Topology};
use detector_tests::mailclient::{Outcome, Report, random_token};

const BOT: &str = "198.18.0.10";

fn require_root() {
    assert!(
        lab::is_root(),
        "the cluster lab test needs root (XDP, network namespaces): run it as root, e.g. `cargo xtask test`"
    );
}

fn steps(reports: &[Report]) -> Vec<(&str, Outcome)> {
    reports
        .iter()
        .map(|r| (r.step.as_str(), r.outcome))
        .collect()
}

/// The mailbot against `host` with short timeouts (1 s connect, 3 s I/O): a dropped SYN
/// shows as `timeout` after a second.
fn fast(lab: &Lab, host: &Host, peer: &Peer, args: &[&str]) -> Vec<Report> {
    let mut all = vec!["--connect-timeout", "1", "--timeout", "3"];
    all.extend_from_slice(args);
    lab.mailbot_to(host, peer, &all).expect("mailbot")
}

/// A node on `host` following `log`, attached to that host's interfaces.
fn node_on(
    work: &std::path::Path,
    tag: &str,
    name: &str,
    lab: &Lab,
    host: &Host,
    log: PathBuf,
    redis: &NsRedis,
) -> Node {
    let mut opts = NodeOptions::new(name);
    opts.cluster = Some(redis.url());
    opts.net_ns = Some(host.ns.clone());
    opts.ifaces = lab.mail_ifaces();
    opts.files = vec![log];
    opts.metrics_port = Some(9480);
    let mut node = Node::new(work, tag, opts).expect("node");
    node.start()
        .unwrap_or_else(|e| panic!("starting node {name}: {e:#}"));
    node
}

#[test]
fn split_lab_bot_banned_and_dropped_on_both_hosts() {
    require_root();
    let tag = format!("cl{:x}", std::process::id());
    let lab = Lab::up(LabOptions {
        topology: Topology::Split,
        log_mode: LogMode::File,
        bots: 1,
        tag: Some(tag.clone()),
        mailbot: Some(PathBuf::from(env!("CARGO_BIN_EXE_mailbot"))),
        ..LabOptions::default()
    })
    .expect("split lab up");
    let mx_host = lab.postfix_host().clone();
    let imap_host = lab.dovecot_host().clone();
    // Dropped in reverse order: nodes, then Redis, then the work directory, then the lab.
    let work = WorkDir::new(PathBuf::from(format!("/run/detector-e2e/{tag}"))).unwrap();
    let redis = NsRedis::start(
        &mx_host.ns,
        lab::BACKEND_MX_IP.into(),
        &work.0.join("redis"),
    )
    .expect("redis in the MX namespace");
    let mx = node_on(
        &work.0,
        &tag,
        "mx",
        &lab,
        &mx_host,
        lab.postfix_log().unwrap(),
        &redis,
    );
    let imap = node_on(
        &work.0,
        &tag,
        "imap",
        &lab,
        &imap_host,
        lab.dovecot_log().unwrap(),
        &redis,
    );
    let logs = || format!("{}\n{}", mx.logs(), imap.logs());

    // The client works on both hosts before anything happens.
    let client = lab.client().clone();
    let r = lab
        .imap_login(&client, "alice@example.test", "AlicePass123")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");

    // The seed's round: an RCPT probe of a catch-all address on the MX, then a failed IMAP
    // login as that address on the IMAP host.
    let bot = lab.bots()[0].clone();
    let probed = format!("c{}@example.test", random_token(9));
    let r = fast(&lab, &mx_host, &bot, &["probe", "--to", &probed]);
    assert_eq!(steps(&r), vec![("probe", Outcome::Ok)], "{r:#?}");
    let r = fast(
        &lab,
        &imap_host,
        &bot,
        &["imap", "--user", &probed, "--password", "WrongPass1"],
    );
    assert_eq!(steps(&r), vec![("imap", Outcome::Rejected)], "{r:#?}");

    // Banned in both hosts' kernel maps: the MX saw only the probe, the IMAP host only the
    // login, and each one's engine got the other's half through Redis.
    let on_mx = mx.wait_banned(BOT).unwrap();
    let on_imap = imap.wait_banned(BOT).unwrap();
    for (name, ban) in [("mx", &on_mx), ("imap", &on_imap)] {
        assert_eq!(ban.reason, "probe-login", "{name}: {ban:?}\n{}", logs());
        assert!(
            ban.expires_in_s.is_some_and(|s| s > 3000),
            "{name}: {ban:?}"
        );
    }
    // Neither host's own log holds the pattern: the probe is only in Postfix's log, the
    // failed login only in Dovecot's.
    let postfix_log = std::fs::read_to_string(lab.postfix_log().unwrap()).unwrap();
    let dovecot_log = std::fs::read_to_string(lab.dovecot_log().unwrap()).unwrap();
    assert!(postfix_log.contains(&format!("lab-rcpt=<{probed}>")));
    assert!(!postfix_log.contains(&format!("sasl_username={probed}")));
    assert!(dovecot_log.contains(&format!("passwd-file({probed},{BOT},<")));
    assert!(!dovecot_log.contains("lab-rcpt="));
    // The ban lines name the probed address and both nodes as contributors (the ban line
    // of either node: each bans by its own engine over the merged events).
    for node in [&mx, &imap] {
        let line = node
            .ban_lines()
            .into_iter()
            .find(|b| b["prefix"] == format!("{BOT}/32"))
            .unwrap_or_else(|| panic!("no ban line on {}:\n{}", node.name(), logs()));
        assert!(
            line["note"].as_str().unwrap_or("").contains(&probed),
            "{}: {line}",
            node.name()
        );
        let nodes = line["nodes"].to_string();
        assert!(
            nodes.contains("mx") && nodes.contains("imap"),
            "{} should name both contributing nodes: {line}",
            node.name()
        );
    }

    // Dropped at XDP on both hosts: the bot's next SYN to the MX (SMTP, submission) and to
    // the IMAP host (IMAP, POP3) times out, and each host's ban counts its drops.
    let user = "someone@example.test";
    for (host, node, attempts) in [
        (
            &mx_host,
            &mx,
            vec![
                ("probe", vec!["probe", "--to", user]),
                (
                    "smtp-auth",
                    vec!["smtp-auth", "--user", user, "--password", "x"],
                ),
            ],
        ),
        (
            &imap_host,
            &imap,
            vec![
                ("imap", vec!["imap", "--user", user, "--password", "x"]),
                ("pop3", vec!["pop3", "--user", user, "--password", "x"]),
            ],
        ),
    ] {
        let before = node.ban(BOT).unwrap().expect("ban present").hits;
        for (step, args) in attempts {
            let r = fast(&lab, host, &bot, &args);
            assert_eq!(
                steps(&r),
                vec![(step, Outcome::Timeout)],
                "{step} from the bot to {} was not dropped: {r:#?}",
                host.ns
            );
        }
        let after = node.ban(BOT).unwrap().expect("ban present").hits;
        assert!(
            after >= before + 2,
            "{}'s ban should count the 2 dropped SYNs: {before} -> {after}",
            node.name()
        );
    }

    // The client still works on both hosts: IMAP on the IMAP host, submission on the MX.
    let r = lab
        .imap_login(&client, "alice@example.test", "AlicePass123")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    let r = lab
        .send_mail(
            &client,
            "alice@example.test",
            "AlicePass123",
            "bob@example.test",
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    for node in [&mx, &imap] {
        let bans = node.list().unwrap();
        assert!(
            bans.iter().all(|b| b.address != "198.18.0.2"),
            "the client is banned on {}: {bans:?}",
            node.name()
        );
    }
    // Each node published its own half and consumed the other's.
    for node in [&mx, &imap] {
        let m = node.metrics().unwrap();
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        assert!(
            get("detector_cluster_published_total") >= 1.0
                && get("detector_cluster_consumed_total") >= 1.0,
            "{}: {m:#?}",
            node.name()
        );
    }
}

//! The mail lab itself: real Postfix + Dovecot in namespaces, a bot round and a legitimate
//! client, and the exact log lines they produce in files and in the journal. Needs root
//! (`cargo xtask test`) and fails without it.
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use detector_tests::lab::{self, Lab, LabOptions, LogMode, Peer};
use detector_tests::mailclient::{Outcome, Report, random_token};

const WAIT: Duration = Duration::from_secs(10);

fn options(log_mode: LogMode, ipv6: bool) -> LabOptions {
    LabOptions {
        log_mode,
        ipv6,
        bots: 1,
        mailbot: Some(PathBuf::from(env!("CARGO_BIN_EXE_mailbot"))),
        ..LabOptions::default()
    }
}

/// Fails (never skips) without root, so that a green run means these tests ran.
fn require_root() {
    assert!(
        lab::is_root(),
        "the mail lab needs root (network namespaces, mounts): run them as root, e.g. `cargo xtask test`"
    );
}

fn outcomes(reports: &[Report]) -> Vec<(String, Outcome)> {
    reports
        .iter()
        .map(|r| (r.step.clone(), r.outcome))
        .collect()
}

/// How a client address appears in the logs.
fn client_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("unknown[{v4}]"),
        IpAddr::V6(v6) => format!("unknown[{v6}]"),
    }
}

/// Dovecot lines: "imap-login: Info: ..." in its log file, "imap-login: ..." in the journal.
fn dovecot_prefix(lab: &Lab, process: &str) -> String {
    match lab.log_mode() {
        LogMode::File => format!("{process}: Info: "),
        LogMode::Journal => format!("{process}: "),
    }
}

/// A bot round (probe, then IMAP/POP3/submission logins with the probed address) and the
/// log lines it must produce.
fn bot_round_and_assert(lab: &Lab, bot: &Peer) {
    let local = format!("r{}", random_token(9));
    let addr = format!("{local}@example.test");
    let reports = lab
        .mailbot(
            bot,
            &["round", "--local", &local, "--password", "WrongPass1"],
        )
        .expect("mailbot round");
    assert_eq!(
        outcomes(&reports),
        vec![
            ("probe".into(), Outcome::Ok),
            ("imap".into(), Outcome::Rejected),
            ("pop3".into(), Outcome::Rejected),
            ("smtp-auth".into(), Outcome::Rejected)
        ],
        "{reports:#?}"
    );
    assert!(
        reports
            .iter()
            .all(|r| r.user.as_deref() == Some(addr.as_str()))
    );

    let ip = bot.ip.to_string();
    let who = client_name(bot.ip);
    let mail_ip = match bot.ip {
        IpAddr::V4(_) => lab.mail_ip().to_string(),
        IpAddr::V6(_) => lab.mail_ip6().expect("lab has IPv6").to_string(),
    };
    // Postfix, port 25
    lab.expect_log(WAIT, &["postfix/smtpd[", &format!("]: connect from {who}")])
        .unwrap();
    lab.expect_log(
        WAIT,
        &[&format!(
            "NOQUEUE: info: RCPT from {who}: lab-rcpt=<{addr}>; from=<probe@bot.invalid> to=<{addr}> proto=ESMTP helo=<bot.invalid>"
        )],
    )
    .unwrap();
    lab.expect_log(
        WAIT,
        &[&format!(
            "disconnect from {who} ehlo=1 mail=1 rcpt=1 quit=1 commands=4"
        )],
    )
    .unwrap();
    // Dovecot, IMAP and POP3 with an unknown user
    lab.expect_log(
        WAIT,
        &[
            &format!("{}passwd-file({addr},{ip},<", dovecot_prefix(lab, "auth")),
            ">): unknown user",
        ],
    )
    .unwrap();
    for proto in ["imap-login", "pop3-login"] {
        lab.expect_log(
            WAIT,
            &[
                &format!(
                    "{}Disconnected: Aborted login by logging out (auth failed, 1 attempts in ",
                    dovecot_prefix(lab, proto)
                ),
                &format!(" secs): user=<{addr}>, method=PLAIN, rip={ip}, lip={mail_ip}, session=<"),
            ],
        )
        .unwrap();
    }
    // Submission: Postfix's SASL warning and Dovecot's auth line without a session
    lab.expect_log(
        WAIT,
        &[
            "postfix/submission/smtpd[",
            &format!("]: warning: {who}: SASL PLAIN authentication failed: (reason unavailable), sasl_username={addr}"),
        ],
    )
    .unwrap();
    lab.expect_log(
        WAIT,
        &[&format!(
            "{}passwd-file({addr},{ip}): unknown user",
            dovecot_prefix(lab, "auth")
        )],
    )
    .unwrap();
    lab.expect_log(
        WAIT,
        &[&format!(
            "disconnect from {who} ehlo=1 auth=0/1 quit=1 commands=2/3"
        )],
    )
    .unwrap();

    // The same probe, dropping the connection after RCPT
    let dropped = format!("x{addr}");
    let r = lab
        .probe(bot, &dropped, true)
        .expect("mailbot probe --drop");
    assert_eq!(
        (r.step.as_str(), r.outcome),
        ("probe-drop", Outcome::Ok),
        "{r:#?}"
    );
    lab.expect_log(
        WAIT,
        &[&format!(
            "lab-rcpt=<{dropped}>; from=<probe@bot.invalid> to=<{dropped}>"
        )],
    )
    .unwrap();
    lab.expect_log(WAIT, &[&format!("lost connection after RCPT from {who}")])
        .unwrap();
    lab.expect_log(
        WAIT,
        &[&format!(
            "disconnect from {who} ehlo=1 mail=1 rcpt=1 commands=3"
        )],
    )
    .unwrap();
}

/// alice logs in on IMAP and sends bob a message through submission.
fn legit_client_and_assert(lab: &Lab) {
    let client = lab.client().clone();
    let r = lab
        .imap_login(&client, "alice@example.test", "AlicePass123")
        .unwrap();
    assert_eq!(
        (r.step.as_str(), r.outcome),
        ("imap", Outcome::Ok),
        "{r:#?}"
    );
    let subject = format!("lab-{}", random_token(8));
    let r = lab
        .mailbot(
            &client,
            &[
                "deliver",
                "--user",
                "alice@example.test",
                "--password",
                "AlicePass123",
                "--to",
                "bob@example.test",
                "--subject",
                &subject,
            ],
        )
        .unwrap();
    assert_eq!(
        outcomes(&r),
        vec![("deliver".into(), Outcome::Ok)],
        "{r:#?}"
    );
    assert!(r[0].detail.contains("queued as"), "{r:#?}");

    let ip = client.ip.to_string();
    lab.expect_log(
        WAIT,
        &[&format!(
            "{}Login: user=<alice@example.test>, method=PLAIN, rip={ip}, lip={}, mpid=",
            dovecot_prefix(lab, "imap-login"),
            lab.mail_ip()
        )],
    )
    .unwrap();
    lab.expect_log(
        WAIT,
        &[&format!(
            ": client=unknown[{ip}], sasl_method=PLAIN, sasl_username=alice@example.test"
        )],
    )
    .unwrap();
    lab.expect_log(
        WAIT,
        &[
            "postfix/virtual[",
            "to=<bob@example.test>",
            "status=sent (delivered to maildir)",
        ],
    )
    .unwrap();
    lab.expect_log(
        WAIT,
        &[&format!(
            "disconnect from unknown[{ip}] ehlo=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=6"
        )],
    )
    .unwrap();
    // ... and the message really is in bob's maildir.
    let new = lab.dir().join("mail/example.test/bob/new");
    let found = std::fs::read_dir(&new).unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path()).is_ok_and(|m| m.contains(&format!("Subject: {subject}")))
    });
    assert!(
        found,
        "no message with subject {subject} in {}",
        new.display()
    );
}

/// Refused and timed-out connections are reported as such, and the namespace helpers keep
/// the host's mount namespace while switching the network namespace.
fn outcomes_and_namespace_helpers(lab: &Lab) {
    let bot = lab.bots()[0].clone();
    // Nothing listens on 2525: the SYN gets a RST.
    let r = lab
        .mailbot(
            &bot,
            &[
                "smtp-auth",
                "--user",
                "a@example.test",
                "--password",
                "x",
                "--port",
                "2525",
            ],
        )
        .unwrap();
    assert_eq!(
        outcomes(&r),
        vec![("smtp-auth".into(), Outcome::Refused)],
        "{r:#?}"
    );
    // With the mail side of the pair down the SYN vanishes, as if dropped at XDP.
    let iface = &bot.mail_iface;
    let link = |state: &str| {
        let st = lab
            .in_mail_mount_ns("ip")
            .args(["link", "set", iface, state])
            .status()
            .unwrap();
        assert!(st.success(), "ip link set {iface} {state}");
    };
    link("down");
    let r = lab.mailbot(
        &bot,
        &["--connect-timeout", "1", "probe", "--to", "t@example.test"],
    );
    link("up");
    let r = r.unwrap();
    assert_eq!(
        outcomes(&r),
        vec![("probe".into(), Outcome::Timeout)],
        "{r:#?}"
    );
    assert!(
        r[0].secs < 5.0,
        "the connect timeout (1 s), not the I/O timeout, should fire: {r:#?}"
    );

    // In-process client inside the client's namespace (enter_net_ns: this thread only).
    let mail_ip = lab.mail_ip();
    let client_ns = lab.client().ns.clone();
    let report = std::thread::spawn(move || {
        let _guard = lab::enter_net_ns(&client_ns).unwrap();
        let t = detector_tests::mailclient::Target::new(mail_ip.into());
        detector_tests::mailclient::pop3_login(&t, "bob@example.test", "BobPass123")
    })
    .join()
    .unwrap();
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");

    // command_in_net_ns: the mail namespace's links, but the host's mounts (/sys/fs/bpf).
    let out = lab::command_in_net_ns(lab.mail_ns(), "ip")
        .unwrap()
        .args(["-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    for iface in lab.mail_ifaces() {
        assert!(
            links.contains(&format!(" {iface}@")),
            "{iface} missing from:\n{links}"
        );
    }
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let out = lab::command_in_net_ns(lab.mail_ns(), "cat")
        .unwrap()
        .arg("/proc/self/mountinfo")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        host_mounts.lines().count(),
        "mount namespace changed"
    );
}

/// Tears the lab down and checks that nothing of it is left.
fn down_and_assert_clean(lab: Lab) {
    let tag = lab.tag().to_string();
    let dir = lab.dir().to_path_buf();
    let mut pids = Vec::new();
    for ns in lab
        .hosts()
        .iter()
        .map(|h| h.ns.clone())
        .chain(lab.peers().iter().map(|p| p.ns.clone()))
    {
        pids.extend(lab::netns_pids(&ns));
    }
    assert!(
        pids.len() >= 3,
        "expected the lab's daemons in its namespaces, found pids {pids:?}"
    );
    lab.down();
    let prefix = format!("dtl-{tag}-");
    let left: Vec<String> = lab::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let alive: Vec<i32> = pids.into_iter().filter(|&p| lab::alive(p)).collect();
    assert!(alive.is_empty(), "processes left behind: {alive:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
    // The unit cgroups (journal mode) are gone from the cgroup2 hierarchy, wherever the host
    // mounts it.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines().filter(|l| l.contains(" - cgroup2 ")) {
        let mount_point = line.split_whitespace().nth(4).unwrap();
        let slice = std::path::Path::new(mount_point).join(format!("dtl-{tag}.slice"));
        assert!(!slice.exists(), "{} left behind", slice.display());
    }
}

#[test]
fn file_mode_bot_round_client_and_ipv6_bot() {
    require_root();
    let lab = Lab::up(options(LogMode::File, true)).expect("lab up");
    assert!(lab.postfix_log().unwrap().exists() || lab.dovecot_log().unwrap().exists());
    assert_eq!(lab.mail_ifaces(), vec!["mh-client", "mh-bot0", "mh-bot6"]);
    let bot = lab.bots()[0].clone();
    bot_round_and_assert(&lab, &bot);
    legit_client_and_assert(&lab);
    outcomes_and_namespace_helpers(&lab);
    let bot6 = lab.bot6().expect("ipv6 bot").clone();
    assert_eq!(bot6.ip.to_string(), "2001:db8:1:6::6");
    bot_round_and_assert(&lab, &bot6);
    // File mode: the exact file line shapes (timestamp, host field for Postfix, none for Dovecot).
    let lines = lab.log_lines().unwrap();
    assert!(lines.iter().any(|l| l.origin == lab::LogOrigin::PostfixFile
        && l.text.contains(" mail postfix/smtpd[")
        && l.text.contains("]: connect from unknown[198.18.0.10]")));
    assert!(lines.iter().any(|l| l.origin == lab::LogOrigin::DovecotFile
        && l.text.contains(" imap-login: Info: Disconnected: ")));
    down_and_assert_clean(lab);
}

#[test]
fn journal_mode_bot_round_and_client() {
    require_root();
    let lab = Lab::up(options(LogMode::Journal, false)).expect("lab up");
    let journal = lab.journal_dir().unwrap();
    assert!(journal.is_dir());
    let bot = lab.bots()[0].clone();
    bot_round_and_assert(&lab, &bot);
    legit_client_and_assert(&lab);
    // The typed round helper: a random address, probed then used for three failed logins.
    let (addr, reports) = lab.round(&bot, None).unwrap();
    let got: Vec<Outcome> = reports.iter().map(|r| r.outcome).collect();
    use Outcome::{Ok as Accepted, Rejected};
    assert_eq!(
        got,
        vec![Accepted, Rejected, Rejected, Rejected],
        "{reports:#?}"
    );
    lab.expect_log(
        WAIT,
        &[
            "dovecot: pop3-login: Disconnected: ",
            &format!("user=<{addr}>"),
        ],
    )
    .unwrap();
    // Real journal metadata from the standalone journald.
    let smtpd = lab
        .expect_log(WAIT, &["connect from unknown[198.18.0.10]"])
        .unwrap();
    assert_eq!(
        smtpd.field("SYSLOG_IDENTIFIER").as_deref(),
        Some("postfix/smtpd")
    );
    assert_eq!(
        smtpd.field("_SYSTEMD_UNIT").as_deref(),
        Some("postfix@-.service")
    );
    assert_eq!(smtpd.field("_TRANSPORT").as_deref(), Some("syslog"));
    assert_eq!(smtpd.field("SYSLOG_FACILITY").as_deref(), Some("2"));
    let dovecot = lab
        .expect_log(WAIT, &["imap-login: Login: user=<alice@example.test>"])
        .unwrap();
    assert_eq!(
        dovecot.field("SYSLOG_IDENTIFIER").as_deref(),
        Some("dovecot")
    );
    assert_eq!(
        dovecot.field("_SYSTEMD_UNIT").as_deref(),
        Some("dovecot.service")
    );
    // journalctl's unit filter works on it, as on a real host.
    let out = std::process::Command::new("journalctl")
        .arg(format!("--directory={}", journal.display()))
        .args(["-u", "dovecot.service", "-o", "cat", "--no-pager"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("imap-login: Login: user=<alice@example.test>"),
        "journalctl -u dovecot.service printed:\n{text}"
    );
    assert!(
        !text.contains("postfix"),
        "the unit filter let Postfix lines through:\n{text}"
    );
    down_and_assert_clean(lab);
}

#[test]
fn drop_on_panic_tears_the_lab_down() {
    require_root();
    let tag = format!("p{}", std::process::id());
    let opts = LabOptions {
        bots: 0,
        tag: Some(tag.clone()),
        ..options(LogMode::Journal, false)
    };
    let result = std::thread::spawn(move || {
        let lab = Lab::up(opts).expect("lab up");
        assert!(lab::netns_list().iter().any(|n| n == lab.mail_ns()));
        panic!("deliberate panic with the lab up");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let left: Vec<String> = lab::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("dtl-{tag}-")))
        .collect();
    assert!(
        left.is_empty(),
        "namespaces left behind after a panic: {left:?}"
    );
    assert!(!std::path::Path::new(lab::STATE_ROOT).join(&tag).exists());
}

/// Two mail hosts: Postfix on the MX (198.18.0.1), Dovecot on the IMAP host (198.18.1.1), each
/// in its own namespaces, every peer linked to both with one address. The seed's round goes
/// to both, each host logs its own half, and SMTP AUTH on the MX and delivery into the
/// mailboxes still work through Dovecot on the other host.
#[test]
fn split_lab_mx_and_imap_hosts() {
    require_root();
    let lab = Lab::up(LabOptions {
        topology: lab::Topology::Split,
        ..options(LogMode::File, true)
    })
    .expect("split lab up");
    let hosts = lab.hosts().to_vec();
    assert_eq!(
        hosts.iter().map(|h| h.role).collect::<Vec<_>>(),
        vec![lab::Role::Mx, lab::Role::Imap]
    );
    assert_eq!(lab.postfix_host().ip.to_string(), "198.18.0.1");
    assert_eq!(lab.dovecot_host().ip.to_string(), "198.18.1.1");
    // Each host listens on its own daemons' ports only.
    for (host, closed) in [(&hosts[0], 143), (&hosts[1], 25)] {
        let bot = lab.bots()[0].clone();
        let r = lab
            .mailbot_to(
                host,
                &bot,
                &[
                    "--connect-timeout",
                    "2",
                    "smtp-auth",
                    "--user",
                    "a@example.test",
                    "--password",
                    "x",
                    "--port",
                    &closed.to_string(),
                ],
            )
            .unwrap();
        assert_eq!(
            outcomes(&r),
            vec![("smtp-auth".into(), Outcome::Refused)],
            "{} port {closed}: {r:#?}",
            host.ns
        );
    }
    let bot = lab.bots()[0].clone();
    let local = format!("s{}", random_token(9));
    let addr = format!("{local}@example.test");
    let reports = lab
        .mailbot(
            &bot,
            &["round", "--local", &local, "--password", "WrongPass1"],
        )
        .unwrap();
    assert_eq!(
        outcomes(&reports),
        vec![
            ("probe".into(), Outcome::Ok),
            ("imap".into(), Outcome::Rejected),
            ("pop3".into(), Outcome::Rejected),
            ("smtp-auth".into(), Outcome::Rejected)
        ],
        "{reports:#?}"
    );
    // The probe is in the MX's log only, the IMAP login in the IMAP host's log only, with
    // the IMAP host's own address as lip.
    let postfix = lab.postfix_log().unwrap();
    let dovecot = lab.dovecot_log().unwrap();
    lab.expect_log(
        WAIT,
        &[&format!(
            "NOQUEUE: info: RCPT from unknown[198.18.0.10]: lab-rcpt=<{addr}>"
        )],
    )
    .unwrap();
    lab.expect_log(
        WAIT,
        &[
            "imap-login: Info: Disconnected: ",
            &format!("user=<{addr}>, method=PLAIN, rip=198.18.0.10, lip=198.18.1.1, session=<"),
        ],
    )
    .unwrap();
    // SMTP AUTH on the MX was checked by Dovecot on the IMAP host.
    lab.expect_log(
        WAIT,
        &[&format!("passwd-file({addr},198.18.0.10): unknown user")],
    )
    .unwrap();
    let postfix_text = std::fs::read_to_string(&postfix).unwrap();
    let dovecot_text = std::fs::read_to_string(&dovecot).unwrap();
    assert!(!postfix_text.contains("imap-login"), "{postfix_text}");
    assert!(!dovecot_text.contains("lab-rcpt="), "{dovecot_text}");
    // The IPv6 bot reaches both hosts with its one address.
    let bot6 = lab.bot6().unwrap().clone();
    let (addr6, r6) = lab.round(&bot6, None).unwrap();
    assert_eq!(
        r6.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        vec![
            Outcome::Ok,
            Outcome::Rejected,
            Outcome::Rejected,
            Outcome::Rejected
        ],
        "{r6:#?}"
    );
    lab.expect_log(
        WAIT,
        &[&format!(
            "user=<{addr6}>, method=PLAIN, rip=2001:db8:1:6::6, lip=2001:db8:2::1"
        )],
    )
    .unwrap();
    // The internal network: the IMAP host reaches the MX on 198.18.2.1 (Postfix listens
    // there too), a client does not.
    let mx_backend = lab::BACKEND_MX_IP.to_string();
    let out = lab
        .in_host_mount_ns(1, "ip")
        .args(["-o", "route", "get", &mx_backend])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&out.stdout);
    assert!(route.contains(" dev bk0 "), "{route}");
    let client = lab.client().clone();
    let r = lab::run_mailbot_to(
        std::path::Path::new(env!("CARGO_BIN_EXE_mailbot")),
        lab::BACKEND_MX_IP.into(),
        &client,
        &["--connect-timeout", "1", "probe", "--to", "x@example.test"],
    )
    .unwrap();
    assert_ne!(
        r[0].outcome,
        Outcome::Ok,
        "a client reached the internal network: {r:#?}"
    );
    // The client: IMAP login on the IMAP host, submission (SASL) and delivery on the MX.
    let client = lab.client().clone();
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
    lab.expect_log(
        WAIT,
        &[
            "postfix/virtual[",
            "to=<bob@example.test>",
            "status=sent (delivered to maildir)",
        ],
    )
    .unwrap();
    down_and_assert_clean(lab);
}

/// A panic with a split lab up leaves neither host's namespaces behind.
#[test]
fn drop_on_panic_tears_a_split_lab_down() {
    require_root();
    let tag = format!("q{}", std::process::id());
    let opts = LabOptions {
        topology: lab::Topology::Split,
        bots: 0,
        tag: Some(tag.clone()),
        ..options(LogMode::File, false)
    };
    let result = std::thread::spawn(move || {
        let lab = Lab::up(opts).expect("lab up");
        for h in lab.hosts() {
            assert!(lab::netns_list().iter().any(|n| n == &h.ns));
        }
        panic!("deliberate panic with the split lab up");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let left: Vec<String> = lab::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("dtl-{tag}-")))
        .collect();
    assert!(
        left.is_empty(),
        "namespaces left behind after a panic: {left:?}"
    );
    assert!(!std::path::Path::new(lab::STATE_ROOT).join(&tag).exists());
}

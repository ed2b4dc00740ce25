use std::time::Duration;

use super::*;
use crate::engine::EngineConfig;
use crate::parse::Format;
use crate::replay::{inputs_from_texts, replay};

/// A probe then a login as the probed mailbox (possible compromise and its ban), and three
/// addresses failing on a mailbox named like a script tag (a campaign, three bans).
pub(crate) const LOG: &str = "\
Nov 27 05:30:59 mail postfix/smtpd[21937]: connect from unknown[198.18.0.2]
Nov 27 05:30:59 mail postfix/smtpd[21937]: NOQUEUE: info: RCPT from unknown[198.18.0.2]: lab-rcpt=<txrj3ejbb3@example.test>; from=<probe@bot.invalid> to=<txrj3ejbb3@example.test> proto=ESMTP helo=<bot.invalid>
Nov 27 05:30:59 mail postfix/smtpd[21937]: C6109D0061: client=unknown[198.18.0.2]
Nov 27 05:30:59 mail postfix/smtpd[21937]: disconnect from unknown[198.18.0.2] ehlo=1 mail=1 rcpt=1 quit=1 commands=4
Nov 27 05:31:03 mail dovecot: imap-login: Login: user=<txrj3ejbb3@example.test>, method=PLAIN, rip=198.18.0.2, lip=198.18.0.1, mpid=100, session=<Mb2sXTthtZfGEgAC>
Nov 27 06:00:01 mail dovecot: imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<<script>alert(1)</script>@example.test>, method=PLAIN, rip=198.18.1.10, lip=198.18.0.1, session=<a1>
Nov 27 06:00:02 mail dovecot: imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<<script>alert(1)</script>@example.test>, method=PLAIN, rip=198.18.1.11, lip=198.18.0.1, session=<a2>
Nov 27 06:00:03 mail dovecot: imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<<script>alert(1)</script>@example.test>, method=PLAIN, rip=198.18.1.12, lip=198.18.0.1, session=<a3>
";

fn report_of(log: &str, window: Duration) -> Report {
    let inputs = inputs_from_texts(vec![("mail.log".into(), log.into())], Format::Auto);
    let done = replay(inputs, Engine::new(EngineConfig::default()), |_| {}, |_| {}).unwrap();
    let decisions: Vec<_> = done.decisions.iter().map(|d| d.decision.clone()).collect();
    Report::build(done.engine.as_ref().unwrap(), &decisions, window)
}

#[test]
fn replay_report_has_the_campaign_the_compromise_and_the_bans() {
    let r = report_of(LOG, Duration::from_secs(86_400));
    assert_eq!(r.campaigns.len(), 1, "{r:?}");
    assert_eq!(r.campaigns[0].mailbox, "<script>alert(1)</script>");
    assert_eq!(r.campaigns[0].failing_ips, 3);
    assert_eq!(r.compromises.len(), 1, "{r:?}");
    assert_eq!(r.compromises[0].user, "txrj3ejbb3@example.test");
    assert_eq!(r.compromises[0].ip.to_string(), "198.18.0.2");
    assert_eq!(r.bans_per_rule.get("target-campaign"), Some(&3));
    assert_eq!(r.bans_per_rule.get("possible-compromise"), Some(&1));
    assert_eq!(r.bans_per_origin.get("detector"), Some(&4));
    assert_eq!(r.top_networks[0].network.to_string(), "198.18.1.0/24");
    assert_eq!(r.top_networks[0].bans, 3);
    assert_eq!(r.top_networks[1].network.to_string(), "198.18.0.0/24");
}

#[test]
fn the_window_leaves_out_what_came_before_it() {
    // 10 minutes before 06:00:03: the compromise at 05:31 is outside, the campaign inside.
    let r = report_of(LOG, Duration::from_secs(600));
    assert!(r.compromises.is_empty(), "{r:?}");
    assert_eq!(r.bans_per_rule.get("possible-compromise"), None);
    assert_eq!(r.bans_per_rule.get("target-campaign"), Some(&3));
}

#[test]
fn json_text_and_html_carry_the_content_and_html_escapes_names() {
    let r = report_of(LOG, Duration::from_secs(86_400));
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(json["campaigns"][0]["mailbox"], "<script>alert(1)</script>");
    assert_eq!(json["compromises"][0]["user"], "txrj3ejbb3@example.test");
    assert_eq!(json["bans_per_rule"]["target-campaign"], 3);

    let text = r.to_text();
    assert!(text.contains("txrj3ejbb3@example.test"), "{text}");
    assert!(text.contains("target-campaign | 3"), "{text}");
    assert!(text.contains("198.18.1.0/24 | 3"), "{text}");

    let html = r.to_html();
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("<td>txrj3ejbb3@example.test</td>"), "{html}");
}

#[test]
fn text_strips_control_characters_from_names() {
    let mut r = report_of(LOG, Duration::from_secs(86_400));
    r.compromises[0].user = "evil\u{1b}[2Jname\nfake line".into();
    let text = r.to_text();
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("evil?[2Jname?fake line"), "{text:?}");
}

#[test]
fn known_clients_and_shared_addresses_are_listed_as_spared() {
    // 198.18.2.1 logs in as a, then fails once: a known client. 198.18.3.1: three users log
    // in, then a burst of failures: a shared address.
    let mut log = String::new();
    let line = |log: &mut String, m: u32, s: u32, what: &str, user: &str, ip: &str| {
        log.push_str(&format!(
            "Nov 27 07:{m:02}:{s:02} mail dovecot: imap-login: {what}: user=<{user}>, method=PLAIN, rip={ip}, lip=198.18.0.1, session=<s{m}{s}>\n"
        ));
    };
    let fail = "Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs)";
    line(&mut log, 0, 0, "Login", "a@example.test", "198.18.2.1");
    line(&mut log, 0, 5, fail, "a@example.test", "198.18.2.1");
    for (i, u) in ["u1", "u2", "u3"].iter().enumerate() {
        line(
            &mut log,
            1,
            i as u32,
            "Login",
            &format!("{u}@example.test"),
            "198.18.3.1",
        );
    }
    for s in 0..30 {
        line(
            &mut log,
            2,
            s,
            fail,
            &format!("x{s}@example.test"),
            "198.18.3.1",
        );
    }
    let r = report_of(&log, Duration::from_secs(86_400));
    let known: Vec<String> = r
        .spared
        .known_clients
        .iter()
        .map(|k| k.ip.to_string())
        .collect();
    assert_eq!(known, ["198.18.2.1"], "{r:?}");
    assert_eq!(r.spared.known_clients[0].users, ["a@example.test"]);
    let shared: Vec<String> = r
        .spared
        .shared_addresses
        .iter()
        .map(|k| k.ip.to_string())
        .collect();
    assert_eq!(shared, ["198.18.3.1"], "{r:?}");
    assert_eq!(r.spared.shared_addresses[0].users, 3);
    assert!(r.bans.is_empty(), "{r:?}");
}

#[test]
fn aggregate_widens_to_24_and_48_but_not_narrower() {
    let n = |s: &str| s.parse::<IpNet>().unwrap();
    assert_eq!(aggregate(n("198.18.7.9/32")), n("198.18.7.0/24"));
    assert_eq!(aggregate(n("2001:db8:1:2::/64")), n("2001:db8:1::/48"));
    assert_eq!(aggregate(n("198.18.0.0/16")), n("198.18.0.0/16"));
}

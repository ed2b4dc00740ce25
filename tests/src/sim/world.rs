//! The actors: who connects when, from where, as whom.
use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use detector_testkit::rng::B36;

use super::sessions::{Gen, Login, SmtpEnd};
use super::{BenignKind, BotKind, DOMAIN, HOSTED, Role};

/// Real mailboxes that the botnet and the sprayer also go after.
const ATTACKED_REAL: &[&str] = &["alice", "bob", "info", "sales"];

pub(super) fn populate(g: &mut Gen) {
    botnet(g);
    brute_forcer(g);
    sprayers(g);
    injector(g);
    deliveries_and_verifiers(g);
    customers(g);
    phone(g);
    office(g);
    if g.cfg.extended {
        provider_pools(g);
        stale_phones(g);
        password_changes(g);
        new_hires(g);
        devices_after_change(g);
        shared_logins(g, BenignKind::Webmail, 40);
        shared_logins(g, BenignKind::Cgnat, 40);
        monitoring(g);
        attacked_owners(g);
        split_roles(g);
        lazy(g);
        v6_hoppers(g);
        one_shot(g);
        variants(g);
        guessed_right(g);
    }
}

fn benign(g: &mut Gen, kind: BenignKind) -> usize {
    g.actor(Role::Benign(kind), None)
}

fn bot(g: &mut Gen, kind: BotKind) -> usize {
    g.actor(Role::Bot(kind), None)
}

fn any_login(g: &mut Gen) -> Login {
    *g.rng.pick(&[Login::Imap, Login::Pop3, Login::Submission])
}

fn probe_end(g: &mut Gen) -> SmtpEnd {
    if g.rng.chance(0.5) {
        SmtpEnd::Quit
    } else {
        SmtpEnd::Dropped
    }
}

/// A bot's probe of `rcpt`.
fn probe(g: &mut Gen, actor: usize, t: i64, ip: IpAddr, rcpt: &str) {
    let end = probe_end(g);
    g.smtp_session(
        actor,
        t,
        ip,
        "unknown",
        "probe@bot.invalid",
        rcpt,
        "bot.invalid",
        end,
    );
}

/// A new probe target: mostly random names the catch-all accepts, sometimes a real mailbox.
fn bot_target(g: &mut Gen) -> (String, bool) {
    if g.rng.chance(0.75) {
        (format!("{}@{DOMAIN}", g.rng.token(10, B36)), false)
    } else {
        (format!("{}@{DOMAIN}", g.rng.pick(ATTACKED_REAL)), true)
    }
}

// ---------------------------------------------------------------------- the original mix

/// Seed pattern: probe, login with the probed address seconds later, retries every 2–3 h.
fn botnet(g: &mut Gen) {
    let n4 = g.cfg.bots_v4;
    let n6 = g.cfg.bots_v6;
    for i in 0..n4 + n6 {
        let actor = bot(g, BotKind::Seed);
        let top = g.rng.range(1, 0xfeff) as u16;
        let mut ip = if i < n4 {
            g.fresh_v4(198, 18)
        } else {
            g.fresh_v6(top)
        };
        // Half the IPv6 members take a new address inside their /64 for every round.
        let rotate = i >= n4 && g.rng.chance(0.5);
        let mut attempts: Vec<(IpAddr, DateTime<Utc>)> = Vec::new();
        let first_window = g.horizon_s().min(24 * 3600);
        let mut t = g.rng.range(0, first_window);
        let mut target = String::new();
        let mut exists = false;
        let mut round = 0;
        while g.at(t) < g.end() {
            if rotate && round > 0 {
                ip = g.rotate_v6(ip);
            }
            if round == 0 || g.rng.chance(0.7) {
                (target, exists) = bot_target(g);
                probe(g, actor, t, ip, &target);
                t += g.rng.range(2, 9);
            }
            let how = any_login(g);
            let tls = g.rng.chance(0.3);
            g.failed_login(actor, t, ip, &target, how, exists, tls);
            attempts.push((ip, g.at(t)));
            // Under fail2ban's radar: the next try 2–3 h later, with jitter.
            t += g.rng.range(2 * 3600, 3 * 3600) + g.rng.range(-600, 600);
            round += 1;
        }
        let end = g.end();
        for (addr, time) in attempts {
            if time < end {
                g.truth.bots.entry(addr).or_default().push(time);
            }
        }
    }
}

fn brute_forcer(g: &mut Gen) {
    let actor = bot(g, BotKind::BruteForcer);
    let ip = g.fresh_v4(198, 18);
    g.truth.brute_forcer = Some(ip);
    let mut t = g.rng.range(3600, g.horizon_s() / 2);
    for _ in 0..40 {
        let user = format!("webmaster@{DOMAIN}");
        g.failed_login(actor, t, ip, &user, Login::Submission, true, false);
        t += g.rng.range(5, 20);
    }
}

fn sprayers(g: &mut Gen) {
    let mut t = g.rng.range(1800, g.horizon_s() / 3);
    for _ in 0..g.cfg.sprayers {
        let actor = bot(g, BotKind::Sprayer);
        let ip = if g.rng.chance(0.8) {
            g.fresh_v4(198, 18)
        } else {
            g.fresh_v6(0xaaaa)
        };
        g.truth.sprayers.insert(ip);
        g.failed_login(
            actor,
            t,
            ip,
            &format!("ceo@{DOMAIN}"),
            Login::Imap,
            true,
            false,
        );
        t += g.rng.range(300, 900);
    }
}

/// User names that carry fake addresses; only the sender may be banned.
fn injector(g: &mut Gen) {
    let actor = bot(g, BotKind::Injector);
    let ip = g.fresh_v4(198, 18);
    g.truth.injector = Some(ip);
    let fakes: Vec<IpAddr> = (9..14)
        .map(|d| IpAddr::V4(Ipv4Addr::new(203, 0, 113, d)))
        .collect();
    g.truth.injected.extend(fakes.iter().copied());
    let names = [
        "x rip=203.0.113.9".to_string(),
        "a,203.0.113.10,<abc>".to_string(),
        "y, method=PLAIN, rip=203.0.113.11, lip=198.18.0.1".to_string(),
        "z unknown[203.0.113.12]".to_string(),
        "w@example.test) from unknown[203.0.113.13]:".to_string(),
    ];
    let mut t = g.rng.range(3600, g.horizon_s() / 2);
    for name in names.iter().chain(names.iter()) {
        let how = any_login(g);
        g.failed_login(actor, t, ip, name, how, false, false);
        t += g.rng.range(20, 60);
    }
}

fn pick_mailbox(g: &mut Gen) -> String {
    if g.rng.chance(0.3) {
        g.rng.pick(ATTACKED_REAL).to_string()
    } else {
        format!("cust{:02}", g.rng.range(1, g.cfg.customers.max(1) as i64))
    }
}

fn deliveries_and_verifiers(g: &mut Gen) {
    let hours = i64::from(g.cfg.hours);
    // Remote MTAs delivering mail (some also verify senders).
    let mtas: Vec<(usize, IpAddr)> = (0..40)
        .map(|i| {
            let a = benign(g, BenignKind::Mta);
            let ip = if i % 5 == 0 {
                g.fresh_v6(0xbbbb)
            } else {
                g.fresh_v4(198, 19)
            };
            (a, ip)
        })
        .collect();
    for (i, &(actor, ip)) in mtas.iter().enumerate() {
        let name = format!("mx{i}.sender{i}.example");
        let per_hour = 1 + (i as i64 % 4);
        for _ in 0..per_hour * hours {
            let t = g.rng.range(0, hours * 3600 - 1);
            let rcpt = format!("{}@{DOMAIN}", pick_mailbox(g));
            let from = format!("news{}@sender{i}.example", g.rng.range(1, 9));
            g.smtp_session(actor, t, ip, &name, &from, &rcpt, &name, SmtpEnd::Delivered);
        }
    }
    // Sender-address verification: RCPT then QUIT/RSET, never a login; many addresses,
    // some of them non-existent (the catch-all accepts them).
    for (i, &(mta_actor, mta)) in mtas.iter().enumerate().take(15) {
        let (actor, ip) = if i % 3 == 0 {
            (mta_actor, mta)
        } else {
            (benign(g, BenignKind::Callout), g.fresh_v4(198, 19))
        };
        let name = format!("verify{i}.callout.example");
        for _ in 0..hours * 3 {
            let t = g.rng.range(0, hours * 3600 - 1);
            let rcpt = if g.rng.chance(0.5) {
                format!("{}@{DOMAIN}", pick_mailbox(g))
            } else {
                format!("{}@{DOMAIN}", g.rng.token(8, B36))
            };
            let end = *g
                .rng
                .pick(&[SmtpEnd::Quit, SmtpEnd::RsetQuit, SmtpEnd::Dropped]);
            g.smtp_session(actor, t, ip, &name, "", &rcpt, &name, end);
        }
    }
}

/// A user-name typo of `user` (`local@domain`): the local part only, wrong case, another
/// hosted domain, or one letter off.
fn user_typo(g: &mut Gen, user: &str) -> String {
    let (local, domain) = user.split_once('@').unwrap_or((user, DOMAIN));
    match g.rng.range(0, 3) {
        0 => local.to_string(),
        1 => {
            let mut c = local.chars();
            let first = c.next().map(|f| f.to_ascii_uppercase()).unwrap_or('X');
            format!("{first}{}@{}", c.as_str(), domain.to_ascii_uppercase())
        }
        2 => {
            let other = HOSTED.iter().find(|d| **d != domain).unwrap_or(&DOMAIN);
            format!("{local}@{other}")
        }
        _ => {
            let mut b = local.as_bytes().to_vec();
            let i = g.rng.below(b.len() as u64) as usize;
            b[i] = if b[i] == b'e' { b'r' } else { b'e' };
            format!("{}@{domain}", String::from_utf8_lossy(&b))
        }
    }
}

/// A typo before a success: mostly the password, sometimes the user name (then the mailbox
/// does not exist under that name). With the original mix only password typos happen.
fn typo_then_ok(g: &mut Gen, actor: usize, t: i64, ip: IpAddr, user: &str) -> i64 {
    let name_typo = g.cfg.extended && g.rng.chance(0.4);
    if name_typo {
        let typo = user_typo(g, user);
        // A wrong-case name exists on case-insensitive passdbs; Dovecot's default
        // auth_username_format lower-cases it. Count it as the real mailbox then.
        let exists = typo.to_lowercase() == user.to_lowercase();
        g.failed_login(actor, t, ip, &typo, Login::Imap, exists, true);
    } else {
        g.failed_login(actor, t, ip, user, Login::Imap, true, true);
    }
    let t = t + g.rng.range(10, 40);
    g.imap_ok(actor, t, ip, user);
    t
}

/// Customers at home: IMAP every 20–90 min in the day, occasional typos that are followed by
/// a success, some mail sent through submission. Extended: 1–3 stable addresses (IPv4 and
/// IPv6), user-name typos too, several hosted domains.
fn customers(g: &mut Gen) {
    for c in 0..g.cfg.customers {
        let user = match c {
            0 => format!("alice@{DOMAIN}"),
            1 => format!("bob@{DOMAIN}"),
            _ if !g.cfg.extended => format!("cust{c:02}@{DOMAIN}"),
            _ => format!("cust{c:02}@{}", HOSTED[c % HOSTED.len()]),
        };
        let kind = if c < 2 {
            BenignKind::AttackedOwner
        } else {
            BenignKind::Customer
        };
        let actor = benign(g, kind);
        let n_addrs = if g.cfg.extended { 1 + c % 3 } else { 1 };
        let addrs: Vec<IpAddr> = (0..n_addrs)
            .map(|k| {
                if (c + k) % 4 == 0 {
                    g.fresh_v6(0xcccc)
                } else {
                    g.fresh_v4(198, 19)
                }
            })
            .collect();
        for ip in &addrs {
            g.uses(actor, *ip);
        }
        let mut t = g.rng.range(0, 3600);
        // Mail clients keep the password: typos are rare (about one every few days).
        let typo_rate = if g.cfg.extended { 0.015 } else { 0.04 };
        // Some customers start the simulation with a typo (no earlier success known).
        let mut first = true;
        while g.at(t) < g.end() {
            let hour = (t / 3600) % 24;
            let ip = *g.rng.pick(&addrs);
            if (7..23).contains(&hour) {
                if (!first && g.rng.chance(typo_rate)) || (first && c % 7 == 3) {
                    t = typo_then_ok(g, actor, t, ip, &user);
                } else {
                    g.imap_ok(actor, t, ip, &user);
                }
                if g.rng.chance(0.15) {
                    // The mail client sometimes has the old password for SMTP AUTH:
                    // one failure logged by both Postfix and Dovecot, then success.
                    if g.rng.chance(0.2) {
                        g.failed_login(actor, t + 50, ip, &user, Login::Submission, true, false);
                    }
                    g.submission_ok(actor, t + 60, ip, &user);
                }
                first = false;
            }
            t += g.rng.range(20 * 60, 90 * 60);
        }
    }
}

/// A phone with a stale password: worked at first, then fails every 15 minutes.
fn phone(g: &mut Gen) {
    let actor = benign(g, BenignKind::StalePhone);
    let ip = g.fresh_v4(198, 19);
    g.truth.phone = Some(ip);
    let user = format!("carol@{DOMAIN}");
    let mut t = 60;
    for _ in 0..4 {
        g.imap_ok(actor, t, ip, &user);
        t += 900;
    }
    while g.at(t) < g.end() {
        g.failed_login(actor, t, ip, &user, Login::Imap, true, true);
        t += 900 + g.rng.range(-30, 30);
    }
}

/// An office NAT: many users log in all day; a few typos, always followed by success. The
/// office's own mail gateway verifies senders through the same address.
fn office(g: &mut Gen) {
    let actor = benign(g, BenignKind::OfficeNat);
    let ip = g.fresh_v4(198, 19);
    g.truth.office_nat = Some(ip);
    let days = (i64::from(g.cfg.hours) + 23) / 24;
    for u in 1..=g.cfg.office_users {
        let user = format!("office{u:02}@{DOMAIN}");
        for day in 0..days {
            let mut t = day * 86400 + 8 * 3600 + g.rng.range(0, 3600);
            // The desktop client logs in first (saved password); typos come later in the day.
            let mut first = true;
            while t < day * 86400 + 18 * 3600 {
                if !first && g.rng.chance(0.02) {
                    t = typo_then_ok(g, actor, t, ip, &user);
                } else {
                    g.imap_ok(actor, t, ip, &user);
                }
                first = false;
                t += g.rng.range(15 * 60, 45 * 60);
            }
        }
    }
    for day in 0..days {
        let mut t = day * 86400 + 8 * 3600;
        while t < day * 86400 + 18 * 3600 {
            // Extended: the gateway also verifies senders under attack, with the null sender.
            let rcpt = if g.cfg.extended && g.rng.chance(0.3) {
                format!("{}@{DOMAIN}", g.rng.pick(ATTACKED_REAL))
            } else {
                format!("{}@{DOMAIN}", pick_mailbox(g))
            };
            g.smtp_session(
                actor,
                t,
                ip,
                "unknown",
                "",
                &rcpt,
                "mx.office.example",
                SmtpEnd::Quit,
            );
            t += g.rng.range(5 * 60, 15 * 60);
        }
        // ...while a new colleague mistypes a password before the first success of the day.
        let t = day * 86400 + 9 * 3600 + g.rng.range(0, 1800);
        let user = format!("newhire@{DOMAIN}");
        g.failed_login(actor, t, ip, &user, Login::Imap, true, true);
        g.imap_ok(actor, t + 40, ip, &user);
    }
}

// ---------------------------------------------------------------------- benign, extended

/// Large providers' outbound pools: many addresses in one /24 each, delivering and doing
/// null-sender callouts, also of the mailboxes under attack.
fn provider_pools(g: &mut Gen) {
    let hours = i64::from(g.cfg.hours);
    for p in 0..3u8 {
        let actor = benign(g, BenignKind::ProviderPool);
        let name = format!("mail-out{p}.provider{p}.example");
        let pool: Vec<IpAddr> = (0..20).map(|_| g.fresh_v4_in24(198, 19, 200 + p)).collect();
        for _ in 0..hours * 6 {
            let t = g.rng.range(0, hours * 3600 - 1);
            let ip = *g.rng.pick(&pool);
            if g.rng.chance(0.6) {
                let rcpt = format!("{}@{DOMAIN}", pick_mailbox(g));
                let from = format!("user{}@provider{p}.example", g.rng.range(1, 999));
                g.smtp_session(actor, t, ip, &name, &from, &rcpt, &name, SmtpEnd::Delivered);
            } else {
                let rcpt = if g.rng.chance(0.5) {
                    format!("{}@{DOMAIN}", g.rng.pick(ATTACKED_REAL))
                } else {
                    format!("{}@{DOMAIN}", pick_mailbox(g))
                };
                let end = *g.rng.pick(&[SmtpEnd::Quit, SmtpEnd::RsetQuit]);
                g.smtp_session(actor, t, ip, &name, "", &rcpt, &name, end);
            }
        }
    }
}

/// Phones whose password went stale: a few successes, then a failure every 10–15 min for
/// days (the owner's other devices keep working from elsewhere).
fn stale_phones(g: &mut Gen) {
    for i in 0..10 {
        let actor = benign(g, BenignKind::StalePhone);
        let ip = if i % 3 == 0 {
            g.fresh_v6(0xdddd)
        } else {
            g.fresh_v4(198, 19)
        };
        let user = format!("phone{i:02}@{}", HOSTED[i % HOSTED.len()]);
        let mut t = g.rng.range(0, 6 * 3600);
        for _ in 0..g.rng.range(1, 4) {
            g.imap_ok(actor, t, ip, &user);
            t += g.rng.range(600, 900);
        }
        while g.at(t) < g.end() {
            g.failed_login(actor, t, ip, &user, Login::Imap, true, true);
            t += g.rng.range(600, 900);
        }
    }
}

/// Customers who change their password: each of their devices fails 1–3 times at its next
/// polls, then the new password is entered and it succeeds again.
fn password_changes(g: &mut Gen) {
    for i in 0..15 {
        let actor = benign(g, BenignKind::PasswordChange);
        let user = format!("change{i:02}@{DOMAIN}");
        let devices: Vec<IpAddr> = (0..1 + i % 3)
            .map(|k| {
                if k == 1 {
                    g.fresh_v6(0xeeee)
                } else {
                    g.fresh_v4(198, 19)
                }
            })
            .collect();
        let change = g.rng.range(6 * 3600, g.horizon_s() - 12 * 3600);
        for &ip in &devices {
            let mut t = g.rng.range(0, 3600);
            while t < change {
                g.imap_ok(actor, t, ip, &user);
                t += g.rng.range(30 * 60, 90 * 60);
            }
            for _ in 0..g.rng.range(1, 3) {
                g.failed_login(actor, t, ip, &user, Login::Imap, true, true);
                t += g.rng.range(5 * 60, 30 * 60);
            }
            while g.at(t) < g.end() {
                g.imap_ok(actor, t, ip, &user);
                t += g.rng.range(30 * 60, 90 * 60);
            }
        }
    }
}

/// New employees: 3–4 failures on their first day (before any success from that address),
/// then the right password and normal use.
fn new_hires(g: &mut Gen) {
    for i in 0..8 {
        let actor = benign(g, BenignKind::NewHire);
        let ip = if i % 4 == 3 {
            g.fresh_v6(0xfafa)
        } else {
            g.fresh_v4(198, 19)
        };
        let user = format!("newhire{i}@{}", HOSTED[i % HOSTED.len()]);
        let day = (i % 3) as i64 * 86400;
        let mut t = day + 9 * 3600 + g.rng.range(0, 7200);
        for _ in 0..g.rng.range(3, 4) {
            let u = if g.rng.chance(0.3) {
                user_typo(g, &user)
            } else {
                user.clone()
            };
            let exists = u.to_lowercase() == user.to_lowercase();
            g.failed_login(actor, t, ip, &u, Login::Imap, exists, true);
            t += g.rng.range(30, 240);
        }
        while g.at(t) < g.end() {
            g.imap_ok(actor, t, ip, &user);
            t += g.rng.range(20 * 60, 90 * 60);
        }
    }
}

/// After a password change, phone (mobile address) and laptop (home) keep failing every few
/// minutes for an hour, then both succeed.
fn devices_after_change(g: &mut Gen) {
    for i in 0..6 {
        let actor = benign(g, BenignKind::DevicesAfterChange);
        let user = format!("devices{i}@{DOMAIN}");
        let home = g.fresh_v4(198, 19);
        let phone = g.fresh_v6(0xabab);
        let change = g.rng.range(4 * 3600, g.horizon_s() - 6 * 3600);
        for ip in [home, phone] {
            let mut t = g.rng.range(0, 1800);
            while t < change {
                g.imap_ok(actor, t, ip, &user);
                t += g.rng.range(30 * 60, 60 * 60);
            }
            let fixed = change + g.rng.range(55 * 60, 70 * 60);
            while t < fixed {
                g.failed_login(actor, t, ip, &user, Login::Imap, true, true);
                t += g.rng.range(2 * 60, 6 * 60);
            }
            while g.at(t) < g.end() {
                g.imap_ok(actor, t, ip, &user);
                t += g.rng.range(30 * 60, 60 * 60);
            }
        }
    }
}

/// One address behind which `users` distinct people log in: a webmail host (IMAP for its
/// users, not from loopback) or a mobile carrier's CGNAT address. Users make typos.
fn shared_logins(g: &mut Gen, kind: BenignKind, users: usize) {
    let actor = benign(g, kind);
    let ip = match kind {
        BenignKind::Webmail => g.fresh_v4(198, 19),
        _ => g.fresh_v4_in24(198, 19, 100),
    };
    let prefix = match kind {
        BenignKind::Webmail => "web",
        _ => "mobile",
    };
    for u in 0..users {
        let user = format!("{prefix}{u:02}@{}", HOSTED[u % HOSTED.len()]);
        let mut t = g.rng.range(0, 6 * 3600);
        while g.at(t) < g.end() {
            let hour = (t / 3600) % 24;
            if (6..24).contains(&hour) {
                if g.rng.chance(0.05) {
                    t = typo_then_ok(g, actor, t, ip, &user);
                } else {
                    g.imap_ok(actor, t, ip, &user);
                }
            }
            t += g.rng.range(40 * 60, 180 * 60);
        }
    }
}

/// Monitoring hosts: an SMTP banner check every 5 min, an IMAP port check and a test
/// account's login every 10 min.
fn monitoring(g: &mut Gen) {
    for m in 0..2 {
        let actor = benign(g, BenignKind::Monitoring);
        let ip = if m == 0 {
            g.fresh_v4(198, 19)
        } else {
            g.fresh_v6(0x5151)
        };
        let name = format!("monitor{m}.example");
        let user = format!("monitor{m}@{DOMAIN}");
        let mut t = g.rng.range(0, 300);
        let mut k = 0;
        while g.at(t) < g.end() {
            g.smtp_banner_check(actor, t, ip, &name);
            if k % 2 == 0 {
                g.imap_banner_check(actor, t + 1, ip);
                g.imap_ok(actor, t + 2, ip, &user);
            }
            k += 1;
            t += 300;
        }
    }
}

/// The owners of the mailboxes under attack (info@, sales@): their devices poll as usual and
/// mistype now and then, also while the botnet hammers their mailbox.
fn attacked_owners(g: &mut Gen) {
    for name in ["info", "sales"] {
        let actor = benign(g, BenignKind::AttackedOwner);
        let user = format!("{name}@{DOMAIN}");
        let addrs = [g.fresh_v4(198, 19), g.fresh_v6(0xc0c0)];
        let mut t = g.rng.range(0, 1800);
        while g.at(t) < g.end() {
            let ip = *g.rng.pick(&addrs);
            if g.rng.chance(0.08) {
                t = typo_then_ok(g, actor, t, ip, &user);
            } else {
                g.imap_ok(actor, t, ip, &user);
            }
            t += g.rng.range(20 * 60, 60 * 60);
        }
    }
}

// ---------------------------------------------------------------------- the botnet's next moves

/// Split roles: a prober P probes an address, a login address L on another network logs in
/// as it seconds later; L never probes; each P works for many L's.
fn split_roles(g: &mut Gen) {
    for _ in 0..8 {
        let p_actor = bot(g, BotKind::SplitProber);
        let p = g.fresh_v4(198, 18);
        for _ in 0..8 {
            let l_actor = bot(g, BotKind::SplitLogin);
            let l = if g.rng.chance(0.2) {
                let top = g.rng.range(0x1000, 0x1fff) as u16;
                g.fresh_v6(top)
            } else {
                g.fresh_v4(198, 19)
            };
            let mut t = g.rng.range(0, g.horizon_s().min(24 * 3600));
            while g.at(t) < g.end() {
                let (target, exists) = bot_target(g);
                probe(g, p_actor, t, p, &target);
                t += g.rng.range(2, 9);
                let how = any_login(g);
                g.failed_login(l_actor, t, l, &target, how, exists, false);
                t += g.rng.range(2 * 3600, 3 * 3600);
            }
        }
    }
}

/// Lazy: the login comes 15–45 minutes after the probe; retries every 5–9 hours.
fn lazy(g: &mut Gen) {
    for _ in 0..40 {
        let actor = bot(g, BotKind::Lazy);
        let ip = g.fresh_v4(198, 18);
        let mut t = g.rng.range(0, 12 * 3600);
        while g.at(t) < g.end() {
            let (target, exists) = bot_target(g);
            probe(g, actor, t, ip, &target);
            let login = t + g.rng.range(15 * 60, 45 * 60);
            let how = any_login(g);
            g.failed_login(actor, login, ip, &target, how, exists, false);
            t = login + g.rng.range(5 * 3600, 9 * 3600);
        }
    }
}

/// IPv6 hopping: every round (probe and login) from a fresh address in a different /64
/// inside the member's /48.
fn v6_hoppers(g: &mut Gen) {
    for i in 0..15u16 {
        let top = 0x4000 + i;
        let actor = g.actor(
            Role::Bot(BotKind::V6Hopper),
            Some(format!("2001:db8:{top:x}::/48")),
        );
        let mut t = g.rng.range(0, 12 * 3600);
        while g.at(t) < g.end() {
            let ip = g.fresh_v6(top);
            let (target, exists) = bot_target(g);
            probe(g, actor, t, ip, &target);
            t += g.rng.range(2, 9);
            let how = any_login(g);
            g.failed_login(actor, t, ip, &target, how, exists, false);
            t += g.rng.range(2 * 3600, 3 * 3600);
        }
    }
}

/// One-shot campaigns: hundreds of addresses, each makes one probe and one login against one
/// of a handful of mailboxes (real ones and catch-all names) and is never seen again.
fn one_shot(g: &mut Gen) {
    let mut targets: Vec<(String, bool)> = ["alice", "info", "sales"]
        .iter()
        .map(|n| (format!("{n}@{DOMAIN}"), true))
        .collect();
    for _ in 0..3 {
        targets.push((format!("{}@{DOMAIN}", g.rng.token(9, B36)), false));
    }
    for (target, exists) in targets {
        let n = 100;
        let start = g.rng.range(0, 12 * 3600);
        let span = g.horizon_s() - start - 3600;
        for k in 0..n {
            let actor = g.actor(Role::Bot(BotKind::OneShot), Some(target.clone()));
            let ip = if k % 5 == 4 {
                let top = g.rng.range(0x2000, 0x2fff) as u16;
                g.fresh_v6(top)
            } else {
                let b = *g.rng.pick(&[18u8, 19]);
                g.fresh_v4(198, b)
            };
            let t = start + span * k / n + g.rng.range(0, 300);
            probe(g, actor, t, ip, &target);
            let login = t + g.rng.range(2, 9);
            let how = any_login(g);
            g.failed_login(actor, login, ip, &target, how, exists, false);
        }
    }
}

/// User-name variants: the probed mailbox is tried as `Name@Domain`, `name`,
/// `name+tag@domain`, one variant per round.
fn variants(g: &mut Gen) {
    for _ in 0..30 {
        let actor = bot(g, BotKind::Variants);
        let ip = g.fresh_v4(198, 18);
        let mut t = g.rng.range(0, 24 * 3600);
        let local = if g.rng.chance(0.5) {
            g.rng.pick(ATTACKED_REAL).to_string()
        } else {
            g.rng.token(8, B36)
        };
        let exists = ATTACKED_REAL.contains(&local.as_str());
        let mailbox = format!("{local}@{DOMAIN}");
        let mut round = 0;
        while g.at(t) < g.end() {
            if round % 3 == 0 {
                probe(g, actor, t, ip, &mailbox);
                t += g.rng.range(2, 9);
            }
            let user = match round % 3 {
                0 => {
                    let mut c = local.chars();
                    let f = c.next().map(|f| f.to_ascii_uppercase()).unwrap_or('X');
                    format!("{f}{}@Example.Test", c.as_str())
                }
                1 => local.clone(),
                _ => format!("{local}+{}@{DOMAIN}", g.rng.token(4, B36)),
            };
            // Only the case variant exists (Dovecot lower-cases user names by default).
            let this_exists = exists && round % 3 == 0;
            let how = any_login(g);
            g.failed_login(actor, t, ip, &user, how, this_exists, false);
            t += g.rng.range(2 * 3600, 3 * 3600);
            round += 1;
        }
    }
}

/// Bots that guess one password right: half after probing the mailbox, half after failing as
/// other users. After the success they come back with the stolen password.
fn guessed_right(g: &mut Gen) {
    for i in 0..10 {
        let actor = bot(g, BotKind::GuessedRight);
        let ip = if i % 4 == 3 {
            g.fresh_v6(0x6666)
        } else {
            g.fresh_v4(198, 18)
        };
        // A real customer's mailbox.
        let victim = format!("cust{:02}@{}", 10 + i, HOSTED[(10 + i) % HOSTED.len()]);
        let mut t = g.rng.range(0, 36 * 3600);
        if i % 2 == 0 {
            probe(g, actor, t, ip, &victim);
            t += g.rng.range(2, 9);
        } else {
            for _ in 0..g.rng.range(2, 4) {
                let other = format!("{}@{DOMAIN}", g.rng.pick(ATTACKED_REAL));
                g.failed_login(actor, t, ip, &other, Login::Imap, true, false);
                t += g.rng.range(20, 300);
            }
        }
        g.imap_ok(actor, t, ip, &victim);
        for _ in 0..3 {
            t += g.rng.range(3600, 4 * 3600);
            g.imap_ok(actor, t, ip, &victim);
        }
    }
}

//! Which journal entries come from the mail servers.
//!
//! `SYSLOG_IDENTIFIER`, `MESSAGE` and the other plain fields are whatever the sender wrote:
//! `logger -t dovecot '... passwd-file(x@y,9.9.9.9): unknown user'` from any local account
//! (a webmail's PHP, a shell user) reads exactly like Dovecot. journald adds *trusted* fields
//! (those starting with `_`) itself, from the kernel: `_UID` from the socket credentials,
//! `_EXE` from `/proc/<pid>/exe`, `_SYSTEMD_UNIT` from the cgroup. A sender cannot set them.
//!
//! An entry counts only when `_UID` is one of the configured users **and** `_EXE` is one of
//! the configured executables (a path, or a directory ending in `/`). journald cannot read
//! `_EXE` of a process that has already exited (short-lived helpers, e.g. `postfix-script`);
//! then `_SYSTEMD_UNIT` must be one of the configured units. `_COMM` is not used: a process can
//! rename itself (`prctl(PR_SET_NAME)`), so `smtpd` in `_COMM` proves nothing.
//!
//! Defaults fit Debian's and Red Hat's packages: Postfix's daemons run from
//! `/usr/lib/postfix/sbin/` (`/usr/libexec/postfix/`) as `postfix` (master as root); Dovecot's
//! processes hand their lines to its `log` process (`/usr/lib/dovecot/log`, root), which writes
//! them to syslog; with `log_path = /dev/stderr` the master `/usr/sbin/dovecot` writes them.
//! `postlog` and `sendmail` are not trusted: every user may run them, and `postlog -t
//! postfix/smtpd` writes any text under Postfix's name.
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The `[sources.journal.trust]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Check the trusted fields (default true). `false` counts every matched entry, as
    /// detector did before: anyone who can write to the journal can then cause a ban.
    pub enabled: bool,
    /// User names (looked up in /etc/passwd at start; missing ones are skipped) or numeric
    /// uids that mail server processes run as.
    pub users: Vec<String>,
    /// Executables of mail server processes: exact paths, or directories ending in `/`.
    pub executables: Vec<String>,
    /// Units of mail server processes (one `*` matches any text), used only when journald
    /// could not read `_EXE`.
    pub units: Vec<String>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        TrustConfig {
            enabled: true,
            users: s(&["root", "postfix", "dovecot", "dovenull"]),
            executables: s(&[
                "/usr/lib/postfix/sbin/",
                "/usr/libexec/postfix/",
                "/usr/lib/dovecot/",
                "/usr/libexec/dovecot/",
                "/usr/sbin/dovecot",
            ]),
            units: s(&["postfix.service", "postfix@*.service", "dovecot.service"]),
        }
    }
}

impl TrustConfig {
    pub fn validate(&self) -> crate::Result<()> {
        let key = "sources.journal.trust";
        for exe in &self.executables {
            if !exe.starts_with('/') {
                return Err(crate::Error::config(
                    format!("{key}.executables"),
                    format!("{exe:?} is not an absolute path"),
                ));
            }
        }
        for unit in &self.units {
            if unit.matches('*').count() > 1 || unit.is_empty() {
                return Err(crate::Error::config(
                    format!("{key}.units"),
                    format!("{unit:?}: a unit name with at most one `*`"),
                ));
            }
        }
        if self.enabled && (self.users.is_empty() || self.executables.is_empty()) {
            return Err(crate::Error::config(
                key,
                "users and executables may not be empty (set enabled = false to trust every entry)",
            ));
        }
        Ok(())
    }
}

/// The trusted fields of one entry, as journalctl printed them (absent when journald could
/// not determine them, or when the field was not a plain string).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sender<'a> {
    pub uid: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub unit: Option<&'a str>,
    /// Not trusted; only to tell "claims to be a mail server" from other programs.
    pub identifier: Option<&'a str>,
    /// Not trusted; named in reports.
    pub comm: Option<&'a str>,
}

impl Sender<'_> {
    /// Whether the entry says it is Postfix or Dovecot (as every forged one would).
    pub fn claims_mail_server(&self) -> bool {
        self.identifier
            .is_some_and(|i| i.starts_with("postfix") || i.starts_with("dovecot"))
    }

    /// `_UID=33 _EXE=/usr/bin/logger _COMM=logger SYSLOG_IDENTIFIER=dovecot`, for reports.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for (name, value) in [
            ("_UID", self.uid),
            ("_EXE", self.exe),
            ("_COMM", self.comm),
            ("_SYSTEMD_UNIT", self.unit),
            ("SYSLOG_IDENTIFIER", self.identifier),
        ] {
            let value: String = value.unwrap_or("-").chars().take(80).collect();
            out.push(format!("{name}={}", value.escape_debug()));
        }
        out.join(" ")
    }
}

/// [`TrustConfig`] with the user names resolved.
#[derive(Clone, Debug)]
pub struct Trust {
    enabled: bool,
    uids: BTreeSet<u32>,
    executables: Vec<String>,
    units: Vec<String>,
}

impl Trust {
    /// Resolves user names with `passwd` (the text of /etc/passwd).
    pub fn new(cfg: &TrustConfig, passwd: &str) -> Trust {
        let mut uids = BTreeSet::new();
        for user in &cfg.users {
            if let Ok(uid) = user.parse::<u32>() {
                uids.insert(uid);
                continue;
            }
            let found = passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                (fields.next() == Some(user.as_str()))
                    .then(|| fields.nth(1)?.parse::<u32>().ok())
                    .flatten()
            });
            match found {
                Some(uid) => {
                    uids.insert(uid);
                }
                None => tracing::debug!(%user, "trusted journal user does not exist here"),
            }
        }
        Trust {
            enabled: cfg.enabled,
            uids,
            executables: cfg.executables.clone(),
            units: cfg.units.clone(),
        }
    }

    /// With the system's /etc/passwd.
    pub fn from_system(cfg: &TrustConfig) -> Trust {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Trust::new(cfg, &passwd)
    }

    /// Whether the entry comes from a mail server process.
    pub fn allows(&self, sender: &Sender<'_>) -> bool {
        if !self.enabled {
            return true;
        }
        let uid_ok = sender
            .uid
            .and_then(|u| u.parse::<u32>().ok())
            .is_some_and(|u| self.uids.contains(&u));
        if !uid_ok {
            return false;
        }
        match sender.exe {
            Some(exe) => self
                .executables
                .iter()
                .any(|allowed| match allowed.strip_suffix('/') {
                    Some(_) => exe.starts_with(allowed.as_str()),
                    None => exe == allowed,
                }),
            None => sender
                .unit
                .is_some_and(|unit| self.units.iter().any(|p| glob(p, unit))),
        }
    }
}

/// `pattern` with at most one `*`.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.len() >= head.len() + tail.len() && text.starts_with(head) && text.ends_with(tail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
        postfix:x:102:105::/var/spool/postfix:/usr/sbin/nologin\n\
        dovecot:x:103:107:Dovecot mail server,,,:/usr/lib/dovecot:/usr/sbin/nologin\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    fn trust() -> Trust {
        Trust::new(&TrustConfig::default(), PASSWD)
    }

    fn sender<'a>(uid: &'a str, exe: Option<&'a str>, unit: Option<&'a str>) -> Sender<'a> {
        Sender {
            uid: Some(uid),
            exe,
            unit,
            identifier: Some("dovecot"),
            comm: None,
        }
    }

    #[test]
    fn the_mail_servers_as_debian_runs_them_are_trusted() {
        let t = trust();
        // Fields as journald records them for Postfix's smtpd and Dovecot's log process.
        assert!(t.allows(&sender(
            "102",
            Some("/usr/lib/postfix/sbin/smtpd"),
            Some("postfix@-.service")
        )));
        assert!(t.allows(&sender(
            "0",
            Some("/usr/lib/dovecot/log"),
            Some("dovecot.service")
        )));
        assert!(t.allows(&sender("0", Some("/usr/sbin/dovecot"), None)));
        // A short-lived process whose _EXE journald could not read: the unit decides.
        assert!(t.allows(&sender("0", None, Some("postfix@-.service"))));
        assert!(t.allows(&sender("102", None, Some("postfix@postfix-out.service"))));
    }

    #[test]
    fn forged_entries_are_not() {
        let t = trust();
        // `logger -t dovecot` from the web server's PHP.
        assert!(!t.allows(&sender(
            "33",
            Some("/usr/bin/logger"),
            Some("php8.2-fpm.service")
        )));
        // The right user but another program (`postlog -t postfix/smtpd` by postfix, or a
        // process that renamed itself "smtpd").
        assert!(!t.allows(&sender("102", Some("/usr/sbin/postlog"), None)));
        // A user running a real mail server binary by hand: wrong uid.
        assert!(!t.allows(&sender("65534", Some("/usr/lib/postfix/sbin/smtpd"), None)));
        // No _EXE and no unit, or a unit that is not a mail server's.
        assert!(!t.allows(&sender("0", None, None)));
        assert!(!t.allows(&sender("0", None, Some("cron.service"))));
        // A directory prefix is a directory, a file path is exact.
        assert!(!t.allows(&sender("0", Some("/usr/lib/postfix/sbin-evil/x"), None)));
        assert!(!t.allows(&sender("0", Some("/usr/sbin/dovecot-evil"), None)));
        // No or junk _UID.
        let mut s = sender("0", Some("/usr/lib/dovecot/log"), None);
        s.uid = None;
        assert!(!t.allows(&s));
        s.uid = Some("zero");
        assert!(!t.allows(&s));
    }

    #[test]
    fn users_resolve_by_name_or_number_and_checks_can_be_off() {
        let cfg = TrustConfig {
            users: vec!["65534".into(), "no-such-user".into(), "dovecot".into()],
            ..TrustConfig::default()
        };
        let t = Trust::new(&cfg, PASSWD);
        assert_eq!(t.uids.iter().copied().collect::<Vec<_>>(), vec![103, 65534]);
        let off = Trust::new(
            &TrustConfig {
                enabled: false,
                ..TrustConfig::default()
            },
            PASSWD,
        );
        assert!(off.allows(&Sender::default()));
    }

    #[test]
    fn describe_names_the_fields_and_claims() {
        let s = Sender {
            uid: Some("33"),
            exe: Some("/usr/bin/logger"),
            comm: Some("logger"),
            unit: None,
            identifier: Some("dovecot"),
        };
        assert!(s.claims_mail_server());
        assert_eq!(
            s.describe(),
            "_UID=33 _EXE=/usr/bin/logger _COMM=logger _SYSTEMD_UNIT=- SYSLOG_IDENTIFIER=dovecot"
        );
        let other = Sender {
            identifier: Some("opendkim"),
            ..Sender::default()
        };
        assert!(!other.claims_mail_server());
    }

    #[test]
    fn validation() {
        TrustConfig::default().validate().unwrap();
        let bad = TrustConfig {
            executables: vec!["usr/lib".into()],
            ..TrustConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("executables")
        );
        let bad = TrustConfig {
            users: vec![],
            ..TrustConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = TrustConfig {
            units: vec!["a*b*".into()],
            ..TrustConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}

//! Writes the lab's Postfix, Dovecot and journald configuration from the templates in
//! tests/lab/ into the lab's state directory.
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::sys::run;
use super::{DOMAIN, LogMode, PostfixOptions, USERS};

const MAIN_CF: &str = include_str!("../../lab/main.cf.in");
const MASTER_CF: &str = include_str!("../../lab/master.cf");
const DOVECOT_CONF: &str = include_str!("../../lab/dovecot.conf.in");
const JOURNALD_CONF: &str = include_str!("../../lab/journald.conf");

/// uid and gid of a system user, from `getent passwd`.
fn ids_of(user: &str) -> Result<(u32, u32)> {
    let line = run(Command::new("getent").args(["passwd", user]))
        .with_context(|| format!("looking up the `{user}` user"))?;
    let f: Vec<&str> = line.trim().split(':').collect();
    match (
        f.get(2).and_then(|v| v.parse().ok()),
        f.get(3).and_then(|v| v.parse().ok()),
    ) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => anyhow::bail!("unexpected `getent passwd {user}` output: {line:?}"),
    }
}

/// The `smtpd_recipient_restrictions` (and `smtpd_end_of_data_restrictions`) lines.
fn recipient_checks(postfix: &PostfixOptions) -> String {
    let mut rcpt = Vec::new();
    if postfix.rcpt_info_log {
        rcpt.push("check_recipient_access regexp:{{LAB_DIR}}/postfix/rcpt_log.regexp".to_string());
    }
    let mut out = String::new();
    if let Some(port) = postfix.policy_port {
        // The README's recommended setting: fail open at once when detector is down.
        let policy = format!(
            "check_policy_service {{ inet:127.0.0.1:{port}, timeout=2s, try_limit=1, default_action=DUNNO }}"
        );
        rcpt.push(policy.clone());
        out.push_str(&format!("smtpd_end_of_data_restrictions = {policy}\n"));
    }
    out.push_str(&format!(
        "smtpd_recipient_restrictions = {}\n",
        rcpt.join(", ")
    ));
    out
}

/// Dovecot 2.3's auth-policy settings pointing at `detector`'s policy server on `url` (inside
/// the mail namespace), as the README's Dovecot section gives them: checked before and after
/// the password, every outcome reported, fail open after `timeout_ms`.
pub fn dovecot_policy_conf(url: &str, api_key: Option<&str>, timeout_ms: u32) -> String {
    let mut s = format!(
        "auth_policy_server_url = {url}\n\
         auth_policy_hash_nonce = lab-nonce-not-secret\n\
         auth_policy_server_timeout_msecs = {timeout_ms}\n\
         auth_policy_reject_on_fail = no\n\
         auth_policy_check_before_auth = yes\n\
         auth_policy_check_after_auth = yes\n\
         auth_policy_report_after_auth = yes\n"
    );
    if let Some(key) = api_key {
        s.push_str(&format!(
            "auth_policy_server_api_header = X-API-Key:{key}\n"
        ));
    }
    s
}

pub struct Rendered {
    pub dovecot_conf: std::path::PathBuf,
    pub journald_conf: std::path::PathBuf,
    pub postfix_etc: std::path::PathBuf,
}

/// Writes every configuration file below `dir` and creates the directories the daemons use.
pub fn write_all(
    dir: &Path,
    mode: LogMode,
    ipv6: bool,
    postfix: &PostfixOptions,
    dovecot_extra: &str,
) -> Result<Rendered> {
    // The mailboxes belong to Debian's `mail` user, so nothing is added to /etc/passwd.
    let (vmail_uid, vmail_gid) = ids_of("mail")?;
    for sub in [
        "postfix", "dovecot", "spool", "mail", "run", "log", "journal",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    // Daemons running as postfix/dovecot/dovenull must traverse the state directory.
    for sub in ["", "postfix", "dovecot", "spool", "run", "log"] {
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o755))?;
    }
    chown(dir.join("mail"), Some(vmail_uid), Some(vmail_gid))?;

    // /etc/postfix is replaced (inside the lab's mount namespace only) by a copy of the
    // package's directory with our main.cf/master.cf: postfix-files, dynamicmaps.cf and
    // post-install must stay where `postfix start` looks for them.
    let etc = dir.join("etc-postfix");
    std::fs::create_dir_all(&etc)?;
    run(Command::new("cp").arg("-a").arg("/etc/postfix/.").arg(&etc))
        .context("copying /etc/postfix")?;
    let lab_dir = dir.to_str().context("lab directory path is not UTF-8")?;
    let maillog = match mode {
        LogMode::File => format!("{lab_dir}/log/postfix.log"),
        LogMode::Journal => String::new(),
    };
    let main_cf = MAIN_CF
        .replace("{{RECIPIENT_CHECKS}}", &recipient_checks(postfix))
        .replace("{{LAB_DIR}}", lab_dir)
        .replace("{{INET_PROTOCOLS}}", if ipv6 { "all" } else { "ipv4" })
        .replace("{{MAILLOG_FILE}}", &maillog)
        .replace("{{VMAIL_UID}}", &vmail_uid.to_string())
        .replace("{{VMAIL_GID}}", &vmail_gid.to_string());
    std::fs::write(etc.join("main.cf"), main_cf)?;
    std::fs::write(etc.join("master.cf"), MASTER_CF)?;

    let mut vmailbox = String::new();
    for (user, _) in USERS {
        vmailbox.push_str(&format!("{user}@{DOMAIN}\t{DOMAIN}/{user}/\n"));
    }
    vmailbox.push_str(&format!("@{DOMAIN}\t{DOMAIN}/catchall/\n"));
    std::fs::write(dir.join("postfix/vmailbox"), vmailbox)?;
    std::fs::write(
        dir.join("postfix/rcpt_log.regexp"),
        "/^(.*)$/ INFO lab-rcpt=<$1>\n",
    )?;

    let log_path = match mode {
        LogMode::File => format!("{lab_dir}/log/dovecot.log"),
        LogMode::Journal => "syslog".to_string(),
    };
    let dovecot = DOVECOT_CONF
        .replace("{{LAB_DIR}}", lab_dir)
        .replace("{{LISTEN}}", if ipv6 { "*, ::" } else { "*" })
        .replace("{{LOG_PATH}}", &log_path)
        .replace("{{VMAIL_UID}}", &vmail_uid.to_string())
        .replace("{{VMAIL_GID}}", &vmail_gid.to_string());
    let dovecot_conf = dir.join("dovecot/dovecot.conf");
    std::fs::write(&dovecot_conf, format!("{dovecot}\n{dovecot_extra}\n"))?;
    // Plain passwords are fine for a lab: the log lines do not depend on the scheme.
    let users: String = USERS
        .iter()
        .map(|(u, p)| format!("{u}@{DOMAIN}:{{PLAIN}}{p}\n"))
        .collect();
    let users_file = dir.join("dovecot/users");
    std::fs::write(&users_file, users)?;
    let (_, dovecot_gid) = ids_of("dovecot")?;
    chown(&users_file, Some(0), Some(dovecot_gid))?;
    std::fs::set_permissions(&users_file, std::fs::Permissions::from_mode(0o640))?;

    let journald_conf = dir.join("run/journald.conf");
    std::fs::write(&journald_conf, JOURNALD_CONF)?;

    // Postfix re-reads files younger than ~2 s every 300 ms (a guard against half-written
    // files), which adds 2.3 s to every command: backdate what we just wrote.
    let past = SystemTime::now() - Duration::from_secs(60);
    for f in [
        etc.join("main.cf"),
        etc.join("master.cf"),
        dir.join("postfix/vmailbox"),
        dir.join("postfix/rcpt_log.regexp"),
    ] {
        std::fs::File::options()
            .write(true)
            .open(&f)?
            .set_modified(past)?;
    }
    Ok(Rendered {
        dovecot_conf,
        journald_conf,
        postfix_etc: etc,
    })
}

//! The journal source against a real, private systemd-journald (as in docs/lab.md, "Journal mode"):
//! journald runs in its own mount namespace with its sockets and journal files bind-mounted
//! from a temporary directory, so the test writes with `logger -u <dev-log>` and reads with
//! `journalctl --directory`. Where that is impossible (not root, no systemd-journald, no
//! `unshare`) the tests fail rather than skip, so a green run means they ran: `cargo xtask setup`
//! installs what they need and `cargo xtask test` runs as root.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use detector::source::{
    self, JournalConfig, Position, SourceConfig, SourceLine, SourceStatus, TrustConfig,
};
use detector::store::Checkpoints;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const JOURNALD: &str = "/lib/systemd/systemd-journald";
// Generous: on a loaded 2-core CI machine journald can take seconds to store an entry.
const WAIT: Duration = Duration::from_secs(60);

/// The private journald; killed (and its namespace gone) when dropped, also on test failure.
struct Journald {
    child: Child,
    socket: PathBuf,
    journal: PathBuf,
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_journald(root: &Path) -> Result<Journald, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    for tool in [
        JOURNALD,
        "/usr/bin/unshare",
        "/usr/bin/logger",
        "/etc/systemd/journald.conf",
    ] {
        if !Path::new(tool).exists() {
            return Err(format!("{tool} is missing"));
        }
    }
    let (sock, journal) = (root.join("sock"), root.join("journal"));
    fs::create_dir_all(&sock).unwrap();
    // Unprivileged loggers must reach the socket (journald makes it 0666 itself).
    for dir in [root, sock.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::create_dir_all(&journal).unwrap();
    let conf = root.join("journald.conf");
    fs::write(
        &conf,
        "[Journal]\nStorage=volatile\nReadKMsg=no\nAudit=no\nForwardToSyslog=no\nForwardToWall=no\n\
         RateLimitBurst=0\n",
    )
    .unwrap();
    let script = format!(
        "set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/journal
mount --bind '{sock}' /run/systemd/journal
mount -t tmpfs tmpfs /run/log && mkdir -p /run/log/journal
mount --bind '{journal}' /run/log/journal
mount --bind '{conf}' /etc/systemd/journald.conf
mount -t tmpfs tmpfs /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec {JOURNALD}",
        sock = sock.display(),
        journal = journal.display(),
        conf = conf.display()
    );
    let log = fs::File::create(root.join("journald.log")).unwrap();
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    let mut journald = Journald {
        child,
        socket: sock.join("dev-log"),
        journal,
    };
    let deadline = Instant::now() + WAIT;
    while !journald.socket.exists() {
        if let Ok(Some(status)) = journald.child.try_wait() {
            let out = fs::read_to_string(root.join("journald.log")).unwrap_or_default();
            return Err(format!("journald did not start ({status}): {}", out.trim()));
        }
        assert!(
            Instant::now() < deadline,
            "journald started but created no socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(journald)
}

impl Journald {
    fn log(&self, priority: &str, tag: &str, message: &str) {
        let socket = self.socket.to_str().unwrap();
        let ok = Command::new("logger")
            .args(["-u", socket, "-p", priority, "-t", tag, message])
            .status()
            .unwrap();
        assert!(ok.success(), "logger failed");
    }

    /// Logs `message` with a `logger` that stays alive until journald has stored the entry,
    /// so journald can read its `_EXE` and `_COMM` from /proc (of a sender that has already
    /// exited it records neither). `as_nobody`: run as the unprivileged user `nobody`, as a
    /// webmail's PHP or a shell user would.
    fn log_held(&self, as_nobody: bool, priority: &str, tag: &str, message: &str) {
        use std::io::Write;
        let socket = self.socket.to_str().unwrap();
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "logger",
            ]);
            c
        } else {
            Command::new("logger")
        };
        let mut logger = cmd
            .args(["-u", socket, "-p", priority, "-t", tag])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = logger.stdin.take().unwrap();
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
        self.wait_stored(message);
        drop(stdin);
        assert!(logger.wait().unwrap().success(), "logger failed");
    }

    /// Waits until journald has stored an entry with `message`.
    fn wait_stored(&self, message: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("journalctl")
                .arg(format!("--directory={}", self.journal.display()))
                .args(["--output=json", "--no-pager", "--all"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(message) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "journald never stored {message:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn message(line: &SourceLine) -> String {
    let json: serde_json::Value =
        serde_json::from_slice(&line.bytes).expect("journal line is JSON");
    json["MESSAGE"].as_str().unwrap_or_default().to_string()
}

struct Run {
    lines: mpsc::Receiver<SourceLine>,
    _status: mpsc::UnboundedReceiver<SourceStatus>,
    cancel: CancellationToken,
    handles: Vec<source::SourceHandle>,
}

fn start(config: &SourceConfig, checkpoints: &Checkpoints) -> Run {
    let (tx, lines) = mpsc::channel(64);
    let (stx, status) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handles = source::spawn(config, checkpoints.resume(), tx, stx, cancel.clone()).unwrap();
    Run {
        lines,
        _status: status,
        cancel,
        handles,
    }
}

impl Run {
    async fn next(&mut self, within: Duration) -> Option<SourceLine> {
        timeout(within, self.lines.recv()).await.ok().flatten()
    }

    async fn stop(self) {
        self.cancel.cancel();
        for h in self.handles {
            timeout(WAIT, h.task)
                .await
                .expect("journal source did not stop")
                .unwrap();
        }
    }
}

#[tokio::test]
async fn real_journald_first_start_follow_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let journald = start_journald(tmp.path())
        .unwrap_or_else(|why| panic!("the real journald test cannot run: {why}"));
    journald.log(
        "mail.info",
        "postfix/smtpd",
        "old line from before the first start",
    );
    journald.wait_stored("old line from before the first start");

    // This test is about following and resuming; it writes with root's short-lived `logger`,
    // which no trust list could tell from a mail server (see the test below).
    let config = SourceConfig {
        journal: Some(JournalConfig {
            directory: Some(journald.journal.clone()),
            trust: TrustConfig {
                enabled: false,
                ..TrustConfig::default()
            },
            ..JournalConfig::default()
        }),
        ..SourceConfig::none()
    };

    // First start: only new entries. journalctl needs a moment to reach the end of the
    // journal, so probe until one arrives; "old line" must never come.
    let mut checkpoints = Checkpoints::default();
    let mut run = start(&config, &checkpoints);
    let mut received = Vec::new();
    for n in 0..100 {
        journald.log(
            "mail.warning",
            "postfix/submission/smtpd",
            &format!("probe {n}"),
        );
        if let Some(line) = run.next(Duration::from_millis(300)).await {
            received.push(line);
            break;
        }
    }
    // Drain probes still on their way, then commit the last one.
    while let Some(line) = run.next(Duration::from_secs(1)).await {
        received.push(line);
    }
    let texts: Vec<String> = received.iter().map(message).collect();
    assert!(!texts.is_empty(), "no entry arrived from the live journal");
    assert!(texts.iter().all(|t| t.starts_with("probe ")), "{texts:?}");
    let last = received.pop().unwrap();
    let Position::Journal { cursor } = &last.position else {
        panic!("not a journal position")
    };
    assert!(cursor.starts_with("s="), "{cursor}");
    checkpoints.commit(&last.origin, &last.position);
    run.stop().await;

    // While stopped: two mail lines, one line of another facility (not matched) and a dovecot
    // line with a non-mail facility (matched by identifier).
    journald.log("mail.info", "postfix/smtpd", "while stopped 1");
    journald.log("daemon.info", "cron", "not a mail line");
    journald.log("daemon.info", "dovecot", "while stopped 2");
    journald.wait_stored("while stopped 2");

    let mut run = start(&config, &checkpoints);
    let mut got = Vec::new();
    while let Some(line) = run.next(Duration::from_secs(3)).await {
        got.push(message(&line));
        if got.len() == 2 {
            // Anything after these two would be a repeat or a wrong match.
            if let Some(extra) = run.next(Duration::from_secs(1)).await {
                got.push(message(&extra));
            }
            break;
        }
    }
    assert_eq!(got, ["while stopped 1", "while stopped 2"]);

    // Live latency, for the report (not asserted): log -> SourceLine.
    let mut samples = Vec::new();
    for n in 0..10 {
        let sent = Instant::now();
        journald.log("mail.info", "postfix/smtpd", &format!("latency {n}"));
        run.next(WAIT).await.expect("live line");
        samples.push(sent.elapsed());
    }
    samples.sort();
    eprintln!(
        "real journald: logger -> SourceLine latency min {:?} median {:?} max {:?}",
        samples[0], samples[5], samples[9]
    );
    run.stop().await;
}

/// Trust root's `logger` as if it were a mail server: the harness can run no real Postfix or
/// Dovecot against this private journald, so this stands in for "the right process".
fn root_logger_trusted() -> TrustConfig {
    TrustConfig {
        users: vec!["root".into()],
        executables: vec![logger_exe()],
        ..TrustConfig::default()
    }
}

/// Where `logger` is, as journald records it in `_EXE` (symlinks resolved).
fn logger_exe() -> String {
    let path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("logger"))
        .find(|p| p.exists())
        .expect("logger in PATH");
    fs::canonicalize(path).unwrap().display().to_string()
}

/// `logger -t dovecot '... unknown user'` by an unprivileged user is exactly the line that
/// banned 9.9.9.9 before: it is not delivered (and counted), while the same line from the
/// trusted process is.
#[tokio::test]
async fn real_journald_forged_mail_lines_are_not_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let journald = start_journald(tmp.path())
        .unwrap_or_else(|why| panic!("the real journald test cannot run: {why}"));
    let forged = "auth: Info: passwd-file(x@example.test,198.18.0.99): unknown user";
    let mut config = SourceConfig {
        journal: Some(JournalConfig {
            directory: Some(journald.journal.clone()),
            start: source::StartAt::Beginning,
            ..JournalConfig::default()
        }),
        ..SourceConfig::none()
    };

    // Default trust: neither nobody's nor root's `logger` is Dovecot.
    journald.log_held(true, "mail.info", "dovecot", &format!("{forged} #1"));
    journald.log_held(false, "mail.info", "dovecot", &format!("{forged} #2"));
    journald.log_held(false, "mail.info", "postfix/smtpd", "marker");
    let entries = stored(&journald);
    let nobody = entries
        .iter()
        .find(|e| e["MESSAGE"].as_str().is_some_and(|m| m.ends_with("#1")))
        .expect("the forged entry is in the journal");
    // What journald itself recorded about the sender: the fields the check relies on.
    assert_eq!(nobody["_UID"], "65534", "{nobody}");
    assert_eq!(nobody["_EXE"], logger_exe().as_str(), "{nobody}");
    assert_eq!(nobody["SYSLOG_IDENTIFIER"], "dovecot");

    let mut run = start(&config, &Checkpoints::default());
    assert!(
        run.next(Duration::from_secs(3)).await.is_none(),
        "an entry from logger was delivered"
    );
    let counters = &run.handles[0].counters;
    let deadline = Instant::now() + WAIT;
    while counters.snapshot().untrusted < 3 {
        assert!(Instant::now() < deadline, "{:?}", counters.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counters.snapshot().untrusted, 3);
    let last = counters.last_untrusted().unwrap();
    assert!(last.contains(&format!("_EXE={}", logger_exe())), "{last}");
    run.stop().await;

    // Trusting root's logger (standing in for the mail server's process): root's line comes
    // through with the same journal, nobody's still does not.
    config.journal.as_mut().unwrap().trust = root_logger_trusted();
    let mut run = start(&config, &Checkpoints::default());
    let mut got = Vec::new();
    while let Some(line) = run.next(Duration::from_secs(3)).await {
        got.push(message(&line));
    }
    assert_eq!(got, [format!("{forged} #2"), "marker".to_string()]);
    assert_eq!(run.handles[0].counters.snapshot().untrusted, 1);
    run.stop().await;
}

/// Every entry journald stored, as JSON.
fn stored(journald: &Journald) -> Vec<serde_json::Value> {
    let out = Command::new("journalctl")
        .arg(format!("--directory={}", journald.journal.display()))
        .args(["--output=json", "--no-pager", "--all"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

//! Diagnostic commands through the binary: `status` and `explain` change nothing (no state
//! directory created, no file written or moved, a damaged file left for the daemon), and
//! `run` with a metrics address in use stops at once with one clear line.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

fn detector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(args)
        .env_remove("DETECTOR_PIN_DIR")
        .output()
        .expect("run detector")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Name -> (content, mtime) of every entry under `dir`, recursively.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_dir() {
                todo.push(path.clone());
                Vec::new()
            } else {
                fs::read(&path).unwrap()
            };
            out.insert(path, (content, meta.modified().unwrap()));
        }
    }
    out
}

struct Setup {
    tmp: tempfile::TempDir,
    config: String,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("detector.toml");
        fs::write(&config, "").unwrap();
        let config = config.to_str().unwrap().to_string();
        Setup { tmp, config }
    }

    fn path(&self, name: &str) -> String {
        self.tmp.path().join(name).to_str().unwrap().to_string()
    }

    /// `status` and `explain` with this state directory and a pin directory that is absent.
    fn diagnostics(&self, state: &str) -> Vec<Output> {
        let pins = self.path("pins");
        let common = [
            "--config",
            self.config.as_str(),
            "--state-dir",
            state,
            "--pin-dir",
            pins.as_str(),
        ];
        let mut status = vec!["status", "--json"];
        status.extend(common);
        let mut explain = vec!["explain", "198.18.0.7"];
        explain.extend(common);
        vec![detector(&status), detector(&explain)]
    }
}

#[test]
fn status_and_explain_do_not_create_an_absent_state_directory() {
    let s = Setup::new();
    let state = s.path("state");
    let before = listing(s.tmp.path());
    let outs = s.diagnostics(&state);
    assert!(
        !Path::new(&state).exists(),
        "the state directory was created"
    );
    assert!(
        !Path::new(&s.path("pins")).exists(),
        "the pin directory was created"
    );
    assert_eq!(listing(s.tmp.path()), before);
    let status: serde_json::Value = serde_json::from_slice(&outs[0].stdout).unwrap();
    let problems = status["problems"].to_string();
    assert!(problems.contains("no state directory"), "{problems}");
    assert!(outs[1].status.success(), "{}", stderr(&outs[1]));
}

#[test]
fn status_and_explain_leave_damaged_state_files_where_they_are() {
    let s = Setup::new();
    let state = s.path("state");
    fs::create_dir(&state).unwrap();
    let dir = Path::new(&state);
    fs::write(dir.join("engine.json"), b"{\"version\":1,\"now\":").unwrap();
    fs::write(dir.join("checkpoints.json"), b"\xff not json").unwrap();
    fs::write(dir.join("counters.json"), b"[").unwrap();
    // A live daemon's pid file (this test's own process is alive).
    fs::write(
        dir.join("detector.pid"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let before = listing(dir);
    let outs = s.diagnostics(&state);
    assert_eq!(listing(dir), before, "the state directory changed");

    let status: serde_json::Value = serde_json::from_slice(&outs[0].stdout).unwrap();
    assert_eq!(status["daemon_pid"], std::process::id());
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("checkpoints.json is damaged"),
        "{problems}"
    );
    assert!(problems.contains("counters.json is damaged"), "{problems}");
    // explain must not pretend to know nothing when it cannot read what the daemon knows.
    assert!(!outs[1].status.success());
    let err = stderr(&outs[1]);
    assert!(
        err.contains("engine state") && err.contains("unreadable"),
        "{err}"
    );
}

#[test]
fn status_shows_what_the_daemon_did_not_trust() {
    let s = Setup::new();
    let state = s.path("state");
    fs::create_dir(&state).unwrap();
    fs::write(
        Path::new(&state).join("counters.json"),
        r#"{"lines_ahead_of_clock":3,"max_ahead_s":86400,"journal_untrusted":2,
            "journal_untrusted_last":"_UID=65534 _COMM=logger SYSLOG_IDENTIFIER=dovecot"}"#,
    )
    .unwrap();
    let pins = s.path("pins");
    let args = [
        "status",
        "--config",
        s.config.as_str(),
        "--state-dir",
        state.as_str(),
        "--pin-dir",
        pins.as_str(),
    ];
    let out = detector(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 journal entries not from the mail servers (last: _UID=65534"),
        "{text}"
    );
    assert!(
        text.contains("3 lines stamped ahead of the wall clock (by up to 86400 s)"),
        "{text}"
    );
}

#[test]
fn run_with_the_metrics_address_in_use_fails_at_start_with_one_line() {
    let s = Setup::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let state = s.path("state");
    let pins = s.path("pins");
    let out = Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(["run", "--config", s.config.as_str(), "--stdin"])
        .args(["--state-dir", state.as_str(), "--pin-dir", pins.as_str()])
        .args(["--metrics-listen", addr.as_str()])
        .env_remove("DETECTOR_PIN_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "run went on: {}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("detector: error: invalid metrics.listen: cannot listen on"),
        "{err}"
    );
    assert!(lines[0].contains(&addr), "{err}");
    // It stopped before attaching or writing anything.
    assert!(!Path::new(&state).exists());
    assert!(!Path::new(&pins).exists());
    drop(taken);
}

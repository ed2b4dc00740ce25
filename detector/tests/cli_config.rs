//! Configuration handling through the binary: `check-config`, and `run` refusing bad settings
//! with one line that names the key (before it touches the kernel).
use std::process::{Command, Output};

fn detector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(args)
        .output()
        .expect("run detector")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("detector.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

#[test]
fn the_shipped_example_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../detector.toml.example");
    let out = detector(&["check-config", "--config", example, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["engine"]["burst_failures"], 5);
    assert_eq!(json["xdp"]["max_exact_bans"], 1 << 20);
}

#[test]
fn check_config_names_the_bad_key_on_one_line() {
    for (text, key) in [
        ("[engine]\nburst_window = \"soon\"\n", "engine.burst_window"),
        ("[engine]\nburts_failures = 3\n", "burts_failures"),
        (
            "[daemon]\nsweep_interval = \"0s\"\n",
            "daemon.sweep_interval",
        ),
        ("[xdp]\nmode = \"turbo\"\n", "xdp.mode"),
        (
            "[sources]\nfiles = [\"/var/log/mail.log\", \"/var/log/mail.log\"]\n",
            "sources.files",
        ),
        ("[metrics]\nlisten = \"not an address\"\n", "metrics.listen"),
        ("this is not toml", "configuration"),
    ] {
        let (_dir, path) = write_config(text);
        let out = detector(&["check-config", "--config", &path]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{text:?}: not one line: {err}"
        );
        assert!(err.contains(key), "{text:?}: {err} does not name {key}");
    }
}

#[test]
fn a_missing_explicit_config_is_an_error() {
    let out = detector(&["check-config", "--config", "/nonexistent/detector.toml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/detector.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_refuses_a_bad_config_before_touching_anything() {
    let (dir, path) = write_config("[engine]\nban_durations = []\n");
    let state = dir.path().join("state");
    let out = detector(&[
        "run",
        "--config",
        &path,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("engine.ban_durations"),
        "{}",
        stderr(&out)
    );
    assert!(!state.exists(), "state dir created despite the bad config");
}

#[test]
fn run_flags_are_validated_too() {
    let out = detector(&["run", "--allow", "10.0.0.300/8"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("10.0.0.300/8"), "{}", stderr(&out));
    let out = detector(&["run", "--iface", "this-name-is-far-too-long-for-linux"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("xdp.interfaces"), "{}", stderr(&out));
}

//! `detector status` and `detector explain` against a real attached program and real pins.
use anyhow::Result;
use detector_tests::bin::{PinDir, detector, detector_ok};
use detector_tests::netns::{SERVER_IFACE, Topology};

fn json(text: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(text)?)
}

#[test]
fn status_reports_attachment_bans_and_a_stopped_daemon() -> Result<()> {
    let t = Topology::new("stat", 18)?;
    let pins = PinDir::new("stat")?;
    let state = tempfile_dir("stat")?;
    let state_arg = state.to_str().unwrap();

    // Nothing attached yet: status still answers, and says what is wrong.
    let before =
        json(&detector_ok(&pins, None, &["status", "--json", "--state-dir", state_arg])?.stdout)?;
    assert!(
        before["attached"].as_array().unwrap().is_empty(),
        "{before}"
    );
    assert!(before["maps"].is_null(), "{before}");
    assert!(
        before["problems"].to_string().contains("not attached"),
        "{before}"
    );

    detector_ok(&pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?;
    detector_ok(&pins, None, &["ban", &t.v4(7).to_string(), "--for", "1h"])?;
    // Two IPv6 bans against one IPv4 ban, so the per-family counts cannot be swapped.
    for host in [7, 8] {
        detector_ok(
            &pins,
            None,
            &["ban", &t.v6(host).to_string(), "--for", "1h"],
        )?;
    }
    detector_ok(&pins, None, &["ban", "198.19.0.0/24", "--for", "1h"])?;

    let after = json(
        &detector_ok(
            &pins,
            Some(&t.server),
            &["status", "--json", "--state-dir", state_arg],
        )?
        .stdout,
    )?;
    let attached = after["attached"].as_array().unwrap();
    assert_eq!(attached.len(), 1, "{after}");
    assert_eq!(attached[0]["iface"], SERVER_IFACE);
    // Looked up inside the interface's namespace, the mode is known.
    assert!(
        ["native", "generic"].contains(&attached[0]["mode"].as_str().unwrap()),
        "{after}"
    );
    assert_eq!(after["maps"]["exact_v4"], 1, "{after}");
    assert_eq!(after["maps"]["exact_v6"], 2, "{after}");
    assert_eq!(after["maps"]["prefix"], 1, "{after}");
    assert_eq!(after["maps"]["exact_capacity"], 1 << 20, "{after}");
    assert!(after["daemon_pid"].is_null(), "{after}");
    assert!(
        after["problems"]
            .to_string()
            .contains("daemon is not running"),
        "{after}"
    );

    // explain with no engine state still shows the kernel's view of the address.
    let explained = json(
        &detector_ok(
            &pins,
            None,
            &[
                "explain",
                &t.v4(7).to_string(),
                "--json",
                "--state-dir",
                state_arg,
            ],
        )?
        .stdout,
    )?;
    let kernel = explained["kernel_bans"].as_array().unwrap();
    assert_eq!(kernel.len(), 1, "{explained}");
    assert_eq!(kernel[0]["prefix"], format!("{}/32", t.v4(7)));
    assert!(
        kernel[0]["remaining_s"].as_u64().unwrap() > 3500,
        "{explained}"
    );
    // An address inside the CIDR ban is covered by it.
    let inside = json(
        &detector_ok(
            &pins,
            None,
            &["explain", "198.19.0.9", "--json", "--state-dir", state_arg],
        )?
        .stdout,
    )?;
    assert_eq!(
        inside["kernel_bans"][0]["prefix"], "198.19.0.0/24",
        "{inside}"
    );
    // A bad address is one clear error.
    let bad = detector(
        &pins,
        None,
        &["explain", "not-an-ip", "--state-dir", state_arg],
    )?;
    assert!(!bad.ok);
    assert!(bad.stderr.contains("not-an-ip"), "{}", bad.stderr);

    detector_ok(&pins, None, &["detach"])?;
    std::fs::remove_dir_all(&state)?;
    Ok(())
}

fn tempfile_dir(tag: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("detector-ops-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `detector ban` refuses the configuration's allowlist (IPv4-mapped entries included), the
/// host's default gateway, and normalises an IPv4-mapped target.
#[test]
fn ban_refuses_the_configured_allowlist_and_the_gateway() -> Result<()> {
    let t = Topology::new("allow", 19)?;
    let pins = PinDir::new("allow")?;
    let dir = tempfile_dir("allow")?;
    let config = dir.join("detector.toml");
    std::fs::write(
        &config,
        "[engine]\nallowlist = [\"::ffff:198.18.0.77/128\", \"198.18.1.0/24\"]\n",
    )?;
    let config = config.to_str().unwrap();
    detector_ok(&pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?;

    for (target, covered) in [
        ("198.18.0.77", "::ffff:198.18.0.77"),
        ("::ffff:198.18.1.5", "198.18.1.0/24"),
        ("198.18.1.128/25", "198.18.1.0/24"),
    ] {
        let refused = detector(&pins, None, &["ban", target, "--config", config])?;
        assert!(!refused.ok, "{target} was banned");
        assert!(
            refused.stderr.contains("refusing to ban")
                && refused.stderr.contains("allowlisted")
                && refused.stderr.contains(&canonical_text(covered)),
            "{target}: {}",
            refused.stderr
        );
    }
    // An IPv4-mapped target is the IPv4 address.
    let banned = detector_ok(
        &pins,
        None,
        &[
            "ban",
            "::ffff:198.18.2.6",
            "--for",
            "1h",
            "--config",
            config,
        ],
    )?;
    assert!(
        banned.stdout.contains("banned 198.18.2.6 for 1h"),
        "{banned:?}"
    );
    // Without the configuration, the allowlist is not in force: it was the cause above.
    detector_ok(&pins, None, &["ban", "198.18.0.77", "--for", "1h"])?;

    // The default gateway of the namespace detector runs in is never banned.
    let gateway = t.v4(2).to_string();
    t.server.ip(&["route", "add", "default", "via", &gateway])?;
    let refused = detector(&pins, Some(&t.server), &["ban", &gateway])?;
    assert!(
        !refused.ok && refused.stderr.contains("default gateway via veth-s"),
        "{refused:?}"
    );
    detector_ok(&pins, Some(&t.server), &["ban", &t.v4(3).to_string()])?;

    detector_ok(&pins, None, &["detach"])?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// How the allowlist entry is named in the refusal (IPv4-mapped entries are stored as IPv4).
fn canonical_text(entry: &str) -> String {
    match entry.strip_prefix("::ffff:") {
        Some(v4) => format!("{v4}/32"),
        None => entry.to_string(),
    }
}

/// One line stamped in 2099 must not move the daemon's clock: it is dropped and counted, the
/// lines after it are judged in real time, and `detector status` reports it.
#[test]
fn the_daemon_drops_a_far_future_line_and_status_reports_it() -> Result<()> {
    use std::io::Write;
    let pins = PinDir::new("future")?;
    let state = tempfile_dir("future")?;
    let config = state.with_extension("toml");
    // No grace period: the real-time line's ban is made at once, not held for a success.
    std::fs::write(&config, "[engine]\ngrace_period = \"0s\"\n")?;
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f+00:00");
    let input = format!(
        "2099-01-01T00:00:00.000000+00:00 mx dovecot: auth: passwd-file(x@example.test,198.18.0.50): unknown user\n\
         {now} mx dovecot: auth: passwd-file(y@example.test,198.18.0.51): unknown user\n\
         {now} mx dovecot: auth: passwd-file(z@example.test,198.18.0.52): unknown user {pad}\n",
        // Longer than the 1 MiB line limit: cut, counted, not parsed (so .52 is not banned).
        pad = "x".repeat(detector::source::MAX_LINE_BYTES + 10),
    );
    let mut child = std::process::Command::new(detector_tests::bin::detector_bin())
        .args(["run", "--stdin", "--config", config.to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .arg("--pin-dir")
        .arg(&pins.path)
        .env_remove("DETECTOR_PIN_DIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    // End of input ends the daemon, which saves its state.
    let out = child.wait_with_output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("ahead of the wall clock"), "{log}");

    let list = detector_ok(&pins, None, &["list", "--json"])?.stdout;
    assert!(
        list.contains("198.18.0.51"),
        "the real-time line bans: {list}"
    );
    assert!(
        !list.contains("198.18.0.50"),
        "the 2099 line banned: {list}"
    );

    let status = json(
        &detector_ok(
            &pins,
            None,
            &["status", "--json", "--state-dir", state.to_str().unwrap()],
        )?
        .stdout,
    )?;
    assert_eq!(status["untrusted"]["lines_ahead_of_clock"], 1, "{status}");
    assert_eq!(status["untrusted"]["truncated_lines"], 1, "{status}");
    assert!(!list.contains("198.18.0.52"), "a cut line banned: {list}");
    let snapshot = json(&std::fs::read_to_string(state.join("engine.json"))?)?;
    let engine_now = snapshot["now"].as_i64().unwrap();
    assert!(
        engine_now <= chrono::Utc::now().timestamp(),
        "the engine's clock moved to {engine_now}"
    );
    detector_ok(&pins, None, &["detach"])?;
    std::fs::remove_dir_all(&state)?;
    std::fs::remove_file(&config)?;
    Ok(())
}

/// What `detector ban` prints and `list` reports is what the kernel stores: an end beyond what
/// the expiry field holds (u64 ns for addresses, u32 s for prefixes) is stored as permanent,
/// not clamped to a date centuries away.
#[test]
fn ban_durations_beyond_the_kernel_clock_are_permanent_and_reported_so() -> Result<()> {
    let t = Topology::new("huge", 19)?;
    let pins = PinDir::new("huge")?;
    detector_ok(&pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?;
    let listed = |target: &str| -> Result<serde_json::Value> {
        let all = json(&detector_ok(&pins, None, &["list", "--json"])?.stdout)?;
        all.as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == target)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{target} not in {all}"))
    };

    let far = t.v4(9).to_string();
    let out = detector_ok(&pins, None, &["ban", &far, "--for", "99999999999d"])?;
    assert_eq!(
        out.stdout.trim(),
        format!("banned {far} permanently"),
        "{out:?}"
    );
    assert!(out.stderr.contains("stored as permanent"), "{out:?}");
    assert!(listed(&far)?["expires_in_s"].is_null());

    // 200 years fit in an address ban's nanoseconds, so it is stored and shown as such...
    let long = t.v4(10).to_string();
    let out = detector_ok(&pins, None, &["ban", &long, "--for", "200years"])?;
    assert!(
        out.stdout
            .starts_with(&format!("banned {long} for 200years")),
        "{out:?}"
    );
    let left = listed(&long)?["expires_in_s"].as_u64().unwrap();
    let asked = 200 * 31_557_600; // humantime's year is 365.25 days
    assert!(left <= asked && left > asked - 60, "{left}");
    // ...but not in a prefix ban's u32 seconds.
    let out = detector_ok(&pins, None, &["ban", "198.19.1.0/24", "--for", "200years"])?;
    assert_eq!(
        out.stdout.trim(),
        "banned 198.19.1.0/24 permanently",
        "{out:?}"
    );
    assert!(listed("198.19.1.0/24")?["expires_in_s"].is_null());

    detector_ok(&pins, None, &["detach"])?;
    Ok(())
}

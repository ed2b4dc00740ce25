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

//! Real traffic through veth pairs in network namespaces, driving the real `detector`
//! binary: bans block TCP handshakes per source, CIDR bans, timed bans lifting by themselves,
//! persistence across process exit, adoption by a second `attach`, and `detach`.
use std::thread::sleep;
use std::time::Duration;

use anyhow::Result;
use detector_tests::bin::{PinDir, detector, detector_ok, detector_unprivileged};
use detector_tests::netns::{SERVER_IFACE, Topology};

const PORT: u16 = 2525;

fn attach(t: &Topology, pins: &PinDir) -> Result<String> {
    Ok(detector_ok(pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?.stdout)
}

fn list_json(pins: &PinDir) -> Result<Vec<serde_json::Value>> {
    let out = detector_ok(pins, None, &["list", "--json"])?.stdout;
    Ok(serde_json::from_str(&out)?)
}

fn hits(pins: &PinDir, address: &str) -> Result<Option<u64>> {
    Ok(list_json(pins)?
        .iter()
        .find(|e| e["address"] == address)
        .and_then(|e| e["hits"].as_u64()))
}

#[test]
fn banned_sources_cannot_connect_while_others_can() -> Result<()> {
    let t = Topology::new("ban", 10)?;
    let pins = PinDir::new("ban")?;
    let _l = t.listen(PORT)?;
    let out = attach(&t, &pins)?;
    assert!(out.contains("veth-s: attached (native mode)"), "{out}");
    for src in [t.v4(2), t.v4(3), t.v6(2), t.v6(3)] {
        assert!(t.connects(src, PORT)?, "{src} before any ban");
    }

    detector_ok(
        &pins,
        None,
        &[
            "ban",
            &t.v4(2).to_string(),
            "--for",
            "1h",
            "--reason",
            "probe-login",
        ],
    )?;
    detector_ok(&pins, None, &["ban", &t.v6(2).to_string(), "--permanent"])?;
    assert!(
        !t.can_connect(t.v4(2), PORT)?,
        "banned IPv4 source connected"
    );
    assert!(
        !t.can_connect(t.v6(2), PORT)?,
        "banned IPv6 source connected"
    );
    assert!(t.connects(t.v4(3), PORT)?, "unbanned IPv4 source blocked");
    assert!(t.connects(t.v6(3), PORT)?, "unbanned IPv6 source blocked");

    assert!(hits(&pins, &t.v4(2).to_string())?.unwrap() > 0);
    assert!(hits(&pins, &t.v6(2).to_string())?.unwrap() > 0);
    let entry = list_json(&pins)?
        .into_iter()
        .find(|e| e["address"] == t.v4(2).to_string())
        .unwrap();
    assert_eq!(entry["reason"], "probe-login");
    assert!(entry["expires_in_s"].as_u64().unwrap() > 3500);
    let stats: serde_json::Value =
        serde_json::from_str(&detector_ok(&pins, None, &["stats", "--json"])?.stdout)?;
    assert!(stats["dropped"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(
        stats["seen"].as_u64(),
        Some(stats["passed"].as_u64().unwrap() + stats["dropped"].as_u64().unwrap())
    );

    detector_ok(&pins, None, &["unban", &t.v4(2).to_string()])?;
    assert!(t.connects(t.v4(2), PORT)?, "unbanned source still blocked");
    let again = detector(&pins, None, &["unban", &t.v4(2).to_string()])?;
    assert!(
        !again.ok && again.stderr.contains("was not banned"),
        "{again:?}"
    );
    Ok(())
}

#[test]
fn cidr_ban_blocks_the_prefix_only() -> Result<()> {
    let t = Topology::new("cidr", 11)?;
    let pins = PinDir::new("cidr")?;
    let _l = t.listen(PORT)?;
    attach(&t, &pins)?;
    // .2 and .3 are in 198.18.11.0/28, .40 is not; ::2/::3 are in ::/120, ::100 is not.
    detector_ok(&pins, None, &["ban", "198.18.11.0/28"])?;
    detector_ok(&pins, None, &["ban", "2001:db8:10:11::/120"])?;
    assert!(!t.can_connect(t.v4(2), PORT)?);
    assert!(!t.can_connect(t.v4(3), PORT)?);
    assert!(t.connects(t.v4(40), PORT)?);
    assert!(!t.can_connect(t.v6(2), PORT)?);
    assert!(t.connects(t.v6(0x100), PORT)?);
    // Unbanning one address inside does not lift the prefix ban; unbanning the prefix does.
    assert!(!detector(&pins, None, &["unban", &t.v4(2).to_string()])?.ok);
    assert!(!t.can_connect(t.v4(2), PORT)?);
    detector_ok(&pins, None, &["unban", "198.18.11.0/28"])?;
    assert!(t.connects(t.v4(2), PORT)?);
    Ok(())
}

#[test]
fn timed_ban_lifts_by_itself_without_a_daemon() -> Result<()> {
    let t = Topology::new("ttl", 12)?;
    let pins = PinDir::new("ttl")?;
    let _l = t.listen(PORT)?;
    attach(&t, &pins)?;
    // Check each ban right after setting it: the check must happen within its 2 s.
    detector_ok(&pins, None, &["ban", &t.v4(2).to_string(), "--for", "2s"])?;
    assert!(!t.can_connect(t.v4(2), PORT)?);
    detector_ok(&pins, None, &["ban", &t.v6(2).to_string(), "--for", "2s"])?;
    let last_ban = std::time::Instant::now();
    assert!(!t.can_connect(t.v6(2), PORT)?);
    sleep(Duration::from_millis(2600).saturating_sub(last_ban.elapsed()));
    // No detector process is running: the kernel program compares the expiry itself.
    assert!(t.connects(t.v4(2), PORT)?, "ban did not lift after 2s");
    assert!(t.connects(t.v6(2), PORT)?, "IPv6 ban did not lift after 2s");
    assert!(list_json(&pins)?.is_empty(), "expired bans are listed");
    let stats: serde_json::Value =
        serde_json::from_str(&detector_ok(&pins, None, &["stats", "--json"])?.stdout)?;
    assert!(stats["expired_hits"].as_u64().unwrap() > 0, "{stats}");
    Ok(())
}

#[test]
fn bans_survive_exit_and_second_attach_adopts_then_detach_restores() -> Result<()> {
    let t = Topology::new("pin", 13)?;
    let pins = PinDir::new("pin")?;
    let _l = t.listen(PORT)?;
    attach(&t, &pins)?;
    detector_ok(&pins, None, &["ban", &t.v4(2).to_string()])?;
    // Every detector process has exited by now; the pinned link keeps XDP attached.
    assert!(!t.can_connect(t.v4(2), PORT)?);

    let out = attach(&t, &pins)?;
    assert!(out.contains("adopted the pinned maps"), "{out}");
    assert!(out.contains("veth-s: already attached"), "{out}");
    assert!(
        hits(&pins, &t.v4(2).to_string())?.is_some(),
        "ban lost by the second attach"
    );
    assert!(!t.can_connect(t.v4(2), PORT)?);
    // Exactly one XDP link on the interface, and one program.
    let links: Vec<_> = std::fs::read_dir(&pins.path)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .collect();
    assert_eq!(links.len(), 1);

    let out = detector_ok(&pins, None, &["detach"])?.stdout;
    assert!(out.contains("veth-s: detached"), "{out}");
    assert!(!pins.path.exists(), "pin dir left behind");
    assert!(t.connects(t.v4(2), PORT)?, "traffic not restored by detach");
    Ok(())
}

#[test]
fn adopting_incompatible_pins_is_refused() -> Result<()> {
    let t = Topology::new("bad", 14)?;
    let pins = PinDir::new("bad")?;
    std::fs::create_dir_all(&pins.path)?;
    // A BANS_V4 with the wrong value size, as an older layout would have left.
    let path = pins.path.join("BANS_V4");
    let st = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args([
            "type", "hash", "key", "4", "value", "8", "entries", "16", "name", "BANS_V4",
        ])
        .status()?;
    assert!(st.success(), "bpftool map create");
    let run = detector(&pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("do not match this build"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    let run = detector(&pins, None, &["list"])?;
    assert!(
        !run.ok && run.stderr.contains("do not match this build"),
        "{}",
        run.stderr
    );
    // detach cleans up even pins it cannot interpret.
    detector_ok(&pins, None, &["detach"])?;
    assert!(!pins.path.exists());
    Ok(())
}

#[test]
fn bad_input_gives_one_clear_line_and_nonzero_exit() -> Result<()> {
    let pins = PinDir::new("input")?;
    let cases: &[(&[&str], &str)] = &[
        (&["ban", "not-an-ip"], "not an IP address"),
        (&["ban", "198.18.15.7/24"], "host bits"),
        (&["ban", "198.18.15.7", "--for", "later"], "not a duration"),
        (
            &["ban", "198.18.15.7", "--reason", "because"],
            "unknown reason",
        ),
        (&["ban", "198.18.15.7"], "nothing is attached"),
        (&["list"], "nothing is attached"),
        (&["stats"], "nothing is attached"),
        (&["detach"], "nothing is attached"),
        (
            &["attach", "--iface", "dtk-no-such0"],
            "no network interface named",
        ),
    ];
    for (args, want) in cases {
        let run = detector(&pins, None, args)?;
        assert!(!run.ok, "{args:?} succeeded");
        assert_ne!(run.code, Some(101), "{args:?} panicked: {}", run.stderr);
        assert!(run.stderr.contains(want), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    }
    // Loopback and own addresses are refused even when everything is attached.
    let t = Topology::new("input", 15)?;
    detector_ok(&pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?;
    let run = detector(&pins, None, &["ban", "127.0.0.1"])?;
    assert!(!run.ok && run.stderr.contains("loopback"), "{}", run.stderr);
    let run = detector(&pins, None, &["ban", "::/0"])?;
    assert!(!run.ok && run.stderr.contains("refusing"), "{}", run.stderr);
    // Not root: one clear line.
    for args in [
        &["list"][..],
        &["ban", "198.18.15.9"],
        &["attach", "--iface", SERVER_IFACE],
    ] {
        let run = detector_unprivileged(&pins, args)?;
        assert!(
            !run.ok && run.stderr.contains("must run as root"),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    Ok(())
}

#[test]
fn attach_upgrades_a_different_pinned_program_in_place() -> Result<()> {
    use detector::enforce::Capacity;
    use detector::enforce::testrun::TestObject;

    let t = Topology::new("upg", 16)?;
    let pins = PinDir::new("upg")?;
    let _l = t.listen(PORT)?;
    attach(&t, &pins)?;
    detector_ok(&pins, None, &["ban", &t.v4(2).to_string()])?;
    // Pretend an older build left its program pin: pin another program under that name.
    let prog_pin = pins.path.join("prog_detector_xdp");
    std::fs::remove_file(&prog_pin)?;
    let mut other = TestObject::load_bench(Capacity {
        exact: 16,
        prefix: 16,
    })?;
    other.pin_program(detector_common::bench_programs::EMPTY, &prog_pin)?;
    drop(other);

    let out = attach(&t, &pins)?;
    assert!(
        out.contains("veth-s: replaced the running XDP program"),
        "{out}"
    );
    assert!(out.contains("veth-s: already attached"), "{out}");
    // Same maps, same bans, still enforced, no second link.
    assert!(!t.can_connect(t.v4(2), PORT)?);
    assert!(t.connects(t.v4(3), PORT)?);
    // A third attach finds this build's program pinned: nothing to upgrade.
    let out = attach(&t, &pins)?;
    assert!(!out.contains("replaced"), "{out}");
    Ok(())
}

#[test]
fn reattach_after_the_interface_was_recreated() -> Result<()> {
    let t = Topology::new("replug", 17)?;
    let pins = PinDir::new("replug")?;
    attach(&t, &pins)?;
    detector_ok(&pins, None, &["ban", &t.v4(2).to_string()])?;
    // The interface goes away and comes back: the pinned link is now defunct.
    t.unplug()?;
    t.wire()?;
    let _l = t.listen(PORT)?;
    assert!(
        t.connects(t.v4(2), PORT)?,
        "a new interface has no XDP until attach"
    );
    let out = attach(&t, &pins)?;
    assert!(out.contains("veth-s: attached"), "{out}");
    assert!(
        !t.can_connect(t.v4(2), PORT)?,
        "ban not enforced after re-attach"
    );
    assert!(t.connects(t.v4(3), PORT)?);
    Ok(())
}

/// `attach` pins the re-ban program and `detector ban` (another process) extends through it;
/// with that pin gone (pins from an older build) a re-ban falls back to rewriting the entry.
/// Either way the drops counted so far stay in the entry, and `detach` removes the pin.
#[test]
fn rebans_through_the_pinned_program_or_without_it_keep_the_counted_drops() -> Result<()> {
    let t = Topology::new("reban", 18)?;
    let pins = PinDir::new("reban")?;
    let _l = t.listen(PORT)?;
    attach(&t, &pins)?;
    let reban_pin = pins.path.join("prog_detector_reban");
    assert!(reban_pin.exists(), "attach did not pin the re-ban program");
    let addr = t.v4(2).to_string();
    detector_ok(&pins, None, &["ban", &addr, "--for", "1m"])?;
    assert!(!t.can_connect(t.v4(2), PORT)?);
    let counted = hits(&pins, &addr)?.expect("the ban is listed");
    assert!(counted > 0, "no drop counted");

    let expires_in = |pins: &PinDir| -> Result<u64> {
        Ok(list_json(pins)?
            .iter()
            .find(|e| e["address"] == addr.as_str())
            .and_then(|e| e["expires_in_s"].as_u64())
            .expect("a timed ban"))
    };
    detector_ok(&pins, None, &["ban", &addr, "--for", "2h"])?;
    assert!(expires_in(&pins)? > 3600, "not extended in place");
    assert_eq!(hits(&pins, &addr)?, Some(counted));

    std::fs::remove_file(&reban_pin)?;
    detector_ok(&pins, None, &["ban", &addr, "--for", "3h"])?;
    assert!(
        expires_in(&pins)? > 2 * 3600,
        "not extended without the program"
    );
    assert_eq!(hits(&pins, &addr)?, Some(counted));

    attach(&t, &pins)?;
    assert!(reban_pin.exists(), "a second attach did not pin it again");
    detector_ok(&pins, None, &["detach"])?;
    assert!(!pins.path.exists(), "pin dir left behind");
    Ok(())
}

//! `detector ban --from` / `unban --from` / `--list` against real pinned maps.
//!
//! Run: `cargo build -p detector && DETECTOR_BIN=$PWD/target/debug/detector \
//!       cargo test -p detector-tests --test import`
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use detector_tests::bin::{PinDir, detector, detector_ok};
use detector_tests::netns::{NetNs, SERVER_IFACE, Topology};
use serde_json::Value;

fn work_dir(tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("detector-import-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `detector list --json [--list NAME]`: the addresses.
fn listed(pins: &PinDir, state: &Path, list: Option<&str>) -> Result<BTreeSet<String>> {
    let mut args = vec!["list", "--json", "--state-dir", s(state)];
    if let Some(name) = list {
        args.extend(["--list", name]);
    }
    let v: Value = serde_json::from_str(&detector_ok(pins, None, &args)?.stdout)?;
    Ok(v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect())
}

/// Pinned maps with XDP on a veth inside a namespace of its own (no traffic needed).
fn pinned_maps(pins: &PinDir, tag: &str) -> Result<NetNs> {
    pinned_maps_with(pins, tag, &[])
}

fn pinned_maps_with(pins: &PinDir, tag: &str, attach: &[&str]) -> Result<NetNs> {
    let ns = NetNs::new(&format!("dtk-{tag}-{}", std::process::id()))?;
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
    ns.ip(&["link", "set", "v0", "up"])?;
    ns.ip(&["link", "set", "v1", "up"])?;
    let mut args = vec!["attach", "--iface", "v0"];
    args.extend(attach);
    detector_ok(pins, Some(&ns), &args)?;
    Ok(ns)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_million_line_list_is_loaded_and_unloaded() -> Result<()> {
    let t = Topology::new("imp1m", 19)?;
    let pins = PinDir::new("imp1m")?;
    let dir = work_dir("1m")?;
    let state = dir.join("state");
    detector_ok(&pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?;
    // 131,072 IPv4 addresses (all of 198.18.0.0/15) and 868,928 IPv6 ones: 1,000,000 lines,
    // within the default 1,048,576 entries per family.
    let path = dir.join("big.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(f, "# a million entries")?;
    for i in 0u32..131_072 {
        writeln!(f, "198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255)?;
    }
    for i in 0u32..(1_000_000 - 131_072) {
        writeln!(f, "2001:db8:{:x}:{:x}::1 7d", i >> 16, i & 0xffff)?;
    }
    f.flush()?;
    drop(f);
    let out = detector_ok(
        &pins,
        None,
        &[
            "ban",
            "--from",
            s(&path),
            "--list",
            "big",
            "--state-dir",
            s(&state),
        ],
    )?;
    assert!(
        out.stdout.contains("loaded 1000000 of 1000000 entries"),
        "{}",
        out.stdout
    );
    let status: Value = serde_json::from_str(
        &detector_ok(&pins, None, &["status", "--json", "--state-dir", s(&state)])?.stdout,
    )?;
    assert_eq!(status["maps"]["exact_v4"], 131_072, "{status}");
    assert_eq!(status["maps"]["exact_v6"], 868_928, "{status}");
    // An entry of the list is dropped at XDP like any ban (198.18.19.2 is in 198.18.0.0/15).
    let _listeners = t.listen(2526)?;
    assert!(
        !t.can_connect(t.v4(2), 2526)?,
        "a loaded entry does not drop"
    );

    let out = detector_ok(
        &pins,
        None,
        &["unban", "--list", "big", "--state-dir", s(&state)],
    )?;
    assert!(
        out.stdout.contains("1000000 entries unbanned"),
        "{}",
        out.stdout
    );
    let status: Value = serde_json::from_str(
        &detector_ok(&pins, None, &["status", "--json", "--state-dir", s(&state)])?.stdout,
    )?;
    assert_eq!(status["maps"]["exact_v4"], 0, "{status}");
    assert_eq!(status["maps"]["exact_v6"], 0, "{status}");
    detector_ok(&pins, None, &["detach"])?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn bad_lines_are_reported_and_the_good_ones_applied() -> Result<()> {
    let pins = PinDir::new("impbad")?;
    let dir = work_dir("bad")?;
    let state = dir.join("state");
    let _maps = pinned_maps(&pins, "impbad")?;
    let path = dir.join("list.txt");
    std::fs::write(
        &path,
        "198.18.20.1 1h first\n\
         not-an-address\n\
         198.18.20.0/24 2h\n\
         198.18.21.7/24\n\
         127.0.0.1\n\
         2001:db8:20::/48 permanent hosting\n\
         198.18.20.9 soon-ish\n\
         198.18.20.10 5x\n",
    )?;
    let run = detector(
        &pins,
        None,
        &["ban", "--from", s(&path), "--state-dir", s(&state)],
    )?;
    assert!(!run.ok, "rejected lines must give a non-zero exit");
    for line in [":2:", ":4:", ":5:", ":8:"] {
        assert!(
            run.stderr.contains(line),
            "no report of line {line}: {}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("198.18.21.0/24"), "{}", run.stderr);
    assert!(run.stdout.contains("4 lines rejected"), "{}", run.stdout);
    assert_eq!(
        listed(&pins, &state, None)?,
        set(&[
            "198.18.20.1",
            "198.18.20.9",
            "198.18.20.0/24",
            "2001:db8:20::/48"
        ])
    );
    // Read from standard input, as ipset save output; and unban --from the same file.
    let ipset = dir.join("ipset.txt");
    std::fs::write(
        &ipset,
        "create bad hash:net family inet\nadd bad 198.18.22.0/24 timeout 600\nadd bad 198.18.22.7\n",
    )?;
    detector_ok(&pins, None, &["ban", "--from", s(&ipset)])?;
    assert!(listed(&pins, &state, None)?.contains("198.18.22.0/24"));
    detector_ok(&pins, None, &["unban", "--from", s(&ipset)])?;
    let now = listed(&pins, &state, None)?;
    assert!(
        !now.contains("198.18.22.0/24") && !now.contains("198.18.22.7"),
        "{now:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn reimporting_a_list_replaces_it_and_unban_list_removes_exactly_it() -> Result<()> {
    let pins = PinDir::new("implist")?;
    let _maps = pinned_maps(&pins, "implist")?;
    let dir = work_dir("list")?;
    let state = dir.join("state");
    let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
    let ban_list = |file: &Path, name: &str| {
        detector_ok(
            &pins,
            None,
            &[
                "ban",
                "--from",
                s(file),
                "--list",
                name,
                "--state-dir",
                s(&state),
            ],
        )
    };
    std::fs::write(
        &a,
        "198.18.30.1\n198.18.30.2\n198.18.30.3\n198.18.31.0/24\n",
    )?;
    ban_list(&a, "alpha")?;
    std::fs::write(&b, "198.18.30.3\n198.18.32.1\n")?;
    ban_list(&b, "beta")?;
    // A manual ban and a rule's ban of an alpha address are not alpha's to remove later.
    detector_ok(&pins, None, &["ban", "198.18.33.1", "--for", "1h"])?;
    detector_ok(
        &pins,
        None,
        // Longer than the list's 24h, so the entry now is the rule's.
        &["ban", "198.18.30.2", "--permanent", "--reason", "burst"],
    )?;
    assert_eq!(
        listed(&pins, &state, Some("alpha"))?,
        set(&["198.18.30.1", "198.18.30.3", "198.18.31.0/24"])
    );

    // alpha again without .1 and the /24, with a new .4: those two leave, .4 comes.
    std::fs::write(&a, "198.18.30.2\n198.18.30.3\n198.18.30.4\n")?;
    let out = ban_list(&a, "alpha")?;
    assert!(out.stdout.contains("2 no longer listed"), "{}", out.stdout);
    assert_eq!(
        listed(&pins, &state, Some("alpha"))?,
        set(&["198.18.30.3", "198.18.30.4"])
    );
    assert_eq!(
        listed(&pins, &state, None)?,
        set(&[
            "198.18.30.2",
            "198.18.30.3",
            "198.18.30.4",
            "198.18.32.1",
            "198.18.33.1"
        ])
    );

    // unban --list alpha: .4 goes; .3 stays (beta has it), .2 stays (a rule's ban).
    detector_ok(
        &pins,
        None,
        &["unban", "--list", "alpha", "--state-dir", s(&state)],
    )?;
    assert_eq!(
        listed(&pins, &state, None)?,
        set(&["198.18.30.2", "198.18.30.3", "198.18.32.1", "198.18.33.1"])
    );
    assert_eq!(
        listed(&pins, &state, Some("beta"))?,
        set(&["198.18.30.3", "198.18.32.1"])
    );
    let again = detector(
        &pins,
        None,
        &["unban", "--list", "alpha", "--state-dir", s(&state)],
    )?;
    assert!(
        !again.ok && again.stderr.contains("no list `alpha`"),
        "{}",
        again.stderr
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn a_full_map_leaves_nothing_half_written() -> Result<()> {
    let pins = PinDir::new("impfull")?;
    let _maps = pinned_maps_with(&pins, "impfull", &["--max-bans", "4"])?;
    let dir = work_dir("full")?;
    let state = dir.join("state");
    detector_ok(&pins, None, &["ban", "198.18.40.1", "--for", "1h"])?;
    // Five more addresses and a longer ban of .1: the fourth new one does not fit.
    let path = dir.join("too-many.txt");
    std::fs::write(
        &path,
        "198.18.40.1 7d\n198.18.40.2\n198.18.40.3\n198.18.40.4\n198.18.40.5\n198.18.40.6\n",
    )?;
    let run = detector(&pins, None, &["ban", "--from", s(&path)])?;
    assert!(!run.ok, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("full"), "{}", run.stderr);
    // Rolled back: only the earlier ban, with its own (1h) expiry.
    let v: Value = serde_json::from_str(
        &detector_ok(&pins, None, &["list", "--json", "--state-dir", s(&state)])?.stdout,
    )?;
    let bans = v.as_array().unwrap();
    assert_eq!(bans.len(), 1, "{v}");
    assert_eq!(bans[0]["address"], "198.18.40.1");
    assert!(bans[0]["expires_in_s"].as_u64().unwrap() <= 3600, "{v}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

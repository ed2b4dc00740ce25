//! `cargo xtask bench import`: `detector ban --from` throughput (entries/s) for a generated
//! list, against the old way — one `detector ban ADDR` process per entry — for a small N, in
//! the same run. Release build, as root; XDP attached to a veth in a private namespace.
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::setup::check_build_prereqs;
use crate::util::{build_bins, ensure_bpffs, require_root, run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Entries in the generated list: all of 198.18.0.0/15 first (131,072), then IPv6 in
    /// 2001:db8::/32. At most 2,000,000 (the default map capacity per family).
    #[arg(long, default_value_t = 1_000_000)]
    entries: u32,
    /// `detector ban ADDR` processes for the one-process-per-ban reference.
    #[arg(long, default_value_t = 200)]
    reference: u32,
}

/// Removes the namespace and the pins on every exit path.
struct Scratch {
    ns: String,
    pins: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        if let Ok(entries) = std::fs::read_dir(&self.pins) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pins);
    }
}

fn write_list(path: &Path, n: u32) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        if i < 131_072 {
            writeln!(f, "198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255)?;
        } else {
            let j = i - 131_072;
            writeln!(f, "2001:db8:{:x}:{:x}::1", j >> 16, j & 0xffff)?;
        }
    }
    f.flush()?;
    Ok(())
}

fn timed(cmd: &mut Command) -> Result<f64> {
    let started = Instant::now();
    let out = cmd.output().context("running detector")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{:?} failed: {}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

pub fn run(opts: Options) -> Result<()> {
    if opts.entries == 0 || opts.entries > 2_000_000 {
        bail!("--entries must be between 1 and 2000000");
    }
    check_build_prereqs()?;
    require_root("the import benchmark attaches XDP and writes the ban maps")?;
    let bins = build_bins(true, &[])?;
    let detector = bins.join("detector");
    ensure_bpffs()?;
    let pid = std::process::id();
    let scratch = Scratch {
        ns: format!("dtk-bench-import-{pid}"),
        pins: format!("/sys/fs/bpf/detector-bench-import-{pid}"),
    };
    run_cmd(Command::new("ip").args(["netns", "add", &scratch.ns]))?;
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["-n", &scratch.ns]).args(args);
        run_cmd(&mut c)
    };
    in_ns(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
    in_ns(&["link", "set", "v0", "up"])?;
    in_ns(&["link", "set", "v1", "up"])?;
    // nsenter, not `ip netns exec`: the latter remounts /sys, hiding the host's bpffs.
    run_cmd(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", scratch.ns))
            .arg(&detector)
            .args(["attach", "--iface", "v0", "--pin-dir", &scratch.pins]),
    )?;

    let dir = workspace_root().join("target/bench-import");
    std::fs::create_dir_all(&dir)?;
    let list = dir.join("list.txt");
    write_list(&list, opts.entries)?;
    let detector_cmd = |args: &[&str]| {
        let mut c = Command::new(&detector);
        c.args(args)
            .args(["--pin-dir", &scratch.pins])
            .env_remove("DETECTOR_PIN_DIR");
        c
    };

    // The reference: one process per ban, in 198.19.255.0/24 (outside the list's v4 part
    // only if the list is short; unbanned again below either way).
    let reference = opts.reference.min(250);
    let started = Instant::now();
    for i in 0..reference {
        let addr = format!("198.19.255.{}", i + 1);
        timed(&mut detector_cmd(&["ban", &addr, "--for", "1h"]))?;
    }
    let per_process = f64::from(reference) / started.elapsed().as_secs_f64();
    for i in 0..reference {
        let addr = format!("198.19.255.{}", i + 1);
        timed(&mut detector_cmd(&["unban", &addr]))?;
    }

    let list_arg = list.to_str().context("non-UTF-8 path")?;
    let load = timed(&mut detector_cmd(&[
        "ban", "--from", list_arg, "--for", "1h",
    ]))?;
    // Re-bans (every entry extended): in place through the pinned re-ban program, then by
    // read-then-write with that pin removed (what pins from older builds get).
    let extend_in_place = timed(&mut detector_cmd(&[
        "ban", "--from", list_arg, "--for", "2h",
    ]))?;
    let reban_pin = Path::new(&scratch.pins).join("prog_detector_reban");
    std::fs::remove_file(&reban_pin)
        .with_context(|| format!("removing {}", reban_pin.display()))?;
    let extend_replacing = timed(&mut detector_cmd(&[
        "ban", "--from", list_arg, "--for", "3h",
    ]))?;
    let unload = timed(&mut detector_cmd(&["unban", "--from", list_arg]))?;
    let _ = std::fs::remove_file(&list);
    let n = f64::from(opts.entries);
    println!("import benchmark (release build, wall-clock rates; the machine may be shared)");
    println!(
        "  detector ban ADDR, one process per ban ({reference} bans): {:>10.0} entries/s",
        per_process
    );
    println!(
        "  detector ban --from FILE ({} entries):               {:>10.0} entries/s ({load:.2} s)",
        opts.entries,
        n / load
    );
    println!(
        "  re-ban --from FILE, in place ({} entries):          {:>10.0} entries/s ({extend_in_place:.2} s)",
        opts.entries,
        n / extend_in_place
    );
    println!(
        "  re-ban --from FILE, replacing ({} entries):         {:>10.0} entries/s ({extend_replacing:.2} s)",
        opts.entries,
        n / extend_replacing
    );
    println!(
        "  detector unban --from FILE ({} entries):             {:>10.0} entries/s ({unload:.2} s)",
        opts.entries,
        n / unload
    );
    println!(
        "  speed-up of ban --from over one process per ban: {:.0}x",
        (n / load) / per_process
    );
    detector_testkit::bench::summary(
        &format!("bulk bans: `detector ban --from`, {} entries", opts.entries),
        &format!("{:.0} entries/s", n / load),
        &format!("{per_process:.0}/s, one `detector ban` process per ban"),
        ">= 100k/s",
    );
    run_cmd(&mut detector_cmd(&["detach"]))?;
    drop(scratch);
    Ok(())
}

//! The daemon's bans survive what empties bpffs: after `detector detach` (or a reboot) the
//! restarted daemon writes the engine's active bans again with their time left, while a ban an
//! administrator removed with `detector unban` stays removed and is forgotten by the engine.
//! Runs the real binary on a log file, with maps pinned but no interface (nothing is dropped;
//! only the maps matter here).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use detector_tests::bin::{PinDir, detector_bin, detector_ok};

const BOT: &str = "198.18.0.77";

/// `detector run` on one log file; SIGTERM and reap on drop.
struct Run {
    child: Option<Child>,
    log: PathBuf,
}

impl Run {
    fn start(pins: &PinDir, dir: &Path, n: u32) -> Result<Run> {
        let log = dir.join(format!("daemon-{n}.log"));
        let child = Command::new(detector_bin())
            .arg("run")
            .arg("--config")
            .arg(dir.join("detector.toml"))
            .arg("--pin-dir")
            .arg(&pins.path)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--file")
            .arg(dir.join("mail.log"))
            .env_remove("DETECTOR_PIN_DIR")
            .env("DETECTOR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()
            .context("starting detector run")?;
        let mut run = Run {
            child: Some(child),
            log,
        };
        run.wait_for("following logs")?;
        Ok(run)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.text().contains(needle) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait()? {
                bail!("detector run exited ({st}):\n{}", self.text());
            }
            if Instant::now() > deadline {
                bail!("no `{needle}` after 20 s:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGTERM (the daemon saves its state) and wait for the exit.
    fn stop(mut self) -> Result<String> {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let st = child.wait()?;
        anyhow::ensure!(st.success(), "detector run: {st}\n{}", self.text());
        Ok(self.text())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// The live ban of `addr` in the pinned maps: (seconds left, reason).
fn kernel_ban(pins: &PinDir, addr: &str) -> Result<Option<(u64, String)>> {
    let out = detector_ok(pins, None, &["list", "--json"])?;
    let all: serde_json::Value = serde_json::from_str(&out.stdout)?;
    Ok(all
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .map(|b| {
            (
                b["expires_in_s"].as_u64().unwrap_or(u64::MAX),
                b["reason"].as_str().unwrap_or_default().to_string(),
            )
        }))
}

fn wait_banned(pins: &PinDir, addr: &str) -> Result<(u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(b) = kernel_ban(pins, addr)? {
            return Ok(b);
        }
        if Instant::now() > deadline {
            bail!("{addr} not banned after 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A work directory with a config and a log in which BOT fails to log in twice, now (a
/// slow-repeat ban for 1h, the first offence's duration; no grace period, so the ban is made
/// at the second failure instead of being held for a success that could cancel it).
fn setup(tag: &str) -> Result<TempDir> {
    let dir = std::env::temp_dir().join(format!("detector-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("detector.toml"),
        "[daemon]\npersist_interval = \"1h\"\nsweep_interval = \"1s\"\n\n\
         [sources]\nfile_start = \"beginning\"\n\n\
         [engine]\ngrace_period = \"0s\"\n",
    )?;
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f+00:00");
    let lines: String = (1..=2)
        .map(|i| {
            format!(
                "{now} mail postfix/submission/smtpd[10{i}]: warning: unknown[{BOT}]: \
                 SASL LOGIN authentication failed: UGFzc3dvcmQ6\n"
            )
        })
        .collect();
    std::fs::write(dir.join("mail.log"), lines)?;
    Ok(TempDir(dir))
}

#[test]
fn bans_are_written_again_after_a_detach_and_admin_unbans_stay_unbanned() -> Result<()> {
    let pins = PinDir::new("rest")?;
    let dir = setup("restart")?;

    // The engine bans BOT from the log; the ban is in the map.
    let first = Run::start(&pins, &dir.0, 1)?;
    let (left, reason) = wait_banned(&pins, BOT)?;
    assert_eq!(reason, "slow-repeat");
    assert!(left > 3500 && left <= 3600, "{left}");
    first.stop()?;

    // Detach removes every pin (as a reboot empties bpffs); the engine's snapshot keeps the ban.
    detector_ok(&pins, None, &["detach"])?;
    let second = Run::start(&pins, &dir.0, 2)?;
    let (left, reason) =
        kernel_ban(&pins, BOT)?.with_context(|| format!("ban not restored:\n{}", second.text()))?;
    assert_eq!(reason, "slow-repeat");
    // The time left, not a fresh hour (a few seconds went by) and not permanent.
    assert!(left > 3500 && left <= 3600, "{left}");
    assert!(second.text().contains("\"restored\":1") || second.text().contains("restored=1"));
    second.stop()?;

    // An administrator unbans while the daemon is stopped: the restart must not ban again,
    // and the engine forgets the ban.
    detector_ok(&pins, None, &["unban", BOT])?;
    let third = Run::start(&pins, &dir.0, 3)?;
    assert_eq!(kernel_ban(&pins, BOT)?, None, "{}", third.text());
    let log = third.stop()?;
    assert!(log.contains("the engine forgets the ban"), "{log}");

    detector_ok(&pins, None, &["detach"])?;
    Ok(())
}

/// The daemon never drops a ban the kernel has no room for: with room for two exact bans, a
/// third bot's ban evicts the one ending soonest (logged, counted), and the evicted bot's
/// ban is forgotten by the engine (so its next offence bans it again).
#[test]
fn a_full_map_makes_room_for_the_daemons_next_ban() -> Result<()> {
    let pins = PinDir::new("full")?;
    let dir = std::env::temp_dir().join(format!("detector-fullmap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    std::fs::write(
        dir.0.join("detector.toml"),
        "[daemon]\npersist_interval = \"1h\"\nsweep_interval = \"1s\"\n\n\
         [sources]\nfile_start = \"beginning\"\n\n\
         [xdp]\nmax_exact_bans = 2\n\n\
         [engine]\ngrace_period = \"0s\"\n",
    )?;
    // Three bots, two failures each (slow-repeat: 1 h): a second apart, so the first bot's
    // ban ends first.
    let bots = ["198.18.0.81", "198.18.0.82", "198.18.0.83"];
    let mut lines = String::new();
    for (i, bot) in bots.iter().enumerate() {
        let at = chrono::Utc::now() - chrono::Duration::seconds(3 - i as i64);
        let at = at.format("%Y-%m-%dT%H:%M:%S%.6f+00:00");
        for pid in 0..2 {
            lines.push_str(&format!(
                "{at} mail postfix/submission/smtpd[2{i}{pid}]: warning: unknown[{bot}]: \
                 SASL LOGIN authentication failed: UGFzc3dvcmQ6\n"
            ));
        }
    }
    std::fs::write(dir.0.join("mail.log"), lines)?;
    let mut run = Run::start(&pins, &dir.0, 1)?;
    wait_banned(&pins, bots[2])?;
    run.wait_for("ban map full: made room")?;
    assert!(kernel_ban(&pins, bots[1])?.is_some(), "{}", run.text());
    assert_eq!(kernel_ban(&pins, bots[0])?, None, "{}", run.text());
    let log = run.stop()?;
    assert!(log.contains("evicted the ban of 198.18.0.81/32"), "{log}");
    assert!(
        log.contains("evicted from the full map; the engine forgets the ban"),
        "{log}"
    );
    assert!(!log.contains("ban not written"), "{log}");
    detector_ok(&pins, None, &["detach"])?;
    Ok(())
}

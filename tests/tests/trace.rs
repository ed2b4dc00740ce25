//! `detector trace` against the real attached program: verdict lines for traced sources only
//! (drop with the ban's reason, pass without one), off again after Ctrl-C, and a trace whose
//! process was killed switched off by the XDP program itself at its deadline.
use std::thread::sleep;
use std::time::Duration;

use anyhow::Result;
use detector_tests::bin::{Background, PinDir, detector, detector_ok};
use detector_tests::netns::{SERVER_IFACE, Topology};

const PORT: u16 = 2525;
/// How long to wait for a line before calling it a hang (not a speed check).
const PATIENCE: Duration = Duration::from_secs(30);

fn status(pins: &PinDir) -> Result<String> {
    Ok(detector_ok(pins, None, &["trace", "--status"])?.stdout)
}

#[test]
fn trace_shows_verdicts_and_bans_and_switches_itself_off() -> Result<()> {
    let t = Topology::new("trace", 19)?;
    let pins = PinDir::new("trace")?;
    let _l = t.listen(PORT)?;
    detector_ok(&pins, Some(&t.server), &["attach", "--iface", SERVER_IFACE])?;
    assert!(status(&pins)?.contains("tracing is off"));
    let banned = t.v4(2).to_string();
    detector_ok(
        &pins,
        None,
        &["ban", &banned, "--for", "1h", "--reason", "probe-login"],
    )?;

    // .0/30 covers .2 (banned) and .3 (not banned); .40 is outside and must not show up.
    let mut trace = Background::spawn(&pins, &["trace", "198.18.19.0/30", "--for", "10m"])?;
    trace.wait_for("tracing 198.18.19.0/30 for 10m", PATIENCE)?;
    assert!(
        status(&pins)?.contains("tracing 198.18.19.0/30 for"),
        "the switch is on"
    );
    assert!(t.connects(t.v4(40), PORT)?);
    assert!(!t.can_connect(t.v4(2), PORT)?);
    assert!(t.connects(t.v4(3), PORT)?);
    let drop = trace.wait_for(&format!("{banned} drop"), PATIENCE)?;
    assert!(
        drop.contains(&format!(
            "{banned} drop: matched exact ban, reason probe-login, 59m"
        )),
        "{drop}"
    );
    let pass = trace.wait_for("198.18.19.3 pass", PATIENCE)?;
    assert!(pass.ends_with("198.18.19.3 pass: no ban"), "{pass}");
    assert!(
        !trace.seen.iter().any(|l| l.contains("198.18.19.40")),
        "an untraced source was logged: {:?}",
        trace.seen
    );

    // Ctrl-C: the trace ends cleanly and the switch is off again.
    trace.signal(libc::SIGINT)?;
    assert!(trace.wait()?, "{:?}", trace.seen);
    assert_eq!(trace.seen.last().map(String::as_str), Some("tracing off"));
    assert!(status(&pins)?.contains("tracing is off"));

    // A prefix ban, traced over IPv6; then the trace process dies without switching off.
    detector_ok(&pins, None, &["ban", "2001:db8:10:19::/120", "--permanent"])?;
    let v6 = t.v6(2).to_string();
    let mut dying = Background::spawn(&pins, &["trace", &v6, "--for", "8s"])?;
    dying.wait_for(&format!("tracing {v6} for 8s"), PATIENCE)?;
    assert!(!t.can_connect(t.v6(2), PORT)?);
    let line = dying.wait_for(&format!("{v6} drop"), PATIENCE)?;
    assert!(
        line.ends_with(": matched prefix ban, reason manual, permanent"),
        "{line}"
    );
    dying.signal(libc::SIGKILL)?;
    assert!(!dying.wait()?);
    assert!(
        status(&pins)?.contains(&format!("tracing {v6} for")),
        "still on after the process died"
    );
    // Past its deadline the entry reads as expired until the program sees a frame; that frame
    // makes the program switch it off itself.
    let mut waited = Duration::ZERO;
    while !status(&pins)?.contains("has expired") {
        anyhow::ensure!(waited < PATIENCE, "the trace never expired");
        sleep(Duration::from_millis(500));
        waited += Duration::from_millis(500);
    }
    assert!(!t.can_connect(t.v6(2), PORT)?);
    let after = status(&pins)?;
    assert!(after.contains("tracing is off"), "{after}");

    // --stop ends a trace that another process left on.
    let mut left_on = Background::spawn(&pins, &["trace", &banned, "--for", "10m"])?;
    left_on.wait_for("tracing", PATIENCE)?;
    left_on.signal(libc::SIGKILL)?;
    left_on.wait()?;
    // One trace at a time: a second one is refused while the first is on.
    let second = detector(&pins, None, &["trace", &t.v4(3).to_string(), "--for", "5s"])?;
    assert!(
        !second.ok && second.stderr.contains("another trace is on"),
        "{second:?}"
    );
    let stopped = detector_ok(&pins, None, &["trace", "--stop"])?.stdout;
    assert!(
        stopped.contains(&format!("tracing {banned} for")),
        "{stopped}"
    );
    assert!(status(&pins)?.contains("tracing is off"));
    Ok(())
}

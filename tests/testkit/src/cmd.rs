//! Running external commands: one runner for xtask and the test harness.
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs a command to completion (stdin from /dev/null) and returns its stdout; a non-zero
/// exit is an error that carries the command line and its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed with {}: {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with the caller's stdio, echoing it first (`+ cmd args`), and fails with
/// its exit status: for long steps whose progress the user should see.
pub fn run_shown(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", display(cmd));
    }
    Ok(())
}

/// The command line as a user would type it (for messages).
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_returns_stdout_and_errors_carry_stderr() {
        let out = output(Command::new("sh").args(["-c", "echo hello"])).unwrap();
        assert_eq!(out, "hello\n");
        let err = output(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sh -c echo oops >&2; exit 3 failed"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
    }

    #[test]
    fn run_shown_fails_on_a_non_zero_exit() {
        run_shown(Command::new("true").arg("x")).unwrap();
        let err = run_shown(&mut Command::new("false")).unwrap_err();
        assert!(format!("{err:#}").contains("false failed with"), "{err:#}");
    }
}

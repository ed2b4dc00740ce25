//! `ban --from` / `unban --from` / `unban --list`: the CLI side of [`crate::blocklist`].
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use crate::blocklist::{self, BadLine, Import};
use crate::enforce::{Enforcer, Reason};
use crate::store::StateDir;
use crate::{Error, Result};

/// Bad lines printed before "... and N more".
const SHOW_BAD: usize = 50;

fn read_input(path: &Path) -> Result<String> {
    let mut data = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| Error::io("standard input", e))?;
    } else {
        data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}

fn report_bad(source: &Path, bad: &[BadLine]) {
    for b in bad.iter().take(SHOW_BAD) {
        eprintln!("detector: {}:{}: {}", source.display(), b.line, b.why);
    }
    if bad.len() > SHOW_BAD {
        eprintln!("detector: ... and {} more", bad.len() - SHOW_BAD);
    }
}

pub fn ban_from(args: &super::ban::Args) -> Result<ExitCode> {
    let from = args
        .from
        .as_deref()
        .expect("clap requires a target or --from");
    if let Some(name) = &args.list {
        blocklist::lists::check_name(name)?;
    }
    let parsed = blocklist::parse::parse(&read_input(from)?);
    let (config, state_dir) = args.state.load()?;
    let mut enforcer = Enforcer::open(&args.state.pin.pin_dir)?;
    enforcer.set_allowlist(
        crate::enforce::Allowlist::new(config.engine.allowlist.clone())
            .with_infrastructure(crate::enforce::host_infrastructure()),
    );
    let state = match &args.list {
        Some(_) => Some(StateDir::open(&state_dir)?),
        None => None,
    };
    let opts = Import {
        default_ttl: (!args.permanent).then_some(args.ttl),
        reason: args.reason.unwrap_or(Reason::Blocklist),
        list: args.list.clone(),
    };
    let total = parsed.entries.len();
    let report = blocklist::import(&mut enforcer, state.as_ref(), parsed.entries, &opts)?;
    let mut bad = parsed.bad;
    bad.extend(report.refused.iter().cloned());
    bad.sort_by_key(|b| b.line);
    report_bad(from, &bad);
    let w = report.written;
    print!(
        "loaded {} of {total} entries from {} ({}): {} added, {} extended, {} unchanged",
        w.added + w.extended + w.unchanged,
        from.display(),
        parsed.format,
        w.added,
        w.extended,
        w.unchanged,
    );
    if let Some(name) = &args.list {
        print!(
            "; list {name}: {} no longer listed, unbanned",
            report.removed
        );
    }
    println!("; {} lines rejected", bad.len());
    if enforcer.attached_interfaces().is_empty() {
        eprintln!(
            "detector: warning: the XDP program is not attached to any interface; run `detector attach`"
        );
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn unban_from(args: &super::unban::Args) -> Result<ExitCode> {
    let mut enforcer = Enforcer::open(&args.state.pin.pin_dir)?;
    if let Some(name) = &args.list {
        blocklist::lists::check_name(name)?;
        let (_, state_dir) = args.state.load()?;
        let state = StateDir::open(&state_dir)?;
        return match blocklist::unban_list(&mut enforcer, &state, name)? {
            Some(n) => {
                println!("list {name}: {n} entries unbanned; list removed");
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "detector: there is no list `{name}` in {}",
                    state_dir.display()
                );
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let from = args
        .from
        .as_deref()
        .expect("clap requires a target, --from or --list");
    let parsed = blocklist::parse::parse(&read_input(from)?);
    report_bad(from, &parsed.bad);
    let (removed, absent) = blocklist::unban_entries(&mut enforcer, &parsed.entries)?;
    println!(
        "unbanned {removed} entries from {}; {absent} were not banned; {} lines rejected",
        from.display(),
        parsed.bad.len()
    );
    Ok(if parsed.bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

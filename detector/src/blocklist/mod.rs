//! Bulk blocklists: `detector ban --from FILE` / `unban --from FILE`, optionally as a named
//! list (`--list NAME`) that a re-import replaces and `unban --list NAME` removes exactly.
//!
//! Everything is checked before anything is written: unreadable lines and entries the
//! allowlist refuses are reported by line number and left out; the rest is written by one
//! process holding the maps ([`Enforcer::ban_many`], all or nothing).
use std::collections::HashSet;
use std::time::Duration;

use ipnet::IpNet;

use crate::enforce::{BulkOutcome, Enforcer, Reason, canonical};
use crate::store::StateDir;

pub mod lists;
pub mod parse;

pub use parse::{BadLine, Entry, Parsed};

/// How to import.
#[derive(Clone, Debug)]
pub struct Import {
    /// For entries without a duration column; `None` = permanent.
    pub default_ttl: Option<Duration>,
    pub reason: Reason,
    /// Tag the entries with this list name (and replace what the list held before).
    pub list: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub written: BulkOutcome,
    /// Refused by the allowlist / never-ban rules (with line numbers).
    pub refused: Vec<BadLine>,
    /// Entries of the list's previous import that are no longer in it and were unbanned.
    pub removed: usize,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
            a.contains(&b.network()) || b.contains(&a.network())
        }
        _ => false,
    }
}

/// Splits off the entries that touch a protected network.
fn refuse_protected(entries: &mut Vec<Entry>, protected: &[IpNet]) -> Vec<BadLine> {
    let mut refused = Vec::new();
    entries.retain(|e| match protected.iter().find(|p| overlaps(&e.net, p)) {
        Some(p) => {
            refused.push(BadLine {
                line: e.line,
                why: format!("refusing to ban {}: it overlaps the protected {p}", e.net),
            });
            false
        }
        None => true,
    });
    refused
}

/// Applies a parsed list. With `opts.list`, prefixes the list held before and no longer
/// holds are unbanned (only while the kernel still has them as `blocklist` and no other list
/// holds them), and the list's index is rewritten.
pub fn import(
    enforcer: &mut Enforcer,
    state: Option<&StateDir>,
    mut entries: Vec<Entry>,
    opts: &Import,
) -> crate::Result<ImportReport> {
    let protected = enforcer.allowlist().protected_nets();
    let refused = refuse_protected(&mut entries, &protected);
    let bans: Vec<(IpNet, Option<Duration>)> = entries
        .iter()
        .map(|e| (e.net, e.ttl.unwrap_or(opts.default_ttl)))
        .collect();
    let written = enforcer.ban_many(&bans, opts.reason)?;
    let mut removed = 0;
    if let (Some(name), Some(state)) = (&opts.list, state) {
        let now: HashSet<IpNet> = entries.iter().map(|e| e.net).collect();
        let before = lists::read(state.path(), name)?.unwrap_or_default();
        let stale: Vec<IpNet> = before
            .into_iter()
            .map(|(n, _)| canonical(n))
            .filter(|n| !now.contains(n))
            .collect();
        removed = remove_list_entries(enforcer, state, name, &stale)?;
        lists::write(state, name, &entries)?;
    }
    Ok(ImportReport {
        written,
        refused,
        removed,
    })
}

/// Unbans `nets` of list `name` that are still its own: a `blocklist` ban in the kernel that
/// no other list holds (an entry re-banned since by a rule keeps its ban).
fn remove_list_entries(
    enforcer: &mut Enforcer,
    state: &StateDir,
    name: &str,
    nets: &[IpNet],
) -> crate::Result<usize> {
    if nets.is_empty() {
        return Ok(0);
    }
    let others = lists::membership(state.path());
    let mut removed = 0;
    for net in nets {
        let elsewhere = others
            .get(net)
            .is_some_and(|names| names.iter().any(|n| n != name));
        if elsewhere {
            continue;
        }
        if let Some(entry) = enforcer.entry(*net)?
            && entry.reason == Reason::Blocklist
            && enforcer.unban(*net)?
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// `unban --list NAME`: removes that list's entries and its index. `None`: no such list.
pub fn unban_list(
    enforcer: &mut Enforcer,
    state: &StateDir,
    name: &str,
) -> crate::Result<Option<usize>> {
    let Some(entries) = lists::read(state.path(), name)? else {
        return Ok(None);
    };
    let nets: Vec<IpNet> = entries.into_iter().map(|(n, _)| canonical(n)).collect();
    let removed = remove_list_entries(enforcer, state, name, &nets)?;
    lists::remove(state, name)?;
    Ok(Some(removed))
}

/// `unban --from FILE`: (removed, were not banned).
pub fn unban_entries(enforcer: &mut Enforcer, entries: &[Entry]) -> crate::Result<(usize, usize)> {
    let (mut removed, mut absent) = (0, 0);
    for e in entries {
        if enforcer.unban(e.net)? {
            removed += 1;
        } else {
            absent += 1;
        }
    }
    Ok((removed, absent))
}

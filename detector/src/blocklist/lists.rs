//! Named lists (`--list NAME`): which prefixes a list put in the maps, kept in the state
//! directory as `list.NAME.txt` (one `prefix<TAB>note` line each). The kernel only knows the
//! reason `blocklist`; this index is what makes `unban --list`, `list --list` and a replacing
//! re-import exact.
use std::collections::HashMap;
use std::path::Path;

use ipnet::IpNet;

use super::parse::Entry;
use crate::store::StateDir;
use crate::{Error, Result};

const PREFIX: &str = "list.";
const SUFFIX: &str = ".txt";

/// Letters, digits, `-`, `_` and `.`, 1 to 64 of them, not starting with a dot.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "`{name}` is not a list name (1-64 letters, digits, `-`, `_`, `.`)"
        )))
    }
}

fn file_name(name: &str) -> String {
    format!("{PREFIX}{name}{SUFFIX}")
}

/// The prefixes (and notes) of list `name`; `None` if there is no such list.
pub fn read(state_dir: &Path, name: &str) -> Result<Option<Vec<(IpNet, String)>>> {
    check_name(name)?;
    let path = state_dir.join(file_name(name));
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let text = String::from_utf8_lossy(&data);
    Ok(Some(
        text.lines()
            .filter_map(|l| {
                let (net, note) = l.split_once('\t').unwrap_or((l, ""));
                net.parse().ok().map(|n| (n, note.to_string()))
            })
            .collect(),
    ))
}

pub fn write(state: &StateDir, name: &str, entries: &[Entry]) -> Result<()> {
    check_name(name)?;
    let mut text = String::with_capacity(entries.len() * 24);
    for e in entries {
        text.push_str(&e.net.to_string());
        text.push('\t');
        // One line per entry: no tabs or newlines inside a note.
        let note = e.note.as_deref().unwrap_or("");
        text.extend(note.chars().map(|c| if c.is_control() { ' ' } else { c }));
        text.push('\n');
    }
    state.write_atomic(&file_name(name), text.as_bytes())
}

pub fn remove(state: &StateDir, name: &str) -> Result<()> {
    check_name(name)?;
    let path = state.file(&file_name(name));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Names of every list in the state directory.
pub fn names(state_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let f = e.file_name().to_str()?.to_string();
            let name = f.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.to_string();
            check_name(&name).ok().map(|()| name)
        })
        .collect();
    out.sort();
    out
}

/// prefix -> the lists holding it (for `list` and for exact removal).
pub fn membership(state_dir: &Path) -> HashMap<IpNet, Vec<String>> {
    let mut out: HashMap<IpNet, Vec<String>> = HashMap::new();
    for name in names(state_dir) {
        if let Ok(Some(entries)) = read(state_dir, &name) {
            for (net, _) in entries {
                out.entry(net).or_default().push(name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["spamhaus-drop", "a", "list_2.v4"] {
            check_name(good).unwrap();
        }
        for bad in ["", "../x", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn index_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let entries = vec![
            Entry {
                net: "198.51.100.0/24".parse().unwrap(),
                ttl: None,
                note: Some("a\tb".into()),
                line: 1,
            },
            Entry {
                net: "2001:db8::1/128".parse().unwrap(),
                ttl: None,
                note: None,
                line: 2,
            },
        ];
        write(&state, "drop", &entries).unwrap();
        let back = read(dir.path(), "drop").unwrap().unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].1, "a b");
        assert_eq!(names(dir.path()), ["drop"]);
        assert_eq!(membership(dir.path())[&entries[1].net], ["drop"]);
        remove(&state, "drop").unwrap();
        assert!(read(dir.path(), "drop").unwrap().is_none());
    }
}

//! Where each source got to: the last position whose line the engine has fully processed.
//!
//! The daemon calls [`Checkpoints::commit`] after the engine has handled a line (cheap, in
//! memory) and [`Checkpoints::save`] now and then (every second or so, and on shutdown). On the
//! next start each source resumes right after its committed position, so a clean restart
//! neither loses nor repeats a line. After a crash, the lines since the last save are read
//! again (at-least-once), never skipped.
//!
//! File format (`checkpoints.json`):
//! ```json
//! { "version": 1,
//!   "positions": {
//!     "journal": { "kind": "journal", "cursor": "s=…;i=…;b=…;m=…;t=…;x=…" },
//!     "file:/var/log/mail.log": { "kind": "file", "path": "/var/log/mail.log",
//!                                 "dev": 2049, "inode": 1234, "offset": 5678 } } }
//! ```
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Loaded, StateDir};
use crate::source::{Position, SourceId};
use crate::{Error, Result};

const VERSION: u32 = 1;

/// Committed source positions, keyed by [`SourceId`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoints {
    positions: BTreeMap<String, Position>,
    dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    positions: BTreeMap<String, Position>,
}

impl Checkpoints {
    /// The file name inside the state directory.
    pub const FILE_NAME: &'static str = "checkpoints.json";

    /// Loads the checkpoints. A missing file gives empty checkpoints (first start); a damaged
    /// one is quarantined as `checkpoints.json.<time>.bad` and also gives empty checkpoints, so
    /// every source uses its configured start (by default: only new entries). A file written
    /// by a newer detector is an error rather than something to throw away.
    pub fn load(dir: &StateDir) -> Result<Self> {
        match Self::read(dir)? {
            Loaded::Found(checkpoints) => Ok(checkpoints),
            _ => Ok(Self::default()),
        }
    }

    /// Reads the checkpoints, saying whether the file was missing or damaged (a damaged file
    /// is quarantined, or left in place when `dir` is read-only).
    pub fn read(dir: &StateDir) -> Result<Loaded<Self>> {
        let value = match dir.read_json::<serde_json::Value>(Self::FILE_NAME)? {
            Loaded::Found(value) => value,
            Loaded::Missing => return Ok(Loaded::Missing),
            Loaded::Quarantined { bad_copy, reason } => {
                return Ok(Loaded::Quarantined { bad_copy, reason });
            }
            Loaded::Unreadable { reason } => return Ok(Loaded::Unreadable { reason }),
        };
        let version = value.get("version").and_then(|v| v.as_u64());
        if let Some(v) = version.filter(|&v| v > u64::from(VERSION)) {
            return Err(Error::Store(format!(
                "{}: format version {v} is newer than this detector understands \
                 ({VERSION}); move the file away to start from scratch",
                dir.file(Self::FILE_NAME).display()
            )));
        }
        match serde_json::from_value::<OnDisk>(value) {
            Ok(disk) => Ok(Loaded::Found(Checkpoints {
                positions: disk.positions,
                dirty: false,
            })),
            Err(e) => dir.damaged(Self::FILE_NAME, e.to_string()),
        }
    }

    /// The resume function the sources take: the committed position of a source.
    pub fn resume(&self) -> impl Fn(&SourceId) -> Option<Position> + '_ {
        |id| self.get(id).cloned()
    }

    /// The committed position of `source`, if any.
    pub fn get(&self, source: &SourceId) -> Option<&Position> {
        self.positions.get(source.as_str())
    }

    /// Records that every line of `source` up to and including `position` has been processed.
    pub fn commit(&mut self, source: &SourceId, position: &Position) {
        match self.positions.get_mut(source.as_str()) {
            Some(current) if current == position => {}
            Some(current) => {
                current.clone_from(position);
                self.dirty = true;
            }
            None => {
                self.positions
                    .insert(source.as_str().to_owned(), position.clone());
                self.dirty = true;
            }
        }
    }

    /// Whether anything was committed since the last load or save.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// All committed positions, by source id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Position)> {
        self.positions.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Writes the checkpoints atomically (blocking; fsyncs) and clears the dirty flag.
    pub fn save(&mut self, dir: &StateDir) -> Result<()> {
        let disk = OnDisk {
            version: VERSION,
            positions: self.positions.clone(),
        };
        dir.write_json(Self::FILE_NAME, &disk)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;

    fn file_pos(offset: u64) -> Position {
        Position::File {
            path: PathBuf::from("/var/log/mail.log"),
            dev: 2049,
            inode: 77,
            offset,
        }
    }

    #[test]
    fn commit_save_and_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let mut cp = Checkpoints::load(&dir).unwrap();
        assert!(cp.is_empty() && !cp.is_dirty());

        let journal = SourceId::journal(None);
        let file = SourceId::file(std::path::Path::new("/var/log/mail.log"));
        cp.commit(
            &journal,
            &Position::Journal {
                cursor: "s=1;i=2".into(),
            },
        );
        cp.commit(&file, &file_pos(10));
        cp.commit(&file, &file_pos(42));
        assert!(cp.is_dirty());
        cp.save(&dir).unwrap();
        assert!(!cp.is_dirty());
        cp.commit(&file, &file_pos(42));
        assert!(
            !cp.is_dirty(),
            "committing the same position again is not a change"
        );

        let again = Checkpoints::load(&dir).unwrap();
        assert_eq!(
            again.get(&journal),
            Some(&Position::Journal {
                cursor: "s=1;i=2".into()
            })
        );
        assert_eq!(again.get(&file), Some(&file_pos(42)));
        assert_eq!(again.get(&SourceId::stdin()), None);
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn damaged_file_is_quarantined_and_load_starts_fresh() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        for damage in [
            &b"{\"version\":1,\"positions\":{\"journal\":"[..], // torn
            b"\xff\xfe not json at all",                        // garbage
            b"{\"version\":1,\"positions\":{\"x\":{\"kind\":7}}}", // wrong shape
        ] {
            fs::write(dir.file(Checkpoints::FILE_NAME), damage).unwrap();
            let cp = Checkpoints::load(&dir).unwrap();
            assert!(cp.is_empty());
            assert!(!dir.file(Checkpoints::FILE_NAME).exists());
        }
        let bad: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("checkpoints.json.") && n.ends_with(".bad"))
            .collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
    }

    #[test]
    fn newer_format_is_a_clear_error_and_the_file_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        fs::write(
            dir.file(Checkpoints::FILE_NAME),
            br#"{"version":9,"positions":{}}"#,
        )
        .unwrap();
        let err = Checkpoints::load(&dir).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
        assert!(dir.file(Checkpoints::FILE_NAME).exists());
    }
}

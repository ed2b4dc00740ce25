//! Persistent state in the state directory (default [`DEFAULT_STATE_DIR`]): source checkpoints
//! (journal cursors, file offsets), the engine snapshot, the daemon's pid and its counters.
//! The names of these files live here and nowhere else.
//!
//! Every write is atomic and durable: the data goes to a temporary file in the same directory,
//! which is fsynced, renamed over the target and followed by an fsync of the directory. A crash
//! leaves either the old or the new file, never a torn one.
//!
//! A state file that exists but cannot be decoded is *quarantined*: it is renamed to
//! `<name>.<UTC timestamp>.bad` (kept for inspection, never overwritten) and the caller starts
//! fresh, with a warning that names both files. A daemon that refuses to start because its
//! cursor file is damaged would leave the host unprotected, and the damaged data is still there
//! for the admin. Other I/O errors (permissions, a full disk) are real errors and are returned.
//!
//! Diagnostic commands (`status`, `explain`) open the directory with
//! [`StateDir::open_read_only`]: nothing is created, written or renamed, and a damaged file is
//! reported as [`Loaded::Unreadable`] and left where it is, for the daemon to deal with.
//!
//! All functions here do blocking I/O (fsync takes milliseconds). Call them from
//! `tokio::task::spawn_blocking` in async code.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

mod checkpoints;
mod counters;
mod engine_state;

pub use checkpoints::Checkpoints;
pub use counters::DaemonCounters;
pub use engine_state::{EngineLoad, load_engine};

/// Where the daemon keeps its state unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/detector";

/// The engine snapshot ([`crate::engine::Snapshot`] as JSON).
pub const ENGINE_STATE_FILE: &str = "engine.json";
/// The running daemon's pid.
pub const PID_FILE: &str = "detector.pid";

/// The state directory. Cheap to clone; holds no open handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
    /// Opened by a diagnostic command: never create, write or rename anything.
    read_only: bool,
}

/// The result of reading a state file.
#[derive(Debug, PartialEq)]
pub enum Loaded<T> {
    /// The file does not exist (first start).
    Missing,
    /// The file was read and decoded.
    Found(T),
    /// The file could not be decoded; it was moved to `bad_copy` and the caller starts fresh.
    Quarantined { bad_copy: PathBuf, reason: String },
    /// The file could not be decoded and was left in place (read-only directory).
    Unreadable { reason: String },
}

impl StateDir {
    /// Opens the state directory, creating it (mode 0700, parents as needed) if it is missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| Error::io(&root, e))?;
        if !root.is_dir() {
            return Err(Error::Store(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(StateDir {
            root,
            read_only: false,
        })
    }

    /// Opens an existing state directory for reading only; `None` if it does not exist.
    pub fn open_read_only(root: impl Into<PathBuf>) -> Result<Option<Self>> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(Some(StateDir {
                root,
                read_only: true,
            })),
            Ok(_) => Err(Error::Store(format!(
                "{} is not a directory",
                root.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(root, e)),
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The pid in the pid file, when that process is alive.
    pub fn running_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.file(PID_FILE)).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The full path of the state file `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Replaces the file `name` with `data` atomically and durably (mode 0600).
    pub fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        check_name(name)?;
        self.check_writable(name)?;
        let target = self.file(name);
        let tmp = self
            .root
            .join(format!(".{name}.tmp.{}", std::process::id()));
        let result = write_then_rename(&tmp, &target, data);
        if result.is_err() {
            // Best effort: don't leave half-written temp files behind.
            let _ = fs::remove_file(&tmp);
        }
        result?;
        // The rename is only durable once the directory entry is on disk.
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&self.root, e))
    }

    /// Serialises `value` as pretty JSON and writes it with [`StateDir::write_atomic`].
    pub fn write_json<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::Store(format!("{name}: cannot encode: {e}")))?;
        data.push(b'\n');
        self.write_atomic(name, &data)
    }

    /// Reads the file `name`, or `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        check_name(name)?;
        let path = self.file(name);
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Reads and decodes the JSON file `name`. An undecodable file is quarantined (see the
    /// module docs) and reported as [`Loaded::Quarantined`], with a warning logged.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Loaded<T>> {
        let Some(data) = self.read(name)? else {
            return Ok(Loaded::Missing);
        };
        match serde_json::from_slice(&data) {
            Ok(value) => Ok(Loaded::Found(value)),
            Err(e) => self.damaged(name, e.to_string()),
        }
    }

    /// The file `name` is damaged: quarantined (see [`StateDir::quarantine`]), or, in a
    /// read-only directory, reported and left alone.
    pub fn damaged<T>(&self, name: &str, reason: String) -> Result<Loaded<T>> {
        if self.read_only {
            return Ok(Loaded::Unreadable { reason });
        }
        self.quarantine(name, reason)
    }

    /// Moves the damaged file `name` aside to `<name>.<timestamp>.bad` and logs why.
    pub fn quarantine<T>(&self, name: &str, reason: String) -> Result<Loaded<T>> {
        check_name(name)?;
        self.check_writable(name)?;
        let path = self.file(name);
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
        let bad_copy = self.root.join(format!("{name}.{stamp}.bad"));
        fs::rename(&path, &bad_copy).map_err(|e| Error::io(&path, e))?;
        tracing::warn!(
            file = %path.display(),
            bad_copy = %bad_copy.display(),
            %reason,
            "state file is damaged; kept a copy and starting fresh"
        );
        Ok(Loaded::Quarantined { bad_copy, reason })
    }

    fn check_writable(&self, name: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::Store(format!(
                "{}: the state directory was opened read-only",
                self.file(name).display()
            )));
        }
        Ok(())
    }
}

fn write_then_rename(tmp: &Path, target: &Path, data: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| Error::io(tmp, e))?;
    file.write_all(data).map_err(|e| Error::io(tmp, e))?;
    file.sync_all().map_err(|e| Error::io(tmp, e))?;
    drop(file);
    fs::rename(tmp, target).map_err(|e| Error::io(target, e))
}

/// State file names are fixed by the code, but a slash or `..` would escape the directory.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Store(format!("invalid state file name {name:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn write_then_read_back_replaces_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("nested/state")).unwrap();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        dir.write_atomic("a.json", b"first").unwrap();
        dir.write_atomic("a.json", b"second").unwrap();
        assert_eq!(dir.read("a.json").unwrap().as_deref(), Some(&b"second"[..]));
        let mode = fs::metadata(dir.file("a.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["a.json".to_string()]);
    }

    #[test]
    fn read_json_missing_found_and_quarantined() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert_eq!(
            dir.read_json::<Vec<u32>>("x.json").unwrap(),
            Loaded::Missing
        );

        dir.write_json("x.json", &vec![1u32, 2, 3]).unwrap();
        assert_eq!(
            dir.read_json::<Vec<u32>>("x.json").unwrap(),
            Loaded::Found(vec![1, 2, 3])
        );

        dir.write_atomic("x.json", b"[1, 2, \x00garbage").unwrap();
        let Loaded::Quarantined { bad_copy, reason } = dir.read_json::<Vec<u32>>("x.json").unwrap()
        else {
            panic!("expected quarantine");
        };
        assert!(!reason.is_empty());
        assert_eq!(fs::read(&bad_copy).unwrap(), b"[1, 2, \x00garbage");
        assert!(
            bad_copy
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(".bad")
        );
        // The damaged file is gone, so the next start is a clean first start.
        assert_eq!(
            dir.read_json::<Vec<u32>>("x.json").unwrap(),
            Loaded::Missing
        );
    }

    #[test]
    fn read_only_creates_nothing_and_leaves_damaged_files_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("absent");
        assert_eq!(StateDir::open_read_only(&missing).unwrap(), None);
        assert!(!missing.exists());

        let dir = StateDir::open(tmp.path().join("state")).unwrap();
        dir.write_atomic("x.json", b"{torn").unwrap();
        let ro = StateDir::open_read_only(dir.path()).unwrap().unwrap();
        let loaded = ro.read_json::<Vec<u32>>("x.json").unwrap();
        assert!(matches!(loaded, Loaded::Unreadable { .. }), "{loaded:?}");
        assert_eq!(fs::read(dir.file("x.json")).unwrap(), b"{torn");
        assert!(ro.write_atomic("x.json", b"[]").is_err());
        assert!(ro.quarantine::<()>("x.json", "test".into()).is_err());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn rejects_names_that_escape_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert!(dir.write_atomic("../evil", b"x").is_err());
        assert!(dir.write_atomic("..", b"x").is_err());
        assert!(dir.read("a/b").is_err());
    }

    #[test]
    fn state_dir_that_is_a_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain");
        fs::write(&file, b"").unwrap();
        let err = StateDir::open(&file).unwrap_err().to_string();
        assert!(err.contains("plain"), "{err}");
    }
}

//! The one loader of the engine snapshot, used by the daemon and by `detector explain`.
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{ENGINE_STATE_FILE, Loaded, StateDir};
use crate::Result;
use crate::engine::{Engine, EngineConfig, Snapshot};

/// What loading the engine gave.
#[derive(Debug)]
pub enum EngineLoad {
    /// The snapshot was restored.
    Restored {
        engine: Engine,
        /// The snapshot's clock was ahead of the wall clock by more than the tolerance (a
        /// far-future line trusted by an older detector): by this much. It was set back to the
        /// wall clock.
        clock_reset_by: Option<Duration>,
    },
    /// No snapshot (first start, or no state directory): a fresh engine.
    Fresh(Engine),
    /// The snapshot exists but cannot be decoded: a fresh engine. `bad_copy` is where the
    /// file was moved, or `None` when the directory is read-only and it was left in place.
    Damaged {
        engine: Engine,
        reason: String,
        bad_copy: Option<PathBuf>,
    },
}

impl EngineLoad {
    pub fn engine(self) -> Engine {
        match self {
            EngineLoad::Restored { engine, .. }
            | EngineLoad::Fresh(engine)
            | EngineLoad::Damaged { engine, .. } => engine,
        }
    }
}

/// Loads the engine from `state` (`None`: no state directory) with `cfg`. A snapshot written
/// by an unknown version is an error (kept for a newer detector, not thrown away). A snapshot
/// clock more than `max_ahead` past `wall_now` is set back to `wall_now`.
pub fn load_engine(
    state: Option<&StateDir>,
    cfg: &EngineConfig,
    wall_now: DateTime<Utc>,
    max_ahead: Duration,
) -> Result<EngineLoad> {
    let Some(state) = state else {
        return Ok(EngineLoad::Fresh(Engine::new(cfg.clone())));
    };
    let mut snapshot = match state.read_json::<Snapshot>(ENGINE_STATE_FILE)? {
        Loaded::Found(snapshot) => snapshot,
        Loaded::Missing => return Ok(EngineLoad::Fresh(Engine::new(cfg.clone()))),
        Loaded::Quarantined { bad_copy, reason } => {
            return Ok(EngineLoad::Damaged {
                engine: Engine::new(cfg.clone()),
                reason,
                bad_copy: Some(bad_copy),
            });
        }
        Loaded::Unreadable { reason } => {
            return Ok(EngineLoad::Damaged {
                engine: Engine::new(cfg.clone()),
                reason,
                bad_copy: None,
            });
        }
    };
    let mut clock_reset_by = None;
    if let Some(now) = snapshot.now {
        let ahead = Duration::from_secs(now.saturating_sub(wall_now.timestamp()).max(0) as u64);
        if ahead > max_ahead {
            snapshot.now = Some(wall_now.timestamp());
            clock_reset_by = Some(ahead);
        }
    }
    let engine = Engine::restore(cfg.clone(), snapshot)?;
    Ok(EngineLoad::Restored {
        engine,
        clock_reset_by,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn wall() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn snapshot_at(now: i64) -> Snapshot {
        let mut s = Engine::new(EngineConfig::default()).snapshot();
        s.now = Some(now);
        s
    }

    #[test]
    fn a_snapshot_clock_far_in_the_future_is_set_back_to_the_wall_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let far = wall().timestamp() + 10 * 365 * 86400;
        dir.write_json(ENGINE_STATE_FILE, &snapshot_at(far))
            .unwrap();
        let cfg = EngineConfig::default();
        let max = Duration::from_secs(300);
        let EngineLoad::Restored {
            engine,
            clock_reset_by,
        } = load_engine(Some(&dir), &cfg, wall(), max).unwrap()
        else {
            panic!("not restored");
        };
        assert_eq!(engine.now(), Some(wall()));
        assert!(clock_reset_by.unwrap() > Duration::from_secs(9 * 365 * 86400));

        // Within the tolerance it is kept as it is.
        let near = wall().timestamp() + 60;
        dir.write_json(ENGINE_STATE_FILE, &snapshot_at(near))
            .unwrap();
        let load = load_engine(Some(&dir), &cfg, wall(), max).unwrap();
        let EngineLoad::Restored {
            engine,
            clock_reset_by: None,
        } = load
        else {
            panic!("{load:?}");
        };
        assert_eq!(engine.now().unwrap().timestamp(), near);
    }

    #[test]
    fn damaged_is_quarantined_only_when_writable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let cfg = EngineConfig::default();
        let max = Duration::from_secs(300);
        dir.write_atomic(ENGINE_STATE_FILE, b"{torn").unwrap();
        let ro = StateDir::open_read_only(tmp.path()).unwrap().unwrap();
        let load = load_engine(Some(&ro), &cfg, wall(), max).unwrap();
        assert!(
            matches!(load, EngineLoad::Damaged { bad_copy: None, .. }),
            "{load:?}"
        );
        assert!(dir.file(ENGINE_STATE_FILE).exists());
        let load = load_engine(Some(&dir), &cfg, wall(), max).unwrap();
        assert!(
            matches!(
                load,
                EngineLoad::Damaged {
                    bad_copy: Some(_),
                    ..
                }
            ),
            "{load:?}"
        );
        assert!(!dir.file(ENGINE_STATE_FILE).exists());
        let load = load_engine(None, &cfg, wall(), max).unwrap();
        assert!(matches!(load, EngineLoad::Fresh(_)), "{load:?}");
    }
}

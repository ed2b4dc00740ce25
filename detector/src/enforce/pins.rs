//! Where each object lives under the pin directory.
use std::path::{Path, PathBuf};

use detector_common::map_names;

/// Every pinned map (pin file names), in a fixed order.
pub const MAP_NAMES: [&str; 6] = [
    map_names::BANS_V4,
    map_names::BANS_V6,
    map_names::PREFIX_V4,
    map_names::PREFIX_V6,
    map_names::STATS,
    map_names::SETTINGS,
];

/// The object's name for the map pinned as `pin_name`: the same, but for SETTINGS, which in
/// the object is the map of the SETTINGS global (detector_common::map_names::SETTINGS_OBJECT).
pub fn object_map_name(pin_name: &str) -> &str {
    if pin_name == map_names::SETTINGS {
        map_names::SETTINGS_OBJECT
    } else {
        pin_name
    }
}

/// The pinned program (kept so a later `attach` on another interface reuses it).
const PROGRAM_PIN: &str = "prog_detector_xdp";
/// The pinned re-ban program (detector_common::REBAN_PROGRAM), for `detector ban` and the
/// daemon; never attached.
const REBAN_PIN: &str = "prog_detector_reban";
/// XDP links are pinned as `link_<interface>`.
const LINK_PREFIX: &str = "link_";

/// Paths of the pins in one pin directory.
#[derive(Clone, Debug)]
pub struct PinPaths {
    dir: PathBuf,
}

impl PinPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PinPaths { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn program(&self) -> PathBuf {
        self.dir.join(PROGRAM_PIN)
    }

    pub fn reban_program(&self) -> PathBuf {
        self.dir.join(REBAN_PIN)
    }

    pub fn link(&self, iface: &str) -> PathBuf {
        self.dir.join(format!("{LINK_PREFIX}{iface}"))
    }

    /// Interfaces with a pinned link, from the file names.
    pub fn linked_interfaces(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(LINK_PREFIX))
                    .map(String::from)
            })
            .collect();
        names.sort();
        names
    }

    /// True when at least one map pin exists (something was attached with this directory).
    pub fn any_map_pinned(&self) -> bool {
        MAP_NAMES.iter().any(|n| self.map(n).exists())
    }

    /// True when a file name belongs to us (so `detach` may delete it).
    pub fn is_ours(name: &str) -> bool {
        name == PROGRAM_PIN
            || name == REBAN_PIN
            || name.starts_with(LINK_PREFIX)
            || MAP_NAMES.contains(&name)
    }
}

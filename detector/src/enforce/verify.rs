//! Compatibility check of pins left by an earlier run. aya opens an existing pin without
//! comparing anything, so a pin written by another build (different value layout, capacity...)
//! would be silently misread. We compare first and refuse with one clear message.
use std::mem::size_of;

use aya::maps::{MapInfo, MapType, lpm_trie::Key};
use detector_common::{Counters, ExactBan, Ipv4Key, Ipv6Key, PrefixBan, Settings, map_names};

use super::pins::PinPaths;
use super::types::Capacity;
use crate::Error;

struct Expected {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    /// `Some` = must equal; `None` = whatever the pin has (set from configuration).
    max_entries: Option<u32>,
}

fn expected(capacity: Option<Capacity>) -> [Expected; 6] {
    let exact = capacity.map(|c| c.exact);
    let prefix = capacity.map(|c| c.prefix);
    [
        Expected {
            name: map_names::BANS_V4,
            map_type: MapType::Hash,
            key_size: size_of::<Ipv4Key>(),
            value_size: size_of::<ExactBan>(),
            max_entries: exact,
        },
        Expected {
            name: map_names::BANS_V6,
            map_type: MapType::Hash,
            key_size: size_of::<Ipv6Key>(),
            value_size: size_of::<ExactBan>(),
            max_entries: exact,
        },
        Expected {
            name: map_names::PREFIX_V4,
            map_type: MapType::LpmTrie,
            key_size: size_of::<Key<[u8; 4]>>(),
            value_size: size_of::<PrefixBan>(),
            max_entries: prefix,
        },
        Expected {
            name: map_names::PREFIX_V6,
            map_type: MapType::LpmTrie,
            key_size: size_of::<Key<[u8; 16]>>(),
            value_size: size_of::<PrefixBan>(),
            max_entries: prefix,
        },
        Expected {
            name: map_names::STATS,
            map_type: MapType::PerCpuArray,
            key_size: size_of::<u32>(),
            value_size: size_of::<Counters>(),
            max_entries: Some(1),
        },
        Expected {
            name: map_names::SETTINGS,
            map_type: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<Settings>(),
            max_entries: Some(1),
        },
    ]
}

fn mismatch(pins: &PinPaths, what: String) -> Error {
    Error::Bpf(format!(
        "the pinned maps in {dir} do not match this build of detector ({what}); they were left by \
         another version or configuration. Run `detector detach --pin-dir {dir}` to remove them \
         (this drops all bans), then attach again",
        dir = pins.dir().display()
    ))
}

/// Checks every pinned map's type, key/value size and (when `capacity` is given) capacity.
/// The layout version stored in SETTINGS is checked by the caller once the map is open.
pub fn check_pinned_maps(pins: &PinPaths, capacity: Option<Capacity>) -> crate::Result<()> {
    let missing: Vec<&str> = expected(None)
        .iter()
        .filter(|e| !pins.map(e.name).exists())
        .map(|e| e.name)
        .collect();
    if missing.len() == expected(None).len() {
        return Err(not_attached(pins));
    }
    if !missing.is_empty() {
        return Err(mismatch(
            pins,
            format!("missing pins: {}", missing.join(", ")),
        ));
    }
    for e in expected(capacity) {
        let info = MapInfo::from_pin(pins.map(e.name))
            .map_err(|err| Error::bpf(format!("reading {}", pins.map(e.name).display()), err))?;
        let map_type = info.map_type().ok();
        if map_type != Some(e.map_type) {
            return Err(mismatch(
                pins,
                format!(
                    "{} has type {map_type:?}, expected {:?}",
                    e.name, e.map_type
                ),
            ));
        }
        if info.key_size() as usize != e.key_size || info.value_size() as usize != e.value_size {
            return Err(mismatch(
                pins,
                format!(
                    "{} has key/value size {}/{}, expected {}/{}",
                    e.name,
                    info.key_size(),
                    info.value_size(),
                    e.key_size,
                    e.value_size
                ),
            ));
        }
        if let Some(want) = e.max_entries
            && info.max_entries() != want
        {
            return Err(mismatch(
                pins,
                format!(
                    "{} holds {} entries, configured {want}",
                    e.name,
                    info.max_entries()
                ),
            ));
        }
    }
    Ok(())
}

pub fn check_layout_version(pins: &PinPaths, found: u32) -> crate::Result<()> {
    if found == detector_common::LAYOUT_VERSION {
        Ok(())
    } else {
        Err(mismatch(
            pins,
            format!(
                "layout version {found}, this build uses {}",
                detector_common::LAYOUT_VERSION
            ),
        ))
    }
}

pub fn not_attached(pins: &PinPaths) -> Error {
    Error::Bpf(format!(
        "nothing is attached: no detector maps under {}; run `detector attach --iface IFACE` first",
        pins.dir().display()
    ))
}

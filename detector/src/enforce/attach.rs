//! Load, attach, pin, adopt, upgrade, detach.
//!
//! Pins under the pin directory: one per map (bpftool can dump them), the program
//! (`prog_detector_xdp`) and one XDP link per interface (`link_<iface>`). A pinned link keeps the
//! program attached after the process exits; removing the pin detaches it.
use std::path::Path;

use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use aya_obj::programs::XdpAttachType;
use detector_common::{
    LAYOUT_VERSION, REBAN_PROGRAM, SETTINGS_GLOBAL, Settings, XDP_PROGRAM, map_names,
};
use tracing::{info, warn};

use super::pins::{MAP_NAMES, PinPaths, object_map_name};
use super::types::{AttachMode, Capacity};
use super::{sys, verify};
use crate::Error;
use crate::error::{causes, errno_in};

/// The XDP object built by build.rs from detector-ebpf.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector"));

#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub pin_dir: std::path::PathBuf,
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    /// `Some`: create the maps with this capacity, or insist that pinned maps have it.
    /// `None`: defaults when creating, whatever is pinned when adopting.
    pub capacity: Option<Capacity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Newly attached in this mode ("native" or "generic").
    Attached(&'static str),
    /// Our link was already there; left as it is (or upgraded, see the report).
    AlreadyAttached,
}

#[derive(Clone, Debug, Default)]
pub struct AttachReport {
    /// Pinned maps from an earlier run were adopted (bans kept).
    pub adopted: bool,
    /// Links switched to this build's program with BPF_LINK_UPDATE (no gap in filtering).
    pub upgraded_links: Vec<String>,
    pub ifaces: Vec<(String, AttachOutcome)>,
}

fn check_iface_name(name: &str) -> crate::Result<()> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace);
    if !valid {
        return Err(Error::Usage(format!("invalid interface name `{name}`")));
    }
    let c = std::ffi::CString::new(name)
        .map_err(|_| Error::Usage(format!("invalid interface name `{name}`")))?;
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        return Err(Error::Usage(format!("no network interface named `{name}`")));
    }
    Ok(())
}

/// Loads the program (adopting pinned maps if there are any), attaches it to `opts.ifaces`
/// and pins everything. With no interface it only loads and pins (bans can be recorded and
/// are enforced as soon as an interface is attached). Idempotent: an interface that already has our link is left alone, a
/// pinned program from another build is swapped in place with BPF_LINK_UPDATE.
pub fn attach(opts: &AttachOptions) -> crate::Result<AttachReport> {
    sys::require_privileges()?;
    sys::require_bpffs(&opts.pin_dir)?;
    for iface in &opts.ifaces {
        check_iface_name(iface)?;
    }
    let pins = PinPaths::new(&opts.pin_dir);
    let adopting = pins.any_map_pinned();
    if adopting {
        verify::check_pinned_maps(&pins, opts.capacity)?;
    }
    std::fs::create_dir_all(pins.dir()).map_err(|e| Error::io(pins.dir(), e))?;
    let result = load_and_attach(opts, &pins, adopting);
    if result.is_err() && !adopting && pins.linked_interfaces().is_empty() {
        // A failed first attach must not leave half a setup behind.
        let _ = remove_all_pins(&pins);
    }
    result
}

fn load_and_attach(
    opts: &AttachOptions,
    pins: &PinPaths,
    adopting: bool,
) -> crate::Result<AttachReport> {
    let capacity = opts.capacity.unwrap_or_default();
    // The program reads SETTINGS as a global, whose map aya fills with the global's value on
    // every load, pinned or not: pass the pinned value, so adopting keeps the flags. (Another
    // process changing a flag during the few milliseconds of the load loses that change, as
    // with any two processes' read-modify-writes of the flags; the prefix flags are set again
    // from the tries whenever the daemon walks the maps.)
    let settings = if adopting {
        let current = read_pinned_settings(pins)?;
        verify::check_layout_version(pins, current.layout_version)?;
        current
    } else {
        Settings {
            flags: 0,
            layout_version: LAYOUT_VERSION,
        }
    };
    let mut loader = EbpfLoader::new();
    for name in MAP_NAMES {
        loader.map_pin_path(object_map_name(name), pins.map(name));
    }
    loader
        .override_global(SETTINGS_GLOBAL, &settings, true)
        .map_max_entries(map_names::BANS_V4, capacity.exact)
        .map_max_entries(map_names::BANS_V6, capacity.exact)
        .map_max_entries(map_names::PREFIX_V4, capacity.prefix)
        .map_max_entries(map_names::PREFIX_V6, capacity.prefix);
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| map_load_error(e, capacity))?;

    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| missing(XDP_PROGRAM))?
        .try_into()
        .map_err(|e| Error::bpf(XDP_PROGRAM, e))?;
    program
        .load()
        .map_err(|e| Error::bpf("loading the XDP program (verifier)", e))?;
    let new_tag = program
        .info()
        .map_err(|e| Error::bpf("program info", e))?
        .tag();

    pin_reban_program(&mut ebpf, pins)?;
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| missing(XDP_PROGRAM))?
        .try_into()
        .map_err(|e| Error::bpf(XDP_PROGRAM, e))?;

    let mut report = AttachReport {
        adopted: adopting,
        ..Default::default()
    };
    // Reuse the pinned program when it is this very code (same tag): one program for all
    // interfaces. Otherwise swap this build's program into every pinned link, atomically.
    let mut pinned_program = None;
    let program_pin = pins.program();
    if program_pin.exists() {
        let old = Xdp::from_pin(&program_pin, XdpAttachType::Interface)
            .map_err(|e| Error::bpf(format!("opening {}", program_pin.display()), e))?;
        let old_tag = old.info().map_err(|e| Error::bpf("program info", e))?.tag();
        if old_tag == new_tag {
            pinned_program = Some(old);
        } else {
            for iface in pins.linked_interfaces() {
                match upgrade_link(program, &pins.link(&iface)) {
                    Ok(()) => {
                        info!(iface = %iface, "upgraded the XDP program in place (BPF_LINK_UPDATE)");
                        report.upgraded_links.push(iface);
                    }
                    // A link whose interface is gone cannot be updated; it filters nothing.
                    Err(e) => {
                        warn!(iface = %iface, error = %e, "pinned XDP link not upgraded (interface gone?)")
                    }
                }
            }
            std::fs::remove_file(&program_pin).map_err(|e| Error::io(&program_pin, e))?;
        }
    }
    let target: &mut Xdp = match pinned_program.as_mut() {
        Some(p) => p,
        None => {
            program
                .pin(&program_pin)
                .map_err(|e| Error::bpf(format!("pinning {}", program_pin.display()), e))?;
            program
        }
    };

    for iface in &opts.ifaces {
        let outcome = attach_iface(target, iface, opts.mode, pins)?;
        match outcome {
            AttachOutcome::Attached(mode) => info!(iface = %iface, mode, "XDP attached"),
            AttachOutcome::AlreadyAttached => {
                info!(iface = %iface, "XDP already attached; left in place")
            }
        }
        report.ifaces.push((iface.clone(), outcome));
    }
    Ok(report)
}

/// SETTINGS as pinned by an earlier run (this build's or an older one's: same layout).
fn read_pinned_settings(pins: &PinPaths) -> crate::Result<Settings> {
    let path = pins.map(map_names::SETTINGS);
    let data = MapData::from_pin(&path)
        .map_err(|e| Error::bpf(format!("opening {}", path.display()), e))?;
    let settings: Array<_, Settings> =
        Array::try_from(Map::Array(data)).map_err(|e| Error::bpf("SETTINGS", e))?;
    settings
        .get(&0, 0)
        .map_err(|e| Error::bpf("reading SETTINGS", e))
}

fn missing(what: &str) -> Error {
    Error::Bpf(format!(
        "the embedded XDP object has no `{what}`; the build is broken"
    ))
}

fn map_load_error(err: aya::EbpfError, capacity: Capacity) -> Error {
    if errno_in(&err) == Some(libc::ENOMEM) {
        Error::bpf(
            format!(
                "creating the ban maps failed for lack of memory ({} exact bans per family need \
                 ~{} MiB each); lower the capacity",
                capacity.exact,
                u64::from(capacity.exact) * 100 / (1024 * 1024)
            ),
            err,
        )
    } else {
        Error::bpf("loading the XDP object", err)
    }
}

/// Loads the re-ban program and pins it in place of any earlier one: it holds no state, and
/// this build's must match this build's map layout.
fn pin_reban_program(ebpf: &mut aya::Ebpf, pins: &PinPaths) -> crate::Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(REBAN_PROGRAM)
        .ok_or_else(|| missing(REBAN_PROGRAM))?
        .try_into()
        .map_err(|e| Error::bpf(REBAN_PROGRAM, e))?;
    program
        .load()
        .map_err(|e| Error::bpf("loading the re-ban program (verifier)", e))?;
    let pin = pins.reban_program();
    if pin.exists() {
        std::fs::remove_file(&pin).map_err(|e| Error::io(&pin, e))?;
    }
    program
        .pin(&pin)
        .map_err(|e| Error::bpf(format!("pinning {}", pin.display()), e))
}

fn upgrade_link(program: &mut Xdp, link_pin: &Path) -> crate::Result<()> {
    let pinned = PinnedLink::from_pin(link_pin)
        .map_err(|e| Error::bpf(format!("opening {}", link_pin.display()), e))?;
    let link =
        XdpLink::try_from(FdLink::from(pinned)).map_err(|e| Error::bpf("not an XDP link", e))?;
    program
        .attach_to_link(link)
        .map_err(|e| Error::bpf(format!("updating {}", link_pin.display()), e))?;
    Ok(())
}

/// The hook is taken: EBUSY (an XDP program or link is there) or EEXIST (one in the other
/// mode: native and generic cannot be active together).
fn is_busy(err: &aya::programs::ProgramError) -> bool {
    matches!(err, aya::programs::ProgramError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST)))
}

fn attach_iface(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
    pins: &PinPaths,
) -> crate::Result<AttachOutcome> {
    let link_pin = pins.link(iface);
    let attempt = match mode {
        AttachMode::Native => program
            .attach(iface, XdpMode::Driver)
            .map(|id| (id, "native")),
        AttachMode::Generic => program
            .attach(iface, XdpMode::Skb)
            .map(|id| (id, "generic")),
        AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
            Ok(id) => Ok((id, "native")),
            Err(e) if is_busy(&e) => Err(e),
            Err(e) => {
                warn!(iface, error = %causes(&e), "native XDP not available; falling back to generic mode");
                program
                    .attach(iface, XdpMode::Skb)
                    .map(|id| (id, "generic"))
            }
        },
    };
    let (id, used) = match attempt {
        Ok(ok) => ok,
        Err(e) if is_busy(&e) && link_pin.exists() => return Ok(AttachOutcome::AlreadyAttached),
        Err(e) if is_busy(&e) => {
            return Err(Error::Bpf(format!(
                "{iface} already has an XDP program that detector did not attach (see `ip link show {iface}`); remove it first"
            )));
        }
        Err(e) => {
            return Err(Error::bpf(
                format!("attaching XDP to {iface} ({mode} mode)"),
                e,
            ));
        }
    };
    let link = program
        .take_link(id)
        .map_err(|e| Error::bpf("taking the XDP link", e))?;
    let link = FdLink::try_from(link).map_err(|_| {
        Error::Bpf(format!(
            "the kernel attached XDP to {iface} through netlink instead of a BPF link (kernel < 5.9?); \
             detector needs BPF links to stay attached"
        ))
    })?;
    if link_pin.exists() {
        // A pin for this name whose link no longer holds the hook (interface deleted and
        // re-created): stale, replace it.
        std::fs::remove_file(&link_pin).map_err(|e| Error::io(&link_pin, e))?;
    }
    link.pin(&link_pin)
        .map_err(|e| Error::bpf(format!("pinning {}", link_pin.display()), e))?;
    Ok(AttachOutcome::Attached(used))
}

/// What `detach` removed.
#[derive(Clone, Debug, Default)]
pub struct DetachReport {
    pub links: Vec<String>,
    /// The maps (and all bans) were removed too.
    pub maps_removed: bool,
}

/// Detaches XDP from one interface (`Some(iface)`: its link only, bans stay) or from all of
/// them, removing the program and map pins (all bans are dropped). Works on pins from any
/// build: it never interprets them.
pub fn detach(pin_dir: &Path, iface: Option<&str>) -> crate::Result<DetachReport> {
    sys::require_privileges()?;
    sys::require_bpffs(pin_dir)?;
    let pins = PinPaths::new(pin_dir);
    if !pins.dir().exists() {
        return Err(verify::not_attached(&pins));
    }
    if let Some(iface) = iface {
        let link = pins.link(iface);
        if !link.exists() {
            return Err(Error::Usage(format!(
                "detector is not attached to {iface} (no {})",
                link.display()
            )));
        }
        remove_link(&link)?;
        return Ok(DetachReport {
            links: vec![iface.to_string()],
            maps_removed: false,
        });
    }
    let links = pins.linked_interfaces();
    remove_all_pins(&pins)?;
    Ok(DetachReport {
        links,
        maps_removed: true,
    })
}

/// Removes every pin of ours, links first (that detaches XDP), then the directory if it is
/// empty. Unknown files are left alone.
fn remove_all_pins(pins: &PinPaths) -> crate::Result<()> {
    for iface in pins.linked_interfaces() {
        remove_link(&pins.link(&iface))?;
    }
    let entries = std::fs::read_dir(pins.dir()).map_err(|e| Error::io(pins.dir(), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(PinPaths::is_ours) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    if let Err(e) = std::fs::remove_dir(pins.dir()) {
        warn!(dir = %pins.dir().display(), error = %e, "pin directory not removed (not empty?)");
    }
    Ok(())
}

/// Detaches a pinned XDP link at once (BPF_LINK_DETACH), then removes its pin. Removing the
/// pin alone also detaches, but only when the kernel frees the link, which it may defer past
/// our return; `detach` must mean "filtering has stopped".
fn remove_link(pin: &Path) -> crate::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| Error::Bpf(format!("invalid pin path {}", pin.display())))?;
    let mut get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; `path` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut get as *mut ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd >= 0 {
        let fd = fd as i32;
        let mut detach = [fd as u32, 0u32];
        // SAFETY: bpf_attr.link_detach is { link_fd: u32 }; padded to 8 bytes.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, detach.as_mut_ptr(), 8usize) };
        if rc != 0 {
            // Already defunct (interface gone) is fine; the pin removal below still frees it.
            warn!(pin = %pin.display(), error = %std::io::Error::last_os_error(), "BPF_LINK_DETACH failed");
        }
        // SAFETY: fd came from BPF_OBJ_GET above and is closed once.
        unsafe { libc::close(fd) };
    }
    std::fs::remove_file(pin).map_err(|e| Error::io(pin, e))
}

//! Preconditions that deserve their own clear message: privileges and bpffs.
use std::path::Path;

use crate::Error;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Root, or a process with CAP_BPF/CAP_SYS_ADMIN in its effective set.
pub fn require_privileges() -> crate::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    if caps & (1 << CAP_BPF) != 0 || caps & (1 << CAP_SYS_ADMIN) != 0 {
        return Ok(());
    }
    Err(Error::Permission(
        "BPF maps and XDP programs are only reachable by privileged users".into(),
    ))
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-parameter; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// The pin directory (or, if it does not exist yet, its closest existing ancestor) must be on
/// a bpffs: pins written anywhere else would fail or silently not be pins.
pub fn require_bpffs(pin_dir: &Path) -> crate::Result<()> {
    let mut probe = Some(pin_dir);
    while let Some(p) = probe {
        if p.exists() {
            if is_bpffs(p) {
                return Ok(());
            }
            break;
        }
        probe = p.parent();
    }
    Err(Error::Bpf(format!(
        "{} is not on a BPF filesystem; mount it with `mount -t bpf bpf /sys/fs/bpf` (or pass --pin-dir under a bpffs)",
        pin_dir.display()
    )))
}

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

// ---------------------------------------------------------------------------------------------
// Batched map reads and deletes. aya 0.14 wraps BPF_MAP_LOOKUP_ELEM and BPF_MAP_GET_NEXT_KEY
// only, so walking a map costs two syscalls per entry: at a million bans, two million syscalls
// per sweep. BPF_MAP_LOOKUP_BATCH (Linux 5.6) hands back thousands of entries per call, and
// BPF_MAP_DELETE_BATCH deletes a list of keys in one. Both go through the bpf(2) syscall
// directly, with the kernel's `union bpf_attr` batch layout below.
// ---------------------------------------------------------------------------------------------

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries asked for per BPF_MAP_LOOKUP_BATCH call. A hash map returns whole buckets, so a
/// call fails with ENOSPC when one bucket holds more than this; the walk then retries with a
/// larger buffer.
const BATCH_ENTRIES: usize = 4096;

/// Outcome of a batched walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchWalk {
    /// bpf(2) calls made.
    pub calls: u64,
    /// Entries handed to the callback.
    pub entries: u64,
}

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid `union bpf_attr` prefix of the size passed; every pointer in it
    // points at a live buffer of the length the kernel derives from count and the map's key
    // and value sizes (the callers size them so).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether an errno means "this map type (or kernel) has no batch operations".
pub fn batch_unsupported(err: &std::io::Error) -> bool {
    // ENOTSUPP (524) is the kernel-internal code bpf(2) returns for a missing map op.
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// Calls `each(key, value)` for every entry of the map behind `fd` (entries of `key_size` and
/// `value_size` bytes), a few thousand entries per syscall. An error satisfying
/// [`batch_unsupported`] before any entry was read means the map cannot be walked this way.
pub fn lookup_batch(
    fd: std::os::fd::BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> std::io::Result<BatchWalk> {
    use std::os::fd::AsRawFd;
    let mut walk = BatchWalk::default();
    let mut room = BATCH_ENTRIES;
    let mut keys = vec![0u8; room * key_size];
    let mut values = vec![0u8; room * value_size];
    // The position token: a bucket index (u32) for hash maps, a key for the generic walk
    // other map types use. Big enough for either.
    let token_size = key_size.max(8);
    let mut token_in = vec![0u8; token_size];
    let mut token_out = vec![0u8; token_size];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: room as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        walk.calls += 1;
        let result = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count as usize;
        let done = match result {
            Ok(()) => false,
            // ENOENT: the walk reached the end (this call's `count` entries are still valid).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more than `room` entries: retry the same position, larger.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 && room < 1 << 20 => {
                room *= 4;
                keys.resize(room * key_size, 0);
                values.resize(room * value_size, 0);
                continue;
            }
            Err(e) => return Err(e),
        };
        for i in 0..got.min(room) {
            each(
                &keys[i * key_size..(i + 1) * key_size],
                &values[i * value_size..(i + 1) * value_size],
            );
        }
        walk.entries += got as u64;
        if done {
            return Ok(walk);
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

/// Deletes `keys` (packed, `key_size` bytes each) from the map behind `fd`, in batches. Keys
/// already gone are skipped (the kernel stops a batch at the first missing key; the rest are
/// sent again). Returns (deleted, bpf(2) calls made).
pub fn delete_batch(
    fd: std::os::fd::BorrowedFd<'_>,
    key_size: usize,
    keys: &[u8],
) -> std::io::Result<(usize, u64)> {
    use std::os::fd::AsRawFd;
    let total = keys.len() / key_size.max(1);
    let (mut at, mut deleted, mut calls) = (0usize, 0usize, 0u64);
    while at < total {
        let n = (total - at).min(BATCH_ENTRIES);
        let mut attr = BatchAttr {
            keys: keys[at * key_size..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        calls += 1;
        let result = bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(n);
        deleted += done;
        at += done;
        match result {
            Ok(()) if done == 0 => {
                // Never seen; without it a kernel that deleted nothing would spin here.
                return Err(std::io::Error::other(
                    "BPF_MAP_DELETE_BATCH made no progress",
                ));
            }
            Ok(()) => {}
            // Key number `done` was not there (the XDP program never deletes, but another
            // process may have): skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
            Err(e) => return Err(e),
        }
    }
    Ok((deleted, calls))
}

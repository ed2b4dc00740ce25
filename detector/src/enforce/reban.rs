//! The in-place re-ban: runs `detector_reban` (detector_common::REBAN_PROGRAM) through
//! BPF_PROG_TEST_RUN so that extending an exact ban rewrites only its expiry and reason. A
//! hash update from user space replaces the whole element, and every drop the XDP program
//! counts on the old element between our read and the swap would be lost.
//!
//! The program is held as a bare fd (from the pin, or from a freshly loaded object), so this
//! is one raw syscall: aya's `test_run` needs the `Xdp` value, which an `Enforcer` does not own.
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;
use detector_common::{RebanRequest, reban};

use crate::Error;

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// What the program did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rebanned {
    Updated,
    /// No entry under the key (deleted since it was read).
    Absent,
}

/// The loaded re-ban program.
#[derive(Debug)]
pub(crate) struct RebanProgram {
    fd: OwnedFd,
}

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h), up to `batch_size`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

impl RebanProgram {
    /// The program pinned at `path`; `None` when there is no pin (pins left by a build
    /// without it: callers fall back to read-then-write).
    pub fn from_pin(path: &Path) -> crate::Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let prog = Xdp::from_pin(path, XdpAttachType::Interface)
            .map_err(|e| Error::bpf(format!("opening {}", path.display()), e))?;
        Self::from_program(&prog).map(Some)
    }

    /// A loaded program of an object this process holds.
    pub fn from_program(prog: &Xdp) -> crate::Result<Self> {
        let fd = prog
            .fd()
            .map_err(|e| Error::bpf("the re-ban program's fd", e))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::bpf("duplicating the re-ban program's fd", e))?;
        Ok(RebanProgram { fd })
    }

    /// Runs the program once on `req`.
    pub fn run(&self, req: &RebanRequest) -> crate::Result<Rebanned> {
        let data = req.to_bytes();
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: data.len() as u32,
            data_in: data.as_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        // SAFETY: `attr` is a valid, zero-padded prefix of bpf_attr for BPF_PROG_TEST_RUN,
        // sized by the last argument; `data` outlives the call and the kernel only reads it
        // (no output buffer is given).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(Error::bpf(
                "BPF_PROG_TEST_RUN of the re-ban program",
                std::io::Error::last_os_error(),
            ));
        }
        match attr.retval {
            reban::UPDATED => Ok(Rebanned::Updated),
            reban::ABSENT => Ok(Rebanned::Absent),
            other => Err(Error::Bpf(format!(
                "the re-ban program refused its request (returned {other})"
            ))),
        }
    }
}

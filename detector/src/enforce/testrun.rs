//! BPF_PROG_TEST_RUN harness: runs the real XDP program (and the bench reference programs) on
//! hand-made frames, with private unpinned maps. Used by the frame-level kernel tests and by
//! `cargo xtask bench xdp`; nothing is attached anywhere.
use aya::{Ebpf, EbpfLoader, TestRun as _, TestRunOptions, programs::Xdp};
use detector_common::{ExactBan, XDP_PROGRAM, bench_programs, map_names};

use super::{Capacity, Enforcer, sys};
use crate::Error;

/// XDP return codes.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
}

/// Every program in the object: detector's and the bench references.
pub const PROGRAMS: [&str; 4] = [
    XDP_PROGRAM,
    bench_programs::EMPTY,
    bench_programs::BARE_V4,
    bench_programs::BARE_V6,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (see [`action`]).
    pub retval: u32,
    /// Kernel-measured average run time per repetition, in ns (integer; excludes the
    /// per-call dispatcher registration that wall-clock timing would include).
    pub duration_ns: u32,
}

/// The XDP object loaded with private maps.
pub struct TestObject {
    ebpf: Ebpf,
    enforcer: Enforcer,
}

impl TestObject {
    pub fn load(capacity: Capacity) -> crate::Result<Self> {
        sys::require_privileges()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::BANS_V4, capacity.exact)
            .map_max_entries(map_names::BANS_V6, capacity.exact)
            .map_max_entries(map_names::PREFIX_V4, capacity.prefix)
            .map_max_entries(map_names::PREFIX_V6, capacity.prefix)
            .load(super::attach::OBJECT)
            .map_err(|e| Error::bpf("loading the XDP object", e))?;
        for name in PROGRAMS {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::Bpf(format!("no program {name} in the object")))?
                .try_into()
                .map_err(|e| Error::bpf(name, e))?;
            p.load()
                .map_err(|e| Error::bpf(format!("loading {name}"), e))?;
        }
        let enforcer = Enforcer::from_loaded(&mut ebpf, capacity)?;
        Ok(TestObject { ebpf, enforcer })
    }

    /// The maps, through the same API the daemon uses.
    pub fn enforcer(&mut self) -> &mut Enforcer {
        &mut self.enforcer
    }

    /// Fast bulk insert of exact bans (no allowlist check), for benchmarks.
    pub fn insert_exact_v4(&mut self, addr: [u8; 4], expires_ns: u64) -> crate::Result<()> {
        self.enforcer.insert_exact_v4_raw(
            addr,
            ExactBan {
                expires_ns,
                hits: 0,
                reason: 0,
                flags: 0,
            },
        )
    }

    pub fn insert_exact_v6(&mut self, addr: [u8; 16], expires_ns: u64) -> crate::Result<()> {
        self.enforcer.insert_exact_v6_raw(
            addr,
            ExactBan {
                expires_ns,
                hits: 0,
                reason: 0,
                flags: 0,
            },
        )
    }

    /// Runs `program` on `frame` `repeat` times on another thread while `meanwhile` works on
    /// the maps here: races between user-space map updates and the XDP program.
    pub fn run_while<R>(
        &mut self,
        program: &str,
        frame: &[u8],
        repeat: u32,
        meanwhile: impl FnOnce(&mut Enforcer) -> R,
    ) -> crate::Result<(TestRun, R)> {
        let TestObject { ebpf, enforcer } = self;
        let ebpf = &*ebpf;
        std::thread::scope(|s| {
            let runner = s.spawn(move || run_program(ebpf, program, frame, repeat));
            let result = meanwhile(enforcer);
            let run = runner
                .join()
                .map_err(|_| Error::Bpf("the BPF_PROG_TEST_RUN thread panicked".into()))??;
            Ok((run, result))
        })
    }

    /// Pins one of the object's programs (tests use it to fake a pin left by another build).
    pub fn pin_program(&mut self, program: &str, path: &std::path::Path) -> crate::Result<()> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| Error::Bpf(format!("no program {program}")))?
            .try_into()
            .map_err(|e| Error::bpf(program, e))?;
        p.pin(path)
            .map_err(|e| Error::bpf(format!("pinning {program}"), e))
    }

    /// Runs `program` on `frame` `repeat` times (BPF_PROG_TEST_RUN, through aya's wrapper).
    pub fn run(&self, program: &str, frame: &[u8], repeat: u32) -> crate::Result<TestRun> {
        run_program(&self.ebpf, program, frame, repeat)
    }
}

fn run_program(ebpf: &Ebpf, program: &str, frame: &[u8], repeat: u32) -> crate::Result<TestRun> {
    let p: &Xdp = ebpf
        .program(program)
        .ok_or_else(|| Error::Bpf(format!("no program {program}")))?
        .try_into()
        .map_err(|e| Error::bpf(program, e))?;
    let result = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|e| {
            Error::bpf(
                format!("BPF_PROG_TEST_RUN of {program} ({} bytes)", frame.len()),
                e,
            )
        })?;
    Ok(TestRun {
        retval: result.return_value,
        // The kernel reports whole nanoseconds in 32 bits; aya widens them to a Duration.
        duration_ns: u32::try_from(result.duration.as_nanos()).unwrap_or(u32::MAX),
    })
}

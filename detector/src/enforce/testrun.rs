//! BPF_PROG_TEST_RUN harness: runs the real XDP program (and, from the bench object, the
//! reference programs) on hand-made frames, with private unpinned maps. Used by the
//! frame-level kernel tests and by `cargo xtask bench xdp`; nothing is attached anywhere.
use std::path::Path;

use aya::{Ebpf, EbpfLoader, TestRun as _, TestRunOptions, programs::Xdp};
use detector_common::{ExactBan, REBAN_PROGRAM, XDP_PROGRAM, bench_programs, map_names};

use super::{Capacity, Enforcer, sys};
use crate::Error;

/// XDP return codes.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
}

/// Every program in the production object.
pub const PROGRAMS: [&str; 2] = [REBAN_PROGRAM, XDP_PROGRAM];

/// Every program in the bench object: the production program, its no-trace build and the
/// reference programs.
pub const BENCH_PROGRAMS: [&str; 5] = [
    XDP_PROGRAM,
    bench_programs::NO_TRACE,
    bench_programs::EMPTY,
    bench_programs::BARE_V4,
    bench_programs::BARE_V6,
];

/// Where build.rs left the bench object. It is read at run time, never embedded, so that the
/// shipped binary carries only the production object.
const BENCH_OBJECT: &str = env!("DETECTOR_BENCH_OBJECT");

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
    /// The production object (what `detector attach` loads).
    pub fn load(capacity: Capacity) -> crate::Result<Self> {
        Self::load_object(super::attach::OBJECT, &PROGRAMS, capacity)
    }

    /// The bench object from the build directory (see [`BENCH_PROGRAMS`]).
    pub fn load_bench(capacity: Capacity) -> crate::Result<Self> {
        let bytes =
            std::fs::read(BENCH_OBJECT).map_err(|e| Error::io(Path::new(BENCH_OBJECT), e))?;
        let aligned = Aligned::copy_of(&bytes);
        Self::load_object(aligned.bytes(), &BENCH_PROGRAMS, capacity)
    }

    fn load_object(object: &[u8], programs: &[&str], capacity: Capacity) -> crate::Result<Self> {
        sys::require_privileges()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::BANS_V4, capacity.exact)
            .map_max_entries(map_names::BANS_V6, capacity.exact)
            .map_max_entries(map_names::PREFIX_V4, capacity.prefix)
            .map_max_entries(map_names::PREFIX_V6, capacity.prefix)
            .load(object)
            .map_err(|e| Error::bpf("loading the XDP object", e))?;
        for &name in programs {
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

/// Runs the program pinned at `pin` (a `detector attach` pin directory's `prog_detector_xdp`)
/// once on `frame`: what the attached program does with it, through the pinned maps.
pub fn run_pinned(pin: &Path, frame: &[u8]) -> crate::Result<TestRun> {
    sys::require_privileges()?;
    let program = Xdp::from_pin(pin, aya_obj::programs::XdpAttachType::Interface)
        .map_err(|e| Error::bpf(format!("opening {}", pin.display()), e))?;
    test_run(&program, XDP_PROGRAM, frame, 1)
}

/// An object image copied to 8-byte alignment, which ELF parsing wants (a Vec<u8> need not
/// have it).
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_ne_bytes(b);
        }
        Aligned {
            words,
            len: bytes.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` owns words.len() * 8 >= len initialised bytes, borrowed for as long
        // as `self`; u8 has no alignment or validity requirements.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

fn run_program(ebpf: &Ebpf, program: &str, frame: &[u8], repeat: u32) -> crate::Result<TestRun> {
    let p: &Xdp = ebpf
        .program(program)
        .ok_or_else(|| Error::Bpf(format!("no program {program}")))?
        .try_into()
        .map_err(|e| Error::bpf(program, e))?;
    test_run(p, program, frame, repeat)
}

fn test_run(p: &Xdp, program: &str, frame: &[u8], repeat: u32) -> crate::Result<TestRun> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn programs_of(object: &[u8]) -> Vec<String> {
        let obj = aya_obj::Object::parse(object).expect("a valid BPF object");
        let mut names: Vec<String> = obj.programs.keys().cloned().collect();
        names.sort();
        names
    }

    /// The object detector embeds and attaches holds the production program and nothing else;
    /// the bench references live in the bench object only.
    #[test]
    fn the_shipped_object_holds_only_the_production_program() {
        assert_eq!(programs_of(super::super::attach::OBJECT), PROGRAMS);
        let bench = std::fs::read(BENCH_OBJECT).expect("build.rs leaves the bench object");
        let mut want: Vec<String> = BENCH_PROGRAMS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(programs_of(Aligned::copy_of(&bench).bytes()), want);
    }
}

//! SETTINGS as the program's global (the pinned `.data.settings` map, read by direct value
//! address): flags written by user space take effect in the pinned program, a second `attach`
//! keeps them (aya writes a data section into its map on every load, so the loader must pass
//! the pinned value), and pins whose SETTINGS is not this build's section map (an earlier
//! build's BTF-defined array) are adopted and read by the new program.
//!
//! Through the library, with no interface: `attach` then only loads and pins, and the pinned
//! program is run through BPF_PROG_TEST_RUN.
use anyhow::Result;
use detector::enforce::testrun::{TestObject, action, run_pinned};
use detector::enforce::{
    AttachMode, AttachOptions, AttachReport, Capacity, Enforcer, Reason, attach,
};
use detector_common::{LAYOUT_VERSION, bench_programs, settings_flags};
use detector_tests::bin::PinDir;
use detector_tests::frames::{ETH_P_IP, eth, frame, ipv4};

const BANNED: [u8; 4] = [198, 18, 21, 5];
const SERVER: [u8; 4] = [198, 18, 21, 1];

fn attach_here(pins: &PinDir) -> Result<AttachReport> {
    Ok(attach(&AttachOptions {
        pin_dir: pins.path.clone(),
        ifaces: Vec::new(),
        mode: AttachMode::Auto,
        capacity: Some(Capacity {
            exact: 64,
            prefix: 16,
        }),
    })?)
}

/// The pinned program's verdict on a frame from BANNED.
fn verdict(pins: &PinDir) -> Result<u32> {
    let f = frame(&[&eth(&[], ETH_P_IP), &ipv4(BANNED, SERVER, &[])]);
    Ok(run_pinned(&pins.path.join("prog_detector_xdp"), &f)?.retval)
}

fn settings_pin(pins: &PinDir) -> std::path::PathBuf {
    pins.path.join("SETTINGS")
}

#[test]
fn observe_mode_reaches_the_program_and_survives_a_second_attach() -> Result<()> {
    let pins = PinDir::new("settings-adopt")?;
    assert!(!attach_here(&pins)?.adopted);
    let mut e = Enforcer::open(&pins.path)?;
    e.ban(
        format!("{}/32", std::net::Ipv4Addr::from(BANNED)).parse()?,
        None,
        Reason::Manual,
    )?;
    assert_eq!(verdict(&pins)?, action::DROP);
    e.set_observe(true)?;
    assert_eq!(verdict(&pins)?, action::PASS, "observe flag not seen");

    // Adopting reloads the object, whose SETTINGS global starts at flags 0: the pinned
    // flags must be what the reload writes.
    assert!(attach_here(&pins)?.adopted);
    let e = Enforcer::open(&pins.path)?;
    assert!(e.observe()?, "observe mode lost by the second attach");
    assert_eq!(verdict(&pins)?, action::PASS);
    assert_eq!(e.stats()?.counters.observed, 2);
    let mut e = e;
    e.set_observe(false)?;
    assert_eq!(verdict(&pins)?, action::DROP);
    Ok(())
}

#[test]
fn a_settings_pin_of_an_earlier_build_is_adopted_and_read_by_the_program() -> Result<()> {
    let pins = PinDir::new("settings-old")?;
    attach_here(&pins)?;
    Enforcer::open(&pins.path)?.ban(
        format!("{}/32", std::net::Ipv4Addr::from(BANNED)).parse()?,
        None,
        Reason::Manual,
    )?;
    // Replace SETTINGS by a plain one-entry array of the same layout, as builds before the
    // global left it (theirs was BTF-defined; no data section of this object either way),
    // with observe mode on.
    let path = settings_pin(&pins);
    std::fs::remove_file(&path)?;
    let st = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args([
            "type", "array", "key", "4", "value", "8", "entries", "1", "name", "SETTINGS",
        ])
        .status()?;
    assert!(st.success(), "bpftool map create");
    let mut value: Vec<String> = settings_flags::OBSERVE
        .to_ne_bytes()
        .iter()
        .chain(LAYOUT_VERSION.to_ne_bytes().iter())
        .map(|b| b.to_string())
        .collect();
    let mut args: Vec<String> = ["map", "update", "pinned"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(path.display().to_string());
    args.extend(["key", "0", "0", "0", "0", "value"].map(String::from));
    args.append(&mut value);
    let st = std::process::Command::new("bpftool").args(&args).status()?;
    assert!(st.success(), "bpftool map update");

    // And an earlier build's program pin (any other program will do: a different tag), so
    // that the next attach swaps this build's program in, loaded against the pinned array.
    let prog_pin = pins.path.join("prog_detector_xdp");
    std::fs::remove_file(&prog_pin)?;
    let mut other = TestObject::load_bench(Capacity {
        exact: 16,
        prefix: 16,
    })?;
    other.pin_program(bench_programs::EMPTY, &prog_pin)?;
    drop(other);

    assert!(attach_here(&pins)?.adopted);
    assert_eq!(
        verdict(&pins)?,
        action::PASS,
        "observe mode in the adopted SETTINGS not honoured"
    );
    let mut e = Enforcer::open(&pins.path)?;
    assert!(e.observe()?);
    e.set_observe(false)?;
    assert_eq!(verdict(&pins)?, action::DROP);
    Ok(())
}

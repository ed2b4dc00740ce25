use detector::engine::{Engine, EngineConfig};
use detector_tests::sim::run::run;
use detector_tests::sim::{
    BotKind, DovecotVersion, Envelope, HOST_V4, HOST_V6, Role, Sim, SimConfig,
};
use std::net::IpAddr;
#[test]
fn dbg() {
    let mut c = SimConfig::issue10(2, DovecotVersion::V2_4, Envelope::SplitFiles);
    c.hours = 72;
    c.extended = true;
    let sim = Sim::generate(&c);
    let mut e = Engine::new(EngineConfig::default());
    e.set_host_addrs([IpAddr::V4(HOST_V4), IpAddr::V6(HOST_V6)]);
    let r = run(&sim, e);
    for a in &sim.truth.actors {
        if a.role != Role::Bot(BotKind::GuessedRight) {
            continue;
        }
        if r.alerts.iter().any(|d| a.addrs.contains(&d.ip)) {
            continue;
        }
        println!("guessed {:?}", a.addrs);
        for (i, s) in sim.sessions.iter().enumerate() {
            if a.addrs.contains(&s.ip) {
                println!(
                    "  session {} {} {:?} blocked {}",
                    s.start, s.ip, s.attempt, r.blocked[i]
                );
                for l in &s.lines {
                    println!("     {}", l.text);
                }
            }
        }
        for d in &r.decisions {
            if a.addrs.iter().any(|x| d.prefix.contains(x)) {
                println!("  {d}");
            }
        }
    }
}

//! Ban maps at capacity, on real maps through BPF_PROG_TEST_RUN (private maps, nothing
//! attached): batched walks see what per-key walks see; a full map makes room (expired entries,
//! then IPv6 /64 bans folded into their /48, then the timed ban ending soonest) instead of
//! refusing the new ban, and the XDP program drops exactly what the maps then say.
use std::net::Ipv6Addr;
use std::time::Duration;

use detector::enforce::testrun::{TestObject, action};
use detector::enforce::{Aggregation, Allowlist, Capacity, MadeRoom, Reason};
use detector_common::XDP_PROGRAM;
use detector_tests::frames::*;
use ipnet::IpNet;

const SERVER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 0, 10, 0, 0, 0, 0, 0, 0, 0, 1,
];
const BANNED6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0x66,
];
const HOUR: Duration = Duration::from_secs(3600);

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

/// The XDP program's verdict on a TCP-less IPv6 frame from `src`.
fn verdict6(obj: &TestObject, src: &str) -> u32 {
    let f = frame(&[&eth(&[], ETH_P_IPV6), &ipv6(v6(src), SERVER6)]);
    obj.run(XDP_PROGRAM, &f, 1)
        .expect("BPF_PROG_TEST_RUN")
        .retval
}

fn verdict4(obj: &TestObject, src: [u8; 4]) -> u32 {
    let f = frame(&[&eth(&[], ETH_P_IP), &ipv4(src, [198, 18, 50, 1], &[])]);
    obj.run(XDP_PROGRAM, &f, 1)
        .expect("BPF_PROG_TEST_RUN")
        .retval
}

fn anywhere(_: IpNet) -> bool {
    true
}

/// What the maps hold: (target, reason).
fn held(obj: &mut TestObject) -> Vec<(String, Reason)> {
    let bans = obj.enforcer().list().unwrap();
    bans.iter().map(|b| (b.target(), b.reason)).collect()
}

/// Four /64 bans fill a 4-entry trie; a fifth inside a /48 that already holds two of them
/// folds the three into the /48 (the engine's site rule: 3 offending /64s in a /48). Traffic
/// from all three /64s is still dropped, and from the rest of the /48, and the bans of the
/// other /48 stay; nothing outside the two is dropped.
#[test]
fn a_full_trie_folds_the_64s_of_one_48_into_it() {
    let mut obj = TestObject::load(Capacity {
        exact: 16,
        prefix: 4,
    })
    .unwrap();
    let e = obj.enforcer();
    e.set_aggregation(Aggregation {
        site_prefix: 48,
        min_prefixes: 3,
    });
    e.ban(net("2001:db8:30:1::/64"), Some(HOUR), Reason::Burst)
        .unwrap();
    e.ban(
        net("2001:db8:30:2::/64"),
        Some(HOUR * 24),
        Reason::SlowRepeat,
    )
    .unwrap();
    e.ban(net("2001:db8:31:1::/64"), Some(HOUR), Reason::Burst)
        .unwrap();
    e.ban(net("2001:db8:31:2::/64"), Some(HOUR), Reason::Burst)
        .unwrap();
    // Full: the plain ban is refused, loudly.
    let err = e
        .ban(net("2001:db8:30:3::/64"), Some(HOUR), Reason::ProbeLogin)
        .unwrap_err();
    assert!(matches!(err, detector::Error::MapFull { .. }), "{err:?}");

    let (outcome, room) = e
        .ban_making_room(
            net("2001:db8:30:3::/64"),
            Some(HOUR),
            Reason::ProbeLogin,
            &anywhere,
        )
        .unwrap();
    assert_eq!(outcome, detector::enforce::BanOutcome::Added);
    assert_eq!(
        room,
        Some(MadeRoom::Aggregated {
            site: net("2001:db8:30::/48"),
            folded: 3,
            with_new: true,
        })
    );
    let mut now = held(&mut obj);
    now.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        now,
        vec![
            ("2001:db8:30::/48".to_string(), Reason::Aggregated),
            ("2001:db8:31:1::/64".to_string(), Reason::Burst),
            ("2001:db8:31:2::/64".to_string(), Reason::Burst),
        ]
    );
    // The site's ban lasts as long as the longest /64 it replaced (24 h), not less.
    let site = obj
        .enforcer()
        .entry(net("2001:db8:30::/48"))
        .unwrap()
        .unwrap();
    assert!(site.remaining.unwrap() > HOUR * 23, "{site:?}");
    // What `explain` reports for an address of a folded /64: the /48 that drops it.
    let found = obj
        .enforcer()
        .find("2001:db8:30:1::7".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.target(), found.reason),
        ("2001:db8:30::/48".to_string(), Reason::Aggregated)
    );

    for src in [
        "2001:db8:30:1::7",
        "2001:db8:30:2::7",
        "2001:db8:30:3::7",
        "2001:db8:30:ffff::1",
        "2001:db8:31:1::7",
        "2001:db8:31:2::7",
    ] {
        assert_eq!(verdict6(&obj, src), action::DROP, "{src}");
    }
    for src in [
        "2001:db8:31:3::7",
        "2001:db8:2f:ffff:ffff:ffff:ffff:ffff",
        "2001:db8:32::1",
    ] {
        assert_eq!(verdict6(&obj, src), action::PASS, "{src}");
    }
}

/// A site the engine says may not be banned as a whole (a known client lives there), or that
/// overlaps the allowlist, is never folded: the ban ending soonest makes room instead.
#[test]
fn a_site_that_may_not_be_widened_is_not_folded_the_soonest_ban_goes() {
    for refuse in ["engine", "allowlist"] {
        let mut obj = TestObject::load(Capacity {
            exact: 16,
            prefix: 3,
        })
        .unwrap();
        let e = obj.enforcer();
        e.ban(net("2001:db8:40:1::/64"), Some(HOUR * 2), Reason::Burst)
            .unwrap();
        e.ban(net("2001:db8:40:2::/64"), Some(HOUR), Reason::Burst)
            .unwrap();
        e.ban(net("2001:db8:41:1::/64"), Some(HOUR * 3), Reason::Burst)
            .unwrap();
        let client_lives_in_40 = |site: IpNet| site != net("2001:db8:40::/48");
        let may_widen: &dyn Fn(IpNet) -> bool = if refuse == "engine" {
            &client_lives_in_40
        } else {
            e.set_allowlist(Allowlist::new(vec![net("2001:db8:40:99::5/128")]));
            &anywhere
        };
        let (_, room) = e
            .ban_making_room(
                net("2001:db8:40:3::/64"),
                Some(HOUR),
                Reason::Burst,
                may_widen,
            )
            .unwrap();
        match room {
            Some(MadeRoom::Evicted { net: gone, .. }) => {
                assert_eq!(gone, net("2001:db8:40:2::/64"), "{refuse}")
            }
            other => panic!("{refuse}: {other:?}"),
        }
        assert_eq!(verdict6(&obj, "2001:db8:40:3::1"), action::DROP, "{refuse}");
        assert_eq!(verdict6(&obj, "2001:db8:40:1::1"), action::DROP, "{refuse}");
        assert_eq!(verdict6(&obj, "2001:db8:40:2::1"), action::PASS, "{refuse}");
        assert_eq!(
            verdict6(&obj, "2001:db8:40:99::1"),
            action::PASS,
            "{refuse}"
        );
    }
}

/// A full exact map first drops entries that already ended, then evicts the timed ban ending
/// soonest; permanent bans are never evicted: with nothing else left, the error stands.
#[test]
fn a_full_hash_sweeps_then_evicts_the_soonest_end_never_a_permanent_ban() {
    let mut obj = TestObject::load(Capacity {
        exact: 3,
        prefix: 4,
    })
    .unwrap();
    obj.insert_exact_v4([198, 18, 50, 9], 1).unwrap(); // ended long ago, not swept yet
    let e = obj.enforcer();
    e.ban(net("198.18.50.1/32"), None, Reason::Manual).unwrap();
    e.ban(net("198.18.50.2/32"), Some(HOUR), Reason::Burst)
        .unwrap();
    let (_, room) = e
        .ban_making_room(net("198.18.50.3/32"), Some(HOUR), Reason::Burst, &anywhere)
        .unwrap();
    assert_eq!(room, Some(MadeRoom::Swept(1)));
    let (_, room) = e
        .ban_making_room(
            net("198.18.50.4/32"),
            Some(HOUR * 2),
            Reason::Burst,
            &anywhere,
        )
        .unwrap();
    match room {
        // .2 and .3 both end in an hour; .2 was banned first, so it ends first.
        Some(MadeRoom::Evicted { net: gone, .. }) => assert_eq!(gone, net("198.18.50.2/32")),
        other => panic!("{other:?}"),
    }
    assert_eq!(verdict4(&obj, [198, 18, 50, 4]), action::DROP);
    assert_eq!(verdict4(&obj, [198, 18, 50, 1]), action::DROP);
    assert_eq!(verdict4(&obj, [198, 18, 50, 2]), action::PASS);

    let mut obj = TestObject::load(Capacity {
        exact: 2,
        prefix: 4,
    })
    .unwrap();
    let e = obj.enforcer();
    e.ban(net("198.18.51.1/32"), None, Reason::Manual).unwrap();
    e.ban(net("198.18.51.2/32"), None, Reason::Blocklist)
        .unwrap();
    let err = e
        .ban_making_room(net("198.18.51.3/32"), Some(HOUR), Reason::Burst, &anywhere)
        .unwrap_err();
    assert!(matches!(err, detector::Error::MapFull { .. }), "{err:?}");
    assert_eq!(held(&mut obj).len(), 2);
}

/// Walks in batches (BPF_MAP_LOOKUP_BATCH, BPF_MAP_DELETE_BATCH) see and remove exactly what
/// the one-entry-at-a-time walk does: thousands of entries per map, several batches each,
/// live and expired, exact and prefix, both families.
#[test]
fn batched_walks_list_and_sweep_what_per_key_walks_do() {
    let fill = |obj: &mut TestObject| {
        for i in 0..9_000u32 {
            let [_, _, c, d] = i.to_be_bytes();
            // Every third one expired long ago (monotonic ns 1).
            let expires = if i % 3 == 0 { 1 } else { 0 };
            obj.insert_exact_v4([198, 19, c, d], expires).unwrap();
            let mut v6 = BANNED6;
            v6[14] = c;
            v6[15] = d;
            obj.insert_exact_v6(v6, expires).unwrap();
        }
        let e = obj.enforcer();
        for i in 0..300u32 {
            let net = format!("198.18.{}.0/24", 100 + i % 100);
            let net6 = format!("2001:db8:20:{i:x}::/64");
            e.ban(net6.parse().unwrap(), None, Reason::Manual).unwrap();
            if i < 100 {
                e.ban(
                    net.parse().unwrap(),
                    Some(Duration::from_secs(60)),
                    Reason::Burst,
                )
                .unwrap();
            }
        }
    };
    let capacity = Capacity {
        exact: 16_384,
        prefix: 1024,
    };
    let mut one_by_one = TestObject::load(capacity).unwrap();
    let mut batched = TestObject::load(capacity).unwrap();
    fill(&mut one_by_one);
    fill(&mut batched);
    one_by_one.enforcer().set_batch_walks(false);
    // What a listing says, minus the time left (read at two different instants).
    let listed = |obj: &mut TestObject| -> Vec<(String, bool, u64)> {
        let bans = obj.enforcer().list().unwrap();
        bans.iter()
            .map(|b| (b.target(), b.remaining.is_some(), b.hits))
            .collect()
    };
    let slow = listed(&mut one_by_one);
    let fast = listed(&mut batched);
    assert_eq!(slow.len(), 6_000 * 2 + 400);
    assert!(fast == slow, "the batched listing differs");
    let walks = batched.enforcer().batched_walks();
    // The hashes have batch operations on every kernel this runs on (5.6+).
    assert_eq!(walks[0], ("BANS_V4", Some(true)), "{walks:?}");
    assert_eq!(walks[1], ("BANS_V6", Some(true)), "{walks:?}");
    assert_eq!(one_by_one.enforcer().batched_walks()[0].1, Some(false));

    let slow = one_by_one.enforcer().sweep_due().unwrap().unwrap();
    let fast = batched.enforcer().sweep_due().unwrap().unwrap();
    assert_eq!(slow.removed, 6_000);
    assert_eq!(fast, slow);
    assert_eq!(
        (fast.live_v4, fast.live_v6),
        (6_000 + 100, 6_000 + 300),
        "{fast:?}"
    );
    // The expired entries are gone from the maps, not just hidden.
    one_by_one.enforcer().set_batch_walks(true);
    let again = batched.enforcer().sweep_expired().unwrap();
    assert_eq!(again, 0);
    assert_eq!(one_by_one.enforcer().sweep_expired().unwrap(), 0);
    assert!(listed(&mut batched) == listed(&mut one_by_one));
    assert_eq!(listed(&mut batched).len(), 6_000 * 2 + 400);
}

/// The daemon's admin-unban check on many bans (one batched walk) finds exactly what looking
/// each one up finds: bans removed are missing, bans covered by a live wider prefix are not.
#[test]
fn many_missing_bans_are_found_by_one_walk_as_by_lookups() {
    let mut obj = TestObject::load(Capacity {
        exact: 4096,
        prefix: 64,
    })
    .unwrap();
    let e = obj.enforcer();
    let mut nets = Vec::new();
    for i in 0..2_500u32 {
        let [_, _, c, d] = i.to_be_bytes();
        let n = net(&format!("198.19.{c}.{d}/32"));
        e.ban(n, Some(HOUR), Reason::Burst).unwrap();
        nets.push(n);
    }
    // Prefixes covered by wider bans (a /64 folded into its /48), never banned themselves.
    e.ban(net("198.18.60.0/24"), Some(HOUR), Reason::Manual)
        .unwrap();
    e.ban(net("2001:db8:60::/48"), Some(HOUR), Reason::Aggregated)
        .unwrap();
    nets.push(net("198.18.60.128/25"));
    nets.push(net("2001:db8:60:5::/64"));
    // An address is looked up in its exact map only: a /24 over it does not make its own
    // (removed) ban present.
    nets.push(net("198.18.60.7/32"));
    // Never banned, not covered.
    nets.push(net("198.18.61.7/32"));
    nets.push(net("2001:db8:61:5::/64"));
    let gone: Vec<IpNet> = [3, 700, 2_499].iter().map(|&i: &usize| nets[i]).collect();
    for n in &gone {
        assert!(e.unban(*n).unwrap());
    }
    let mut want = gone.clone();
    want.push(net("198.18.60.7/32"));
    want.push(net("198.18.61.7/32"));
    want.push(net("2001:db8:61:5::/64"));
    want.sort();
    assert!(nets.len() > detector::enforce::MISSING_BY_LOOKUP);
    let mut by_walk = e.missing(nets.iter().copied()).unwrap();
    by_walk.sort();
    assert_eq!(by_walk, want);
    let mut by_lookup = Vec::new();
    for chunk in nets.chunks(1000) {
        by_lookup.extend(e.missing(chunk.iter().copied()).unwrap());
    }
    by_lookup.sort();
    assert_eq!(by_lookup, want);
}

//! Narrowing a foreign ban around protected addresses: a CrowdSec `Range` decision that covers
//! this host's own address or an allowlisted network is replaced by the largest prefixes of it
//! that touch nothing protected, or refused when too little is left.
use ipnet::IpNet;

/// Above this many pieces the decision is refused instead (each piece is a trie entry).
pub const MAX_PIECES: usize = 64;

/// What is left of `ban` once every `protected` network is cut out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Narrowed {
    /// Nothing protected inside: ban as is.
    Whole,
    /// These prefixes (disjoint, covering `ban` minus the protected networks).
    Pieces(Vec<IpNet>),
    /// All of it is protected, or it would take more than [`MAX_PIECES`] prefixes.
    Refused(String),
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
            a.contains(&b.network()) || b.contains(&a.network())
        }
        _ => false,
    }
}

pub fn narrow(ban: IpNet, protected: &[IpNet]) -> Narrowed {
    let hits: Vec<&IpNet> = protected.iter().filter(|p| overlaps(&ban, p)).collect();
    if hits.is_empty() {
        return Narrowed::Whole;
    }
    if let Some(p) = hits.iter().find(|p| p.contains(&ban)) {
        return Narrowed::Refused(format!("it lies inside the protected {p}"));
    }
    let mut out = Vec::new();
    // Depth-first: a piece with no protected network inside is kept whole, one inside a
    // protected network dropped, any other split in two. Each protected network costs at most
    // one kept piece per level, so this ends after a few hundred steps at worst.
    let mut todo = vec![ban];
    while let Some(piece) = todo.pop() {
        let inside: Vec<&&IpNet> = hits.iter().filter(|p| overlaps(&piece, p)).collect();
        if inside.is_empty() {
            out.push(piece);
            if out.len() > MAX_PIECES {
                return Narrowed::Refused(format!(
                    "cutting out {} protected networks would take more than {MAX_PIECES} prefixes",
                    hits.len()
                ));
            }
        } else if inside.iter().any(|p| p.contains(&piece)) {
            // protected: dropped
        } else if let Ok(halves) = piece.subnets(piece.prefix_len() + 1) {
            let halves: Vec<IpNet> = halves.collect();
            todo.extend(halves.into_iter().rev());
        }
    }
    if out.is_empty() {
        return Narrowed::Refused("all of it is protected".into());
    }
    out.sort();
    Narrowed::Pieces(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn untouched_ranges_stay_whole() {
        assert_eq!(
            narrow(n("198.18.5.0/24"), &[n("198.18.6.1/32"), n("::1/128")]),
            Narrowed::Whole
        );
    }

    #[test]
    fn an_own_address_is_cut_out() {
        let Narrowed::Pieces(p) = narrow(n("198.18.5.0/24"), &[n("198.18.5.1/32")]) else {
            panic!()
        };
        // /32 (198.18.5.0), /31 (.2), /30 (.4), ... /25 (.128): 8 pieces.
        assert_eq!(p.len(), 8);
        assert!(p.iter().all(|x| !x.contains(&n("198.18.5.1/32").addr())));
        let covered: u32 = p.iter().map(|x| 1u32 << (32 - x.prefix_len())).sum();
        assert_eq!(covered, 255);
        assert!(p.contains(&n("198.18.5.128/25")));
    }

    #[test]
    fn an_allowlisted_network_inside_is_cut_out_ipv6_too() {
        let Narrowed::Pieces(p) = narrow(n("2001:db8::/32"), &[n("2001:db8:1::/48")]) else {
            panic!()
        };
        assert_eq!(p.len(), 16);
        assert!(p.iter().all(|x| !overlaps(x, &n("2001:db8:1::/48"))));
    }

    #[test]
    fn inside_protected_or_too_fragmented_is_refused() {
        assert!(matches!(
            narrow(n("127.0.0.0/16"), &[n("127.0.0.0/8")]),
            Narrowed::Refused(_)
        ));
        assert!(matches!(
            narrow(n("198.18.5.7/32"), &[n("198.18.5.7/32")]),
            Narrowed::Refused(_)
        ));
        // Every other address of a /24 protected: 128 pieces.
        let many: Vec<IpNet> = (0..128)
            .map(|i| n(&format!("198.18.5.{}/32", i * 2)))
            .collect();
        assert!(matches!(
            narrow(n("198.18.5.0/24"), &many),
            Narrowed::Refused(_)
        ));
    }
}

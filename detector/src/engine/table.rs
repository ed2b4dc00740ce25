//! The per-address table: one pointer per slot in a hash table, the key inside the record it
//! points to.
//!
//! Memory is why it is not a map of key to value: at a million addresses a hash table has
//! 2^21 slots (it keeps a load of at most 7/8 and grows by doubling), so every byte a slot
//! holds is paid about twice. A slot here is one thin pointer (8 bytes plus a control byte);
//! the 16-byte key lives in the record. Records are shared copy-on-write ([`triomphe::Arc`]:
//! no weak count, so an 8-byte header), so a save copies pointers, not states
//! ([`AddressTable::shared`]), and a change copies only a record a save still holds.
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Index;

use hashbrown::{DefaultHashBuilder, HashTable};
use triomphe::Arc;

use super::state::IpState;

/// An address as 16 bytes: IPv6 as itself, IPv4 as its IPv4-mapped form. The engine keys
/// state by canonical addresses (IPv4-mapped IPv6 is turned into IPv4 before), so the two
/// forms never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey([u8; 16]);

impl From<IpAddr> for AddrKey {
    fn from(ip: IpAddr) -> AddrKey {
        AddrKey(match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        })
    }
}

impl From<AddrKey> for IpAddr {
    fn from(k: AddrKey) -> IpAddr {
        let v6 = Ipv6Addr::from(k.0);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }
}

/// A record: the state and the key it is filed under.
#[derive(Clone, Debug, PartialEq)]
pub struct Keyed {
    key: AddrKey,
    pub state: IpState,
}

impl Keyed {
    pub fn ip(&self) -> IpAddr {
        self.key.into()
    }
}

/// A shared record, as a save holds it.
pub type SharedState = Arc<Keyed>;

/// Per-address state by state key.
#[derive(Default)]
pub struct AddressTable {
    slots: HashTable<SharedState>,
    hasher: DefaultHashBuilder,
}

impl std::fmt::Debug for AddressTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressTable")
            .field("len", &self.slots.len())
            .finish()
    }
}

impl AddressTable {
    fn hash(&self, key: AddrKey) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, ip: &IpAddr) -> Option<&IpState> {
        let key = AddrKey::from(*ip);
        (self.slots)
            .find(self.hash(key), |r| r.key == key)
            .map(|r| &r.state)
    }

    pub fn contains_key(&self, ip: &IpAddr) -> bool {
        self.get(ip).is_some()
    }

    /// The state for a change (copied first if a save still holds it).
    pub fn get_mut(&mut self, ip: &IpAddr) -> Option<&mut IpState> {
        let key = AddrKey::from(*ip);
        let hash = self.hash(key);
        (self.slots)
            .find_mut(hash, |r| r.key == key)
            .map(|r| &mut Arc::make_mut(r).state)
    }

    /// The state of `ip` for a change, made by `new` if there is none.
    pub fn get_or_insert_with(
        &mut self,
        ip: IpAddr,
        new: impl FnOnce() -> IpState,
    ) -> &mut IpState {
        let key = AddrKey::from(ip);
        let hash = self.hash(key);
        let hasher = &self.hasher;
        let slot = self
            .slots
            .entry(hash, |r| r.key == key, |r| hasher.hash_one(r.key));
        let r = slot.or_insert_with(|| Arc::new(Keyed { key, state: new() }));
        &mut Arc::make_mut(r.into_mut()).state
    }

    /// Puts `state` under `ip` (replacing what was there).
    pub fn insert(&mut self, ip: IpAddr, state: IpState) {
        *self.get_or_insert_with(ip, IpState::default) = state;
    }

    /// Every address and its state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, &IpState)> {
        self.slots.iter().map(|r| (r.ip(), &r.state))
    }

    /// Keeps the addresses for which `keep` says yes.
    pub fn retain(&mut self, mut keep: impl FnMut(IpAddr, &IpState) -> bool) {
        self.slots.retain(|r| keep(r.ip(), &r.state));
    }

    /// Changes the states `needs` picks with `change` (only those are copied if shared).
    pub fn update(&mut self, needs: impl Fn(&IpState) -> bool, change: impl Fn(&mut IpState)) {
        for r in self.slots.iter_mut() {
            if needs(&r.state) {
                change(&mut Arc::make_mut(r).state);
            }
        }
    }

    /// Every record, shared: what a save holds while the engine goes on.
    pub fn shared(&self) -> Vec<SharedState> {
        self.slots.iter().cloned().collect()
    }

    /// Gives the table back the room it does not need (after many addresses left it).
    pub fn shrink(&mut self) {
        let hasher = &self.hasher;
        self.slots.shrink_to_fit(|r| hasher.hash_one(r.key));
    }
}

impl Index<&IpAddr> for AddressTable {
    type Output = IpState;
    /// Panics when `ip` has no state: for callers that just made it.
    fn index(&self, ip: &IpAddr) -> &IpState {
        self.get(ip)
            .expect("state of an address the caller just recorded")
    }
}

impl FromIterator<(IpAddr, IpState)> for AddressTable {
    fn from_iter<I: IntoIterator<Item = (IpAddr, IpState)>>(it: I) -> Self {
        let mut t = AddressTable::default();
        for (ip, s) in it {
            t.insert(ip, s);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_ipv4_never_meets_ipv6() {
        for ip in [
            "198.18.0.1",
            "2001:db8::1",
            "::",
            "0.0.0.0",
            "2001:db8:1:2::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpAddr::from(AddrKey::from(ip)), ip);
        }
        let mut t = AddressTable::default();
        t.insert("198.18.0.1".parse().unwrap(), IpState::new(1));
        t.insert("2001:db8::1".parse().unwrap(), IpState::new(2));
        assert_eq!(t.len(), 2);
        assert_eq!(t[&"198.18.0.1".parse().unwrap()].first_seen, 1);
        assert!(!t.contains_key(&"198.18.0.2".parse().unwrap()));
    }

    #[test]
    fn a_change_copies_only_a_record_a_save_still_holds() {
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let mut t = AddressTable::default();
        t.insert(ip, IpState::new(1));
        let saved = t.shared();
        t.get_mut(&ip).unwrap().last_seen = super::super::state::Ts::of(5);
        assert_eq!(saved[0].state.last_seen, 1, "the save keeps what it copied");
        assert_eq!(t[&ip].last_seen, 5);
        t.retain(|_, s| s.last_seen > 1);
        assert_eq!(t.len(), 1);
        t.retain(|_, s| s.last_seen > 5);
        assert!(t.is_empty());
    }
}

//! Prefix maps over IPv4 and IPv6: which stored networks contain an address; and the one
//! parser of networks as config, policy and inventory files write them.
//! Must not depend on: anything of labelwall's.
//!
//! One hash map per prefix length that is actually used, probed from the longest length to
//! the shortest: a lookup costs one masked hash probe per distinct length (a handful in real
//! policies), allocates nothing and takes no lock. Built once in the control plane.

use std::hash::Hash;
use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

/// Values keyed by network, for longest-prefix or all-prefix matching.
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    v4: Family<u32, V>,
    v6: Family<u128, V>,
}

#[derive(Debug, Clone)]
struct Family<K, V> {
    /// Prefix lengths present, longest first, parallel to `maps`.
    lengths: Vec<u8>,
    maps: Vec<FxHashMap<K, V>>,
}

trait Bits: Copy + Eq + Hash {
    const WIDTH: u8;
    fn mask(self, len: u8) -> Self;
}

impl Bits for u32 {
    const WIDTH: u8 = 32;
    fn mask(self, len: u8) -> Self {
        if len == 0 { 0 } else { self & (u32::MAX << (32 - u32::from(len))) }
    }
}

impl Bits for u128 {
    const WIDTH: u8 = 128;
    fn mask(self, len: u8) -> Self {
        if len == 0 { 0 } else { self & (u128::MAX << (128 - u32::from(len))) }
    }
}

impl<K: Bits, V> Family<K, V> {
    fn new() -> Self {
        Family { lengths: Vec::new(), maps: Vec::new() }
    }

    fn insert_with(&mut self, key: K, len: u8, value: V, merge: &mut impl FnMut(&mut V, V)) {
        debug_assert!(len <= K::WIDTH);
        let position = match self.lengths.iter().position(|&l| l <= len) {
            Some(i) if self.lengths[i] == len => i,
            Some(i) => {
                self.lengths.insert(i, len);
                self.maps.insert(i, FxHashMap::default());
                i
            }
            None => {
                self.lengths.push(len);
                self.maps.push(FxHashMap::default());
                self.lengths.len() - 1
            }
        };
        match self.maps[position].entry(key.mask(len)) {
            std::collections::hash_map::Entry::Occupied(mut slot) => merge(slot.get_mut(), value),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value);
            }
        }
    }

    fn longest(&self, key: K) -> Option<&V> {
        self.lengths.iter().zip(&self.maps).find_map(|(&len, map)| map.get(&key.mask(len)))
    }

    fn each(&self, key: K, f: &mut impl FnMut(&V)) {
        for (&len, map) in self.lengths.iter().zip(&self.maps) {
            if let Some(value) = map.get(&key.mask(len)) {
                f(value);
            }
        }
    }

    fn len(&self) -> usize {
        self.maps.iter().map(|m| m.len()).sum()
    }
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap { v4: Family::new(), v6: Family::new() }
    }
}

impl<V> PrefixMap<V> {
    /// Inserts `value` for `net`; `merge` combines it with a value already stored for the
    /// same network.
    pub fn insert_with(&mut self, net: IpNet, value: V, mut merge: impl FnMut(&mut V, V)) {
        match net {
            IpNet::V4(n) => {
                self.v4.insert_with(u32::from(n.network()), n.prefix_len(), value, &mut merge)
            }
            IpNet::V6(n) => {
                self.v6.insert_with(u128::from(n.network()), n.prefix_len(), value, &mut merge)
            }
        }
    }

    /// The value of the longest stored network that contains `ip`.
    pub fn longest_match(&self, ip: IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(a) => self.v4.longest(u32::from(a)),
            IpAddr::V6(a) => self.v6.longest(u128::from(a)),
        }
    }

    /// Calls `f` with the value of every stored network that contains `ip`, longest first.
    pub fn for_each_match(&self, ip: IpAddr, mut f: impl FnMut(&V)) {
        match ip {
            IpAddr::V4(a) => self.v4.each(u32::from(a), &mut f),
            IpAddr::V6(a) => self.v6.each(u128::from(a), &mut f),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.lengths.is_empty() && self.v6.lengths.is_empty()
    }

    /// Number of stored networks.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// A network in CIDR notation (or a bare address = one host); host bits must be zero.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net: IpNet = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("`{text}` is not an IPv4 or IPv6 network (a.b.c.d/len)")),
        },
    };
    if net.trunc() != net {
        return Err(format!("`{text}` has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut map = PrefixMap::default();
        for (n, v) in
            [("10.0.0.0/8", 8), ("10.1.0.0/16", 16), ("10.1.2.3/32", 32), ("0.0.0.0/0", 0)]
        {
            map.insert_with(net(n), v, |_, _| unreachable!());
        }
        assert_eq!(map.longest_match(ip("10.1.2.3")), Some(&32));
        assert_eq!(map.longest_match(ip("10.1.2.4")), Some(&16));
        assert_eq!(map.longest_match(ip("10.2.0.0")), Some(&8));
        assert_eq!(map.longest_match(ip("192.0.2.1")), Some(&0));
        assert_eq!(map.longest_match(ip("::1")), None, "families are separate");
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn every_containing_prefix_is_visited() {
        let mut map = PrefixMap::default();
        map.insert_with(net("fd00::/8"), "ula", |_, _| {});
        map.insert_with(net("fd00:1::/32"), "site", |_, _| {});
        map.insert_with(net("2001:db8::/32"), "doc", |_, _| {});
        let mut seen = Vec::new();
        map.for_each_match(ip("fd00:1::5"), |v| seen.push(*v));
        assert_eq!(seen, ["site", "ula"]);
    }

    #[test]
    fn same_network_values_are_merged() {
        let mut map = PrefixMap::default();
        map.insert_with(net("10.0.0.0/24"), 1u32, |a, b| *a |= b);
        map.insert_with(net("10.0.0.7/24"), 2u32, |a, b| *a |= b); // host bits are masked
        assert_eq!(map.longest_match(ip("10.0.0.200")), Some(&3));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn empty_map_matches_nothing() {
        let map: PrefixMap<u8> = PrefixMap::default();
        assert!(map.is_empty());
        assert_eq!(map.longest_match(ip("1.2.3.4")), None);
    }
}

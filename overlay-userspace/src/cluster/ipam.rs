//! Address allocation without a central allocator.
//!
//! A network's subnet is cut into blocks of 16 addresses (/28; a smaller subnet
//! is one block). A node allocates only inside blocks it owns, and claims a new
//! block through gossip when its blocks are full:
//!
//! 1. it picks the lowest block nobody has claimed, announces the claim with the
//!    time it made it, and waits a settle time longer than gossip's propagation;
//! 2. if another node claimed the same block, the earlier claim (then the
//!    smaller node name) owns it, the same on every node; the loser picks again.
//!
//! Two nodes can therefore only hand out the same address if a claim takes
//! longer than the settle time to reach the other node, i.e. under a partition.
//! Claims are kept after the block empties, so a block's addresses stay with one
//! node, and they leave the cluster with the node's gossip state.

use std::{collections::BTreeSet, net::Ipv4Addr};

use super::record::BlockClaim;
use crate::model::Subnet;

pub const BLOCK_PREFIX: u8 = 28;

fn block_prefix(subnet: Subnet) -> u8 {
    subnet.prefix_len.max(BLOCK_PREFIX)
}

pub fn block_count(subnet: Subnet) -> u32 {
    1 << (block_prefix(subnet) - subnet.prefix_len)
}

pub fn block_of(subnet: Subnet, ip: Ipv4Addr) -> u32 {
    (u32::from(ip) - u32::from(subnet.network)) >> (32 - block_prefix(subnet))
}

fn block_addresses(subnet: Subnet, index: u32) -> impl Iterator<Item = Ipv4Addr> {
    let size = 1u32 << (32 - block_prefix(subnet));
    let first = u32::from(subnet.network) + index * size;
    (first..first + size).map(Ipv4Addr::from)
}

/// Who owns each claimed block of `network`: the earliest claim, then the
/// smallest node name.
pub fn owner<'a>(claims: &'a [(String, BlockClaim)], network: &str, index: u32) -> Option<&'a str> {
    claims
        .iter()
        .filter(|(_, c)| c.network == network && c.index == index)
        .min_by(|(a, ca), (b, cb)| (ca.claimed_ms, a).cmp(&(cb.claimed_ms, b)))
        .map(|(node, _)| node.as_str())
}

#[derive(Debug, PartialEq, Eq)]
pub enum Allocation {
    Address(Ipv4Addr),
    /// No free address in this node's blocks: claim this block, let the claim
    /// settle, then ask again.
    Claim(u32),
    Exhausted,
}

/// The next address for `me` in `network`, avoiding every address in `used`.
pub fn allocate(
    network: &str,
    subnet: Subnet,
    me: &str,
    claims: &[(String, BlockClaim)],
    used: &BTreeSet<Ipv4Addr>,
) -> Allocation {
    let count = block_count(subnet);
    for index in 0..count {
        if owner(claims, network, index) != Some(me) {
            continue;
        }
        if let Some(ip) =
            block_addresses(subnet, index).find(|ip| !subnet.is_reserved(*ip) && !used.contains(ip))
        {
            return Allocation::Address(ip);
        }
    }
    match (0..count).find(|&i| owner(claims, network, i).is_none()) {
        Some(index) => Allocation::Claim(index),
        None => Allocation::Exhausted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(node: &str, index: u32, claimed_ms: u64) -> (String, BlockClaim) {
        (
            node.into(),
            BlockClaim {
                network: "red".into(),
                index,
                claimed_ms,
            },
        )
    }

    #[test]
    fn blocks_of_a_24_are_sixteen_28s() {
        let s: Subnet = "10.0.0.0/24".parse().unwrap();
        assert_eq!(block_count(s), 16);
        assert_eq!(block_of(s, Ipv4Addr::new(10, 0, 0, 17)), 1);
        let tiny: Subnet = "10.0.0.0/30".parse().unwrap();
        assert_eq!(block_count(tiny), 1);
    }

    #[test]
    fn allocates_in_own_blocks_then_claims_the_lowest_free_one() {
        let s: Subnet = "10.0.0.0/24".parse().unwrap();
        let used = BTreeSet::new();
        assert_eq!(allocate("red", s, "a", &[], &used), Allocation::Claim(0));
        let claims = vec![claim("b", 0, 5), claim("a", 1, 6)];
        assert_eq!(
            allocate("red", s, "a", &claims, &used),
            Allocation::Address(Ipv4Addr::new(10, 0, 0, 16))
        );
        // Block 0 skips the network address.
        assert_eq!(
            allocate("red", s, "b", &claims, &used),
            Allocation::Address(Ipv4Addr::new(10, 0, 0, 1))
        );
        let full: BTreeSet<_> = (16..32).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(
            allocate("red", s, "a", &claims, &full),
            Allocation::Claim(2)
        );
    }

    #[test]
    fn concurrent_claims_resolve_the_same_way_for_both() {
        let claims = vec![claim("b", 3, 10), claim("a", 3, 10), claim("c", 3, 9)];
        assert_eq!(owner(&claims, "red", 3), Some("c"));
        let claims = vec![claim("b", 3, 10), claim("a", 3, 10)];
        assert_eq!(owner(&claims, "red", 3), Some("a"));
    }
}

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
//!
//! A node claims ahead: once fewer than [`CLAIM_AHEAD`] addresses are free in
//! its blocks, it claims the next block at once, without waiting, so that the
//! claim has settled by the time the block is needed and an attach seldom
//! waits for one. A block is used only once its claim has settled.

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

/// When fewer addresses than this are free in a node's blocks of a network,
/// it claims the next block ahead of need: half a block, so that a node holds
/// at most one block more than it fills.
pub const CLAIM_AHEAD: usize = 8;

/// The claim that owns a block of `network`: the earliest, then the smallest
/// node name; its node and time.
fn owning_claim<'a>(
    claims: &'a [(String, BlockClaim)],
    network: &str,
    index: u32,
) -> Option<(&'a str, u64)> {
    claims
        .iter()
        .filter(|(_, c)| c.network == network && c.index == index)
        .min_by(|(a, ca), (b, cb)| (ca.claimed_ms, a).cmp(&(cb.claimed_ms, b)))
        .map(|(node, c)| (node.as_str(), c.claimed_ms))
}

/// Who owns each claimed block of `network`.
pub fn owner<'a>(claims: &'a [(String, BlockClaim)], network: &str, index: u32) -> Option<&'a str> {
    owning_claim(claims, network, index).map(|(node, _)| node)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Allocation {
    Address(Ipv4Addr),
    /// No free address in this node's blocks: claim this block, let the claim
    /// settle, then ask again.
    Claim(u32),
    /// Only blocks whose claim has not settled yet have room: ask again after
    /// this many milliseconds.
    Settling(u64),
    Exhausted,
}

/// When a claim holds: `settle_ms` after it was made (0 for a node alone).
#[derive(Clone, Copy, Debug)]
pub struct Settle {
    pub now_ms: u64,
    pub settle_ms: u64,
}

/// The next address for `me` in `network`, avoiding every address in `used`.
pub fn allocate(
    network: &str,
    subnet: Subnet,
    me: &str,
    claims: &[(String, BlockClaim)],
    used: &BTreeSet<Ipv4Addr>,
    settle: Settle,
) -> Allocation {
    let mut settling: Option<u64> = None;
    for index in 0..block_count(subnet) {
        let Some((owner, claimed_ms)) = owning_claim(claims, network, index) else {
            continue;
        };
        if owner != me {
            continue;
        }
        let Some(ip) = free_in_block(subnet, index, used).next() else {
            continue;
        };
        let age = settle.now_ms.saturating_sub(claimed_ms);
        if age < settle.settle_ms {
            let wait = settle.settle_ms - age;
            settling = Some(settling.map_or(wait, |w| w.min(wait)));
            continue;
        }
        return Allocation::Address(ip);
    }
    if let Some(wait) = settling {
        return Allocation::Settling(wait);
    }
    match next_unclaimed(network, subnet, claims) {
        Some(index) => Allocation::Claim(index),
        None => Allocation::Exhausted,
    }
}

fn free_in_block(
    subnet: Subnet,
    index: u32,
    used: &BTreeSet<Ipv4Addr>,
) -> impl Iterator<Item = Ipv4Addr> {
    block_addresses(subnet, index).filter(move |ip| !subnet.is_reserved(*ip) && !used.contains(ip))
}

/// The lowest block of `network` nobody has claimed.
pub fn next_unclaimed(
    network: &str,
    subnet: Subnet,
    claims: &[(String, BlockClaim)],
) -> Option<u32> {
    (0..block_count(subnet)).find(|&i| owner(claims, network, i).is_none())
}

/// How many addresses `me` can still hand out in its blocks of `network`,
/// settled or not.
pub fn free_in_own_blocks(
    network: &str,
    subnet: Subnet,
    me: &str,
    claims: &[(String, BlockClaim)],
    used: &BTreeSet<Ipv4Addr>,
) -> usize {
    (0..block_count(subnet))
        .filter(|&i| owner(claims, network, i) == Some(me))
        .map(|i| free_in_block(subnet, i, used).count())
        .sum()
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
        let alone = Settle {
            now_ms: 10,
            settle_ms: 0,
        };
        assert_eq!(
            allocate("red", s, "a", &[], &used, alone),
            Allocation::Claim(0)
        );
        let claims = vec![claim("b", 0, 5), claim("a", 1, 6)];
        assert_eq!(
            allocate("red", s, "a", &claims, &used, alone),
            Allocation::Address(Ipv4Addr::new(10, 0, 0, 16))
        );
        // Block 0 skips the network address.
        assert_eq!(
            allocate("red", s, "b", &claims, &used, alone),
            Allocation::Address(Ipv4Addr::new(10, 0, 0, 1))
        );
        let full: BTreeSet<_> = (16..32).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(
            allocate("red", s, "a", &claims, &full, alone),
            Allocation::Claim(2)
        );
        assert_eq!(free_in_own_blocks("red", s, "a", &claims, &used), 16);
        assert_eq!(free_in_own_blocks("red", s, "a", &claims, &full), 0);
        assert_eq!(next_unclaimed("red", s, &claims), Some(2));
    }

    #[test]
    fn a_block_is_used_once_its_claim_has_settled() {
        let s: Subnet = "10.0.0.0/24".parse().unwrap();
        let used = BTreeSet::new();
        let claims = vec![claim("a", 1, 1000)];
        let at = |now_ms| Settle {
            now_ms,
            settle_ms: 500,
        };
        assert_eq!(
            allocate("red", s, "a", &claims, &used, at(1200)),
            Allocation::Settling(300)
        );
        assert_eq!(
            allocate("red", s, "a", &claims, &used, at(1500)),
            Allocation::Address(Ipv4Addr::new(10, 0, 0, 16))
        );
        // A settled block with room comes first; an unsettled one waits.
        let claims = vec![claim("a", 1, 1000), claim("a", 0, 100)];
        assert_eq!(
            allocate("red", s, "a", &claims, &used, at(1200)),
            Allocation::Address(Ipv4Addr::new(10, 0, 0, 1))
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

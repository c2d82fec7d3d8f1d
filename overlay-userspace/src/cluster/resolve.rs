//! How every node turns all records into the same accepted view of the cluster.
//!
//! Each node announces one [`NodeRecord`]: its VTEP, the network definitions it
//! holds, the networks it has seen removed, its local endpoints and the address
//! blocks it claimed. In gossip mode the record travels as chitchat key-value
//! state ([`crate::gossip::kv`]); without gossip, only this node's own record
//! exists. [`resolve`] is a pure function of the records, so every node that has
//! the same records reaches the same decisions, conflicts included.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::record::{BlockClaim, NetworkDef, NetworkId, NodeRecord};
use crate::{config::rules, model::Mac};

/// A member as `overlay members` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub generation: u64,
    pub live: bool,
    pub is_self: bool,
    pub vtep: Option<Ipv4Addr>,
    pub gossip_addr: Option<SocketAddr>,
    pub endpoints: usize,
    /// Why this node's endpoints are not accepted, if they are not.
    pub refused: Option<String>,
}

/// An endpoint of another node, accepted from gossip, behind that node's VTEP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedRemote {
    pub node: String,
    pub network: String,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub vtep: Ipv4Addr,
}

/// The cluster as every node with the same records sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    /// Accepted networks, by name.
    pub networks: BTreeMap<String, NetworkDef>,
    /// The latest removal seen, by network name.
    pub removed: BTreeMap<String, u64>,
    pub remote: Vec<AcceptedRemote>,
    pub members: Vec<Member>,
    /// Every block claim known, with its claimant.
    pub claims: Vec<(String, BlockClaim)>,
    /// Per network, every IP and every MAC announced anywhere, accepted or
    /// not (per network, so that an endpoint costs no copy of its name).
    pub used_ips: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    pub used_macs: BTreeMap<String, BTreeSet<Mac>>,
    /// Human-readable reasons for everything refused, sorted.
    pub conflicts: Vec<String>,
}

impl Resolved {
    /// Whether `mac` is announced anywhere in `network`.
    pub fn mac_used(&self, network: &str, mac: Mac) -> bool {
        self.used_macs
            .get(network)
            .is_some_and(|m| m.contains(&mac))
    }
}

/// How long a new generation of a node counts as live before the failure
/// detector has an opinion on it.
pub const STARTING_GRACE_MS: u64 = 3_000;

/// Decides the cluster view from this node's record and every other record
/// known (any generation, live or dead).
///
/// - Network definitions and removals count from every record: they are the
///   cluster's configuration, not a node's liveness. Per name, the definition
///   with the smallest identity wins; differing ones are refused. A winner whose
///   VNI an earlier winner already has, or whose subnet overlaps an earlier
///   winner's, is refused too.
/// - A node name's current record is its newest live generation. Endpoints are
///   taken only from current live records, with that node's VTEP as locator.
/// - A VTEP announced by several live nodes belongs to the one that announced
///   it first (then the smallest name); the others' endpoints are refused.
/// - An IP or MAC announced twice in a network goes to this node if it is local,
///   else to the node with the smallest name.
pub fn resolve(own: &NodeRecord, others: &[NodeRecord], now_ms: u64) -> Resolved {
    let all: Vec<&NodeRecord> = std::iter::once(own).chain(others).collect();
    let liveness = Liveness { now_ms };
    let mut out = Resolved {
        removed: latest_removals(&all),
        ..Resolved::default()
    };
    out.networks = accepted_networks(&all, &out.removed, &mut out.conflicts);
    collect_claims_and_addresses(&all, &mut out);
    let current = current_records(own, others, liveness);
    let owners = VtepOwners::of(own, &current, liveness);
    if let Some(vtep) = own.vtep
        && owners.owner(vtep) != own.name
    {
        out.conflicts.push(format!(
            "this node's VTEP {vtep} was announced first by {}, which other nodes therefore prefer",
            owners.owner(vtep)
        ));
    }
    accept_endpoints(own, &current, liveness, &owners, &mut out);
    for r in &all {
        for m in &r.malformed {
            out.conflicts
                .push(format!("node {}: malformed gossip entry {m}", r.name));
        }
    }
    out.conflicts.sort();
    out.conflicts.dedup();
    out
}

#[derive(Clone, Copy)]
struct Liveness {
    now_ms: u64,
}

impl Liveness {
    /// A generation chitchat has not yet heard twice from counts as live while
    /// it is young: a restarted agent announces the same endpoints as its
    /// previous life, and they must not be withdrawn in between.
    fn live(self, r: &NodeRecord) -> bool {
        r.live || self.now_ms.abs_diff(r.generation) < STARTING_GRACE_MS
    }
}

/// The latest removal of each network name, from any record.
fn latest_removals(all: &[&NodeRecord]) -> BTreeMap<String, u64> {
    let mut removed: BTreeMap<String, u64> = BTreeMap::new();
    for r in all {
        for (name, &removed_ms) in &r.removed {
            let latest = removed.entry(name.clone()).or_default();
            *latest = (*latest).max(removed_ms);
        }
    }
    removed
}

/// Per name the definition with the smallest identity, unless a removal covers
/// it; differing definitions and taken VNIs are refused into `conflicts`.
fn accepted_networks(
    all: &[&NodeRecord],
    removed: &BTreeMap<String, u64>,
    conflicts: &mut Vec<String>,
) -> BTreeMap<String, NetworkDef> {
    let mut defs: BTreeMap<&str, BTreeMap<NetworkId, &NetworkDef>> = BTreeMap::new();
    for r in all {
        for (name, def) in &r.networks {
            if def.name != *name
                || removed
                    .get(name)
                    .is_some_and(|&removed| def.removed_by(removed))
            {
                continue;
            }
            defs.entry(name).or_default().insert(def.id(), def);
        }
    }
    let mut winners: Vec<&NetworkDef> = Vec::new();
    for (name, by_id) in &defs {
        let winner = *by_id.values().next().expect("non-empty");
        for other in by_id.values().skip(1) {
            if !other.same_shape(winner) {
                conflicts.push(format!(
                    "network {name}: {}'s definition (VNI {}, {}) conflicts with {}'s (VNI {}, {}), which stands",
                    other.origin, other.vni, other.subnet, winner.origin, winner.vni, winner.subnet
                ));
            }
        }
        winners.push(winner);
    }
    winners.sort_by_key(|d| d.id());
    let mut vnis: BTreeMap<u32, &str> = BTreeMap::new();
    let mut accepted: BTreeMap<String, NetworkDef> = BTreeMap::new();
    for def in winners {
        if let Some(first) = vnis.get(&def.vni) {
            conflicts.push(format!(
                "network {}: VNI {} is already network {first}'s; refused",
                def.name, def.vni
            ));
            continue;
        }
        let others = accepted.values().map(|o| (o.name.as_str(), o.subnet));
        if let Err(why) = rules::subnet_free(def.subnet, others) {
            conflicts.push(format!("network {}: {why}; refused", def.name));
            continue;
        }
        vnis.insert(def.vni, &def.name);
        accepted.insert(def.name.clone(), def.clone());
    }
    accepted
}

/// Every block claim and every announced address, from every record: what the
/// allocator must avoid, whoever is live.
fn collect_claims_and_addresses(all: &[&NodeRecord], out: &mut Resolved) {
    for r in all {
        for b in &r.blocks {
            let claim = (r.name.clone(), b.clone());
            if !out.claims.contains(&claim) {
                out.claims.push(claim);
            }
        }
        for e in &r.endpoints {
            in_network(&mut out.used_ips, &e.network).insert(e.ip);
            in_network(&mut out.used_macs, &e.network).insert(e.mac);
        }
    }
    out.claims.sort();
}

/// `network`'s entry of a per-network table, made if need be (its name copied
/// once, not per endpoint).
fn in_network<'a, T: Default>(table: &'a mut BTreeMap<String, T>, network: &str) -> &'a mut T {
    if !table.contains_key(network) {
        table.insert(network.to_owned(), T::default());
    }
    table.get_mut(network).expect("inserted above")
}

/// The current record of every other node name: its newest live generation (or
/// newest at all). Our own older generations are not others.
fn current_records<'a>(
    own: &NodeRecord,
    others: &'a [NodeRecord],
    liveness: Liveness,
) -> BTreeMap<&'a str, &'a NodeRecord> {
    let mut current: BTreeMap<&str, &NodeRecord> = BTreeMap::new();
    for r in others.iter().filter(|r| r.name != own.name) {
        let better = match current.get(r.name.as_str()) {
            None => true,
            Some(c) => (liveness.live(r), r.generation) > (liveness.live(c), c.generation),
        };
        if better {
            current.insert(&r.name, r);
        }
    }
    current
}

/// Which node each announced VTEP belongs to: the earliest announcer among this
/// node and the live current records (then the smallest name).
struct VtepOwners<'a>(BTreeMap<Ipv4Addr, (u64, &'a str)>);

impl<'a> VtepOwners<'a> {
    fn of(
        own: &'a NodeRecord,
        current: &BTreeMap<&'a str, &'a NodeRecord>,
        liveness: Liveness,
    ) -> VtepOwners<'a> {
        let mut owners: BTreeMap<Ipv4Addr, (u64, &str)> = BTreeMap::new();
        for r in std::iter::once(own).chain(current.values().copied()) {
            if let Some(v) = r.vtep
                && (liveness.live(r) || r.name == own.name)
            {
                let claim = (r.vtep_since_ms, r.name.as_str());
                let owner = owners.entry(v).or_insert(claim);
                *owner = (*owner).min(claim);
            }
        }
        VtepOwners(owners)
    }

    fn owner(&self, vtep: Ipv4Addr) -> &'a str {
        self.0[&vtep].1
    }
}

/// Lists every member, and accepts the endpoints of each live member that owns
/// its VTEP: in an accepted network, a host address of it, and an IP and MAC not
/// already taken in that network (this node's own come first).
fn accept_endpoints(
    own: &NodeRecord,
    current: &BTreeMap<&str, &NodeRecord>,
    liveness: Liveness,
    owners: &VtepOwners<'_>,
    out: &mut Resolved,
) {
    // Hashed, not ordered: only looked up, and built again on every change
    // (a sorted map's inserts compared network names: a sixth of an add at
    // 2,000 endpoints).
    let announced =
        own.endpoints.len() + current.values().map(|r| r.endpoints.len()).sum::<usize>();
    let mut ips: HashMap<(&str, Ipv4Addr), &str> = HashMap::with_capacity(announced);
    let mut macs: HashMap<(&str, Mac), &str> = HashMap::with_capacity(announced);
    for e in &own.endpoints {
        ips.insert((&e.network, e.ip), &own.name);
        macs.insert((&e.network, e.mac), &own.name);
    }
    out.members.push(Member {
        name: own.name.clone(),
        generation: own.generation,
        live: true,
        is_self: true,
        vtep: own.vtep,
        gossip_addr: own.gossip_addr,
        endpoints: own.endpoints.len(),
        refused: None,
    });
    for r in current.values() {
        let live = liveness.live(r);
        let refused = match r.vtep {
            _ if !live => Some("not live".to_owned()),
            None => Some("announces no VTEP".to_owned()),
            Some(vtep) if owners.owner(vtep) != r.name => Some(format!(
                "VTEP {vtep} belongs to {}, which announced it first",
                owners.owner(vtep)
            )),
            Some(_) => None,
        };
        out.members.push(Member {
            name: r.name.clone(),
            generation: r.generation,
            live,
            is_self: false,
            vtep: r.vtep,
            gossip_addr: r.gossip_addr,
            endpoints: r.endpoints.len(),
            refused: refused.clone(),
        });
        if let Some(why) = refused {
            if live {
                out.conflicts
                    .push(format!("node {}: endpoints refused: {why}", r.name));
            }
            continue;
        }
        let vtep = r.vtep.expect("a member without a VTEP is refused above");
        for e in &r.endpoints {
            let Some(net) = out.networks.get(&e.network) else {
                out.conflicts.push(format!(
                    "node {}: endpoint {} is in network {}, which is not accepted here",
                    r.name, e.ip, e.network
                ));
                continue;
            };
            if let Err(why) = rules::host_address(e.ip, &e.network, net.subnet) {
                out.conflicts
                    .push(format!("node {}: endpoint {why}", r.name));
                continue;
            }
            if let Some(first) = ips.get(&(e.network.as_str(), e.ip)) {
                out.conflicts.push(format!(
                    "node {}: endpoint {} in network {} is already {first}'s",
                    r.name, e.ip, e.network
                ));
                continue;
            }
            if let Some(first) = macs.get(&(e.network.as_str(), e.mac)) {
                out.conflicts.push(format!(
                    "node {}: endpoint MAC {} in network {} is already {first}'s",
                    r.name, e.mac, e.network
                ));
                continue;
            }
            ips.insert((&e.network, e.ip), &r.name);
            macs.insert((&e.network, e.mac), &r.name);
            out.remote.push(AcceptedRemote {
                node: r.name.clone(),
                network: e.network.clone(),
                vni: net.vni,
                ip: e.ip,
                mac: e.mac,
                vtep,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::record::EndpointRecord;

    /// Far from the test records' generations: none of them is starting.
    const NOW: u64 = 1 << 40;

    fn net(name: &str, vni: u32, subnet: &str, created_ms: u64, origin: &str) -> NetworkDef {
        NetworkDef {
            name: name.into(),
            vni,
            subnet: subnet.parse().unwrap(),
            created_ms,
            origin: origin.into(),
            gateway: None,
            aux: Vec::new(),
            mtu: None,
            internal: false,
        }
    }

    fn node(name: &str, vtep: [u8; 4], generation: u64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            generation,
            live: true,
            vtep: Some(Ipv4Addr::from(vtep)),
            ..NodeRecord::default()
        }
    }

    fn ep(network: &str, ip: [u8; 4]) -> EndpointRecord {
        let ip = Ipv4Addr::from(ip);
        EndpointRecord {
            network: network.into(),
            ip,
            mac: Mac::from_ipv4(ip),
        }
    }

    #[test]
    fn every_order_of_records_gives_the_same_networks_and_conflicts() {
        let mut a = node("a", [1, 1, 1, 1], 1);
        let mut b = node("b", [2, 2, 2, 2], 1);
        let mut c = node("c", [3, 3, 3, 3], 1);
        a.networks
            .insert("red".into(), net("red", 10, "10.0.0.0/24", 100, "a"));
        b.networks
            .insert("red".into(), net("red", 11, "10.1.0.0/24", 50, "b"));
        c.networks
            .insert("blue".into(), net("blue", 11, "10.2.0.0/24", 10, "c"));
        let from_a = resolve(&a, &[b.clone(), c.clone()], NOW);
        let from_b = resolve(&b, &[c.clone(), a.clone()], NOW);
        let from_c = resolve(&c, &[a.clone(), b.clone()], NOW);
        assert_eq!(from_a.networks, from_b.networks);
        assert_eq!(from_b.networks, from_c.networks);
        assert_eq!(from_a.conflicts, from_c.conflicts);
        // blue (created first) keeps VNI 11; red's winner is b's (earlier), which
        // collides with blue's VNI and is refused; a's red conflicts with b's.
        assert_eq!(from_a.networks.keys().collect::<Vec<_>>(), ["blue"]);
        assert_eq!(from_a.conflicts.len(), 2, "{:?}", from_a.conflicts);
    }

    #[test]
    fn a_network_overlapping_an_earlier_ones_subnet_is_refused() {
        let mut a = node("a", [1, 1, 1, 1], 1);
        let mut b = node("b", [2, 2, 2, 2], 1);
        a.networks
            .insert("red".into(), net("red", 10, "10.0.0.0/16", 100, "a"));
        b.networks
            .insert("blue".into(), net("blue", 11, "10.0.9.0/24", 90, "b"));
        let r = resolve(&a, &[b.clone()], NOW);
        assert_eq!(r.networks.keys().collect::<Vec<_>>(), ["blue"]);
        assert!(
            r.conflicts[0].contains("network red: 10.0.0.0/16 overlaps network \"blue\""),
            "{:?}",
            r.conflicts
        );
        assert_eq!(resolve(&b, &[a], NOW).networks, r.networks);
    }

    #[test]
    fn removal_withdraws_every_earlier_runtime_definition() {
        let mut a = node("a", [1, 1, 1, 1], 1);
        let mut b = node("b", [2, 2, 2, 2], 1);
        let mut c = node("c", [3, 3, 3, 3], 1);
        a.networks
            .insert("red".into(), net("red", 10, "10.0.0.0/24", 100, "a"));
        // A conflicting definition does not take over when the winner goes.
        c.networks
            .insert("red".into(), net("red", 11, "10.1.0.0/24", 120, "c"));
        b.removed.insert("red".into(), 150);
        assert!(
            resolve(&a, &[b.clone(), c.clone()], NOW)
                .networks
                .is_empty()
        );
        // Created again later: not covered by the old removal.
        a.networks
            .insert("red".into(), net("red", 10, "10.0.0.0/24", 200, "a"));
        assert!(
            resolve(&a, &[b.clone(), c], NOW)
                .networks
                .contains_key("red")
        );
        // A file's definition is never removed at run time.
        a.networks
            .insert("red".into(), net("red", 10, "10.0.0.0/24", 0, "a"));
        b.removed.insert("red".into(), 300);
        assert!(resolve(&a, &[b], NOW).networks.contains_key("red"));
    }

    #[test]
    fn endpoints_come_from_live_nodes_with_their_own_vtep() {
        let mut own = node("a", [1, 1, 1, 1], 1);
        own.networks
            .insert("red".into(), net("red", 10, "10.0.0.0/24", 0, "a"));
        let mut b = node("b", [2, 2, 2, 2], 1);
        b.endpoints.push(ep("red", [10, 0, 0, 4]));
        let mut dead_b = b.clone();
        dead_b.live = false;
        dead_b.generation = 0;
        dead_b.endpoints.push(ep("red", [10, 0, 0, 9]));

        let r = resolve(&own, &[b.clone(), dead_b.clone()], NOW);
        assert_eq!(r.remote.len(), 1);
        assert_eq!(r.remote[0].vtep, Ipv4Addr::new(2, 2, 2, 2));
        assert_eq!(r.remote[0].ip, Ipv4Addr::new(10, 0, 0, 4));

        // A generation the failure detector has not judged yet counts while young.
        let mut b_restarting = b.clone();
        b_restarting.live = false;
        b_restarting.generation = NOW - STARTING_GRACE_MS / 2;
        assert_eq!(resolve(&own, &[b_restarting], NOW).remote.len(), 1);

        // b dies: its entries go.
        let mut b_dead = b.clone();
        b_dead.live = false;
        assert!(resolve(&own, &[b_dead, dead_b], NOW).remote.is_empty());

        // c announces b's VTEP too, later than b: only b's endpoints count.
        b.vtep_since_ms = 10;
        let mut c = node("c", [2, 2, 2, 2], 1);
        c.vtep_since_ms = 20;
        c.endpoints.push(ep("red", [10, 0, 0, 5]));
        let r = resolve(&own, &[c.clone(), b.clone()], NOW);
        assert_eq!(r.remote.len(), 1);
        assert_eq!(r.remote[0].node, "b");
        assert!(
            r.conflicts
                .iter()
                .any(|m| m.contains("VTEP 2.2.2.2 belongs to b"))
        );
    }

    #[test]
    fn duplicate_addresses_go_to_the_local_node_then_the_smallest_name() {
        let mut own = node("m", [1, 1, 1, 1], 1);
        own.networks
            .insert("red".into(), net("red", 10, "10.0.0.0/24", 0, "m"));
        own.endpoints.push(ep("red", [10, 0, 0, 3]));
        let mut b = node("b", [2, 2, 2, 2], 1);
        b.endpoints.push(ep("red", [10, 0, 0, 3]));
        b.endpoints.push(ep("red", [10, 0, 0, 7]));
        let mut c = node("c", [3, 3, 3, 3], 1);
        c.endpoints.push(ep("red", [10, 0, 0, 7]));
        let r = resolve(&own, &[c, b], NOW);
        assert_eq!(r.remote.len(), 1);
        assert_eq!(r.remote[0].node, "b");
        assert_eq!(r.remote[0].ip, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(r.conflicts.len(), 2, "{:?}", r.conflicts);
    }
}

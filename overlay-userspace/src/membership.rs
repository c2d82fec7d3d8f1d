//! Cluster membership: what each node announces, and how every node turns the
//! announcements into the same accepted view.
//!
//! Each node announces one [`NodeRecord`]: its VTEP, the network definitions it
//! holds, the networks it has seen removed, its local endpoints and the address
//! blocks it claimed. In gossip mode the record is the node's chitchat key-value
//! state (see [`NodeRecord::to_kv`]); without gossip, only this node's own record
//! exists. [`resolve`] is a pure function of the records, so every node that has
//! the same records reaches the same decisions, conflicts included.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
};

use overlay_common::{CONFIG_F_READY, Config};
use serde::{Deserialize, Serialize};

use crate::config::{Mac, Subnet};

/// A network definition as the cluster knows it. `created_ms` and `origin`
/// identify it: the definition with the smallest identity wins a name, so a
/// node's config file (created 0) beats networks created at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    pub name: String,
    pub vni: u32,
    pub subnet: Subnet,
    pub created_ms: u64,
    pub origin: String,
}

/// The identity of one network definition, as its removal names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkId {
    pub created_ms: u64,
    pub origin: String,
}

impl NetworkDef {
    pub fn id(&self) -> NetworkId {
        NetworkId {
            created_ms: self.created_ms,
            origin: self.origin.clone(),
        }
    }
    fn same_shape(&self, other: &NetworkDef) -> bool {
        self.vni == other.vni && self.subnet == other.subnet
    }
    pub fn from_config(&self) -> bool {
        self.created_ms == 0
    }
    /// Whether a removal at `removed_ms` withdraws this definition.
    pub fn removed_by(&self, removed_ms: u64) -> bool {
        !self.from_config() && self.created_ms <= removed_ms
    }
}

/// An endpoint as announced by the node it lives on. It carries no locator: the
/// locator is always the announcing node's own VTEP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// A claim on one address block of a network (see [`crate::ipam`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockClaim {
    pub network: String,
    pub index: u32,
    pub claimed_ms: u64,
}

/// Everything one node announces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    /// chitchat's generation: the agent's start time; a restarted agent is a new generation.
    pub generation: u64,
    pub live: bool,
    pub gossip_addr: Option<SocketAddr>,
    pub vtep: Option<Ipv4Addr>,
    /// When this node first announced its VTEP (kept across restarts): of two
    /// nodes announcing one VTEP, the earlier keeps it.
    pub vtep_since_ms: u64,
    pub networks: BTreeMap<String, NetworkDef>,
    /// Network name → when it was removed: every definition of that name created
    /// at run time up to then is gone (the file's, created 0, are not).
    pub removed: BTreeMap<String, u64>,
    pub endpoints: Vec<EndpointRecord>,
    pub blocks: Vec<BlockClaim>,
    /// Keys that did not parse, reported and otherwise ignored.
    pub malformed: Vec<String>,
}

const KEY_VTEP: &str = "vtep";
const PREFIX_NETWORK: &str = "net:";
const PREFIX_REMOVED: &str = "netrm:";
const PREFIX_ENDPOINT: &str = "ep:";
const PREFIX_BLOCK: &str = "blk:";

#[derive(Serialize, Deserialize)]
struct VtepValue {
    ip: Ipv4Addr,
    since_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct NetworkValue {
    vni: u32,
    subnet: Subnet,
    created_ms: u64,
    origin: String,
}

#[derive(Serialize, Deserialize)]
struct RemovedValue {
    removed_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct EndpointValue {
    mac: Mac,
}

#[derive(Serialize, Deserialize)]
struct BlockValue {
    claimed_ms: u64,
}

impl NodeRecord {
    /// The gossip keys: `vtep`, `net:<name>`, `netrm:<name>`, `ep:<network>:<ip>`,
    /// `blk:<network>:<index>`, with JSON values.
    pub fn to_kv(&self) -> BTreeMap<String, String> {
        let mut kv = BTreeMap::new();
        if let Some(ip) = self.vtep {
            let value = VtepValue {
                ip,
                since_ms: self.vtep_since_ms,
            };
            kv.insert(KEY_VTEP.to_owned(), json(&value));
        }
        for (name, def) in &self.networks {
            let value = NetworkValue {
                vni: def.vni,
                subnet: def.subnet,
                created_ms: def.created_ms,
                origin: def.origin.clone(),
            };
            kv.insert(format!("{PREFIX_NETWORK}{name}"), json(&value));
        }
        for (name, removed_ms) in &self.removed {
            kv.insert(
                format!("{PREFIX_REMOVED}{name}"),
                json(&RemovedValue {
                    removed_ms: *removed_ms,
                }),
            );
        }
        for e in &self.endpoints {
            kv.insert(
                format!("{PREFIX_ENDPOINT}{}:{}", e.network, e.ip),
                json(&EndpointValue { mac: e.mac }),
            );
        }
        for b in &self.blocks {
            kv.insert(
                format!("{PREFIX_BLOCK}{}:{}", b.network, b.index),
                json(&BlockValue {
                    claimed_ms: b.claimed_ms,
                }),
            );
        }
        kv
    }

    /// Parses a node's gossip keys. Keys of other prefixes are ignored (room for
    /// later versions); keys of ours that do not parse are listed in `malformed`.
    pub fn from_kv<'a>(
        name: &str,
        generation: u64,
        live: bool,
        gossip_addr: Option<SocketAddr>,
        kv: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> NodeRecord {
        let mut r = NodeRecord {
            name: name.to_owned(),
            generation,
            live,
            gossip_addr,
            ..NodeRecord::default()
        };
        for (key, value) in kv {
            if !r.parse_entry(key, value) {
                r.malformed.push(format!("{key}={value}"));
            }
        }
        r.endpoints.sort();
        r.blocks.sort();
        r
    }

    fn parse_entry(&mut self, key: &str, value: &str) -> bool {
        if key == KEY_VTEP {
            let Ok(v) = serde_json::from_str::<VtepValue>(value) else {
                return false;
            };
            self.vtep = Some(v.ip);
            self.vtep_since_ms = v.since_ms;
            return true;
        }
        if let Some(name) = key.strip_prefix(PREFIX_NETWORK) {
            let Ok(v) = serde_json::from_str::<NetworkValue>(value) else {
                return false;
            };
            self.networks.insert(
                name.to_owned(),
                NetworkDef {
                    name: name.to_owned(),
                    vni: v.vni,
                    subnet: v.subnet,
                    created_ms: v.created_ms,
                    origin: v.origin,
                },
            );
            return true;
        }
        if let Some(name) = key.strip_prefix(PREFIX_REMOVED) {
            let Ok(v) = serde_json::from_str::<RemovedValue>(value) else {
                return false;
            };
            self.removed.insert(name.to_owned(), v.removed_ms);
            return true;
        }
        if let Some(rest) = key.strip_prefix(PREFIX_ENDPOINT) {
            let Some((network, ip)) = rest.rsplit_once(':') else {
                return false;
            };
            let (Ok(ip), Ok(v)) = (ip.parse(), serde_json::from_str::<EndpointValue>(value)) else {
                return false;
            };
            self.endpoints.push(EndpointRecord {
                network: network.to_owned(),
                ip,
                mac: v.mac,
            });
            return true;
        }
        if let Some(rest) = key.strip_prefix(PREFIX_BLOCK) {
            let Some((network, index)) = rest.rsplit_once(':') else {
                return false;
            };
            let (Ok(index), Ok(v)) = (index.parse(), serde_json::from_str::<BlockValue>(value))
            else {
                return false;
            };
            self.blocks.push(BlockClaim {
                network: network.to_owned(),
                index,
                claimed_ms: v.claimed_ms,
            });
            return true;
        }
        true
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain structs serialize")
}

/// An endpoint living on this node, behind a host-side veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub host_ifindex: u32,
}

/// An endpoint living on another node, behind that node's VTEP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub vtep: Ipv4Addr,
}

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

/// A remote endpoint accepted from gossip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedRemote {
    pub node: String,
    pub network: String,
    pub endpoint: RemoteEndpoint,
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
    /// Every (network, IP) and (network, MAC) announced anywhere, accepted or not.
    pub used_ips: BTreeSet<(String, Ipv4Addr)>,
    pub used_macs: BTreeSet<(String, Mac)>,
    /// Human-readable reasons for everything refused, sorted.
    pub conflicts: Vec<String>,
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
///   VNI an earlier winner already has is refused too.
/// - A node name's current record is its newest live generation. Endpoints are
///   taken only from current live records, with that node's VTEP as locator.
/// - A VTEP announced by several live nodes belongs to the one that announced
///   it first (then the smallest name); the others' endpoints are refused.
/// - An IP or MAC announced twice in a network goes to this node if it is local,
///   else to the node with the smallest name.
pub fn resolve(own: &NodeRecord, others: &[NodeRecord], now_ms: u64) -> Resolved {
    // A generation chitchat has not yet heard twice from counts as live while it
    // is young: a restarted agent announces the same endpoints as its previous
    // life, and they must not be withdrawn in between.
    let live = |r: &NodeRecord| r.live || now_ms.abs_diff(r.generation) < STARTING_GRACE_MS;
    let mut out = Resolved::default();
    let all: Vec<&NodeRecord> = std::iter::once(own).chain(others).collect();

    for r in &all {
        for (name, &removed_ms) in &r.removed {
            let latest = out.removed.entry(name.clone()).or_default();
            *latest = (*latest).max(removed_ms);
        }
    }
    let mut defs: BTreeMap<&str, BTreeMap<NetworkId, &NetworkDef>> = BTreeMap::new();
    for r in &all {
        for (name, def) in &r.networks {
            if def.name != *name
                || out
                    .removed
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
                out.conflicts.push(format!(
                    "network {name}: {}'s definition (VNI {}, {}) conflicts with {}'s (VNI {}, {}), which stands",
                    other.origin, other.vni, other.subnet, winner.origin, winner.vni, winner.subnet
                ));
            }
        }
        winners.push(winner);
    }
    winners.sort_by_key(|d| d.id());
    let mut vnis: BTreeMap<u32, &str> = BTreeMap::new();
    for def in winners {
        if let Some(first) = vnis.get(&def.vni) {
            out.conflicts.push(format!(
                "network {}: VNI {} is already network {first}'s; refused",
                def.name, def.vni
            ));
            continue;
        }
        vnis.insert(def.vni, &def.name);
        out.networks.insert(def.name.clone(), def.clone());
    }

    for r in &all {
        for b in &r.blocks {
            let claim = (r.name.clone(), b.clone());
            if !out.claims.contains(&claim) {
                out.claims.push(claim);
            }
        }
        for e in &r.endpoints {
            out.used_ips.insert((e.network.clone(), e.ip));
            out.used_macs.insert((e.network.clone(), e.mac));
        }
    }
    out.claims.sort();

    // The current record of every other node name; our own older generations are not others.
    let mut current: BTreeMap<&str, &NodeRecord> = BTreeMap::new();
    for r in others.iter().filter(|r| r.name != own.name) {
        let better = match current.get(r.name.as_str()) {
            None => true,
            Some(c) => (live(r), r.generation) > (live(c), c.generation),
        };
        if better {
            current.insert(&r.name, r);
        }
    }

    let mut vtep_owners: BTreeMap<Ipv4Addr, (u64, &str)> = BTreeMap::new();
    for r in std::iter::once(own).chain(current.values().copied()) {
        if let Some(v) = r.vtep
            && (live(r) || r.name == own.name)
        {
            let claim = (r.vtep_since_ms, r.name.as_str());
            let owner = vtep_owners.entry(v).or_insert(claim);
            *owner = (*owner).min(claim);
        }
    }
    let refused_for = |r: &NodeRecord| -> Option<String> {
        if !live(r) {
            return Some("not live".into());
        }
        let Some(vtep) = r.vtep else {
            return Some("announces no VTEP".into());
        };
        let (_, owner) = vtep_owners[&vtep];
        (owner != r.name)
            .then(|| format!("VTEP {vtep} belongs to {owner}, which announced it first"))
    };
    let mut ips: BTreeMap<(&str, Ipv4Addr), &str> = BTreeMap::new();
    let mut macs: BTreeMap<(&str, Mac), &str> = BTreeMap::new();
    for e in &own.endpoints {
        ips.insert((&e.network, e.ip), &own.name);
        macs.insert((&e.network, e.mac), &own.name);
    }
    if let Some(vtep) = own.vtep
        && vtep_owners[&vtep].1 != own.name
    {
        out.conflicts.push(format!(
            "this node's VTEP {vtep} was announced first by {}, which other nodes therefore prefer",
            vtep_owners[&vtep].1
        ));
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
        let refused = refused_for(r);
        out.members.push(Member {
            name: r.name.clone(),
            generation: r.generation,
            live: live(r),
            is_self: false,
            vtep: r.vtep,
            gossip_addr: r.gossip_addr,
            endpoints: r.endpoints.len(),
            refused: refused.clone(),
        });
        match refused {
            Some(why) if live(r) => {
                out.conflicts
                    .push(format!("node {}: endpoints refused: {why}", r.name));
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        let vtep = r.vtep.expect("checked by refused_for");
        for e in &r.endpoints {
            let Some(net) = out.networks.get(&e.network) else {
                out.conflicts.push(format!(
                    "node {}: endpoint {} is in network {}, which is not accepted here",
                    r.name, e.ip, e.network
                ));
                continue;
            };
            if !net.subnet.contains(e.ip) || net.subnet.is_reserved(e.ip) {
                out.conflicts.push(format!(
                    "node {}: endpoint {} is not a host address of network {} ({})",
                    r.name, e.ip, e.network, net.subnet
                ));
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
                endpoint: RemoteEndpoint {
                    vni: net.vni,
                    ip: e.ip,
                    mac: e.mac,
                    vtep,
                },
            });
        }
    }
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

/// Everything the dataplane should know, in cluster terms.
#[derive(Clone, Debug)]
pub struct DesiredState {
    pub config: Config,
    /// VNI → the endpoints' MTU in that network.
    pub networks: BTreeMap<u32, u32>,
    pub local: Vec<LocalEndpoint>,
    pub remote: Vec<RemoteEndpoint>,
}

/// The CONFIG map's value for a node.
pub fn dataplane_config(
    vtep: Ipv4Addr,
    underlay_ifindex: u32,
    vxlan_port: u16,
    source_ports: [u16; 2],
) -> Config {
    Config {
        vtep_ip: vtep.octets(),
        underlay_ifindex,
        vxlan_port,
        src_port_min: source_ports[0],
        src_port_max: source_ports[1],
        flags: CONFIG_F_READY,
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Far from the test records' generations: none of them is starting.
    const NOW: u64 = 1 << 40;

    fn net(name: &str, vni: u32, subnet: &str, created_ms: u64, origin: &str) -> NetworkDef {
        NetworkDef {
            name: name.into(),
            vni,
            subnet: subnet.parse().unwrap(),
            created_ms,
            origin: origin.into(),
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
    fn a_record_survives_its_gossip_encoding() {
        let mut r = node("n1", [172, 31, 1, 5], 7);
        r.networks
            .insert("a".into(), net("a", 4097, "10.0.0.0/24", 0, "n1"));
        r.removed.insert("b".into(), 5);
        r.endpoints.push(ep("a", [10, 0, 0, 3]));
        r.blocks.push(BlockClaim {
            network: "a".into(),
            index: 2,
            claimed_ms: 9,
        });
        let kv = r.to_kv();
        let back = NodeRecord::from_kv(
            "n1",
            7,
            true,
            None,
            kv.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        assert_eq!(back, r);
        let junk = NodeRecord::from_kv("n1", 7, true, None, [("ep:a:nope", "{}")]);
        assert_eq!(junk.malformed.len(), 1);
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
        assert_eq!(r.remote[0].endpoint.vtep, Ipv4Addr::new(2, 2, 2, 2));
        assert_eq!(r.remote[0].endpoint.ip, Ipv4Addr::new(10, 0, 0, 4));

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
        assert_eq!(r.remote[0].endpoint.ip, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(r.conflicts.len(), 2, "{:?}", r.conflicts);
    }
}

//! What each node announces to the cluster: its [`NodeRecord`]. The gossip
//! encoding of a record is [`crate::gossip::kv`]; the one view every node takes of
//! all records is [`super::resolve`].

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use crate::model::{Mac, Subnet};

/// A network definition as the cluster knows it. `created_ms` and `origin`
/// identify it: the definition with the smallest identity wins a name, so a
/// node's config file (created 0) beats networks created at run time.
///
/// The options after `origin` came later: records and state files without
/// them read as a network with the default gateway, no auxiliary addresses,
/// the node's default MTU and a way out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    pub name: String,
    pub vni: u32,
    pub subnet: Subnet,
    pub created_ms: u64,
    pub origin: String,
    /// `None`: the subnet's first host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Addresses never given to an endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aux: Vec<Ipv4Addr>,
    /// `None`: each node's underlay MTU minus the VXLAN overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// No way out of the overlay: no gateway route, no ARP answer for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
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
    /// Whether two definitions describe the same network (their identities
    /// aside).
    pub fn same_shape(&self, other: &NetworkDef) -> bool {
        self.vni == other.vni
            && self.subnet == other.subnet
            && self.gateway() == other.gateway()
            && self.aux == other.aux
            && self.mtu == other.mtu
            && self.internal == other.internal
    }
    /// The gateway address: reserved even on an internal network, where
    /// nothing answers for it.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| self.subnet.first_host())
    }
    /// The gateway containers route through, unless the network is internal.
    pub fn way_out(&self) -> Option<Ipv4Addr> {
        (!self.internal).then(|| self.gateway())
    }
    /// The addresses no endpoint may take: the gateway and the auxiliary ones.
    pub fn reserved(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        std::iter::once(self.gateway()).chain(self.aux.iter().copied())
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

/// A claim on one address block of a network (see [`super::ipam`]).
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

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
    pub fn same_shape(&self, other: &NetworkDef) -> bool {
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

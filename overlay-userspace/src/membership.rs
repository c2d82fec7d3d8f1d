//! Membership sources: where the agent learns which endpoints exist in the cluster.
//!
//! Today the only source is the static cluster file. Whatever the source, it
//! produces a [`DesiredState`] for the reconciler.

use std::{collections::BTreeMap, net::Ipv4Addr};

use overlay_common::{CONFIG_F_READY, Config};

use crate::{config::Mac, node::NodePlan, plumbing::CreatedEndpoint};

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

/// Everything the dataplane should know, in cluster terms.
#[derive(Clone, Debug)]
pub struct DesiredState {
    pub config: Config,
    /// VNI → the endpoints' MTU in that network.
    pub networks: BTreeMap<u32, u32>,
    pub local: Vec<LocalEndpoint>,
    pub remote: Vec<RemoteEndpoint>,
}

/// The static source: the cluster file's networks and `[[remote]]` entries, plus
/// the endpoints this agent created.
pub fn from_static_config(plan: &NodePlan, created: &[CreatedEndpoint]) -> DesiredState {
    let cfg = &plan.config;
    let config = Config {
        vtep_ip: plan.underlay.vtep.octets(),
        underlay_ifindex: plan.underlay.index,
        vxlan_port: cfg.vxlan_port,
        src_port_min: cfg.source_ports[0],
        src_port_max: cfg.source_ports[1],
        flags: CONFIG_F_READY,
        ..Config::default()
    };
    let networks = cfg
        .networks
        .iter()
        .zip(&plan.network_mtus)
        .map(|(n, mtu)| (n.vni, *mtu))
        .collect();
    let local = created
        .iter()
        .map(|e| LocalEndpoint {
            vni: e.plan.vni,
            ip: e.plan.ip,
            mac: e.plan.mac,
            host_ifindex: e.host_ifindex,
        })
        .collect();
    let remote = cfg
        .remotes
        .iter()
        .map(|r| RemoteEndpoint {
            vni: cfg.networks[r.network].vni,
            ip: r.ip,
            mac: r.mac,
            vtep: r.vtep,
        })
        .collect();
    DesiredState {
        config,
        networks,
        local,
        remote,
    }
}

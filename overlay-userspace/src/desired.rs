//! What the dataplane should hold, in cluster terms: a pure function of the node
//! plan, the resolved cluster and this node's endpoints. The reconciler
//! ([`crate::dataplane::reconcile`]) turns it into map contents.
//!
//! This is also the one place that knows the cluster file's `[[remote]]` entries:
//! they are not announced by anyone, so `resolve` never sees them, and they win
//! over what gossip says.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use overlay_common::{CONFIG_F_READY, Config};

use crate::{
    cluster::resolve::{AcceptedRemote, Resolved},
    config::ClusterConfig,
    host::{plan::NodePlan, veth::CreatedEndpoint},
    model::{Mac, PortMapping, Subnet, gateway_mac},
};

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

/// A network's gateway on this node: answered for in ARP, and the frames to
/// its MAC go to the host stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// What the host's packet filter must know about the overlay's subnets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressNets {
    /// Every accepted network's subnet.
    pub overlay: Vec<Subnet>,
    /// The subnets of the networks with a way out (not internal).
    pub way_out: Vec<Subnet>,
    /// The ports this node's endpoints publish, DNATed to them.
    pub published: Vec<Published>,
}

/// A published port and the endpoint address it leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    pub port: PortMapping,
    pub ip: Ipv4Addr,
}

/// Everything the dataplane should know, in cluster terms.
#[derive(Clone, Debug)]
pub struct DesiredState {
    pub config: Config,
    /// VNI → the endpoints' MTU in that network.
    pub networks: BTreeMap<u32, u32>,
    pub local: Vec<LocalEndpoint>,
    pub remote: Vec<RemoteEndpoint>,
    /// The gateways of the networks with a way out.
    pub gateways: Vec<Gateway>,
    pub egress: EgressNets,
}

/// The desired state of this node: the accepted networks, the local endpoints
/// of those networks, and the remote endpoints (the file's first).
pub fn desired_state<'a>(
    plan: &NodePlan,
    resolved: &Resolved,
    locals: impl IntoIterator<Item = &'a CreatedEndpoint>,
) -> DesiredState {
    let config = dataplane_config(
        plan.underlay.vtep,
        plan.underlay.index,
        plan.config.vxlan_port,
        plan.config.source_ports,
    );
    let networks = resolved
        .networks
        .values()
        .map(|n| (n.vni, plan.mtu_for(n.mtu)))
        .collect();
    let gateways = resolved
        .networks
        .values()
        .filter_map(|n| {
            let ip = n.way_out()?;
            Some(Gateway {
                vni: n.vni,
                ip,
                mac: gateway_mac(ip),
            })
        })
        .collect();
    // An endpoint of a network the cluster refused (or gave another VNI) stays
    // plumbed but out of the tables.
    let served: Vec<&CreatedEndpoint> = locals
        .into_iter()
        .filter(|e| {
            resolved
                .networks
                .get(&e.plan.network)
                .is_some_and(|n| n.vni == e.plan.vni)
        })
        .collect();
    let mut published: Vec<Published> = served
        .iter()
        .filter(|e| e.plan.gateway.is_some())
        .flat_map(|e| {
            e.plan.ports.iter().map(|&port| Published {
                port,
                ip: e.plan.ip,
            })
        })
        .collect();
    published.sort();
    let egress = EgressNets {
        overlay: resolved.networks.values().map(|n| n.subnet).collect(),
        way_out: resolved
            .networks
            .values()
            .filter(|n| !n.internal)
            .map(|n| n.subnet)
            .collect(),
        published,
    };
    let local = served
        .iter()
        .map(|e| LocalEndpoint {
            vni: e.plan.vni,
            ip: e.plan.ip,
            mac: e.plan.mac,
            host_ifindex: e.host_ifindex,
        })
        .collect();
    DesiredState {
        config,
        networks,
        local,
        remote: remote_endpoints(static_remotes(&plan.config), &resolved.remote),
        gateways,
        egress,
    }
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

/// The cluster file's `[[remote]]` entries.
fn static_remotes(config: &ClusterConfig) -> Vec<RemoteEndpoint> {
    config
        .remotes
        .iter()
        .map(|r| RemoteEndpoint {
            vni: config.networks[r.network].vni,
            ip: r.ip,
            mac: r.mac,
            vtep: r.vtep,
        })
        .collect()
}

/// The file's entries, then every accepted gossip entry whose IP or MAC the file
/// does not already hold in that network. Gossip's own duplicates were settled
/// by `resolve`, so only the file's need checking here.
fn remote_endpoints(
    statics: Vec<RemoteEndpoint>,
    accepted: &[AcceptedRemote],
) -> Vec<RemoteEndpoint> {
    let static_ips: BTreeSet<(u32, Ipv4Addr)> = statics.iter().map(|r| (r.vni, r.ip)).collect();
    let static_macs: BTreeSet<(u32, Mac)> = statics.iter().map(|r| (r.vni, r.mac)).collect();
    let mut remote = statics;
    remote.extend(
        accepted
            .iter()
            .filter(|a| {
                !static_ips.contains(&(a.vni, a.ip)) && !static_macs.contains(&(a.vni, a.mac))
            })
            .map(|a| RemoteEndpoint {
                vni: a.vni,
                ip: a.ip,
                mac: a.mac,
                vtep: a.vtep,
            }),
    );
    remote
}

/// Every address of `network` someone uses: announced anywhere in the cluster,
/// a `[[remote]]` of the file, or kept by the network (its gateway and
/// auxiliary addresses). An allocation or an explicit address must avoid all
/// of them.
pub fn addresses_in_use(
    config: &ClusterConfig,
    resolved: &Resolved,
    network: &str,
) -> BTreeSet<Ipv4Addr> {
    let mut used: BTreeSet<Ipv4Addr> = resolved.used_ips.get(network).cloned().unwrap_or_default();
    used.extend(
        config
            .remotes
            .iter()
            .filter(|r| config.networks[r.network].name == network)
            .map(|r| r.ip),
    );
    if let Some(def) = resolved.networks.get(network) {
        used.extend(def.reserved());
    }
    used
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::{
        cluster::record::NetworkDef,
        host::plan::{PlannedEndpoint, Underlay},
        model::Plumbing,
    };

    const FILE: &str = "node = \"n1\"\nunderlay = \"eth0\"\n\
        [[network]]\nname = \"red\"\nvni = 100\nsubnet = \"10.9.0.0/24\"\nmtu = 1400\n\
        [[remote]]\nnetwork = \"red\"\nip = \"10.9.0.4\"\nmac = \"02:42:0a:09:00:04\"\nvtep = \"192.168.1.5\"\n";

    fn plan() -> NodePlan {
        NodePlan {
            config: ClusterConfig::parse(Path::new("n.toml"), FILE).unwrap(),
            underlay: Underlay {
                name: "eth0".into(),
                index: 2,
                mtu: 1500,
                vtep: Ipv4Addr::new(172, 31, 1, 5),
                is_veth: true,
                merges: false,
            },
            endpoints: Vec::new(),
            pin_dir: PathBuf::from("/nonexistent"),
        }
    }

    fn def(name: &str, vni: u32) -> NetworkDef {
        NetworkDef {
            name: name.into(),
            vni,
            subnet: "10.9.0.0/24".parse().unwrap(),
            created_ms: 0,
            origin: "n1".into(),
            gateway: None,
            aux: Vec::new(),
            mtu: (name == "red").then_some(1400),
            internal: false,
        }
    }

    fn veth(network: &str, vni: u32, ip: [u8; 4], ifindex: u32) -> CreatedEndpoint {
        let ip = Ipv4Addr::from(ip);
        CreatedEndpoint {
            plan: PlannedEndpoint {
                network: network.into(),
                vni,
                netns: "c".into(),
                container_id: None,
                plumbing: Plumbing::Agent,
                gateway: None,
                ip,
                prefix_len: 24,
                mac: Mac::from_ipv4(ip),
                mtu: 1400,
                host_ifname: format!("ov{ifindex}"),
                container_ifname: "eth0".into(),
                ports: Vec::new(),
            },
            host_ifindex: ifindex,
        }
    }

    #[test]
    fn the_desired_state_holds_served_networks_their_endpoints_and_the_files_remotes() {
        let mut resolved = Resolved::default();
        resolved.networks.insert("red".into(), def("red", 100));
        // Created at run time: no MTU in the file, so the underlay's minus 50.
        resolved.networks.insert("blue".into(), def("blue", 200));
        let locals = [
            veth("red", 100, [10, 9, 0, 3], 7),
            // The cluster gave "green" no definition, and "blue" another VNI:
            // both stay plumbed but out of the tables.
            veth("green", 300, [10, 9, 0, 5], 8),
            veth("blue", 201, [10, 9, 0, 6], 9),
        ];
        let state = desired_state(&plan(), &resolved, &locals);
        assert_eq!(state.networks, BTreeMap::from([(100, 1400), (200, 1450)]));
        assert_eq!(state.local.len(), 1);
        assert_eq!(state.local[0].host_ifindex, 7);
        assert_eq!(
            state.remote,
            vec![remote([10, 9, 0, 4], [10, 9, 0, 4], [192, 168, 1, 5])]
        );
        assert_eq!(state.config.vtep_ip, [172, 31, 1, 5]);
        assert_eq!(state.config.underlay_ifindex, 2);
    }

    fn remote(ip: [u8; 4], mac_of: [u8; 4], vtep: [u8; 4]) -> RemoteEndpoint {
        RemoteEndpoint {
            vni: 100,
            ip: Ipv4Addr::from(ip),
            mac: Mac::from_ipv4(Ipv4Addr::from(mac_of)),
            vtep: Ipv4Addr::from(vtep),
        }
    }

    fn accepted(r: &RemoteEndpoint, node: &str) -> AcceptedRemote {
        AcceptedRemote {
            node: node.into(),
            network: "red".into(),
            vni: r.vni,
            ip: r.ip,
            mac: r.mac,
            vtep: r.vtep,
        }
    }

    #[test]
    fn the_files_remotes_win_over_gossip_by_ip_and_by_mac() {
        let file = remote([10, 9, 0, 4], [10, 9, 0, 4], [192, 168, 1, 5]);
        let same_ip = remote([10, 9, 0, 4], [10, 9, 0, 99], [172, 30, 0, 12]);
        let same_mac = remote([10, 9, 0, 98], [10, 9, 0, 4], [172, 30, 0, 12]);
        let other = remote([10, 9, 0, 7], [10, 9, 0, 7], [172, 30, 0, 12]);
        let gossip = [
            accepted(&same_ip, "b"),
            accepted(&same_mac, "b"),
            accepted(&other, "c"),
        ];
        assert_eq!(
            remote_endpoints(vec![file.clone()], &gossip),
            vec![file, other.clone()]
        );
        // Without a file entry, gossip's entries all count.
        assert_eq!(remote_endpoints(Vec::new(), &gossip[2..]), vec![other]);
    }

    #[test]
    fn addresses_in_use_include_the_files_remotes() {
        let config = ClusterConfig::parse(
            Path::new("n.toml"),
            "node = \"n1\"\nunderlay = \"eth0\"\n\
             [[network]]\nname = \"red\"\nvni = 100\nsubnet = \"10.9.0.0/24\"\n\
             [[network]]\nname = \"blue\"\nvni = 200\nsubnet = \"10.8.0.0/24\"\n\
             [[remote]]\nnetwork = \"red\"\nip = \"10.9.0.4\"\nmac = \"02:42:0a:09:00:04\"\nvtep = \"192.168.1.5\"\n",
        )
        .unwrap();
        let mut resolved = Resolved::default();
        resolved
            .used_ips
            .insert("red".into(), [Ipv4Addr::new(10, 9, 0, 3)].into());
        resolved
            .used_ips
            .insert("blue".into(), [Ipv4Addr::new(10, 8, 0, 3)].into());
        let used: Vec<_> = addresses_in_use(&config, &resolved, "red")
            .into_iter()
            .collect();
        assert_eq!(
            used,
            [Ipv4Addr::new(10, 9, 0, 3), Ipv4Addr::new(10, 9, 0, 4)]
        );
    }
}

//! The cluster file resolved against this machine: the underlay, the VTEP
//! address, MTUs, interface names. Every check that needs the system runs here, before
//! anything is changed, and fails with the file and field it concerns.

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf};

use anyhow::Result;
use overlay_common::VXLAN_OVERHEAD;

use super::{netlink::Netlink, netns};
use crate::{
    config::{ClusterConfig, ConfigError, DecapMode},
    model::Mac,
};

#[derive(Clone, Debug)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub vtep: Ipv4Addr,
    pub is_veth: bool,
}

/// One local endpoint, with every name and number decided.
#[derive(Clone, Debug)]
pub struct PlannedEndpoint {
    pub network: String,
    pub vni: u32,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: Mac,
    pub mtu: u32,
    /// The veth end the agent keeps, in its own namespace.
    pub host_ifname: String,
    /// The end inside the container: eth0, eth1, … in file order per namespace.
    pub container_ifname: String,
}

#[derive(Clone, Debug)]
pub struct NodePlan {
    pub config: ClusterConfig,
    pub underlay: Underlay,
    /// Per network, in file order: the endpoints' MTU.
    pub network_mtus: Vec<u32>,
    pub endpoints: Vec<PlannedEndpoint>,
    pub pin_dir: PathBuf,
}

impl NodePlan {
    /// The endpoints' MTU in network `name`: the file's setting, else the
    /// underlay's MTU minus the VXLAN overhead (also for networks created at
    /// run time).
    pub fn mtu_of(&self, name: &str) -> u32 {
        self.config
            .networks
            .iter()
            .zip(&self.network_mtus)
            .find(|(n, _)| n.name == name)
            .map_or(
                self.underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
                |(_, mtu)| *mtu,
            )
    }

    /// What about this host will make the dataplane slower or fail, in words
    /// that say what to do.
    pub fn host_warnings(&self) -> Vec<String> {
        let underlay = &self.underlay.name;
        let mut warnings = Vec::new();
        // bpf_fib_lookup refuses to route when forwarding is off on the underlay,
        // and encapsulation then takes the kernel's slower route-and-resolve path.
        let forwarding = format!("/proc/sys/net/ipv4/conf/{underlay}/forwarding");
        if std::fs::read_to_string(&forwarding).is_ok_and(|v| v.trim() == "0") {
            warnings.push(format!(
                "IPv4 forwarding is off on {underlay}: encapsulation falls back to the slower \
                 kernel routing path (counter encap_route_fallback); enable it with \
                 `sysctl -w net.ipv4.conf.{underlay}.forwarding=1`"
            ));
        }
        if self.config.decap == DecapMode::Xdp && self.underlay.is_veth {
            warnings.push(
                "XDP decap on a veth underlay: a veth peer passes checksums it has not computed \
                 (CHECKSUM_PARTIAL) and XDP_REDIRECT cannot carry that, so the sending side must \
                 compute them (`ethtool -K <peer> tx off`), or TCP into containers fails; \
                 TC decap has no such limit"
                    .to_owned(),
            );
        }
        warnings
    }
}

pub async fn plan(config: ClusterConfig, pin_dir: PathBuf, nl: &Netlink) -> Result<NodePlan> {
    let err = |field: &str, problem: String| ConfigError {
        file: config.path.clone(),
        field: field.to_owned(),
        problem,
    };

    let Some(link) = nl.link_by_name(&config.underlay).await? else {
        return Err(err(
            "underlay",
            format!(
                "no interface {:?} in this network namespace",
                config.underlay
            ),
        )
        .into());
    };
    let addresses = nl.ipv4_addresses(link.index).await?;
    let vtep = match config.vtep {
        Some(v) if addresses.contains(&v) => v,
        Some(v) => {
            return Err(err(
                "vtep",
                format!(
                    "{v} is not an address of {} (it has {addresses:?})",
                    config.underlay
                ),
            )
            .into());
        }
        None => *addresses.first().ok_or_else(|| {
            err(
                "underlay",
                format!(
                    "{} has no IPv4 address to use as the VTEP; add one or set vtep",
                    config.underlay
                ),
            )
        })?,
    };
    if let Some((i, _)) = config
        .remotes
        .iter()
        .enumerate()
        .find(|(_, r)| r.vtep == vtep)
    {
        return Err(err(
            &format!("remote[{i}].vtep"),
            format!("{vtep} is this node's own VTEP"),
        )
        .into());
    }
    let underlay = Underlay {
        name: link.name,
        index: link.index,
        mtu: link.mtu,
        vtep,
        is_veth: link.is_veth,
    };

    // The inner MTU leaves room for the outer headers: an inner frame of MTU bytes
    // becomes an outer packet of exactly the underlay's MTU.
    let max_mtu = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
    let mut network_mtus = Vec::new();
    for (i, n) in config.networks.iter().enumerate() {
        let mtu = n.mtu.unwrap_or(max_mtu);
        if mtu > max_mtu {
            return Err(err(
                &format!("network[{i}].mtu"),
                format!(
                    "{mtu} does not fit: {} has MTU {} and VXLAN needs {VXLAN_OVERHEAD} bytes",
                    underlay.name, underlay.mtu
                ),
            )
            .into());
        }
        network_mtus.push(mtu);
    }

    let mut next_index_in_netns: HashMap<&str, usize> = HashMap::new();
    let mut endpoints = Vec::new();
    for (i, e) in config.endpoints.iter().enumerate() {
        let path = netns::existing(&e.netns)
            .map_err(|problem| err(&format!("endpoint[{i}].netns"), problem))?;
        let network = &config.networks[e.network];
        let n = next_index_in_netns.entry(&e.netns).or_default();
        let container_ifname = format!("eth{n}");
        *n += 1;
        let host_ifname = host_ifname(&config.node, network.vni, e.ip);
        // A veth of that name was left by an agent that exited with --keep or was
        // killed: it is adopted, not refused.
        if nl.link_by_name(&host_ifname).await?.is_none() {
            let inside = Netlink::in_netns(&path)?;
            if inside.link_by_name(&container_ifname).await?.is_some() {
                return Err(err(
                    &format!("endpoint[{i}].netns"),
                    format!(
                        "namespace {:?} already has an interface {container_ifname}",
                        e.netns
                    ),
                )
                .into());
            }
        }
        endpoints.push(PlannedEndpoint {
            network: network.name.clone(),
            vni: network.vni,
            netns: e.netns.clone(),
            ip: e.ip,
            prefix_len: network.subnet.prefix_len,
            mac: e.mac,
            mtu: network_mtus[e.network],
            host_ifname,
            container_ifname,
        });
    }

    Ok(NodePlan {
        config,
        underlay,
        network_mtus,
        endpoints,
        pin_dir,
    })
}

/// A stable, unique-enough name for an endpoint's host-side veth: "ov" and 32 bits
/// of FNV-1a over node, VNI and IP. Stable names let an operator (and a later
/// agent) tell which veth belongs to which endpoint.
pub fn host_ifname(node: &str, vni: u32, ip: Ipv4Addr) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in node.bytes().chain(vni.to_be_bytes()).chain(ip.octets()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("ov{hash:08x}")
}

/// The first `ethN` not yet present in a container's namespace.
pub async fn next_container_ifname(netns: &Netlink) -> Result<String> {
    for n in 0..1024 {
        let name = format!("eth{n}");
        if netns.link_by_name(&name).await?.is_none() {
            return Ok(name);
        }
    }
    anyhow::bail!("no free ethN name in the namespace")
}

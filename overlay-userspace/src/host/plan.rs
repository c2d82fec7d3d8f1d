//! The cluster file resolved against this machine: the underlay, the VTEP
//! address, MTUs, interface names. Every check that needs the system runs here, before
//! anything is changed, and fails with the file and field it concerns.

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf};

use anyhow::Result;
use overlay_common::VXLAN_OVERHEAD;

use super::{netlink::Netlink, netns};
use crate::{
    config::{ClusterConfig, ConfigError, DecapMode, rules},
    model::{Mac, Plumbing, PortMapping, Subnet},
};

#[derive(Clone, Debug)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub vtep: Ipv4Addr,
    pub is_veth: bool,
    /// GRO on: where the wire segments, tunnel GRO merges the segments
    /// before TC decap.
    pub merges: bool,
}

/// One local endpoint, with every name and number decided.
#[derive(Clone, Debug)]
pub struct PlannedEndpoint {
    pub network: String,
    pub vni: u32,
    /// A namespace name or path (see [`crate::config::rules::netns`]).
    pub netns: String,
    /// The runtime's container ID, for attachments made by one (CNI, Docker).
    pub container_id: Option<String>,
    pub plumbing: Plumbing,
    /// The gateway the container routes through; `None` on an internal network.
    pub gateway: Option<Ipv4Addr>,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: Mac,
    pub mtu: u32,
    /// The veth end the agent keeps, in its own namespace.
    pub host_ifname: String,
    /// The end inside the container: eth0, eth1, … in file order per namespace,
    /// or the name the runtime asked for. With [`Plumbing::Caller`], the name
    /// the runtime knows the attachment by.
    pub container_ifname: String,
    /// Its published ports (Docker's `-p`), DNATed by the way out.
    pub ports: Vec<PortMapping>,
}

impl PlannedEndpoint {
    /// The container end's name before it is moved (and, with
    /// [`Plumbing::Caller`], until the caller moves it): Docker's `SrcName`.
    pub fn peer_ifname(&self) -> String {
        format!("{}p", self.host_ifname)
    }

    /// The routes the container needs besides its subnet's: a default route
    /// through the gateway, unless the network is internal.
    pub fn routes(&self) -> Vec<(Subnet, Option<Ipv4Addr>)> {
        self.gateway
            .map(|gw| {
                let default = Subnet {
                    network: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                };
                (default, Some(gw))
            })
            .into_iter()
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct NodePlan {
    pub config: ClusterConfig,
    pub underlay: Underlay,
    pub endpoints: Vec<PlannedEndpoint>,
    pub pin_dir: PathBuf,
}

impl NodePlan {
    /// The largest inner MTU whose outer packets fit the underlay.
    pub fn max_mtu(&self) -> u32 {
        self.underlay.mtu.saturating_sub(VXLAN_OVERHEAD)
    }

    /// The endpoints' MTU in a network whose definition sets `mtu`: that, else
    /// the underlay's MTU minus the VXLAN overhead.
    pub fn mtu_for(&self, mtu: Option<u32>) -> u32 {
        mtu.unwrap_or_else(|| self.max_mtu())
    }

    /// A network MTU this node can carry, or the problem in words.
    pub fn check_mtu(&self, mtu: u32) -> Result<(), String> {
        rules::mtu(mtu)?;
        if mtu > self.max_mtu() {
            return Err(format!(
                "{mtu} does not fit: {} has MTU {} and VXLAN needs {VXLAN_OVERHEAD} bytes",
                self.underlay.name, self.underlay.mtu
            ));
        }
        Ok(())
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
        if self.config.decap == DecapMode::Tc && !self.underlay.merges {
            warnings.push(format!(
                "GRO is off on {underlay}: where the wire carries the tunnel's segments one by \
                 one, as a NIC's does, nothing merges them before TC decap and the containers' \
                 TCP stacks take every segment on its own (the kernel's VXLAN device merges \
                 after decap instead); turn it on with `ethtool -K {underlay} gro on`"
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
    let file = config.path.clone();
    let err = |field: &str, problem: String| ConfigError {
        file: file.clone(),
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
    // Only a warning depends on it: an unreadable setting is not worth one.
    let merges = super::ethtool::gro_enabled(&link.name).unwrap_or(true);
    let underlay = Underlay {
        name: link.name,
        index: link.index,
        mtu: link.mtu,
        vtep,
        is_veth: link.is_veth,
        merges,
    };

    let mut plan = NodePlan {
        config,
        underlay,
        endpoints: Vec::new(),
        pin_dir,
    };
    // The inner MTU leaves room for the outer headers: an inner frame of MTU bytes
    // becomes an outer packet of exactly the underlay's MTU.
    for (i, n) in plan.config.networks.iter().enumerate() {
        if let Some(mtu) = n.mtu {
            plan.check_mtu(mtu)
                .map_err(|problem| err(&format!("network[{i}].mtu"), problem))?;
        }
    }
    let config = &plan.config;
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
            container_id: None,
            plumbing: Plumbing::Agent,
            gateway: (!network.internal).then_some(network.gateway),
            ip: e.ip,
            prefix_len: network.subnet.prefix_len,
            mac: e.mac,
            mtu: plan.mtu_for(network.mtu),
            host_ifname,
            container_ifname,
            ports: Vec::new(),
        });
    }
    plan.endpoints = endpoints;
    Ok(plan)
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn plan(decap: &str, merges: bool) -> NodePlan {
        let file = format!("node = \"n1\"\nunderlay = \"eth0\"\ndecap = \"{decap}\"\n");
        NodePlan {
            config: ClusterConfig::parse(Path::new("n.toml"), &file).unwrap(),
            underlay: Underlay {
                name: "eth0".into(),
                index: 2,
                mtu: 1500,
                vtep: Ipv4Addr::new(172, 31, 1, 5),
                is_veth: false,
                merges,
            },
            endpoints: Vec::new(),
            pin_dir: PathBuf::from("/nonexistent"),
        }
    }

    fn warns_of_gro(plan: &NodePlan) -> bool {
        plan.host_warnings()
            .iter()
            .any(|w| w.contains("GRO is off on eth0") && w.contains("ethtool -K eth0 gro on"))
    }

    #[test]
    fn tc_decap_on_an_underlay_without_gro_is_warned_of() {
        assert!(warns_of_gro(&plan("tc", false)));
        assert!(!warns_of_gro(&plan("tc", true)));
        // XDP decap runs before GRO: the underlay's setting does not matter to it.
        assert!(!warns_of_gro(&plan("xdp", false)));
    }
}
